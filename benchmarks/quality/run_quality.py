#!/usr/bin/env python
"""Quality experiment: does STEER make synthetic data more diverse without losing coherency?

For each domain, every method below generates the same number of samples with the same seeds
(sample i of seed s uses seed s*1000 + i), from the same expert and base, and is scored against the
same real set with the same embedding model (the metrics of ``steer eval``, docs/design.md section 2).
Each (method, seed) is one ``steer generate`` run, so a killed experiment resumes where it stopped.

Experiments (``--experiment``), each a list of methods:

    baselines (default; quality.md) docs/design.md section 2's baselines, then STEER:
        plain expert        gamma = eta = 0, T = 1, top_k = 10 (the paper's sampler, no STEER)
        temperature 1.3     plain expert, T = 1.3
        top-p 0.9           plain expert, top_k off, top_p = 0.9
        min-p 0.1 (T 1.5)   plain expert, top_k off, T = 1.5, min_p = 0.1: min-p keeps the tokens
                            with p_T >= 0.1 max p_T, which for the expert alone is steer's
                            plausibility floor at alpha = 0.1^1.5 (p_T ratios are p ratios^(1/T))
        contrastive only    gamma = 0.2, eta = 0
        negatives only      gamma = 0, eta = 0.2
        STEER (defaults)    gamma = 0.2, eta = 0.2, 5 negatives (steer's defaults)
        STEER (eta 0.4)     gamma = 0.2, eta = 0.4, 5 negatives
        STEER (eta 0.6)     gamma = 0.2, eta = 0.6, 10 negatives (the authors' later settings)
    eos (eos.md): STEER at eta 0.2, 0.4, 0.6 with and without --eos-exempt, beside plain and
        contrastive-only sampling: how many samples end by EOS, and what the exemption costs.
    share (share.md): STEER (defaults) with --share-negatives 1, 4, 16, 64, in separate mode
        with 1 and 16, and with --per-example-kv at 1 and 16, beside plain sampling: generation
        time, prefix-cache hits and metrics.

Domains:

    pyjokes             the demo: bundled base (fortunes) + LoRA expert (pyjokes), real = the
                        283 pyjokes jokes
    fortunes-CATEGORY   real = one category of Debian's fortunes (default ``computers``), expert =
                        the bundled base + a LoRA trained here on that category by
                        scripts/train_demo_models.py's own code (the base saw that category among
                        all the fortunes: like a general LLM that an expert specialises). Needs
                        apt-get (the .deb is fetched into --workdir, never committed).

Usage (from the repository root, in the dev venv with the data extra)::

    python benchmarks/quality/run_quality.py                          # both domains, 3 seeds
    python benchmarks/quality/run_quality.py --domains pyjokes --seeds 0 --n 100   # quick

Writes ``--out``/quality.md (tables: mean and spread over seeds, samples), quality.json (every
number of every run) and tradeoff_DOMAIN.png. The generated samples stay in --workdir.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

METRICS = ("normalised_3grams", "diversity", "coherency", "centroid_cosine", "authenticity_auc", "mauve", "copies_of_real",
           "vendi_score", "self_bleu", "compression_ratio", "self_repetition")


@dataclass(frozen=True)
class Method:
    name: str
    settings: dict  # SteerConfig keyword arguments on top of the shared ones


PLAIN = Method("plain expert", dict(gamma=0.0, eta=0.0))
CONTRASTIVE = Method("contrastive only", dict(gamma=0.2, eta=0.0))
METHODS = (
    PLAIN,
    Method("temperature 1.3", dict(gamma=0.0, eta=0.0, temperature=1.3)),
    Method("top-p 0.9", dict(gamma=0.0, eta=0.0, top_k=0, top_p=0.9)),
    Method("min-p 0.1 (T 1.5)", dict(gamma=0.0, eta=0.0, top_k=0, temperature=1.5, plausibility_alpha=0.1**1.5)),
    CONTRASTIVE,
    Method("negatives only", dict(gamma=0.0, eta=0.2)),
    Method("STEER (defaults)", dict(gamma=0.2, eta=0.2)),
    Method("STEER (eta 0.4)", dict(gamma=0.2, eta=0.4)),
    Method("STEER (eta 0.6)", dict(gamma=0.2, eta=0.6, num_negatives=10)),
)
EOS_METHODS = (PLAIN, CONTRASTIVE) + tuple(
    Method(f"STEER (eta {eta}){' EOS exempt' if exempt else ''}",
           dict(gamma=0.2, eta=eta, num_negatives=10 if eta == 0.6 else 5, eos_exempt=exempt))
    for eta in (0.2, 0.4, 0.6) for exempt in (False, True)
)  # fmt: skip
SHARE_METHODS = (PLAIN,) + tuple(
    Method(f"STEER K={k}" + (" separate" if mode == "separate" else ""), dict(gamma=0.2, eta=0.2, share_negatives=k, negative_mode=mode))
    for mode, ks in (("concat", (1, 4, 16, 64)), ("separate", (1, 16))) for k in ks
) + tuple(
    Method(f"STEER K={k} per-example KV", dict(gamma=0.2, eta=0.2, share_negatives=k, per_example_kv=True)) for k in (1, 16)
)  # fmt: skip


# name -> (methods, output stem, title)
EXPERIMENTS = {
    "baselines": (METHODS, "quality", "# Quality experiment: STEER vs its baselines"),
    "eos": (EOS_METHODS, "eos", "# EOS exemption: how many samples end, with and without --eos-exempt"),
    "share": (SHARE_METHODS, "share", "# --share-negatives: generation time and what sharing draws costs in diversity"),
}


@dataclass
class Domain:
    name: str
    description: str
    real_texts: list[str]
    expert: str  # adapter directory
    base: str


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- domains ----------------------------------------------------------------------------------------


def pyjokes_domain() -> Domain:
    from steer.demo.models import demo_base_dir, demo_expert_dir, demo_real_examples

    real = demo_real_examples()
    return Domain("pyjokes", f"the demo: {len(real)} pyjokes programmer jokes, bundled base + LoRA expert",
                  real, str(demo_expert_dir()), str(demo_base_dir()))


def fortunes_domain(category: str, workdir: Path, seed: int) -> Domain:
    """One fortune category as the real set, with a LoRA expert for it trained on the demo base
    (once; reused from ``workdir`` afterwards)."""
    import train_demo_models as training
    from steer.demo.models import demo_base_dir

    root, versions = training.download_fortunes(workdir / "fortunes")
    texts, stats = training.read_fortunes(root, training.read_jokes(), max_chars=400, only={category})
    if not texts:
        raise SystemExit(f"no fortunes in category {category!r}: see {root / training.FORTUNE_DIR}")
    expert_dir = workdir / f"expert-{category}"
    if not (expert_dir / "adapter_model.safetensors").is_file():
        _train_category_expert(training, texts, expert_dir, seed)
    description = (f"{len(texts)} fortunes of the Debian fortunes {versions['fortunes']} category '{category}', "
                   f"bundled base + a LoRA expert trained on them here")
    return Domain(f"fortunes-{category}", description, texts, str(expert_dir), str(demo_base_dir()))


def _train_category_expert(training, texts: list[str], out: Path, seed: int) -> None:
    import random

    from steer.demo.models import demo_base_dir

    from transformers import AutoTokenizer

    args = training.parse_args(["--seed", str(seed)])  # the demo expert's LoRA settings
    tokenizer = AutoTokenizer.from_pretrained(demo_base_dir(), local_files_only=True)
    ids = training.encode_all(tokenizer, texts, args.max_len)
    order = list(range(len(ids)))
    random.Random(seed).shuffle(order)
    n_held = round(len(ids) * args.jokes_held_out)
    held, train = [ids[i] for i in order[:n_held]], [ids[i] for i in order[n_held:]]
    log(f"training a LoRA expert on {len(train)} texts ({len(held)} held out) into {out}")
    base = training.load_base(demo_base_dir())
    report: dict = {}
    expert = training.train_expert(args, base, tokenizer, train, held, report)
    training.save_expert(expert, tokenizer, out, demo_base_dir())
    (out / "training.json").write_text(json.dumps(report, indent=1) + "\n")


# -- runs -------------------------------------------------------------------------------------------


def run_cell(domain: Domain, method: Method, seed: int, n: int, max_new_tokens: int, batch_size: int, path: Path, models):
    from steer.config import SteerConfig
    from steer.data.generate import GenerateRequest, plan_generation, run_generation

    settings = dict(top_k=10, max_new_tokens=max_new_tokens, seed=seed * 1000)
    settings.update(method.settings)
    request = GenerateRequest(
        real_texts=domain.real_texts, real_name=domain.name, expert=domain.expert, base=domain.base, prompt="",
        n=n, out=path, config=SteerConfig(**settings), batch_size=batch_size, device="cpu", dtype="float32",
        resume=True, quiet=True,
    )
    plan = plan_generation(request)
    if models is None:
        from steer.data.models import load_models
        import torch

        models = load_models(plan.sources, dtype=torch.float32)
    summary = run_generation(plan, models=models)
    return models, summary


def mean_and_spread(values: list[float | None]) -> tuple[float | None, float | None]:
    numbers = [v for v in values if v is not None]
    if not numbers:
        return None, None
    return statistics.fmean(numbers), (statistics.stdev(numbers) if len(numbers) > 1 else 0.0)


def run_domain(domain: Domain, args, workdir: Path, embed, methods=METHODS) -> dict:
    from steer.data.io import read_texts
    from steer.data.metrics import evaluate, summary_row

    log(f"domain {domain.name}: {domain.description}")
    models = None
    runs, real = [], None
    for method in methods:
        for seed in args.seeds:
            path = workdir / args.experiment / domain.name / f"{method.name.replace(' ', '_').replace('(', '').replace(')', '')}_seed{seed}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            models, summary = run_cell(domain, method, seed, args.n, args.max_new_tokens, args.batch_size, path, models)
            texts = read_texts(path)
            metrics = evaluate(domain.real_texts, texts, embedder=embed, seed=seed, knn=False)
            real = real or {"normalised_3grams": metrics["real"]["ngrams"]["3"]["distinct"],
                            "diversity": metrics["real"]["diversity"],
                            "coherency": metrics["coherency"]["real_mean_pairwise_cosine"],
                            "mean_words": metrics["real"]["mean_tokens"],
                            **{k: metrics["real"].get(k) for k in ("vendi_score", "self_bleu", "compression_ratio", "self_repetition")}}
            row = {"method": method.name, "seed": seed, **method.settings, **summary_row(metrics),
                   "mean_words": metrics["synthetic"]["mean_tokens"],
                   "eos_fraction": _eos_fraction(path), "seconds": summary.seconds, "samples": summary.written,
                   "negative_cache_hit": summary.negative_cache_hit, "chunk_cache_hit": summary.chunk_cache_hit,
                   "examples": texts[:3]}
            runs.append(row)
            log(f"  {method.name:<18} seed {seed}: 3-grams {row['normalised_3grams']:.3f}, diversity {row['diversity']:.3f}, "
                f"coherency {row['coherency']:.3f}, AUC {row['authenticity_auc']:.3f} ({summary.seconds:.0f} s generating)")
    summary = []
    for method in methods:
        mine = [r for r in runs if r["method"] == method.name]
        entry = {"method": method.name, **method.settings}
        for key in (*METRICS, "mean_words", "eos_fraction", "seconds", "negative_cache_hit", "chunk_cache_hit"):
            entry[key], entry[key + "_spread"] = mean_and_spread([r.get(key) for r in mine])
        summary.append(entry)
    return {"domain": domain.name, "description": domain.description, "real_texts": len(domain.real_texts),
            "real": real, "runs": runs, "summary": summary}


def _eos_fraction(path: Path) -> float:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sum(r["finish_reason"] == "eos" for r in records) / len(records)


# -- writing ----------------------------------------------------------------------------------------


def _cell(entry: dict, key: str) -> str:
    value, spread = entry.get(key), entry.get(key + "_spread")
    if value is None:
        return "-"
    if key in ("copies_of_real", "eos_fraction", "negative_cache_hit", "chunk_cache_hit"):
        return f"{100 * value:.1f}%"
    if key == "mean_words":
        return f"{value:.1f}"
    if key == "seconds":
        return f"{value:.1f} s"
    return f"{value:.3f} ± {spread:.3f}" if spread else f"{value:.3f}"


def _real_cell(real: dict, key: str) -> str:
    """The real data's own value in a column, where it has one."""
    if key == "coherency":
        return f"{real['coherency']:.3f} (real vs real)"
    if key == "mean_words":
        return f"{real['mean_words']:.1f}"
    value = real.get(key)
    return "" if value is None else (f"{value:.1f}" if key == "vendi_score" else f"{value:.3f}")


def domain_table(result: dict, experiment: str = "baselines") -> str:
    columns = [("normalised_3grams", "norm. 3-grams ↑"), ("diversity", "diversity ↑"), ("coherency", "coherency ↑"),
               ("centroid_cosine", "centroid cos ↑"), ("authenticity_auc", "AUC (0.5 best)"), ("mauve", "MAUVE ↑"),
               ("copies_of_real", "copies ↓"), ("mean_words", "words"), ("eos_fraction", "ended by EOS")]
    if any(e.get("vendi_score") is not None for e in result["summary"]):  # results of an older run lack them
        columns[2:2] = [("vendi_score", "Vendi ↑"), ("self_bleu", "Self-BLEU ↓"), ("compression_ratio", "compression ↓"),
                        ("self_repetition", "self-rep. ↓")]  # fmt: skip
    if experiment == "share":
        columns += [("seconds", "generation"), ("negative_cache_hit", "negative tokens cached"),
                    ("chunk_cache_hit", "example chunks cached")]
    lines = ["| method | γ | η | " + " | ".join(title for _, title in columns) + " |",
             "|---|---:|---:|" + "---:|" * len(columns)]
    real = result["real"]
    lines.append(f"| *real data ({result['real_texts']} texts, cut to n)* | | | "
                 + " | ".join(_real_cell(real, key) for key, _ in columns) + " |")
    for entry in result["summary"]:
        lines.append(f"| {entry['method']} | {entry.get('gamma', 0):g} | {entry.get('eta', 0):g} | "
                     + " | ".join(_cell(entry, key) for key, _ in columns) + " |")
    return "\n".join(lines)


def beats_plain(entry: dict, plain: dict) -> tuple[float, float, float, bool]:
    """(3-gram gain, seed spread, relative coherency change, whether it counts): the issue's criterion, more
    normalised 3-grams than plain sampling by more than the larger seed spread of the two, with
    coherency at most 10% below plain's."""
    gain = entry["normalised_3grams"] - plain["normalised_3grams"]
    noise = max(entry["normalised_3grams_spread"] or 0.0, plain["normalised_3grams_spread"] or 0.0)
    change = (entry["coherency"] - plain["coherency"]) / plain["coherency"]
    return gain, noise, change, gain > noise and change >= -0.10


def eos_verdict(result: dict) -> str:
    """How many samples end by EOS at each eta, with and without the exemption."""
    by_name = {e["method"]: e for e in result["summary"]}
    parts = [f"plain {100 * by_name['plain expert']['eos_fraction']:.0f}%, contrastive only {100 * by_name['contrastive only']['eos_fraction']:.0f}%"]
    for eta in (0.2, 0.4, 0.6):
        off, on = by_name[f"STEER (eta {eta})"], by_name[f"STEER (eta {eta}) EOS exempt"]
        parts.append(f"eta {eta}: {100 * off['eos_fraction']:.0f}% -> {100 * on['eos_fraction']:.0f}% exempt "
                     f"(3-grams {off['normalised_3grams']:.3f} -> {on['normalised_3grams']:.3f})")
    ok = by_name["STEER (eta 0.6) EOS exempt"]["eos_fraction"] >= 0.9
    return "Ended by EOS: " + "; ".join(parts) + f". Target (>= 90% at eta 0.6 with the exemption): {'met' if ok else 'not met'}."


def share_verdict(result: dict) -> str:
    """Generation time of the share settings against K = 1 and plain sampling (these runs'
    own times, one process, sequential: benchmarks/test_bench_share_negatives.py pairs them)."""
    by_name = {e["method"]: e for e in result["summary"]}
    plain, one, sixteen = by_name["plain expert"], by_name["STEER K=1"], by_name["STEER K=16"]
    return (f"Generation time (mean of the seeds' runs): K=1 {one['seconds']:.1f} s, K=16 {sixteen['seconds']:.1f} s "
            f"({one['seconds'] / sixteen['seconds']:.2f}x faster), plain {plain['seconds']:.1f} s (K=16 is "
            f"{sixteen['seconds'] / plain['seconds']:.2f}x plain). Diversity: normalised 3-grams {one['normalised_3grams']:.3f} "
            f"(K=1) vs {sixteen['normalised_3grams']:.3f} (K=16), embedding diversity {one['diversity']:.3f} vs {sixteen['diversity']:.3f}."
            + _per_example_verdict(by_name, one))


def _per_example_verdict(by_name: dict, one: dict) -> str:
    """--per-example-kv at K = 1 against the exact K = 1 (results of an older run lack it)."""
    approx = by_name.get("STEER K=1 per-example KV")
    if approx is None:
        return ""
    return (f" Per-example KV at K=1: {approx['seconds']:.1f} s ({one['seconds'] / approx['seconds']:.2f}x faster than K=1), "
            f"normalised 3-grams {approx['normalised_3grams']:.3f}, embedding diversity {approx['diversity']:.3f}, "
            f"{100 * (approx.get('chunk_cache_hit') or 0):.0f}% of the example chunks' tokens cached.")


def verdict(result: dict, experiment: str = "baselines") -> str:
    """STEER (defaults) against plain expert sampling, in the words of the issue's criterion, and
    every method that meets it (the other experiments: their own summary line)."""
    if experiment == "eos":
        return eos_verdict(result)
    if experiment == "share":
        return share_verdict(result)
    by_name = {e["method"]: e for e in result["summary"]}
    plain, steer = by_name["plain expert"], by_name["STEER (defaults)"]
    gain, noise, change, ok = beats_plain(steer, plain)
    winners = [e["method"] for e in result["summary"] if e is not plain and beats_plain(e, plain)[3]]
    return (f"STEER (defaults) vs plain expert: normalised 3-grams {steer['normalised_3grams']:.3f} vs "
            f"{plain['normalised_3grams']:.3f} ({gain:+.3f}; seed spread up to {noise:.3f}: "
            f"{'higher, beyond the seed spread' if gain > noise else 'higher, within the seed spread' if gain > 0 else 'not higher'}); "
            f"coherency {steer['coherency']:.3f} vs {plain['coherency']:.3f} ({100 * change:+.1f}%). "
            f"Criterion (more 3-grams beyond the spread, coherency at most 10% below plain) met by the defaults: "
            f"{'yes' if ok else 'no'}; by: {', '.join(winners) or 'none'}.")


def plot_domain(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5.2), dpi=120)
    colours = plt.get_cmap("tab10")
    for i, entry in enumerate(result["summary"]):
        axes.errorbar(entry["normalised_3grams"], entry["coherency"], xerr=entry["normalised_3grams_spread"] or 0,
                      yerr=entry["coherency_spread"] or 0, fmt="o", color=colours(i), capsize=3, markersize=7,
                      label=entry["method"])
        for run in (r for r in result["runs"] if r["method"] == entry["method"]):
            axes.plot(run["normalised_3grams"], run["coherency"], ".", color=colours(i), alpha=0.35)
    real = result["real"]
    axes.axvline(real["normalised_3grams"], color="#888888", linestyle="--", linewidth=1)
    axes.axhline(real["coherency"], color="#888888", linestyle="--", linewidth=1)
    axes.annotate("real data", (real["normalised_3grams"], real["coherency"]), textcoords="offset points",
                  xytext=(4, -12), fontsize=8.5, color="#666666")
    axes.set_xlabel("normalised 3-grams (higher = more diverse)")
    axes.set_ylabel("coherency: mean cosine to real (higher = closer)")
    axes.set_title(f"{result['domain']}: mean ± spread over seeds (dots: single seeds)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8.5, loc="best")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def run_facts(args, seconds: float, embedder_name: str) -> dict:
    """What the results header says about the run that produced them (stored in quality.json)."""
    import subprocess

    import torch
    import transformers

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return {"command": " ".join(["python benchmarks/quality/run_quality.py", *sys.argv[1:]]), "minutes": round(seconds / 60, 1),
            "commit": commit, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
            "transformers": transformers.__version__, "embedder": embedder_name, "n": args.n, "seeds": args.seeds,
            "max_new_tokens": args.max_new_tokens, "experiment": args.experiment}


READING_HEADING = "## Reading it"


def write_results(results: list[dict], facts: dict, out: Path) -> None:
    """STEM.json, STEM.md and the plots (STEM: quality for the baselines, else the experiment's
    name); a hand-written "Reading it" section at the end of an existing STEM.md is kept."""
    experiment = facts.get("experiment", "baselines")
    stem = EXPERIMENTS[experiment][1]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps({"facts": facts, "results": results}, indent=1) + "\n")
    md = out / f"{stem}.md"
    reading = md.read_text().split("\n" + READING_HEADING, 1) if md.exists() else []
    reading = READING_HEADING + reading[1] if len(reading) == 2 else ""
    f = facts
    parts = [
        EXPERIMENTS[experiment][2],
        "",
        f"- Command: `{f['command']}` ({f['minutes']:.0f} min on the 2-core CPU machine"
        + (f"; {f['note']})" if f.get("note") else ")"),
        f"- Commit: {f['commit']} (models and code measured), date: {f['date']}, torch {f['torch']}, transformers {f['transformers']}",
        f"- {f['n']} samples per run, seeds {', '.join(map(str, f['seeds']))} (sample i of seed s: seed 1000 s + i), "
        f"up to {f['max_new_tokens']} new tokens, top_k 10 unless said, prompt = BOS; the real set shuffled and cut "
        f"to {f['n']} per run; embeddings: {f['embedder']}",
        "- Cells: mean ± standard deviation over the seeds. Coherency is the mean cosine of every synthetic to every "
        "real text (the real set against itself scores the value given per domain).",
        "",
    ]
    for result in results:
        plot = f"{'' if stem == 'quality' else stem + '_'}tradeoff_{result['domain']}.png"
        parts += [f"## {result['domain']}", "", result["description"] + ".", "", domain_table(result, experiment), "",
                  f"**{verdict(result, experiment)}**", "", f"![{result['domain']}]({plot})", "",
                  "Samples (seed " + str(f["seeds"][0]) + ", the first three written):", ""]
        for entry in result["summary"]:
            run = next(r for r in result["runs"] if r["method"] == entry["method"] and r["seed"] == f["seeds"][0])
            parts.append(f"- {entry['method']}: " + " / ".join(f"“{t}”" for t in run["examples"]))
        parts.append("")
        plot_domain(result, out / plot)
    md.write_text("\n".join(parts) + "\n" + (reading.rstrip() + "\n" if reading else ""))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", default="baselines", choices=sorted(EXPERIMENTS), help="which methods (see the module docstring)")
    p.add_argument("--domains", default="pyjokes,fortunes-computers", help="comma-separated: pyjokes, fortunes-CATEGORY")
    p.add_argument("--seeds", default="0,1,2", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--n", type=int, default=200, help="samples per (method, seed)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--embedder", default="auto", choices=("auto", "minilm", "tfidf"))
    p.add_argument("--workdir", type=Path, default=Path("/tmp/steer-quality"), help="samples, fetched corpora, trained experts")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "quality")
    p.add_argument("--rewrite", action="store_true", help="only rewrite quality.md and the plots from --out/quality.json")
    return p.parse_args(argv)


def main(argv=None) -> None:
    import torch

    from steer.data.embeddings import make_embedder

    args = parse_args(argv)
    if args.rewrite:
        stored = json.loads((args.out / f"{EXPERIMENTS[args.experiment][1]}.json").read_text())
        write_results(stored["results"], stored["facts"], args.out)
        return
    names = args.domains.split(",")
    unknown = [name for name in names if name != "pyjokes" and not name.startswith("fortunes-")]
    if unknown:
        raise SystemExit(f"unknown domain {unknown[0]!r}: pyjokes or fortunes-CATEGORY")
    torch.set_num_threads(2)
    started = time.time()
    embed = make_embedder(args.embedder)
    results = []
    for name in names:
        if name == "pyjokes":
            domain = pyjokes_domain()
        else:
            domain = fortunes_domain(name.removeprefix("fortunes-"), args.workdir, seed=0)
        results.append(run_domain(domain, args, args.workdir, embed, EXPERIMENTS[args.experiment][0]))
    write_results(results, run_facts(args, time.time() - started, embed.name), args.out)
    log(f"wrote {args.out / (EXPERIMENTS[args.experiment][1] + '.md')} in {(time.time() - started) / 60:.1f} min")
    for result in results:
        print(f"\n{result['domain']}\n{domain_table(result, args.experiment)}\n{verdict(result, args.experiment)}")


if __name__ == "__main__":
    main()
