"""A request, and the sample group that decodes it: K streams that share their generated tokens.

    stream 0        expert on the prompt            namespace "expert"
    stream 1        base on the prompt              namespace "base"   (absent when gamma == 0)
    streams 2..K-1  expert on each negative context namespace "expert" (absent when eta == 0)

Every stream's tokens are its own context followed by the group's generated tokens, so one
sampled token is appended to all K of them.
"""

from __future__ import annotations

import enum
import numbers
from dataclasses import dataclass, field

from steer.engine.block_manager import BlockTable


def _is_int(value) -> bool:
    """An integer, Python's or numpy's; not a bool, which Python counts as an int (numpy does not)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_token_ids(name: str, tokens, *, allow_empty: bool = False) -> list[int]:
    """Token ids as a list of Python ints, from a list or tuple of ints or a 1-D integer tensor or
    numpy array; a ValueError naming ``name`` (and the offending position) otherwise."""
    if hasattr(tokens, "ndim") and hasattr(tokens, "tolist"):  # torch tensor or numpy array
        if tokens.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(tokens.shape)}")
        tokens = tokens.tolist()  # Python ints, floats or bools by dtype: checked below like a list
    else:
        tokens = _as_list(name, tokens)
    if not tokens and not allow_empty:
        raise ValueError(f"{name} is empty: a stream needs at least one token")
    for position, token in enumerate(tokens):
        if not _is_int(token):
            raise ValueError(f"{name}[{position}] = {token!r} ({type(token).__name__}) is not an int token id")
        if token < 0:
            raise ValueError(f"{name}[{position}] = {token} is negative: token ids are >= 0")
    return [int(token) for token in tokens]


def _as_list(name: str, items) -> list:
    if isinstance(items, (str, bytes)) or not hasattr(items, "__iter__"):
        raise ValueError(f"{name} = {items!r} is not a token-id list or 1-D tensor")
    return list(items)


def _check_negative_streams(negative_ids) -> list[list[int]]:
    """Each of the M streams checked like prompt_ids (a 2-D tensor is M streams of one length)."""
    streams = _as_list("negative_ids", negative_ids)
    return [check_token_ids(f"negative_ids[{i}]", stream) for i, stream in enumerate(streams)]


@dataclass
class Request:
    """One synthetic sample to generate.

    prompt_ids and each negative stream: token ids as a list (or tuple) of ints or a 1-D integer
        tensor or numpy array; stored as a list of Python ints. The engine checks them against
        its model (vocabulary, context length).
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
        self.prompt_ids = check_token_ids("prompt_ids", self.prompt_ids)
        self.negative_ids = _check_negative_streams(self.negative_ids)
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        if not _is_int(self.min_new_tokens) or not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be an int in [0, max_new_tokens], got {self.min_new_tokens!r}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < 2**63):
            raise ValueError(f"seed must be None or an int in [0, 2^63), got {self.seed!r}")
        if self.eos_token_id is not None and (not _is_int(self.eos_token_id) or self.eos_token_id < 0):
            raise ValueError(f"eos_token_id must be None or an int >= 0 (a token id), got {self.eos_token_id!r}")
        # Plain Python ints from here on, whatever integer type came in (numpy's, say).
        self.max_new_tokens, self.min_new_tokens = int(self.max_new_tokens), int(self.min_new_tokens)
        self.seed = None if self.seed is None else int(self.seed)
        self.eos_token_id = None if self.eos_token_id is None else int(self.eos_token_id)


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
