"""SteerEngine on CUDA, token for token against the STEER formula: greedy decoding of tiny random
models (tests/tiny_models.py) in float32 on the GPU, the engine's own kernels (Triton paged
attention, the fused sampler), against ``steer_generate_uncached`` (full uncached forwards, one
sample at a time) of the same models in float64 on the CPU.

    python benchmarks/gpu/engine_exactness.py [--jsonl FILE] [--budget-s S] [--dry-run]

No test of tests/ runs the engine on a GPU (tests/engine/* run it on the CPU in float64), so this
is the check that the engine's CUDA path decodes what the formula says: mixed batches of prompts
with 0-3 negatives of different lengths, gamma / eta with and without base or negative streams,
GPT-2, Llama, Mistral (sliding window) and Qwen2 with a windowed layer, LoRA experts (PEFT) in one
forward, both samplers (cuda and triton) by name, and a batch of 32 random requests.

float32 against float64 may part at a near tie: at the first differing token the script recomputes
the formula's combined scores on the engine's own prefix, and a gap between the formula's best
token and the engine's below TIE (1e-4, float32 logits of these models are good to ~1e-6) counts as
a tie (reported, not a failure); anything else is a MISMATCH. Dry run: the same on the CPU, the
Triton kernels under the interpreter (attention_backend="triton", backend="triton"), two cases.
"""

from __future__ import annotations

import copy
import random
import time

import common
import torch

TIE = 1e-4
PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [3, 4, 5, 6, 7, 8, 12, 13, 14], [40]]
NEGATIVES = [[[20, 21, 22, 23]], [[30, 31], [40, 41, 42, 43], [44]], [[50]], [[60, 61], [62]]]


def random_batch(count, vocab, seed):
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        prompt = [rng.randrange(3, vocab) for _ in range(rng.randint(1, 40))]
        negatives = [[rng.randrange(3, vocab) for _ in range(rng.randint(1, 30))] for _ in range(rng.randint(1, 2))]
        rows.append((prompt, negatives))
    return rows


def cases(dry_run: bool, has_cuda_sampler: bool):
    """(label, arch, lora, gamma, eta, rows, new tokens, eos, engine options)."""
    from tiny_models import EOS, VOCAB

    mixed = [(p, n) for p, n in zip(PROMPTS, NEGATIVES)]
    if dry_run:
        return [
            ("llama g=0.5 e=0.6", "llama", False, 0.5, 0.6, mixed[:2], 3, EOS, {}),
            ("llama LoRA g=0.6 e=0.5", "llama", True, 0.6, 0.5, mixed[1:2], 3, EOS, {}),
        ]
    out = []
    for arch in ("gpt2", "llama", "mistral", "qwen2_windowed"):
        for gamma, eta in ((0.5, 0.6), (0.0, 0.8), (0.7, 0.0)):
            out.append((f"{arch} g={gamma} e={eta}", arch, False, gamma, eta, mixed, 10, EOS, {"block_size": 4}))
    for arch in ("llama", "gpt2", "qwen2", "mistral"):
        out.append((f"{arch} LoRA g=0.6 e=0.5", arch, True, 0.6, 0.5, mixed[:3], 8, EOS, {"block_size": 4}))
    for backend in (("cuda", "triton") if has_cuda_sampler else ("triton",)):
        out.append((f"llama g=0.5 e=0.6 sampler={backend}", "llama", False, 0.5, 0.6, mixed, 10, EOS,
                    {"block_size": 4, "backend": backend}))
    out.append(("llama 32 random requests, block 16", "llama", False, 0.3, 0.3, random_batch(32, VOCAB, 7), 16, None,
                {"block_size": 16}))
    out.append(("mistral LoRA 32 random requests, block 16", "mistral", True, 0.3, 0.3, random_batch(32, VOCAB, 8), 16,
                None, {"block_size": 16}))
    return out


@torch.no_grad()
def formula_scores(expert, base, prompt, negatives, generated, gamma, eta):
    """The formula's combined log-scores [V] (float64, CPU) after ``generated``."""
    from steer.config import steer_weights

    def last(model, tokens):
        return model(input_ids=torch.tensor([tokens]), use_cache=False).logits[0, -1].double()

    streams = [last(expert, prompt + generated), last(base, prompt + generated)]
    if eta != 0:
        streams += [last(expert, n + generated) for n in negatives]
    vocab = min(s.shape[0] for s in streams)
    logprobs = torch.log_softmax(torch.stack([s[:vocab] for s in streams]), dim=-1)
    weights = steer_weights(gamma, eta, len(negatives) if eta != 0 else 0).double()
    return torch.where(weights[:, None] == 0, torch.zeros_like(logprobs), weights[:, None] * logprobs).sum(0)


def compare(expert, base, rows, results, gamma, eta, new, eos):
    """(status, detail): 'exact', 'tie' (parted at a near tie) or 'MISMATCH'."""
    from steer.hf.uncached import steer_generate_uncached

    ties = []
    for row, ((prompt, negatives), result) in enumerate(zip(rows, results)):
        want = steer_generate_uncached(expert, base, torch.tensor(prompt), [torch.tensor(n) for n in negatives],
                                       gamma=gamma, eta=eta, max_new_tokens=new, eos_token_id=eos).tolist()
        got = list(result.token_ids)
        if got == want:
            continue
        step = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        if step >= min(len(got), len(want)):
            return "MISMATCH", f"row {row}: lengths {len(got)} vs {len(want)} (engine {got}, formula {want})"
        scores = formula_scores(expert, base, prompt, negatives, got[:step], gamma, eta)
        gap = float(scores[want[step]] - scores[got[step]])
        if gap > TIE:
            return "MISMATCH", (f"row {row} step {step}: engine token {got[step]}, formula {want[step]} "
                                f"(score gap {gap:.3g}); engine {got}, formula {want}")
        ties.append(f"row {row} step {step} (gap {gap:.1e})")
    return ("tie", "parted at near ties: " + ", ".join(ties)) if ties else ("exact", "")


def main() -> int:
    args = common.parse_args(__doc__.splitlines()[0])
    dev = common.device(args)
    import steer
    from steer import Request, SteerConfig, SteerEngine
    from tiny_models import BUILDERS, lora_expert_and_base

    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 here
        torch.backends.cudnn.allow_tf32 = False
    has_cuda_sampler = dev.type == "cuda" and "cuda" in steer.backends("sample")
    records = common.Records(args.jsonl, "exactness")
    budget = common.Budget(args.budget_s)
    failures = done = ties = 0
    todo = cases(args.dry_run, has_cuda_sampler)
    print(f"# {common.device_name(dev)}: engine float32 vs the formula in float64 on the CPU; "
          f"samplers: {steer.backends('sample') if dev.type == 'cuda' else 'triton (interpreted)'}")
    for label, arch, lora, gamma, eta, rows, new, eos, options in todo:
        if budget.over(reserve=3):
            common.note(f"budget spent: {len(todo) - done} of {len(todo)} cases not run")
            break
        start = time.perf_counter()
        detail, status = "", "ERROR"
        try:
            if lora:
                expert, base = lora_expert_and_base(arch)
            else:
                expert, base = BUILDERS[arch](seed=1), BUILDERS[arch](seed=2)
            engine_expert = copy.deepcopy(expert)
            engine_base = None if lora else copy.deepcopy(base)
            options = dict(options)
            if args.dry_run:
                options.setdefault("attention_backend", "triton")
                options.setdefault("backend", "triton")
            config = SteerConfig(gamma=gamma, eta=eta, temperature=0.0, max_new_tokens=new)
            engine = SteerEngine(engine_expert, engine_base, config=config, device=dev, dtype=torch.float32,
                                 kv_cache_memory=2**24, max_batch_rows=256, **options)
            requests = [Request(p, n, new, eos_token_id=eos) for p, n in rows]
            results = engine.generate(requests)
            leaked = engine.blocks.num_blocks - engine.blocks.num_free_blocks
            status, detail = compare(expert, base, rows, results, gamma, eta, new, eos)
            if leaked:
                status, detail = "MISMATCH", f"{leaked} KV blocks not freed after generate(); " + detail
            attention = engine.runner.attention
            backend_names = f"attention={getattr(attention, 'backend', '?')}, sampler={engine.backend}"
        except Exception as error:  # noqa: BLE001 (record, go on)
            detail, backend_names = f"{type(error).__name__}: {error}"[:400], "?"
        seconds = time.perf_counter() - start
        done += 1
        if status not in ("exact", "tie"):
            failures += 1
        ties += status == "tie"
        records.emit(case=label, arch=arch, lora=lora, gamma=gamma, eta=eta, requests=len(rows), new_tokens=new,
                     status=status, detail=detail, backends=backend_names, seconds=seconds)
        print(f"{label:44s} {status:8s} {seconds:6.1f} s  [{backend_names}] {detail}", flush=True)
    records.emit(record="summary", cases=done, failures=failures, not_run=len(todo) - done)
    if ties:
        common.note(f"{ties} cases parted at a near tie (float32 vs float64), not failures")
    if failures:
        common.note(f"{failures} of {done} cases failed")
    print(f"# {done - failures}/{done} cases exact or tied" + (f", {len(todo) - done} not run" if done < len(todo) else ""))
    return 1 if failures or done < len(todo) else 0


if __name__ == "__main__":
    raise SystemExit(main())
