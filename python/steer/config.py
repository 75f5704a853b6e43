"""STEER hyperparameters: one validated object, and the stream weights they imply.

A decode step combines K = 2 + M streams of logits for one sample:

    stream 0      expert on the task prompt          weight  1 + gamma
    stream 1      base on the task prompt            weight  -gamma
    stream 2..K-1 expert on negative context i       weight  -eta / M each

so the combined score is (1+gamma) lE - gamma lB - eta * mean_i lN_i (docs/design.md, section 1).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

NEGATIVE_MODES = ("concat", "separate")
MAX_SEED = 2**62
# The scores are float32: (1 + gamma) times a log-probability (a real model's reach tens of nats
# below its best token), divided by the temperature. Far enough out they overflow to +-inf, and the
# sampler then draws garbage (inf - inf is NaN) or fails the whole batch's step (gamma 1e38 or a
# temperature of 1e-45 did, before these bounds). The bounds sit orders of magnitude inside that
# and outside any setting one samples with.
MAX_GAMMA = 1e4
MIN_TEMPERATURE = 1e-5  # between 0 and this, use 0: greedy decoding is what such a temperature means
MAX_TEMPERATURE = 1e4  # beyond it the draw is uniform over the kept tokens already


def _check_finite_at_least(name: str, value: float, low: float, high: float = math.inf, why: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < low:
        raise ValueError(f"{name} must be a finite number >= {low}, got {value!r}")
    if value > high:
        raise ValueError(f"{name} must be <= {high:g}, got {value!r}: {why}")


def check_steer_coefficients(gamma: float, eta: float, *, rescale: bool = False) -> None:
    """Raise ValueError unless gamma and eta are usable STEER coefficients."""
    _check_finite_at_least("gamma", gamma, 0.0, MAX_GAMMA, "a sharper contrast than any use of it, and far beyond it the float32 scores overflow")
    _check_finite_at_least("eta", eta, 0.0)
    if eta > 1.0:
        raise ValueError(
            f"eta must be <= 1, got {eta!r}: the stream weights sum to 1 - eta, so eta > 1 makes that sum "
            "negative and inverts the expert's distribution (its least likely tokens become the most likely)"
        )
    if rescale and eta >= 1.0:
        raise ValueError(f"rescale=True divides by (1 - eta), so eta must be < 1, got {eta!r}")
    if eta == 1.0:
        warnings.warn(
            "eta = 1: the stream weights sum to 0, so the scores are a pure contrast (the expert's own "
            "distribution cancels out; only the differences from the base and the negatives are sampled from)",
            UserWarning,
            stacklevel=3,
        )


def check_sampling_parameters(temperature: float, top_k: int, top_p: float) -> None:
    """Raise ValueError unless temperature, top_k and top_p describe a valid sampler."""
    _check_finite_at_least("temperature", temperature, 0.0, MAX_TEMPERATURE, "beyond it the draw is uniform over the kept tokens already")
    if 0.0 < temperature < MIN_TEMPERATURE:
        raise ValueError(
            f"temperature {temperature!r} is below {MIN_TEMPERATURE:g}: that is greedy decoding in all but name, and "
            "near 0 the float32 scores divided by it overflow; use 0 for greedy decoding"
        )
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0 (0 turns it off), got {top_k!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not (0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1] (1 turns it off), got {top_p!r}")


def check_plausibility_alpha(alpha: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (0.0 <= alpha < 1.0):
        raise ValueError(f"plausibility_alpha must be in [0, 1) (0 turns it off), got {alpha!r}")


def steer_weights(
    gamma: float, eta: float, num_negative_streams: int, *, rescale: bool = False
) -> torch.Tensor:
    """The K = 2 + M stream weights ``[1 + gamma, -gamma, -eta/M, ..., -eta/M]`` as float32.

    The weights sum to 1 - eta, so eta also flattens the distribution like a temperature would.
    ``rescale=True`` divides every weight by (1 - eta) to undo that (off by default, not in the paper).
    """
    check_steer_coefficients(gamma, eta, rescale=rescale)
    if isinstance(num_negative_streams, bool) or not isinstance(num_negative_streams, int):
        raise ValueError(f"num_negative_streams must be an int, got {num_negative_streams!r}")
    if num_negative_streams < 0:
        raise ValueError(f"num_negative_streams must be >= 0, got {num_negative_streams}")
    if num_negative_streams == 0 and eta != 0:
        raise ValueError(f"eta={eta} needs at least one negative stream, got num_negative_streams=0")
    return torch.tensor(stream_weights(gamma, eta, num_negative_streams, rescale=rescale), dtype=torch.float32)


def stream_weights(gamma: float, eta: float, num_negative_streams: int, *, rescale: bool = False) -> list[float]:
    """``steer_weights`` as Python floats, unchecked: what the engine computes once per sample
    group (its coefficients were checked when the request was made)."""
    per_stream = -eta / num_negative_streams if num_negative_streams else 0.0
    weights = [1.0 + gamma, -gamma] + [per_stream] * num_negative_streams
    scale = 1.0 / (1.0 - eta) if rescale else 1.0
    return [w * scale for w in weights]


@dataclass(frozen=True)
class SteerConfig:
    """Every STEER decoding hyperparameter, validated on construction.

    gamma: weight of the expert-vs-base contrast (paper: 0.2; swept over 0..1).
    eta: weight of the negative prompts (paper: 0.2 or 0.6; swept over 0..1).
    num_negatives: N, examples drawn from the pool per sample (paper: 5 or 10).
    negative_mode: "concat" joins the N examples into one negative stream (the paper's code);
        "separate" gives each its own stream and averages their log-probabilities.
    top_k, top_p, temperature: the sampler applied to the combined distribution
        (paper: top_k=10, T=1). temperature=0 is greedy decoding.
    plausibility_alpha: optional adaptive floor from Contrastive Decoding; keeps only tokens with
        lE(v) >= log(alpha) + max lE. 0 turns it off (the paper does not use it).
    rescale: divide the weights by (1 - eta) so the combined distribution is not flattened.
    share_negatives: K consecutive samples use one draw of negatives (1: a draw per sample, the
        paper's), so their negative contexts are one cached prefix, prefilled once: the formula
        is unchanged, the draw policy is not (fewer distinct negative sets per run).
    eos_exempt: the EOS token gets the probability the contrast (expert vs base) gives it, the
        other tokens share the rest in STEER's proportions (the negative contexts predict the end
        of an example too, so at eta 0.6 many samples would never end; not in the paper). Needs
        the EOS token id where sampling happens (steer.ops.exempt).
    per_example_kv: in "concat" mode, each pool example's KV is computed once, alone, and copied
        into every joined negative context that draws it, its keys re-rotated to its offset there
        (steer.engine.chunks): a draw then costs a copy instead of a prefill, without sharing
        draws. An approximation: no example attends to the ones before it in the joined context
        (the generated tokens still attend to all of them). Needs rotary positions (not GPT-2's);
        docs/design.md says how close it measured. Off by default (the paper's exact context).
        It applies to the negatives the engine draws itself (``SteerEngine.run``, steer
        generate); a request of the step API says its own chunks (``Request.negative_chunks``).
    max_new_tokens: generation length limit per sample.
    seed: base seed for reproducible sampling (None: nondeterministic).
    """

    gamma: float = 0.2
    eta: float = 0.2
    num_negatives: int = 5
    negative_mode: str = "concat"
    top_k: int = 10
    top_p: float = 1.0
    temperature: float = 1.0
    plausibility_alpha: float = 0.0
    rescale: bool = False
    share_negatives: int = 1
    eos_exempt: bool = False
    per_example_kv: bool = False
    max_new_tokens: int = 64
    seed: int | None = None

    def __post_init__(self) -> None:
        check_steer_coefficients(self.gamma, self.eta, rescale=self.rescale)
        check_sampling_parameters(self.temperature, self.top_k, self.top_p)
        check_plausibility_alpha(self.plausibility_alpha)
        if isinstance(self.num_negatives, bool) or not isinstance(self.num_negatives, int) or self.num_negatives < 0:
            raise ValueError(f"num_negatives must be an int >= 0, got {self.num_negatives!r}")
        if self.num_negatives == 0 and self.eta != 0:
            raise ValueError(f"num_negatives must be >= 1 when eta > 0 (eta={self.eta} weighs the negative prompts), got 0")
        if self.negative_mode not in NEGATIVE_MODES:
            raise ValueError(f"negative_mode must be one of {NEGATIVE_MODES}, got {self.negative_mode!r}")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < MAX_SEED):
            raise ValueError(f"seed must be None or an int in [0, 2^62), got {self.seed!r}")  # room for per-sample offsets below 2^63
        if not isinstance(self.rescale, bool):
            raise ValueError(f"rescale must be a bool, got {self.rescale!r}")
        if isinstance(self.share_negatives, bool) or not isinstance(self.share_negatives, int) or self.share_negatives < 1:
            raise ValueError(f"share_negatives must be an int >= 1, got {self.share_negatives!r}")
        if not isinstance(self.eos_exempt, bool):
            raise ValueError(f"eos_exempt must be a bool, got {self.eos_exempt!r}")
        if not isinstance(self.per_example_kv, bool):
            raise ValueError(f"per_example_kv must be a bool, got {self.per_example_kv!r}")
        if self.per_example_kv and self.negative_mode != "concat":
            raise ValueError(
                f"per_example_kv applies to negative_mode 'concat' (a joined context assembled from each example's KV); "
                f"negative_mode {self.negative_mode!r} already computes each example's KV once, in its own stream"
            )

    @property
    def num_negative_streams(self) -> int:
        """M: one stream in "concat" mode, one per negative example in "separate" mode."""
        if self.num_negatives == 0:
            return 0
        return 1 if self.negative_mode == "concat" else self.num_negatives

    def weights(self) -> torch.Tensor:
        """The K stream weights this configuration implies."""
        return steer_weights(self.gamma, self.eta, self.num_negative_streams, rescale=self.rescale)
