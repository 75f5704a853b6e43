"""Error messages shared by every backend, so a bad input reads the same whichever kernel found it."""

from __future__ import annotations


def nan_in_logits(row: int, stream: int) -> ValueError:
    return ValueError(f"logits contain NaN (batch row {row}, stream {stream}); NaN logits cannot be sampled from")


def posinf_in_logits(row: int, stream: int) -> ValueError:
    return ValueError(f"logits contain +inf (batch row {row}, stream {stream}); logits must be finite or -inf")


def no_finite_token(row: int) -> ValueError:
    return ValueError(
        f"batch row {row} has no token with a finite combined score: every token is -inf in a positively "
        "weighted stream (or removed by the plausibility floor)"
    )
