"""``steer demo``: the whole loop offline, on the bundled tiny models.

The real set is the English programmer jokes of the ``pyjokes`` package; the expert is the
bundled base model (trained on Debian's fortunes) plus a LoRA adapter trained on those jokes.
The demo generates ``n`` samples with STEER's default settings and ``n`` with plain expert
sampling (gamma = eta = 0, same seeds), then evaluates the STEER set against the real one
(metrics.json, plots, report.html) and prints how the two compare on diversity and coherency.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from steer.config import SteerConfig
from steer.data.generate import GenerateRequest, plan_generation, run_generation
from steer.data.io import read_texts
from steer.data.models import load_models
from steer.demo.models import demo_base_dir, demo_expert_dir, demo_real_examples

DEMO_MAX_NEW_TOKENS = 48


def _write_real_set(path: Path, texts: list[str]) -> None:
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")


def _request(real: list[str], out: Path, n: int, config: SteerConfig, batch_size: int, quiet: bool) -> GenerateRequest:
    return GenerateRequest(
        real_texts=real, real_name="the demo's real examples (pyjokes)", expert=str(demo_expert_dir()),
        base=str(demo_base_dir()), prompt="", n=n, out=out, config=config, batch_size=batch_size,
        device="cpu", dtype="float32", resume=True, quiet=quiet,
    )


def _generation_line(summary) -> str:
    """How a set came to be: generated now, reused from an earlier demo run, or both."""
    new = summary.written - summary.resumed_from
    if new == 0:
        return f"{summary.written} samples reused from {summary.out}, written by an earlier run with the same settings (delete it to start fresh)"
    if summary.resumed_from:
        return f"{summary.resumed_from} samples reused from an earlier run, {new} generated in {summary.seconds:.1f} s"
    return f"{new} samples in {summary.seconds:.1f} s"


def _check_demo_arguments(out_dir: Path, n: int) -> None:
    """What only the demo asks of its arguments (plan_generation checks the rest), before a model
    or a file is touched."""
    from steer.data.io import DataError
    from steer.data.metrics import MIN_TEXTS

    if n < MIN_TEXTS:
        raise DataError(f"--n {n}: the demo evaluates its samples, which needs at least {MIN_TEXTS}")
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {out_dir} is a file: the demo writes a directory of results")


def run_demo(out_dir: Path, *, n: int = 200, seed: int = 0, batch_size: int = 32, embedder: str = "auto", quiet: bool = False) -> int:
    """Generate ``n`` STEER samples and ``n`` plain expert samples (same seeds) into ``out_dir``,
    evaluate both against the real jokes and write the STEER report with the plain set beside it.
    A second call with the same directory resumes (or reuses) what the first one wrote."""
    from steer.data.embeddings import make_embedder
    from steer.data.evaluation import evaluate_and_report, headline
    from steer.data.metrics import evaluate, verdict

    start = time.perf_counter()
    out_dir = Path(out_dir)
    real = demo_real_examples()
    steer_config = SteerConfig(seed=seed, max_new_tokens=DEMO_MAX_NEW_TOKENS)
    plain_config = SteerConfig(gamma=0.0, eta=0.0, seed=seed, max_new_tokens=DEMO_MAX_NEW_TOKENS)
    steer_plan = plan_generation(_request(real, out_dir / "synthetic.jsonl", n, steer_config, batch_size, quiet))
    plain_plan = plan_generation(_request(real, out_dir / "plain_expert.jsonl", n, plain_config, batch_size, quiet))
    _check_demo_arguments(out_dir, n)  # after plan_generation has checked that n is a whole number >= 1
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_real_set(out_dir / "real.jsonl", real)
    models = load_models(steer_plan.sources, dtype=torch.float32)  # the _request's device and dtype
    print(f"steer demo: {len(real)} real jokes; {n} samples with STEER (gamma {steer_config.gamma}, eta {steer_config.eta}) "
          f"and {n} with plain expert sampling, into {out_dir}", flush=True)
    for name, plan in (("STEER", steer_plan), ("plain expert", plain_plan)):
        summary = run_generation(plan, models=models)
        print(f"  {name}: {_generation_line(summary)}", flush=True)
    embed = make_embedder(embedder)
    steer_texts, plain_texts = read_texts(steer_plan.request.out), read_texts(plain_plan.request.out)
    plain = evaluate(real, plain_texts, embedder=embed, seed=seed, knn=False)
    (out_dir / "plain_expert_metrics.json").write_text(json.dumps(plain, indent=2) + "\n")
    metrics = evaluate_and_report(
        real, steer_texts, out_dir, embedder=embed, seed=seed, generation=steer_plan.run_metadata,
        title="steer demo: synthetic programmer jokes", baselines={"plain expert (γ = η = 0, same seeds)": plain},
    )
    print("  metric                        STEER    plain expert")
    steer_rows, plain_rows = dict(headline(metrics)), dict(headline(plain))
    for name, value in steer_rows.items():
        print(f"  {name:<28} {value:>7}  {plain_rows.get(name, '-'):>7}")
    print(f"  {verdict('STEER', metrics['summary'], 'plain expert', plain['summary'])}")
    print(f"wrote {out_dir / 'report.html'} (open it in a browser), metrics.json, plots; {time.perf_counter() - start:.0f} s in all")
    return 0
