"""The negative pool: the real examples plus every synthetic sample finished so far.

Each new sample draws its N negative examples at random from the pool as it stands when the
sample starts (DESIGN.md section 2), and every finished sample joins the pool, so later samples
are pushed away from earlier ones as well as from the real data.
"""

from __future__ import annotations

import random


class NegativePool:
    def __init__(self, examples: list[list[int]], *, seed: int | None = None) -> None:
        self.examples = [list(e) for e in examples]
        if not self.examples:
            raise ValueError("the negative pool needs at least one example")
        for index, example in enumerate(self.examples):
            if not example:
                raise ValueError(f"pool example {index} is empty")
        self._rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.examples)

    def draw(self, count: int) -> list[int]:
        """Indices of ``count`` distinct examples (all of them if the pool is smaller)."""
        return self._rng.sample(range(len(self.examples)), min(count, len(self.examples)))

    def add(self, tokens: list[int]) -> int:
        """Add a finished sample (ignored if empty); return its index, or -1."""
        if not tokens:
            return -1
        self.examples.append(list(tokens))
        return len(self.examples) - 1

    def negative_streams(self, indices: list[int], mode: str, separator: list[int]) -> list[list[int]]:
        """The expert's negative contexts for these examples: one stream of them joined by
        ``separator`` ("concat", the paper's), or one stream each ("separate")."""
        chosen = [self.examples[i] for i in indices]
        if mode == "separate":
            return chosen
        joined = list(chosen[0])
        for example in chosen[1:]:
            joined += list(separator) + example
        return [joined]
