"""The drop-in path of ``steer generate``: Hugging Face ``generate`` with ``SteerLogitsProcessor``,
for every causal LM whose architecture the engine has no forward for.

It yields the same ``Result`` records as ``SteerEngine.run`` and samples the same way: each token
is drawn by ``steer.sample`` from the STEER distribution with the counter-based noise keyed by
(the sample's seed, its decode step, the token), so a sample's tokens depend on its seed, not on
the batch it ran in, and a resumed run continues as the engine's does. What differs is the
schedule: samples run in batches of ``batch_size``, each batch drawing its negatives from the
pool as it stands when the batch starts (the engine starts a sample as soon as a row is free).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from steer.config import SteerConfig
from steer.engine.engine import Result
from steer.engine.pool import NegativePool
from steer.hf.adapters_off import AdaptersOff
from steer.hf.processor import SteerLogitsProcessor
from steer.model_info import hf_module
from steer.ops import sample


class _CounterBasedDraw(LogitsProcessor):
    """Turns the STEER log-probabilities into a one-hot of the token ``steer.sample`` draws, so that
    ``generate``'s greedy step takes exactly that token."""

    def __init__(self, config: SteerConfig, seeds: list[int], prompt_length: int, vocab_size: int, backend: str) -> None:
        self.config, self.prompt_length, self.vocab_size, self.backend = config, prompt_length, vocab_size, backend
        self.seeds = torch.tensor(seeds)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows, device = scores.shape[0], scores.device
        tokens = sample(
            scores[:, None, : self.vocab_size].float(), torch.ones(rows, 1, device=device),
            temperature=self.config.temperature, top_k=self.config.top_k, top_p=self.config.top_p,
            seed=self.seeds.to(device), row_keys=torch.zeros(rows, dtype=torch.long, device=device),
            step=torch.full((rows,), input_ids.shape[1] - self.prompt_length, device=device), backend=self.backend,
        )
        chosen = torch.full_like(scores, -torch.inf)
        chosen[torch.arange(rows, device=device), tokens.to(device)] = 0.0
        return chosen


class DropInGenerator:
    """``SteerEngine.run`` for any Hugging Face causal LM, through ``generate``.

    Args as for ``SteerEngine``; ``base`` None with gamma > 0 needs a PEFT LoRA expert, whose
    adapters are switched off for the base's forwards (one set of weights, two forwards).
    """

    def __init__(self, expert, base=None, *, config: SteerConfig, device=None, dtype=None, batch_size: int = 16,
                 vocab_size: int | None = None, backend: str = "auto") -> None:
        if config.per_example_kv:  # assembling contexts from cached KV needs the engine's paged pool
            raise ValueError("per_example_kv runs on the steer engine; the drop-in path computes every negative context exactly")
        for model in (expert, base):
            if model is not None and (device is not None or dtype is not None):
                model.to(device=device, dtype=dtype)
        if base is None:
            base = AdaptersOff(expert) if config.gamma != 0 else expert  # with gamma 0 the base has no weight
        self.expert, self.base, self.config = expert, base, config
        self.batch_size, self.vocab_size, self.backend = batch_size, vocab_size, backend
        self.device = next(expert.parameters()).device

    def run(self, prompt_ids: list[int], n: int, pool: NegativePool, *, eos_token_id: int | None = None,
            seed_offset: int = 0) -> Iterator[Result]:
        config = self.config
        first_seed = (config.seed if config.seed is not None else int(torch.randint(0, 2**62, ()))) + seed_offset
        started, shared = 0, []
        while started < n:
            size = min(self.batch_size, n - started)
            seeds = [first_seed + started + row for row in range(size)]
            drawn = []
            for row in range(size):  # a share group's samples (by sample number) take its first one's draw
                if (started + row) % config.share_negatives == 0:
                    shared = pool.draw(config.num_negatives) if config.eta != 0 else []
                drawn.append(shared)
            negatives = [pool.negative_streams(d, config.negative_mode) if d else [] for d in drawn]
            for row, tokens in enumerate(self._generate(prompt_ids, negatives, seeds, eos_token_id)):
                reason = "eos" if eos_token_id is not None and tokens[-1] == eos_token_id else "length"
                pool.add(tokens[:-1] if reason == "eos" else tokens)
                yield Result(tokens, reason, tuple(drawn[row]), seeds[row])
            started += size

    def _generate(self, prompt_ids, negatives, seeds, eos_token_id) -> list[list[int]]:
        config, rows = self.config, len(seeds)
        steer = SteerLogitsProcessor(
            self.expert, self.base, [[torch.tensor(s) for s in streams] for streams in negatives] if config.eta != 0 else None,
            gamma=config.gamma, eta=config.eta, plausibility_alpha=config.plausibility_alpha, vocab_size=self.vocab_size,
            backend=self.backend, exempt_token_id=eos_token_id if config.eos_exempt else None,
        )
        draw = _CounterBasedDraw(config, seeds, len(prompt_ids), steer.vocab_size, self.backend)
        pad = eos_token_id if eos_token_id is not None else 0
        module = hf_module(self.expert)
        # A fresh generation config: none of the model's own (repetition penalty, bad words, ...)
        # may change STEER's distribution.
        module.generation_config = GenerationConfig(eos_token_id=eos_token_id, pad_token_id=pad)
        input_ids = torch.tensor([prompt_ids] * rows, device=self.device)
        with torch.no_grad():
            output = self.expert.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False, num_beams=1,
                max_new_tokens=config.max_new_tokens, logits_processor=LogitsProcessorList([steer, draw]),
            )
        return [self._trim(row[len(prompt_ids) :].tolist(), eos_token_id) for row in output]

    @staticmethod
    def _trim(tokens: list[int], eos_token_id: int | None) -> list[int]:
        """The sample's tokens up to and including its EOS (generate pads the rows that ended early)."""
        if eos_token_id is not None and eos_token_id in tokens:
            return tokens[: tokens.index(eos_token_id) + 1]
        return tokens
