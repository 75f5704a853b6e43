"""``steer sweep``: one dataset, a gamma x eta grid, the diversity-coherency trade-off.

The paper's central claim is that gamma (expert vs base) and eta (negative prompts) steer a
trade-off: more of either makes the data more diverse and less like the real data. A sweep
generates the same number of samples with the same seeds for every cell, scores each cell against
the real set with one embedding model, and writes ``sweep.md`` (table), ``sweep.json`` and
``tradeoff.png``. Each cell's samples are a resumable ``steer generate`` output, so a killed
sweep picks up where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from steer.data.generate import plan_generation, run_generation
from steer.data.io import DataError, read_texts
from steer.data.models import load_models, pick_device, pick_dtype

TABLE_METRICS = ("normalised_3grams", "diversity", "coherency", "authenticity_auc", "mauve", "copies_of_real")


@dataclass(frozen=True)
class SweepResult:
    rows: list[dict]
    table: str
    table_path: Path
    json_path: Path
    plot_path: Path


def cell_path(out_dir: Path, gamma: float, eta: float) -> Path:
    return out_dir / f"gamma{gamma:g}_eta{eta:g}.jsonl"


def sweep_row(gamma: float, eta: float, metrics: dict) -> dict:
    """The numbers of one cell that the table and plot show."""
    from steer.data.metrics import summary_row

    return {"gamma": gamma, "eta": eta, **summary_row(metrics)}


def run_sweep(request_for, gammas: list[float], etas: list[float], out_dir: Path, *, embedder: str = "auto", seed: int = 0) -> SweepResult:
    """``request_for(gamma, eta, path)`` gives each cell's GenerateRequest; every cell is checked
    before any is generated, and the models are loaded once for the whole grid."""
    from steer.data.embeddings import make_embedder
    from steer.data.metrics import evaluate
    from steer.data.report import plot_tradeoff, tradeoff_table_markdown

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {out_dir} is a file: steer sweep writes a directory of cells, a table and a plot")
    cells = [(g, e) for g in dict.fromkeys(gammas) for e in dict.fromkeys(etas)]
    plans = [plan_generation(request_for(g, e, cell_path(out_dir, g, e))) for g, e in cells]
    out_dir.mkdir(parents=True, exist_ok=True)  # only once every cell is known to be good
    first = plans[0].request
    models = None
    embed = make_embedder(embedder)
    rows = []
    distributed = first.workers is not None
    if distributed:  # one Ray cluster for the whole grid (each cell's workers load the models)
        from steer.data.distributed import start_ray

        stop_ray = start_ray(first)
    for (gamma, eta), plan in zip(cells, plans):
        if models is None and not distributed and _needs_generation(plan):
            models = load_models(plans[0].sources, dtype=pick_dtype(first.dtype, pick_device(first.device)))
        print(f"cell gamma={gamma:g} eta={eta:g}: {plan.request.out}", flush=True)
        run_generation(plan, models=models)
        synthetic = read_texts(plan.request.out)
        rows.append(sweep_row(gamma, eta, evaluate(first.real_texts, synthetic, embedder=embed, seed=seed, knn=False)))
    if distributed:
        stop_ray()
    table = tradeoff_table_markdown(rows)
    table_path, json_path, plot_path = out_dir / "sweep.md", out_dir / "sweep.json", out_dir / "tradeoff.png"
    table_path.write_text(table + "\n")
    json_path.write_text(json.dumps({"real": first.real_name, "n": first.n, "rows": rows}, indent=2) + "\n")
    plot_tradeoff(rows, plot_path)
    return SweepResult(rows, table, table_path, json_path, plot_path)


def _needs_generation(plan) -> bool:
    out = plan.request.out
    if not out.exists():
        return True
    complete = sum(1 for line in out.read_bytes().split(b"\n") if line.strip())
    return complete < plan.request.n
