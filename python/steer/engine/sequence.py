"""A request, and the sample group that decodes it: K streams that share their generated tokens.

    stream 0        expert on the prompt            namespace "expert"
    stream 1        base on the prompt              namespace "base"   (absent when gamma == 0)
    streams 2..K-1  expert on each negative context namespace "expert" (absent when eta == 0)

Every stream's tokens are its own context followed by the group's generated tokens, so one
sampled token is appended to all K of them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from steer.engine.block_manager import BlockTable


def _check_token_list(name: str, tokens) -> list[int]:
    tokens = list(tokens)
    if not tokens:
        raise ValueError(f"{name} is empty: a stream needs at least one token")
    if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in tokens):
        raise ValueError(f"{name} must hold non-negative int token ids")
    return tokens


@dataclass
class Request:
    """One synthetic sample to generate.

    negative_ids: M token-id lists, the expert's negative contexts (M = 1 is the paper's
        "concat" mode, the examples already joined; M > 1 averages the streams). May be empty
        when the engine's eta is 0.
    """

    prompt_ids: list[int]
    negative_ids: list[list[int]]
    max_new_tokens: int
    min_new_tokens: int = 0
    seed: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self) -> None:
        self.prompt_ids = _check_token_list("prompt_ids", self.prompt_ids)
        self.negative_ids = [_check_token_list(f"negative_ids[{i}]", n) for i, n in enumerate(self.negative_ids)]
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        if not isinstance(self.min_new_tokens, int) or not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be an int in [0, max_new_tokens], got {self.min_new_tokens!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed < 2**63):
            raise ValueError(f"seed must be None or an int in [0, 2^63), got {self.seed!r}")


class StreamRole(enum.Enum):
    PROMPT = "prompt"
    BASE = "base"
    NEGATIVE = "negative"


@dataclass
class Stream:
    role: StreamRole
    namespace: str  # whose KV: "expert" or "base"
    context: list[int]
    table: BlockTable | None = None  # set while the group holds KV blocks


class GroupStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class SampleGroup:
    group_id: int
    request: Request
    streams: list[Stream]
    generated: list[int] = field(default_factory=list)
    status: GroupStatus = GroupStatus.WAITING
    finish_reason: str | None = None

    @classmethod
    def for_request(cls, group_id: int, request: Request, *, with_base: bool, with_negatives: bool) -> SampleGroup:
        streams = [Stream(StreamRole.PROMPT, "expert", request.prompt_ids)]
        if with_base:
            streams.append(Stream(StreamRole.BASE, "base", request.prompt_ids))
        if with_negatives:
            if not request.negative_ids:
                raise ValueError(f"request {group_id} has no negative_ids but eta > 0 needs at least one")
            streams += [Stream(StreamRole.NEGATIVE, "expert", negative) for negative in request.negative_ids]
        return cls(group_id, request, streams)

    @property
    def num_streams(self) -> int:
        return len(self.streams)

    def tokens(self, stream: Stream) -> list[int]:
        return stream.context + self.generated

    def longest_context_at_end(self) -> list[int]:
        """Per stream, the most tokens it can ever hold (context + max_new_tokens)."""
        return [len(s.context) + self.request.max_new_tokens for s in self.streams]

    def append(self, token: int) -> None:
        """Record a sampled token; finish at EOS (once min_new_tokens are out) or at the length limit."""
        self.generated.append(token)
        request = self.request
        if request.eos_token_id is not None and token == request.eos_token_id and len(self.generated) >= request.min_new_tokens:
            self.status, self.finish_reason = GroupStatus.FINISHED, "eos"
        elif len(self.generated) >= request.max_new_tokens:
            self.status, self.finish_reason = GroupStatus.FINISHED, "length"
