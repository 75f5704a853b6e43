"""The OpenAI-compatible request bodies of ``steer serve``, and its error responses.

Every field a client may send is declared here with its type and range, so that a bad value is
an HTTP 400 naming the field before anything reaches the engine loop. Fields of the OpenAI API
that steer does not implement are accepted only at their no-op values (a client library that
always sends ``"logprobs": null`` still works); any other value, and any field the API does not
have, is a 400 that says so. STEER's own fields (``gamma``, ``eta``, ``negatives``,
``num_negatives``, ``negative_mode``, ``pool``, ``eos_exempt``, ``per_example_kv``) arrive as extra body fields, which the openai
client sends with ``extra_body``.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator, model_validator

from steer.config import MAX_GAMMA, MAX_TEMPERATURE, MIN_TEMPERATURE
from steer.text_checks import lone_surrogate_problem

MAX_STOP_STRINGS = 4  # as OpenAI
MAX_NEGATIVES = 64
POOL_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
SEED_LIMIT = 2**63


class APIError(Exception):
    """An error answered as OpenAI does: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                             413: "invalid_request_error", 429: "rate_limit_error",
                             503: "service_unavailable"}.get(status, "server_error")  # fmt: skip

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def _union_member(part) -> bool:
    """Whether a pydantic error location part names the member of a union, not a field or an index
    ("str", "list[int]", "function-after[_valid_unicode(), str]")."""
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool", "dict", "list"))


def validation_error(errors: list[dict]) -> APIError:
    """The 400 of a body that pydantic refused: its most telling problem, naming the field."""
    # our validators' messages say most; a union (prompt: str | list[str] | list[int]) lists one
    # error per member it tried, and the member that the value's type selects raised the value_error
    first = next((e for e in errors if e.get("type") == "value_error"), errors[0])
    location = [str(part) for part in first.get("loc", ()) if part != "body" and not _union_member(part)]
    param = ".".join(location) or None
    kind = first.get("type", "")
    if kind == "extra_forbidden":
        message = f"{param}: unknown field (not an OpenAI completions field nor one of steer's)"
    elif kind == "missing":
        message = f"{param}: this field is required"
    elif kind == "json_invalid":
        message = "the body is not valid JSON"
    else:
        text = str(first.get("msg", "invalid value")).removeprefix("Value error, ")  # pydantic's wrapping of our ValueErrors
        message = f"{param}: {text}" if param else text
    return APIError(400, message, param=param, code="invalid_value")


def _valid_unicode(value: str) -> str:
    """JSON may escape half a surrogate pair, which no tokenizer can encode: refuse it here, naming
    the field, rather than let the tokenizer raise mid-request."""
    problem = lone_surrogate_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


# Every string a client sends: a str (no coercion) of valid Unicode.
Text = Annotated[StrictStr, AfterValidator(_valid_unicode)]


def _finite(name: str, value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number")
    return value


Probability = Annotated[float, Field(gt=0.0, le=1.0)]


class SamplingFields(BaseModel):
    """The fields completions and chat completions share: sampling, STEER, and the no-op ones."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    model: Text | None = None
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=MAX_TEMPERATURE)
    top_p: Probability | None = None
    top_k: StrictInt | None = Field(default=None, ge=-1)  # -1 (vLLM's) or 0: off
    seed: StrictInt | None = Field(default=None, ge=0, lt=SEED_LIMIT)
    n: StrictInt = Field(default=1, ge=1)
    stop: Text | list[Text] | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    ignore_eos: StrictBool = False
    user: Text | None = None  # accepted and ignored, as OpenAI logs it
    # OpenAI fields steer does not implement: accepted at their no-op values only.
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict | None = None
    logprobs: object = None
    top_logprobs: StrictInt | None = None
    response_format: dict | None = None
    # STEER
    gamma: float | None = Field(default=None, ge=0.0, le=MAX_GAMMA)
    eta: float | None = Field(default=None, ge=0.0, le=1.0)
    negatives: list[Text] | None = None
    num_negatives: StrictInt | None = Field(default=None, ge=0, le=MAX_NEGATIVES)
    negative_mode: Literal["concat", "separate"] | None = None
    pool: Text | None = None
    eos_exempt: StrictBool | None = None
    per_example_kv: StrictBool | None = None

    @field_validator("temperature", "gamma", "eta", "presence_penalty", "frequency_penalty")
    @classmethod
    def _finite_numbers(cls, value, info):
        return _finite(info.field_name, value)

    @field_validator("temperature")
    @classmethod
    def _not_nearly_zero(cls, value):
        if value is not None and 0.0 < value < MIN_TEMPERATURE:
            raise ValueError(f"a temperature in (0, {MIN_TEMPERATURE:g}) is greedy decoding in all but name and overflows the float32 scores: use 0")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return stops

    @field_validator("negatives")
    @classmethod
    def _negatives(cls, value):
        if value is not None:
            if not value:
                raise ValueError("negatives must hold at least one example (leave it out to draw from the pool)")
            if len(value) > MAX_NEGATIVES:
                raise ValueError(f"at most {MAX_NEGATIVES} negatives, got {len(value)}")
            if any(not text.strip() for text in value):
                raise ValueError("every negative example must be a non-empty string")
        return value

    @field_validator("pool")
    @classmethod
    def _pool_name(cls, value):
        if value is not None and not POOL_NAME.match(value):
            raise ValueError("a pool name is 1-64 letters, digits or _ . : -")
        return value

    @model_validator(mode="after")
    def _unimplemented_at_no_op_values(self):
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0.0):
                raise ValueError(f"{name} is not supported by steer serve (only 0)")
        if self.logit_bias:
            raise ValueError("logit_bias is not supported by steer serve")
        if self.logprobs not in (None, False, 0) or self.top_logprobs not in (None, 0):
            raise ValueError("logprobs are not supported by steer serve")
        if self.response_format not in (None, {"type": "text"}):
            raise ValueError("response_format: steer serve returns text only ({'type': 'text'})")
        if self.negatives is not None and self.pool is not None:
            raise ValueError("give negatives or pool, not both: the negatives of a request come from one of them")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options needs stream: true")
        return self


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: StrictBool = False


class CompletionRequest(SamplingFields):
    """POST /v1/completions: ``prompt`` is a string, a list of strings (one choice set each), or
    a list of token ids."""

    prompt: Text | list[Text] | list[StrictInt]
    echo: StrictBool = False
    best_of: StrictInt | None = None
    suffix: Text | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("prompt must not be an empty list")
        return value

    @model_validator(mode="after")
    def _completion_no_ops(self):
        if self.echo:
            raise ValueError("echo is not supported by steer serve")
        if self.best_of not in (None, self.n):
            raise ValueError("best_of is not supported by steer serve (only equal to n)")
        if self.suffix:
            raise ValueError("suffix is not supported by steer serve")
        return self

    def prompts(self) -> list[str | list[int]]:
        """The prompts of this request: one string, several, or one list of token ids."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if all(isinstance(p, str) for p in self.prompt):
            return list(self.prompt)
        return [list(self.prompt)]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Text | list[dict]
    name: Text | None = None

    @field_validator("content")
    @classmethod
    def _text_parts(cls, value):
        if isinstance(value, list):  # [{"type": "text", "text": ...}, ...]: text parts only
            texts = []
            for part in value:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError("content parts must be {'type': 'text', 'text': ...}: steer serves text models")
                texts.append(_valid_unicode(part["text"]))
            return "".join(texts)
        return value


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_length_limit(self):
        if self.max_tokens is not None and self.max_completion_tokens is not None and self.max_tokens != self.max_completion_tokens:
            raise ValueError("give max_tokens or max_completion_tokens, not two different limits")
        return self

    def length_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


SamplingFields.model_rebuild()
CompletionRequest.model_rebuild()
ChatCompletionRequest.model_rebuild()
