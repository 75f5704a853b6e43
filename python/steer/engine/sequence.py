"""A request, and the sample group that decodes it: K streams that share their generated tokens.

    stream 0         expert on the prompt             namespace "expert"
    streams 1..M     expert on each negative context  namespace "expert"  (absent when eta == 0)
    stream K-1       base on the prompt               namespace "base"    (absent when gamma == 0)

The expert's streams come first and the base's last, so that the logits of stream k of every
group of a step form one contiguous [G, V] block (docs/design.md, "the logits buffer"). Every
stream's tokens are its own context followed by the group's generated tokens, so one sampled
token is appended to all K of them.
"""

from __future__ import annotations

import enum
import numbers
from dataclasses import dataclass, field

from steer.config import check_sampling_parameters, check_steer_coefficients, stream_weights
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


def _check_negative_chunks(negative_chunks, negative_ids: list[list[int]]) -> list[list[list[int]]]:
    """Per negative stream, its chunks (token-id lists, each non-empty) whose concatenation is a
    proper prefix of the stream: at least its last token is computed in the joined context, for
    its logits. An empty list for a stream: no chunks, its KV is computed exactly."""
    per_stream = _as_list("negative_chunks", negative_chunks)
    if per_stream and len(per_stream) != len(negative_ids):
        raise ValueError(f"negative_chunks has {len(per_stream)} entries but negative_ids has {len(negative_ids)} streams: give one chunk list per stream")
    checked = []
    for index, chunks in enumerate(per_stream):
        chunks = [check_token_ids(f"negative_chunks[{index}][{i}]", c) for i, c in enumerate(_as_list(f"negative_chunks[{index}]", chunks))]
        joined = [token for chunk in chunks for token in chunk]
        stream = negative_ids[index]
        if len(joined) >= len(stream) or stream[: len(joined)] != joined:
            raise ValueError(
                f"negative_chunks[{index}] joined ({len(joined)} tokens) is not a proper prefix of negative_ids[{index}] "
                f"({len(stream)} tokens): the chunks must be the stream's leading tokens, with at least one token after them"
            )
        checked.append(chunks)
    return checked


# What a request without its own value and without a config samples with.
NEUTRAL_SETTINGS = {"gamma": 0.0, "eta": 0.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "eos_exempt": False}


@dataclass
class Request:
    """One synthetic sample to generate.

    prompt_ids and each negative stream: token ids as a list (or tuple) of ints or a 1-D integer
        tensor or numpy array; stored as a list of Python ints. The engine checks them against
        its model (vocabulary, context length).
    negative_ids: M token-id lists, the expert's negative contexts (M = 1 is the paper's
        "concat" mode, the examples already joined; M > 1 averages the streams). May be empty
        when the request's eta is 0.
    gamma, eta, temperature, top_k, top_p: this request's STEER coefficients and sampler; None
        takes the engine's ``SteerConfig``. Requests with different values share a batch.
    seed: this request's noise (its tokens are then the same in any batch); None shares the
        engine's seed, told apart by the request's position.
    eos_exempt: eos_token_id gets the contrast's probability, not the negatives' say
        (SteerConfig.eos_exempt); None takes the engine's config.
    negative_chunks: per negative stream, the chunks its leading tokens are cut into (each a
        token-id list; joined, a proper prefix of the stream), or empty: each chunk's KV is
        computed alone, cached and copied into the stream with its keys re-rotated to the chunk's
        offset, so the stream's tokens after the chunks see all of them but no chunk sees another
        (SteerConfig.per_example_kv; an approximation, docs/design.md). Empty (the default): every
        negative stream is computed exactly.
    """

    prompt_ids: list[int]
    negative_ids: list[list[int]] = field(default_factory=list)
    max_new_tokens: int = 64
    min_new_tokens: int = 0
    seed: int | None = None
    eos_token_id: int | None = None
    gamma: float | None = None
    eta: float | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    eos_exempt: bool | None = None
    negative_chunks: list[list[list[int]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.prompt_ids = check_token_ids("prompt_ids", self.prompt_ids)
        self.negative_ids = _check_negative_streams(self.negative_ids)
        self.negative_chunks = _check_negative_chunks(self.negative_chunks, self.negative_ids)
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        if not _is_int(self.min_new_tokens) or not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be an int in [0, max_new_tokens], got {self.min_new_tokens!r}")
        if self.seed is not None and (not _is_int(self.seed) or not 0 <= self.seed < 2**63):
            raise ValueError(f"seed must be None or an int in [0, 2^63), got {self.seed!r}")
        if self.eos_token_id is not None and (not _is_int(self.eos_token_id) or self.eos_token_id < 0):
            raise ValueError(f"eos_token_id must be None or an int >= 0 (a token id), got {self.eos_token_id!r}")
        if self.eos_exempt is not None and not isinstance(self.eos_exempt, bool):
            raise ValueError(f"eos_exempt must be None or a bool, got {self.eos_exempt!r}")
        # Plain Python ints from here on, whatever integer type came in (numpy's, say).
        self.max_new_tokens, self.min_new_tokens = int(self.max_new_tokens), int(self.min_new_tokens)
        self.seed = None if self.seed is None else int(self.seed)
        self.eos_token_id = None if self.eos_token_id is None else int(self.eos_token_id)
        self._check_sampling_overrides()

    def setting(self, name: str, config=None):
        """This request's gamma, eta, temperature, top_k, top_p or eos_exempt: its own if set, else the
        config's (a SteerConfig), else the neutral value (no contrast, no negatives, plain
        sampling)."""
        value = getattr(self, name)
        if value is not None:
            return value
        return getattr(config, name) if config is not None else NEUTRAL_SETTINGS[name]

    def _check_sampling_overrides(self) -> None:
        """The overrides that are set, each checked as SteerConfig checks it (the others stand in
        with values that always pass)."""
        if self.gamma is not None or self.eta is not None:
            check_steer_coefficients(0.0 if self.gamma is None else self.gamma, 0.0 if self.eta is None else self.eta)
        if self.top_k is not None and _is_int(self.top_k):
            self.top_k = int(self.top_k)
        check_sampling_parameters(
            1.0 if self.temperature is None else self.temperature,
            0 if self.top_k is None else self.top_k,
            1.0 if self.top_p is None else self.top_p,
        )


@dataclass(frozen=True)
class Sampling:
    """What a group's rows need from the sampler beyond their weights: the filters, which every
    row of one sampler call shares (the engine calls it once per distinct value)."""

    temperature: float
    top_k: int
    top_p: float


class StreamRole(enum.Enum):
    PROMPT = "prompt"
    BASE = "base"
    NEGATIVE = "negative"
    CHUNK = "chunk"  # one chunk of a joined negative context, computed alone (steer.engine.chunks)


@dataclass(eq=False)  # compared by identity: a scheduler finds *this* stream, not an equal one
class Stream:
    role: StreamRole
    namespace: str  # whose KV: "expert" or "base"
    tokens: list[int]  # the context, then the group's generated tokens (appended in place)
    context_length: int
    table: BlockTable | None = None  # set while the group holds KV blocks
    num_computed: int = 0  # leading tokens whose KV is in the table's blocks
    # The context's leading chunks, each computed alone and copied in (Request.negative_chunks).
    chunks: tuple[tuple[int, ...], ...] = ()
    # While a step assembles this stream: (offset in this stream, the chunk's own stream, in a
    # ``whole`` table at positions 0..) per chunk it copies, and the positions [start, end) of
    # this stream the step copies from them.
    chunk_streams: list[tuple[int, Stream]] = field(default_factory=list)
    copy_range: tuple[int, int] = (0, 0)

    @property
    def num_new(self) -> int:
        """Tokens the next forward computes: the uncached rest at a prefill, 1 at a decode."""
        return len(self.tokens) - self.num_computed

    @property
    def cache_namespace(self) -> str:
        """What the prefix cache files this stream's blocks under: its model's namespace, or for a
        stream joined from chunks, one of its own per chunk layout (its KV differs from the exact
        stream's for the same tokens, and with the chunks' boundaries)."""
        if not self.chunks:
            return self.namespace
        return f"{self.namespace}:joined:" + ",".join(str(len(c)) for c in self.chunks)

    @property
    def chunks_length(self) -> int:
        return sum(len(c) for c in self.chunks)


class GroupStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class SampleGroup:
    """The streams of one request, the tokens it generated, and what it samples with.

    group_id: the engine's sequence number of the request (the noise's row key when the request
        has no seed of its own); request_id: the caller's name for it.
    weights: the K stream weights, from ``steer.config.stream_weights``, computed once here.
    exempt_token: the token whose probability the contrast decides (its EOS, with eos_exempt), or -1.
    """

    group_id: int
    request: Request
    streams: list[Stream]
    weights: list[float]
    sampling: Sampling
    seed: int | None = None
    request_id: object = None
    generated: list[int] = field(default_factory=list)
    status: GroupStatus = GroupStatus.WAITING
    finish_reason: str | None = None
    num_emitted: int = 0  # generated tokens already reported by a RequestOutput
    exempt_token: int = -1

    @classmethod
    def for_request(
        cls, group_id: int, request: Request, config=None, *, rescale: bool = False, request_id=None, seed=None
    ) -> SampleGroup:
        """The group of a request, its None fields taken from ``config`` (a SteerConfig)."""
        gamma, eta = request.setting("gamma", config), request.setting("eta", config)
        streams = [Stream(StreamRole.PROMPT, "expert", list(request.prompt_ids), len(request.prompt_ids))]
        if eta != 0:
            if not request.negative_ids:
                raise ValueError(f"request {group_id} has no negative_ids but eta > 0 needs at least one")
            chunks = request.negative_chunks or [[] for _ in request.negative_ids]
            streams += [Stream(StreamRole.NEGATIVE, "expert", list(n), len(n), chunks=tuple(map(tuple, c)))
                        for n, c in zip(request.negative_ids, chunks)]  # fmt: skip
        negatives = len(streams) - 1
        if gamma != 0:
            streams.append(Stream(StreamRole.BASE, "base", list(request.prompt_ids), len(request.prompt_ids)))
        weights = stream_weights(gamma, eta, negatives, rescale=rescale)
        weights = [weights[0], *weights[2:]] + ([weights[1]] if gamma != 0 else [])  # the streams' order
        sampling = Sampling(
            request.setting("temperature", config), request.setting("top_k", config), request.setting("top_p", config)
        )
        exempts = negatives > 0 and request.setting("eos_exempt", config) and request.eos_token_id is not None
        return cls(group_id, request, streams, weights, sampling, request.seed if seed is None else seed, request_id,
                   exempt_token=request.eos_token_id if exempts else -1)  # fmt: skip

    @property
    def num_streams(self) -> int:
        return len(self.streams)

    @property
    def num_expert_streams(self) -> int:
        return sum(s.namespace == "expert" for s in self.streams)

    @property
    def has_base(self) -> bool:
        return self.streams[-1].role is StreamRole.BASE

    def longest_context_at_end(self) -> list[int]:
        """Per stream, the most tokens it can ever hold (context + max_new_tokens)."""
        return [s.context_length + self.request.max_new_tokens for s in self.streams]

    def append(self, token: int) -> None:
        """Record a sampled token in every stream; finish at EOS (once min_new_tokens are out) or
        at the length limit."""
        self.generated.append(token)
        for stream in self.streams:
            stream.tokens.append(token)
        request = self.request
        if request.eos_token_id is not None and token == request.eos_token_id and len(self.generated) >= request.min_new_tokens:
            self.status, self.finish_reason = GroupStatus.FINISHED, "eos"
        elif len(self.generated) >= request.max_new_tokens:
            self.status, self.finish_reason = GroupStatus.FINISHED, "length"
