"""Experiment: concatenated negative contexts assembled from per-example KV (re-rotated), measured
against the exact negative distribution before anything is built on it.

    python benchmarks/quality/rerotated_negatives.py                   # the demo domain, 64 draws
    python benchmarks/quality/rerotated_negatives.py --domains pyjokes,fortunes-computers

STEER's negative context joins N drawn examples into one stream (``concat``, the paper's):

    [bos] ex_1 [eos] [bos] ex_2 [eos] ... [bos] ex_N [eos] [bos] generated...

Every sample draws its own N examples, so this stream's KV is computed afresh per draw (the
prefill --share-negatives amortises). The approximation: compute each pool example's chunk
``[bos] ex_i [eos]`` once, alone, and assemble a draw's context from those chunks, their keys
re-rotated to the chunk's offset (RoPE's rotations compose: R(p + o) = R(o) R(p)), with no
attention between examples; the generated tokens after the context attend to all of it, exactly.
Since rotary attention depends only on relative positions, that is the exact forward of the
joined stream under a block-diagonal mask over the examples (each chunk attends only to itself),
which is what this script computes (a 4-D attention mask; a chunk run alone differs from it by
float rounding only, ~1e-5 on the demo's logits).

For each draw (N = 5 examples of the domain's real set) and a continuation (a held-out example of
the same set, as a stand-in for a sample being generated), at every position of the continuation:

  * the negative stream's next-token distribution, exact vs approximated (KL), and, for scale,
    exact vs the expert with no negative context at all, and vs separate mode (one stream per
    example, the mean of their log-probs renormalised: the engine's other negative mode);
  * STEER's sampling distribution softmax((1 + gamma) lp_expert - gamma lp_base - eta lp_neg) at
    the demo's defaults (0.2, 0.2) and at (0.2, 0.6): KL from the exact one, and how often the most
    likely token and the top-10 set (the demo's top-k) stay the same.

With ``--generate N`` (default 200; 0 skips it), the dataset metrics too: N samples per seed
(``--seeds``) with STEER at the defaults (gamma = eta = 0.2, 5 negatives, top-k 10, 48 new tokens at most)
from the exact negative context and from the approximated one, the same seeds and draws for both
(paired), the negatives drawn from the real set only (the engine also draws earlier samples),
decoded with HF's own KV cache; then ``steer.data.metrics.evaluate`` on each set.

Writes ``--out``/rerotated.md and rerotated.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from steer.hf.uncached import block_mask

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

SETTINGS = {"defaults (gamma 0.2, eta 0.2)": (0.2, 0.2), "eta 0.6 (gamma 0.2)": (0.2, 0.6)}
VARIANTS = ("re-rotated chunks", "separate mode", "no negative context")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def load(domain):
    """(tokenizer, expert PeftModel in float32, eval) of a run_quality Domain, through steer's own
    checked loading (no model code, safetensors)."""
    from steer.data.models import ModelSources, load_models, load_tokenizer

    sources = ModelSources.resolve(domain.expert, domain.base, needs_base=True)
    expert, _ = load_models(sources, dtype=torch.float32)
    return load_tokenizer(sources), expert


def _model_dtype(model, mask: torch.Tensor) -> torch.Tensor:
    """An additive mask in the model's dtype: transformers 5.25 misreads a float mask of another."""
    return mask.to(next(model.parameters()).dtype)


@torch.no_grad()
def tail_logprobs(model, ids: list[int], tail: int, mask: torch.Tensor | None = None, adapters: bool = True) -> torch.Tensor:
    """log-softmax of the next-token logits at the last ``tail`` positions of ``ids`` [tail, V]."""
    input_ids = torch.tensor([ids])
    kwargs = {"attention_mask": _model_dtype(model, mask)} if mask is not None else {}
    if adapters:
        logits = model(input_ids=input_ids, **kwargs).logits[0, -tail:]
    else:
        with model.disable_adapter():
            logits = model(input_ids=input_ids, **kwargs).logits[0, -tail:]
    return torch.log_softmax(logits.double(), dim=-1)


def kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, in nats, of log-probabilities [rows, V]."""
    return (p_log.exp() * (p_log - q_log)).sum(-1)


def draw_case(model, examples: list[list[int]], draw: list[int], continuation: list[int], bos: int, eos: int) -> dict:
    chunks = [[bos] + examples[i] + [eos] for i in draw]
    tail_ids = [bos] + continuation  # the prompt, then the tokens a sample has generated
    tail = len(tail_ids)
    joined = [t for chunk in chunks for t in chunk] + tail_ids
    negative = {
        "exact": tail_logprobs(model, joined, tail),
        "re-rotated chunks": tail_logprobs(model, joined, tail, block_mask([len(c) for c in chunks], tail)),
        "separate mode": torch.log_softmax(torch.stack([tail_logprobs(model, c + tail_ids, tail) for c in chunks]).mean(0), dim=-1),
        "no negative context": tail_logprobs(model, tail_ids, tail),
    }
    expert = negative["no negative context"]
    base = tail_logprobs(model, tail_ids, tail, adapters=False)
    out = {"positions": tail, "negative_kl": {v: kl(negative["exact"], negative[v]).tolist() for v in VARIANTS}, "steer": {}}
    for name, (gamma, eta) in SETTINGS.items():
        scores = {v: (1 + gamma) * expert - gamma * base - eta * negative[v] for v in ("exact", *VARIANTS)}
        exact = torch.log_softmax(scores["exact"], dim=-1)
        top1, top10 = exact.argmax(-1), exact.topk(10, dim=-1).indices
        per = {}
        for v in VARIANTS:
            approx = torch.log_softmax(scores[v], dim=-1)
            same10 = [len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(top10, approx.topk(10, dim=-1).indices)]
            per[v] = {"kl": kl(exact, approx).tolist(), "top1_same": (approx.argmax(-1) == top1).double().tolist(), "top10_overlap": same10}
        out["steer"][name] = per
    return out


def run_domain(domain, draws: int, negatives: int, max_example: int, max_continuation: int, seed: int) -> dict:
    tokenizer, model = load(domain)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    examples = [tokenizer(t, add_special_tokens=False)["input_ids"][:max_example] for t in domain.real_texts]
    examples = [e for e in examples if e]
    if len(examples) < negatives + 1:
        raise SystemExit(f"{domain.name}: {len(examples)} examples, but a draw of {negatives} negatives needs {negatives + 1} (one held out)")
    rng = random.Random(seed)
    cases = []
    start = time.perf_counter()
    for index in range(draws):
        chosen = rng.sample(range(len(examples)), negatives + 1)
        draw, held_out = chosen[:negatives], chosen[negatives]
        cases.append(draw_case(model, examples, draw, examples[held_out][:max_continuation], bos, eos))
        if (index + 1) % 16 == 0:
            log(f"{domain.name}: {index + 1}/{draws} draws ({time.perf_counter() - start:.0f} s)")
    return {"domain": domain.name, "description": domain.description, "draws": draws, "negatives": negatives,
            "positions": sum(c["positions"] for c in cases), "summary": summarise(cases)}  # fmt: skip


GENERATE = dict(gamma=0.2, eta=0.2, top_k=10)


@torch.no_grad()
def _stream_step(model, ids: list[int], cache, mask=None, adapters: bool = True):
    """Next-token log-probs after ``ids`` fed to a stream with HF's KV ``cache`` (None: a new one)."""
    from transformers import DynamicCache

    cache = DynamicCache() if cache is None else cache
    kwargs = {"attention_mask": _model_dtype(model, mask)} if mask is not None else {}
    if adapters:
        out = model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True, **kwargs)
    else:
        with model.disable_adapter():
            out = model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True, **kwargs)
    return torch.log_softmax(out.logits[0, -1].double(), dim=-1), out.past_key_values


def generate_one(model, examples, draw, bos: int, eos: int, seed: int, approximate: bool, max_new_tokens: int) -> list[int]:
    """One STEER sample (GENERATE's settings) with the draw's negatives as one concatenated stream,
    exact or with each example attending only to itself (block_mask)."""
    chunks = [[bos] + examples[i] + [eos] for i in draw]
    context = [t for chunk in chunks for t in chunk] + [bos]
    mask = block_mask([len(c) for c in chunks], 1) if approximate else None
    gamma, eta = GENERATE["gamma"], GENERATE["eta"]
    neg, neg_cache = _stream_step(model, context, None, mask)
    exp, exp_cache = _stream_step(model, [bos], None)
    base, base_cache = _stream_step(model, [bos], None, adapters=False)
    generator = torch.Generator().manual_seed(seed)
    tokens: list[int] = []
    for _ in range(max_new_tokens):
        scores = (1 + gamma) * exp - gamma * base - eta * neg
        top = scores.topk(GENERATE["top_k"])
        token = int(top.indices[torch.multinomial(torch.softmax(top.values, -1), 1, generator=generator)])
        if token == eos:
            break
        tokens.append(token)
        neg, neg_cache = _stream_step(model, [token], neg_cache)
        exp, exp_cache = _stream_step(model, [token], exp_cache)
        base, base_cache = _stream_step(model, [token], base_cache, adapters=False)
    return tokens


def generate_and_evaluate(domain, n: int, seeds: list[int], negatives: int, max_example: int, max_new_tokens: int,
                          embedder: str) -> dict:  # fmt: skip
    from steer.data.metrics import evaluate, summary_row

    tokenizer, model = load(domain)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    examples = [e for e in (tokenizer(t, add_special_tokens=False)["input_ids"][:max_example] for t in domain.real_texts) if e]
    runs: dict = {"exact": [], "re-rotated chunks": []}
    for seed in seeds:
        rng = random.Random(1000 + seed)
        draws = [rng.sample(range(len(examples)), negatives) for _ in range(n)]
        for variant in runs:
            start = time.perf_counter()
            texts = [tokenizer.decode(generate_one(model, examples, draw, bos, eos, seed * 100_000 + i, variant != "exact", max_new_tokens),
                                      skip_special_tokens=True).strip() for i, draw in enumerate(draws)]  # fmt: skip
            seconds = time.perf_counter() - start
            row = summary_row(evaluate(domain.real_texts, [t for t in texts if t], embedder=embedder, seed=seed))
            row.update(seed=seed, seconds=seconds, empty=sum(not t for t in texts))
            runs[variant].append(row)
            log(f"{domain.name} seed {seed} {variant}: {n} samples in {seconds:.0f} s, normalised 3-grams {row['normalised_3grams']:.3f}")
    return runs


def _stats(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"mean": statistics.fmean(ordered), "median": statistics.median(ordered), "p90": ordered[int(0.9 * (len(ordered) - 1))]}


def summarise(cases: list[dict]) -> dict:
    flat = lambda pick: [x for case in cases for x in pick(case)]  # noqa: E731
    summary = {"negative_kl": {v: _stats(flat(lambda c: c["negative_kl"][v])) for v in VARIANTS}, "steer": {}}
    for name in SETTINGS:
        summary["steer"][name] = {
            v: {"kl": _stats(flat(lambda c: c["steer"][name][v]["kl"])),
                "top1_same": statistics.fmean(flat(lambda c: c["steer"][name][v]["top1_same"])),
                "top10_overlap": statistics.fmean(flat(lambda c: c["steer"][name][v]["top10_overlap"]))}
            for v in VARIANTS
        }  # fmt: skip
    return summary


METRIC_ROWS = ("normalised_3grams", "diversity", "vendi_score", "self_bleu", "compression_ratio", "self_repetition",
               "coherency", "authenticity_auc", "mauve", "copies_of_real")


def _mean_spread(rows: list[dict], key: str) -> str:
    values = [r[key] for r in rows if r.get(key) is not None]
    if not values:
        return "-"
    return f"{statistics.fmean(values):.3f} ({min(values):.3f}-{max(values):.3f})" if len(values) > 1 else f"{values[0]:.3f}"


def metrics_markdown(result: dict) -> list[str]:
    runs = result.get("generated")
    if not runs:
        return []
    seeds = len(runs["exact"])
    lines = ["", f"Dataset metrics of {result['generate_n']} samples per seed, exact vs approximated negative context "
             f"(mean over {seeds} seeds, range in brackets; the same seeds and draws for both)", "",
             "| metric | exact | re-rotated chunks |", "| --- | ---: | ---: |"]  # fmt: skip
    for key in METRIC_ROWS:
        lines.append(f"| {key} | {_mean_spread(runs['exact'], key)} | {_mean_spread(runs['re-rotated chunks'], key)} |")
    return lines


def markdown(results: list[dict], command: str) -> str:
    lines = ["# Re-rotated per-example KV for concatenated negative contexts: how close is it?", "",
             f"- Command: `{command}`", f"- Date: {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, float32 on the CPU", ""]  # fmt: skip
    for result in results:
        summary = result["summary"]
        lines += [f"## {result['domain']}", "", f"{result['description']}; {result['draws']} draws of {result['negatives']} "
                  f"negatives, each with a held-out example as the continuation ({result['positions']} positions).", "",
                  "The negative stream's next-token distribution: KL(exact || variant), nats per position", "",
                  "| variant | mean | median | p90 |", "| --- | ---: | ---: | ---: |"]  # fmt: skip
        for v in VARIANTS:
            s = summary["negative_kl"][v]
            lines.append(f"| {v} | {s['mean']:.2e} | {s['median']:.2e} | {s['p90']:.2e} |")
        for name in SETTINGS:
            lines += ["", f"STEER's sampling distribution at {name}: KL from the exact one, and the share of positions whose most likely token / top-10 set stay", "",
                      "| variant | KL mean | KL median | KL p90 | same top-1 | top-10 overlap |", "| --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
            for v in VARIANTS:
                s = summary["steer"][name][v]
                lines.append(f"| {v} | {s['kl']['mean']:.2e} | {s['kl']['median']:.2e} | {s['kl']['p90']:.2e} | {s['top1_same']:.1%} | {s['top10_overlap']:.1%} |")
        lines += metrics_markdown(result)
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", default="pyjokes", help="comma-separated: pyjokes, fortunes-CATEGORY (see run_quality.py)")
    parser.add_argument("--draws", type=int, default=64)
    parser.add_argument("--negatives", type=int, default=5)
    parser.add_argument("--max-example-tokens", type=int, default=40)
    parser.add_argument("--max-continuation-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--generate", type=int, default=200, help="samples per seed for the dataset metrics (0: skip)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of the generation")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--embedder", default="auto", help="steer.data.embeddings name for the metrics (auto: MiniLM if installed)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/steer-quality"), help="fetched corpora and trained experts (run_quality.py's)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "quality")
    args = parser.parse_args(argv)
    if args.draws < 1 or args.negatives < 1 or args.max_example_tokens < 1 or args.max_continuation_tokens < 1:
        parser.error("--draws, --negatives, --max-example-tokens and --max-continuation-tokens must be at least 1")
    if args.generate and (args.generate < 10 or args.max_new_tokens < 1):
        parser.error("--generate takes 0 (skip) or at least 10 samples (the metrics' minimum), with --max-new-tokens >= 1")
    import run_quality

    torch.manual_seed(args.seed)
    results = []
    for name in args.domains.split(","):
        if name == "pyjokes":
            domain = run_quality.pyjokes_domain()
        elif name.startswith("fortunes-"):
            domain = run_quality.fortunes_domain(name.removeprefix("fortunes-"), args.workdir, args.seed)
        else:
            raise SystemExit(f"unknown domain {name!r}: pyjokes or fortunes-CATEGORY")
        log(f"{domain.name}: {len(domain.real_texts)} real examples")
        result = run_domain(domain, args.draws, args.negatives, args.max_example_tokens, args.max_continuation_tokens, args.seed)
        if args.generate:
            seeds = [int(x) for x in args.seeds.split(",")]
            result["generate_n"] = args.generate
            result["generated"] = generate_and_evaluate(domain, args.generate, seeds, args.negatives, args.max_example_tokens,
                                                        args.max_new_tokens, args.embedder)  # fmt: skip
        results.append(result)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/quality/rerotated_negatives.py " + " ".join(sys.argv[1:] if argv is None else argv)
    (args.out / "rerotated.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "rerotated.md").write_text(markdown(results, command.strip()))
    print(markdown(results, command.strip()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
