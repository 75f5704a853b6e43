"""The negative pool: the real examples plus every synthetic sample finished so far.

Each new sample draws its N negative examples at random from the pool as it stands when the
sample starts (docs/design.md, section 1), and every finished sample joins the pool, so later samples
are pushed away from earlier ones as well as from the real data.

A negative context frames the drawn examples the way the model saw its training data, so that
what the expert predicts next on it is "another example like these":

    prefix + example_1 + separator + example_2 + ... + example_N + suffix        ("concat")
    prefix + example_i + suffix, one stream per example                          ("separate")

and the group's generated tokens follow it. With a BOS/EOS-trained model, prefix = the prompt,
separator = suffix = [eos] + prompt.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from steer.engine.sequence import check_token_ids


class NegativePool:
    def __init__(
        self,
        examples: list[list[int]],
        *,
        seed: int | None = None,
        prefix: Sequence[int] = (),
        separator: Sequence[int] = (),
        suffix: Sequence[int] = (),
    ) -> None:
        # Ids are checked where they enter, so a bad one names its pool entry, not a later sample's stream.
        self.examples = [check_token_ids(f"pool example {i}", e, allow_empty=True) for i, e in enumerate(examples)]
        if not self.examples:
            raise ValueError("the negative pool needs at least one example")
        for index, example in enumerate(self.examples):
            if not example:
                raise ValueError(f"pool example {index} is empty")
        frames = (("prefix", prefix), ("separator", separator), ("suffix", suffix))
        self.prefix, self.separator, self.suffix = (check_token_ids(name, ids, allow_empty=True) for name, ids in frames)
        self._rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.examples)

    def draw(self, count: int) -> list[int]:
        """Indices of ``count`` distinct examples (all of them if the pool is smaller)."""
        return self._rng.sample(range(len(self.examples)), min(count, len(self.examples)))

    def add(self, tokens: list[int]) -> int:
        """Add a finished sample (ignored if empty); return its index, or -1."""
        tokens = check_token_ids(f"pool example {len(self.examples)}", tokens, allow_empty=True)
        if not tokens:
            return -1
        self.examples.append(tokens)
        return len(self.examples) - 1

    def negative_streams(self, indices: list[int], mode: str) -> list[list[int]]:
        """The expert's negative contexts for these examples (``frame_examples`` with this pool's
        prefix, separator and suffix)."""
        return frame_examples([self.examples[i] for i in indices], mode, self.prefix, self.separator, self.suffix)

    def negative_chunks(self, indices: list[int]) -> list[list[int]]:
        """The per-example chunks of these examples' joined ("concat") context (``example_chunks``)."""
        return example_chunks([self.examples[i] for i in indices], self.prefix, self.separator, self.suffix)


def frame_examples(examples, mode: str, prefix, separator, suffix) -> list[list[int]]:
    """Negative contexts of these examples: one stream of them joined by the separator
    ("concat", the paper's), or one stream each ("separate"); each framed by prefix and suffix."""
    if mode == "separate":
        return [list(prefix) + list(example) + list(suffix) for example in examples]
    joined = list(prefix) + list(examples[0])
    for example in examples[1:]:
        joined += list(separator) + list(example)
    return [joined + list(suffix)]


def example_chunks(examples, prefix, separator, suffix) -> list[list[int]]:
    """The joined ("concat") context of ``frame_examples`` cut into one chunk per example, whose KV
    can be computed alone and copied in (SteerConfig.per_example_kv); the chunks joined are a
    prefix of the context, and the rest of it (what the generated tokens follow) is computed in it.

    With the usual framing (separator = suffix = an example's end, then the prefix that begins the
    next one) chunk i is prefix + example_i + end: each example with its own beginning and end, as
    the model saw it in training, and the rest is the last prefix. With any other framing, chunk 1
    is prefix + example_1 and chunk i is separator + example_i; the rest is the suffix. Where the
    rest would be empty, the last chunk leaves its last token to it (a stream's last context token
    runs in the step's forward, for its logits).
    """
    prefix, separator, suffix = list(prefix), list(separator), list(suffix)
    begins_next = len(separator) >= len(prefix) and separator[len(separator) - len(prefix) :] == prefix
    if separator == suffix and begins_next:
        end = separator[: len(separator) - len(prefix)]
        chunks, rest = [prefix + list(example) + end for example in examples], prefix
    else:
        chunks, rest = [(prefix if i == 0 else separator) + list(example) for i, example in enumerate(examples)], suffix
    if not rest:  # the context's last token runs in the step's forward, for its logits
        chunks[-1] = chunks[-1][:-1]
    return [chunk for chunk in chunks if chunk]


def example_separator(prompt_ids: Sequence[int], eos_token_id: int | None, newline_ids: Sequence[int]) -> list[int]:
    """What ends one example and begins the next in a negative context: EOS (or, for a tokenizer
    without one, a newline's ids), then the prompt again, as the model saw its training data."""
    return ([eos_token_id] if eos_token_id is not None else list(newline_ids)) + list(prompt_ids)


def example_budget(
    max_positions: int | None, max_new_tokens: int, prefix: int, separator: int, examples_per_stream: int
) -> int | None:
    """Most tokens of one example so that a negative context of ``examples_per_stream`` examples
    (framed by a prefix and separators of these lengths) plus the generated tokens fits in
    ``max_positions``; None when the model states no limit. Below 1: nothing fits."""
    if max_positions is None:
        return None
    return (max_positions - max_new_tokens - prefix) // examples_per_stream - separator


def dedupe_key(text: str) -> str:
    """What two samples share when they count as the same text: their words, lower-cased."""
    return " ".join(text.split()).lower()
