"""The server's named negative pools.

A request without its own ``negatives`` draws them from a pool: ``pool`` names it (default
"default"). Every pool starts from the server's real examples (``--real``) and grows with every
finished completion drawn from it, as ``steer generate``'s pool grows with its samples: an empty
completion and a repeat of one already in the pool do not join. A pool stops growing at
``max_examples`` (its draws stay uniform over what it holds).

The draws of a request with a seed come from that seed (the same request against the same pool
draws the same examples); the others from the pool's own generator. Examples are stored as
token ids, unframed: the framing (prefix, separators) is the request's own prompt, applied when
its negative contexts are built. Pools are used from the server's event loop only.
"""

from __future__ import annotations

import random

from steer.engine.pool import dedupe_key
from steer.serving.protocol import APIError


class Pool:
    def __init__(self, real: list[list[int]], real_texts: list[str], *, max_examples: int, seed: int) -> None:
        self.examples = [list(e) for e in real]
        self.seen = {dedupe_key(t) for t in real_texts}
        self.max_examples = max_examples
        self.rng = random.Random(seed)
        self.grown = 0  # completions that joined

    def __len__(self) -> int:
        return len(self.examples)

    def draw(self, count: int, seed: int | None) -> list[list[int]]:
        """``count`` distinct examples (all of them if the pool is smaller)."""
        rng = random.Random(seed) if seed is not None else self.rng
        return [self.examples[i] for i in rng.sample(range(len(self.examples)), min(count, len(self.examples)))]

    def add(self, text: str, token_ids: list[int]) -> bool:
        """A finished completion joins the pool unless it is empty, a repeat, or the pool is full."""
        key = dedupe_key(text)
        if not key or not token_ids or key in self.seen or len(self.examples) >= self.max_examples:
            return False
        self.seen.add(key)
        self.examples.append(list(token_ids))
        self.grown += 1
        return True


class Pools:
    """Pools by name, made on first use, at most ``max_pools`` of them."""

    def __init__(self, real: list[list[int]], real_texts: list[str], *, max_pools: int, max_examples: int, seed: int) -> None:
        if not real:
            raise ValueError("the server's pools need at least one real example")
        self.real, self.real_texts = real, real_texts
        self.max_pools, self.max_examples, self.seed = max_pools, max_examples, seed
        self.pools: dict[str, Pool] = {}

    def sizes(self) -> list[tuple[str, int]]:
        """(name, examples) of every pool (read by /metrics; a snapshot, safe from another thread)."""
        return [(name, len(pool)) for name, pool in list(self.pools.items())]

    def get(self, name: str) -> Pool:
        pool = self.pools.get(name)
        if pool is None:
            if len(self.pools) >= self.max_pools:
                raise APIError(400, f"pool: {name!r} would be pool number {len(self.pools) + 1}, over this server's "
                               f"limit of {self.max_pools} (--max-pools)", param="pool", code="too_many_pools")  # fmt: skip
            pool = Pool(self.real, self.real_texts, max_examples=self.max_examples, seed=self.seed + len(self.pools))
            self.pools[name] = pool
        return pool
