"""STEER as a drop-in Hugging Face ``LogitsProcessor``.

    proc = SteerLogitsProcessor(expert, base, negative_input_ids, gamma=0.2, eta=0.2)
    expert.generate(**inputs, logits_processor=LogitsProcessorList([proc]), ...)

``generate`` runs the expert on the prompt and hands its next-token scores to the processor. The
processor runs the other streams itself, batched across rows, each with its own KV cache:

    base model   on the same (left-padded) prompt ids       -> lB
    expert model on each negative context + generated tokens -> lN_1 .. lN_M

and returns the STEER log-probabilities (1+gamma) lE - gamma lB - eta mean_i lN_i, normalised.
``generate`` applies its temperature / top-k / top-p warpers after custom processors, so they act
on the combined distribution, as in the paper.
"""

from __future__ import annotations

import math
import warnings
import weakref
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor

from steer.config import check_plausibility_alpha, check_steer_coefficients
from steer.hf.negatives import NegativePrompts
from steer.hf.streams import CachedStreams, left_pad
from steer.model_info import hf_module, shared_vocabulary_size
from steer.ops import combine, exempt_from_negatives


class _AttentionMaskRecorder:
    """Remembers the attention mask of the expert's latest forward inside ``generate``.

    A LogitsProcessor only receives input_ids; the prompt's left padding is known from the mask
    ``generate`` passes to the model, so a forward pre-hook records it. Our own expert forwards
    (the negative streams) are excluded while ``paused``.
    """

    def __init__(self, model) -> None:
        self.latest: torch.Tensor | None = None
        self._paused = False
        recorder = weakref.ref(self)

        def hook(module, args, kwargs):
            this = recorder()
            if this is not None and not this._paused:
                this.latest = kwargs.get("attention_mask")

        self._handle = hf_module(model).register_forward_pre_hook(hook, with_kwargs=True)
        weakref.finalize(self, self._handle.remove)

    @contextmanager
    def paused(self):
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    def mask_for(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The recorded 2-D mask if it belongs to these ids, else all ones (no padding)."""
        mask = self.latest
        if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape == input_ids.shape:
            return mask.to(input_ids.device)
        return torch.ones_like(input_ids)


@dataclass
class _Decoding:
    """The per-``generate`` state: the auxiliary streams, their layout, and what was seen so far."""

    base: CachedStreams | None
    negatives: CachedStreams | None
    negative_slots: torch.Tensor | None  # [B, M_max] index into the negative rows (+ one zero row)
    negative_owners: torch.Tensor | None  # [N] the batch row each negative row belongs to
    weights: torch.Tensor  # [B, K]
    seen_ids: torch.Tensor  # the input_ids of the latest call

    def continues(self, input_ids: torch.Tensor) -> bool:
        seen = self.seen_ids
        return (
            input_ids.shape[0] == seen.shape[0]
            and input_ids.shape[1] == seen.shape[1] + 1
            and torch.equal(input_ids[:, :-1], seen)
        )


class SteerLogitsProcessor(LogitsProcessor):
    """STEER decoding inside ``expert.generate``: contrast with ``base``, push away from negatives.

    Args:
        expert_model: the fine-tuned model; ``generate`` must be called on it (or on a model with
            the same weights), since its scores are the expert-on-prompt stream.
        base_model: the model the expert was fine-tuned from; same tokenizer.
        negative_input_ids: the negative prompts: one 1-D LongTensor shared by all rows, a 2-D
            LongTensor with one stream per row, or a list with one entry per batch row, each a 1-D
            LongTensor (one stream, the paper's "concat" mode) or a list of them (M streams,
            mean-aggregated). May be None when eta == 0.
        gamma, eta: the STEER coefficients (docs/design.md, section 1).
        negative_attention_mask: same structure as negative_input_ids; 0 marks padding to drop.
        plausibility_alpha: optional adaptive floor on the expert's distribution (0: off).
        vocab_size: the tokenizer size, needed only when expert and base LM heads are padded
            differently; ids at or beyond it are never generated.
        backend: which ``steer.combine`` backend to use.
        exempt_token_id: a token (the EOS) whose probability the contrast decides, not the
            negatives (``SteerConfig.eos_exempt``); None exempts nothing.

    The base and negative streams keep their own KV caches across steps. A new ``generate`` call
    (input_ids that do not continue the previous call's) starts them afresh.
    """

    def __init__(
        self,
        expert_model,
        base_model,
        negative_input_ids,
        *,
        gamma: float = 0.2,
        eta: float = 0.2,
        negative_attention_mask=None,
        plausibility_alpha: float = 0.0,
        vocab_size: int | None = None,
        backend: str = "auto",
        exempt_token_id: int | None = None,
    ) -> None:
        check_steer_coefficients(gamma, eta)
        check_plausibility_alpha(plausibility_alpha)
        self.expert_model = expert_model
        self.base_model = base_model
        self.gamma, self.eta = float(gamma), float(eta)
        self.plausibility_alpha = float(plausibility_alpha)
        self.backend = backend
        self.vocab_size = shared_vocabulary_size(expert_model, base_model, vocab_size)
        if exempt_token_id is not None and (isinstance(exempt_token_id, bool) or not isinstance(exempt_token_id, int)
                                            or not 0 <= exempt_token_id < self.vocab_size):  # fmt: skip
            raise ValueError(f"exempt_token_id must be None or a token id in [0, {self.vocab_size}), got {exempt_token_id!r}")
        self.exempt_token_id = exempt_token_id
        if negative_input_ids is None:
            if self.eta != 0:
                raise ValueError(f"eta={self.eta} needs negative_input_ids (pass eta=0 to use no negative prompts)")
            self.negatives = None
        else:
            embedding_rows = expert_model.get_input_embeddings().num_embeddings
            self.negatives = NegativePrompts.parse(negative_input_ids, negative_attention_mask, embedding_rows)
        for name, model in (("expert_model", expert_model), ("base_model", base_model)):
            if model.training:
                warnings.warn(f"{name} is in training mode (dropout on); call .eval() for exact STEER decoding", stacklevel=2)
        self._mask_recorder = _AttentionMaskRecorder(expert_model)
        self._decoding: _Decoding | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.gamma == 0 and self.eta == 0:
            return scores  # the formula is plain expert decoding: no other stream has any weight
        if self._decoding is not None and self._decoding.continues(input_ids):
            auxiliary = self._step(input_ids)
        else:
            auxiliary = self._start(input_ids)
        return self._combine(scores, auxiliary)

    # -- the auxiliary streams -------------------------------------------------------------------

    def _start(self, input_ids: torch.Tensor) -> list[torch.Tensor]:
        """Prefill the base on the prompt and the expert on every negative context."""
        batch = input_ids.shape[0]
        base = CachedStreams(self.base_model) if self.gamma != 0 else None
        negatives, slots, owners, per_row = None, None, None, None
        logits = []
        if base is not None:
            logits.append(base.prefill(input_ids, self._mask_recorder.mask_for(input_ids)))
        if self.eta != 0:
            per_row = self.negatives.for_batch(batch)
            negatives = CachedStreams(self.expert_model)
            slots, owners = self._negative_layout(per_row)
            ids, mask = left_pad([stream for streams in per_row for stream in streams])
            with self._mask_recorder.paused():
                logits.append(negatives.prefill(ids, mask))
        self._decoding = _Decoding(base, negatives, slots, owners, self._weights(batch, per_row), input_ids)
        return logits

    def _step(self, input_ids: torch.Tensor) -> list[torch.Tensor]:
        """Append the token ``generate`` just chose to every stream of its row."""
        decoding = self._decoding
        new_tokens = input_ids[:, -1]
        logits = []
        if decoding.base is not None:
            logits.append(decoding.base.extend(new_tokens))
        if decoding.negatives is not None:
            owned_tokens = new_tokens[decoding.negative_owners.to(new_tokens.device)]
            with self._mask_recorder.paused():
                logits.append(decoding.negatives.extend(owned_tokens))
        decoding.seen_ids = input_ids
        return logits

    @staticmethod
    def _negative_layout(per_row: list[list[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(slots [B, M_max], owners [N]): where row r's negative streams sit among the N stacked
        negative rows (unused slots point at N, a zero row), and the batch row owning each one."""
        total = sum(len(streams) for streams in per_row)
        widest = max(len(streams) for streams in per_row)
        slots = torch.full((len(per_row), widest), total, dtype=torch.long)
        owners = torch.empty(total, dtype=torch.long)
        next_row = 0
        for row, streams in enumerate(per_row):
            slots[row, : len(streams)] = torch.arange(next_row, next_row + len(streams))
            owners[next_row : next_row + len(streams)] = row
            next_row += len(streams)
        return slots, owners

    def _weights(self, batch: int, per_row: list[list[torch.Tensor]] | None) -> torch.Tensor:
        """[B, K] weights: 1+gamma for the expert, -gamma for the base, -eta/M_r for row r's
        negative streams and 0 for the slots a row with fewer streams does not use."""
        rows = []
        for row in range(batch):
            weights = [1.0 + self.gamma]
            if self.gamma != 0:
                weights.append(-self.gamma)
            if per_row is not None:
                count, widest = len(per_row[row]), max(len(s) for s in per_row)
                weights += [-self.eta / count] * count + [0.0] * (widest - count)
            rows.append(weights)
        return torch.tensor(rows, dtype=torch.float32)

    # -- the combination -------------------------------------------------------------------------

    def _combine(self, scores: torch.Tensor, auxiliary: list[torch.Tensor]) -> torch.Tensor:
        decoding, vocab = self._decoding, self.vocab_size
        device = scores.device
        streams = [scores[:, :vocab].float().unsqueeze(1)]
        if decoding.base is not None:
            streams.append(auxiliary[0][:, :vocab].to(device).unsqueeze(1))
        if decoding.negatives is not None:
            negative_logits = auxiliary[-1][:, :vocab].to(device)
            with_zero_row = torch.cat([negative_logits, negative_logits.new_zeros(1, vocab)])
            streams.append(with_zero_row[decoding.negative_slots.to(device)])
        stacked, weights = torch.cat(streams, dim=1), decoding.weights.to(device)
        if self.exempt_token_id is not None and decoding.negatives is not None:
            first_negative = 1 + (decoding.base is not None)
            exempt_from_negatives(stacked, weights, self.exempt_token_id, range(first_negative, stacked.shape[1]), in_place=True)
        combined = combine(
            stacked,
            weights,
            normalize=True,
            backend=self.backend,
            plausibility_alpha=self.plausibility_alpha,
        )
        return torch.nn.functional.pad(combined, (0, scores.shape[-1] - vocab), value=-math.inf)
