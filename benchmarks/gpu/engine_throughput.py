"""STEER's cost in the engine on a GPU: tokens/s of SteerEngine decoding with STEER against the same
engine decoding the expert alone, and against Hugging Face ``generate``, at batch 1, 8 and 64.

    python benchmarks/gpu/engine_throughput.py [--jsonl FILE] [--budget-s S] [--no-hf] [--dry-run]

The model: a random Llama of TinyLlama's shape (1.1B parameters: 22 layers, width 2048, 32 query /
4 kv heads, 32000-token vocabulary, untied head) in bfloat16, built on the GPU (no download), and a
rank-16 LoRA on every linear of every layer (PEFT) as the expert. Every sample: a 24-token prompt,
one 48-token negative (the paper's "concat" mode), 64 new tokens (EOS off), greedy.

  steer     SteerEngine(lora_expert, config=SteerConfig(gamma=0.3, eta=0.3, temperature=0.0)):
            three streams per sample (expert on the prompt, expert on the negative, base = the
            adapters off, on the prompt) in one forward per step
  single    the same engine with gamma = eta = 0 on requests without negatives: one stream per
            sample, the expert alone (what decoding costs without STEER)
  hf        lora_expert.generate(...) (PEFT model as it is, KV cache, greedy), for scale

A fresh engine for every timed run (no prefix cached from the previous one), max_batch_rows=256
(64 samples x 3 streams in one batch) and a 4 GiB KV pool for both engines. One warm-up run of each
contender per batch size (Triton compiles there), then up to 3 timed runs, interleaved, median;
fewer when --budget-s runs short. Reported: tokens/s (all samples' new tokens / wall time), ms
per step, and steer time / single time (STEER's overhead; 3x the rows, so 1.0 is the memory-bound
ideal and 3.0 the compute-bound one).
"""

from __future__ import annotations

import statistics
import time

import common
import torch

SIZES = {
    "1.1B": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, vocab_size=32000),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GAMMA = ETA = 0.3


def build(size: str, dev: torch.device, dtype: torch.dtype):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(2)
    config = LlamaConfig(bos_token_id=1, eos_token_id=None, pad_token_id=0, tie_word_embeddings=False,
                         max_position_embeddings=2048, **SIZES[size])
    with torch.device(dev):
        base = LlamaForCausalLM(config)
    base = base.to(dtype).eval()
    torch.manual_seed(3)
    expert = get_peft_model(base, LoraConfig(r=16, lora_alpha=16, init_lora_weights=False, target_modules=TARGETS))
    with torch.no_grad():  # a small, non-zero delta: random full-size B would blow the activations up
        for name, parameter in expert.named_parameters():
            if "lora_B" in name:
                parameter.mul_(0.05)
    expert = expert.to(device=dev, dtype=dtype).eval()
    return expert, sum(p.numel() for p in base.parameters())


def synchronize(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def main() -> int:
    args = common.parse_args(__doc__.splitlines()[0], lambda p: (
        p.add_argument("--no-hf", action="store_true", help="skip the Hugging Face generate baseline"),
        p.add_argument("--batches", type=str, default=None, help="comma-separated batch sizes (default 1,8,64)"),
        p.add_argument("--rounds", type=int, default=None, help="timed runs per contender (default 3, dry run 1)")))
    dev = common.device(args)
    from steer import Request, SteerConfig, SteerEngine

    size = "tiny" if args.dry_run else "1.1B"
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    new, prompt_len, negative_len = (4, 6, 8) if args.dry_run else (64, 24, 48)
    max_rounds = args.rounds or (1 if args.dry_run else 3)
    batches = [int(b) for b in args.batches.split(",")] if args.batches else ([1, 2] if args.dry_run else [1, 8, 64])
    kv_memory = 2**24 if args.dry_run else 4 * 2**30
    budget = common.Budget(args.budget_s)
    records = common.Records(args.jsonl, "engine")

    start = time.perf_counter()
    expert, parameters = build(size, dev, dtype)
    build_s = time.perf_counter() - start
    vocab = SIZES[size]["vocab_size"]
    name = common.device_name(dev)
    records.emit(record="model", device=name, model=f"random Llama {size}", parameters=parameters, dtype=dtype,
                 lora_rank=16, new_tokens=new, prompt_tokens=prompt_len, negative_tokens=negative_len, build_s=build_s)
    print(f"# {name}: random Llama {parameters / 1e6:,.{2 if parameters < 1e8 else 0}f}M parameters, {str(dtype)[6:]}, LoRA r=16 on every linear; "
          f"{prompt_len}-token prompt, {negative_len}-token negative, {new} new tokens (built in {build_s:.1f} s)")

    steer_config = SteerConfig(gamma=GAMMA, eta=ETA, temperature=0.0, max_new_tokens=new)
    single_config = SteerConfig(gamma=0.0, eta=0.0, temperature=0.0, max_new_tokens=new)
    failures = 0
    for index, batch in enumerate(batches):
        if common.batch_out_of_budget(budget, records, batch):
            failures += 1
            continue
        gen = torch.Generator().manual_seed(batch)
        prompts = torch.randint(3, vocab, (batch, prompt_len), generator=gen)
        negatives = torch.randint(3, vocab, (batch, negative_len), generator=gen)
        steer_requests = [Request(p.tolist(), [n.tolist()], new) for p, n in zip(prompts, negatives)]
        single_requests = [Request(p.tolist(), [], new) for p in prompts]
        input_ids = prompts.to(dev)

        def engine_run(config, requests):
            engine = SteerEngine(expert, config=config, device=dev, dtype=dtype, kv_cache_memory=kv_memory,
                                 max_batch_rows=256)
            synchronize(dev)
            begin = time.perf_counter()
            results = engine.generate(requests)
            synchronize(dev)
            seconds = time.perf_counter() - begin
            lengths = {len(r.token_ids) for r in results}
            if lengths != {new}:
                raise RuntimeError(f"expected {new} tokens per sample, got lengths {sorted(lengths)}")
            return seconds

        def hf_run():
            synchronize(dev)
            begin = time.perf_counter()
            with torch.no_grad():
                out = expert.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new,
                                      min_new_tokens=new, do_sample=False, pad_token_id=0)
            synchronize(dev)
            if out.shape[1] != prompt_len + new:
                raise RuntimeError(f"generate returned {out.shape[1] - prompt_len} new tokens, not {new}")
            return time.perf_counter() - begin

        contenders = {"single": lambda: engine_run(single_config, single_requests),
                      "steer": lambda: engine_run(steer_config, steer_requests)}
        if not args.no_hf:
            contenders["hf"] = hf_run
        times: dict[str, list[float]] = {c: [] for c in contenders}
        memory: dict[str, float] = {}
        errors: dict[str, str] = {}
        warm = {}
        for label, run in contenders.items():  # warm-up: Triton's compiles, cuBLAS handles, allocator
            try:
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)
                warm[label] = run()
                if dev.type == "cuda":
                    memory[label] = torch.cuda.max_memory_allocated(dev) / 2**30
            except Exception as error:  # noqa: BLE001 (record, go on)
                errors[label] = f"{type(error).__name__}: {error}"[:300]
        live = [c for c in contenders if c not in errors]
        rounds = 0
        while rounds < max_rounds and live:
            round_estimate = sum(min([warm[c]] + times[c]) for c in live)
            later = len(batches) - index - 1
            if rounds >= 1 and budget.left() < round_estimate * (1 + 2 * later) + 5:
                break  # keep time for the later batch sizes
            for label in live:
                try:
                    times[label].append(contenders[label]())
                except Exception as error:  # noqa: BLE001
                    errors[label] = f"{type(error).__name__}: {error}"[:300]
            live = [c for c in live if c not in errors]
            rounds += 1
        seconds = {c: statistics.median(t) for c, t in times.items() if t and c not in errors}
        speed = {c: batch * new / s for c, s in seconds.items()}
        ratios = {}
        if "steer" in seconds and "single" in seconds:
            ratios["steer_over_single_time"] = seconds["steer"] / seconds["single"]
        if "steer" in seconds and "hf" in seconds:
            ratios["steer_over_hf_time"] = seconds["steer"] / seconds["hf"]
        if "single" in seconds and "hf" in seconds:
            ratios["hf_over_single_time"] = seconds["hf"] / seconds["single"]
        if errors:
            failures += 1
            common.note(f"batch {batch}: {', '.join(errors)} failed")
        elif rounds < max_rounds:
            common.note(f"batch {batch}: {rounds} timed runs (budget)")
        records.emit(batch=batch, rounds=rounds, seconds=seconds, tokens_per_s=speed, ms_per_step={
            c: 1e3 * s / new for c, s in seconds.items()}, all_times=times, peak_gib=memory, errors=errors or None,
            steer_rows_per_step=3 * batch, **ratios)
        parts = [f"{c} {speed[c]:8.1f} tok/s ({1e3 * seconds[c] / new:6.1f} ms/step)" for c in seconds]
        line = f"batch {batch:3d} ({rounds} timed runs): " + ", ".join(parts)
        if "steer_over_single_time" in ratios:
            line += f" | steer/single time {ratios['steer_over_single_time']:.2f}"
        if "steer_over_hf_time" in ratios:
            line += f", steer/hf time {ratios['steer_over_hf_time']:.2f}"
        for label, message in errors.items():
            line += f" | {label} ERROR {message}"
        print(line, flush=True)
    records.emit(record="summary", failures=failures)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
