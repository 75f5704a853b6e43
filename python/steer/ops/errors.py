"""Error messages shared by every backend, so a bad input reads the same whichever kernel found it."""

from __future__ import annotations

from dataclasses import dataclass

import torch


class LogitsError(ValueError):
    """A bad logit or row found by a sampler or combine, naming the batch row (and stream)."""

    def __init__(self, kind: str, row: int, stream: int | None = None) -> None:
        self.kind, self.row, self.stream = kind, row, stream
        super().__init__(_MESSAGES[kind](row, stream))

    def for_rows(self, rows) -> LogitsError:
        """The same error, naming ``rows[row]``: the caller's row when the op ran on a sub-batch."""
        return LogitsError(self.kind, rows[self.row], self.stream)


_MESSAGES = {
    "nan": lambda row, stream: f"logits contain NaN (batch row {row}, stream {stream}); NaN logits cannot be sampled from",
    "posinf": lambda row, stream: f"logits contain +inf (batch row {row}, stream {stream}); logits must be finite or -inf",
    "empty": lambda row, _: (
        f"batch row {row} has no token with a finite combined score: every token is -inf in a positively "
        "weighted stream (or removed by the plausibility floor)"
    ),
}


def nan_in_logits(row: int, stream: int) -> LogitsError:
    return LogitsError("nan", row, stream)


def posinf_in_logits(row: int, stream: int) -> LogitsError:
    return LogitsError("posinf", row, stream)


def no_finite_token(row: int) -> LogitsError:
    return LogitsError("empty", row)


@dataclass(frozen=True)
class RecordedErrors:
    """The error buffer of a device kernel (which cannot raise), not yet read back.

    ``buffer``: int64 [3] on the kernel's device: the key (row * K + stream) of the first stream
    holding a NaN, the same for +inf, and the first row with no finite score; an entry equal to
    ``untouched`` means none. ``rows``: the batch rows that the kernel's rows 0, 1, ... stand for,
    where the kernel ran on a sub-batch (None: the same rows). Reading the buffer synchronises
    with the device, so a caller that also reads the sampled tokens reads both at once
    (``steer.ops.read_tokens``)."""

    buffer: torch.Tensor
    untouched: int
    num_streams: int
    rows: tuple[int, ...] | None = None

    def raise_if_any(self, values: list[int] | None = None) -> None:
        """Raise the shared ValueError of the first recorded error; ``values``: the buffer, read
        already (else it is read here)."""
        nan_key, posinf_key, empty_row = self.buffer.tolist() if values is None else values
        if nan_key != self.untouched:
            error = nan_in_logits(*divmod(nan_key, self.num_streams))
        elif posinf_key != self.untouched:
            error = posinf_in_logits(*divmod(posinf_key, self.num_streams))
        elif empty_row != self.untouched:
            error = no_finite_token(empty_row)
        else:
            return
        raise error if self.rows is None else error.for_rows(self.rows)
