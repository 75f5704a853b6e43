"""``steer tune``: the most diverse (gamma, eta) whose coherency stays within a bound of plain
sampling's, found by successive halving over a grid, and shown against the frontiers of the
usual diversity knobs (temperature, top-p, min-p).

Rung 0 generates ``n_min`` samples for every cell: the STEER grid, plain sampling (gamma = eta =
0), and the baselines. A cell is *feasible* when its coherency is at least (1 - max drop) times
plain sampling's at the same rung. Cells are ranked feasible first, by the objective (higher =
more diverse), then the infeasible ones by coherency; the better half of the STEER cells goes on
to the next rung with twice the samples (their files are extended with ``--resume``, so a cell's
first samples are reused, never regenerated), plain sampling with them, until one cell is left
or ``n_max`` is reached. The choice is the best feasible cell of the last rung. Comparing at one
sample count matters: every n-gram metric falls as n grows.

Writes ``tune.md`` (every rung's table and the choice), ``tune.json`` (every evaluation),
``chosen.json`` and ``frontier.png`` (rung 0: every family at the same n, each family's Pareto
frontier in diversity x coherency, the chosen cell marked). Every cell is a resumable ``steer
generate`` output under ``cells/``, so a killed tune continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from steer.data.generate import plan_generation, run_generation
from steer.data.io import DataError, read_texts
from steer.data.models import load_models, pick_device, pick_dtype

OBJECTIVES = ("diversity", "vendi_score", "normalised_3grams")
# The baselines' knobs: temperature alone, nucleus, and min-p at T = 1.5 (min-p's usual pairing
# with a high temperature; for the expert alone it is the plausibility floor at alpha = m^T).
TEMPERATURES = (0.7, 1.0, 1.3, 1.6)
TOP_PS = (0.8, 0.9, 0.95)
MIN_PS = (0.02, 0.05, 0.1)
MIN_P_TEMPERATURE = 1.5


@dataclass(frozen=True, eq=False)
class Cell:
    family: str  # "STEER", "plain", "temperature", "top-p", "min-p"
    label: str
    settings: dict  # SteerConfig fields on top of the run's

    @property
    def file_name(self) -> str:
        return f"{self.family}_{self.label}.jsonl".replace(" ", "").replace("=", "").replace(",", "_")


@dataclass
class TuneResult:
    rungs: list[dict]  # per rung: n and the evaluated rows
    chosen: dict | None
    plain: dict
    table_path: Path
    json_path: Path
    plot_path: Path


def grid_cells(gammas, etas) -> list[Cell]:
    return [Cell("STEER", f"gamma={g:g},eta={e:g}", {"gamma": g, "eta": e})
            for g in dict.fromkeys(gammas) for e in dict.fromkeys(etas) if (g, e) != (0, 0)]  # fmt: skip


def baseline_cells() -> list[Cell]:
    plain = {"gamma": 0.0, "eta": 0.0}
    cells = [Cell("temperature", f"T={t:g}", {**plain, "temperature": t}) for t in TEMPERATURES]
    cells += [Cell("top-p", f"p={p:g}", {**plain, "top_k": 0, "top_p": p}) for p in TOP_PS]
    cells += [Cell("min-p", f"m={m:g}", {**plain, "top_k": 0, "temperature": MIN_P_TEMPERATURE,
                                         "plausibility_alpha": m**MIN_P_TEMPERATURE}) for m in MIN_PS]  # fmt: skip
    return cells


PLAIN = Cell("plain", "plain", {"gamma": 0.0, "eta": 0.0})


def check_options(*, max_coherency_drop: float, objective: str, n_min: int, n_max: int) -> None:
    if not 0 <= max_coherency_drop < 1:
        raise DataError(f"--max-coherency-drop must be in [0, 1) (a fraction of plain sampling's coherency), got {max_coherency_drop}")
    if objective not in OBJECTIVES:
        raise DataError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if n_min < 10:
        raise DataError(f"--n-min must be at least 10 (evaluation needs 10 samples), got {n_min}")
    if n_max < n_min:
        raise DataError(f"--n-max ({n_max}) must be at least --n-min ({n_min})")


def rung_sizes(n_min: int, n_max: int) -> list[int]:
    """n_min, 2 n_min, ... while below n_max, then n_max."""
    sizes = [n_min]
    while sizes[-1] * 2 < n_max:
        sizes.append(sizes[-1] * 2)
    if sizes[-1] != n_max:
        sizes.append(n_max)
    return sizes


def rank(rows: list[dict], plain: dict, *, objective: str, max_coherency_drop: float) -> list[dict]:
    """Rows marked feasible or not against ``plain`` and ordered best first."""
    floor = (1 - max_coherency_drop) * plain["coherency"]
    for row in rows:
        row["feasible"] = row["coherency"] >= floor
    return sorted(rows, key=lambda r: (not r["feasible"], -(r[objective] if r["feasible"] else r["coherency"])))


def run_tune(template, out_dir: Path, *, gammas, etas, max_coherency_drop: float = 0.05, objective: str = "diversity",
             n_min: int = 64, n_max: int = 256, baselines: bool = True, embedder: str = "auto", seed: int = 0,
             log=print) -> TuneResult:  # fmt: skip
    """``template``: the GenerateRequest every cell derives from (its config is the run's; each
    cell sets its own fields, ``n`` and ``out``)."""
    from steer.data.embeddings import make_embedder

    check_options(max_coherency_drop=max_coherency_drop, objective=objective, n_min=n_min, n_max=n_max)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {out_dir} is a file: steer tune writes a directory of cells, tables and a plot")
    from steer.data.metrics import MIN_TEXTS

    if len(template.real_texts) < MIN_TEXTS:
        raise DataError(f"the real set {template.real_name} has {len(template.real_texts)} texts: steer tune evaluates every cell against it, which needs at least {MIN_TEXTS}")
    candidates = grid_cells(gammas, etas)
    if not candidates:
        raise DataError("the grid has no STEER cell: give --gammas or --etas other than 0")
    cells = [PLAIN, *candidates, *(baseline_cells() if baselines else [])]
    plans = [plan_generation(_request(template, cell, n_min, out_dir)) for cell in cells]  # every cell checked before any runs
    (out_dir / "cells").mkdir(parents=True, exist_ok=True)
    embed = make_embedder(embedder)
    models = load_models(plans[0].sources, dtype=pick_dtype(template.dtype, pick_device(template.device)))
    rungs, alive = [], candidates
    for index, n in enumerate(rung_sizes(n_min, n_max)):
        active = cells if index == 0 else [PLAIN, *alive]
        log(f"rung {index}: {len(active)} cells x {n} samples")
        rows = [_evaluate(template, cell, n, out_dir, models, embed, seed) for cell in active]
        plain = next(r for r in rows if r["family"] == "plain")
        ranked = rank([r for r in rows if r["family"] != "plain"], plain, objective=objective, max_coherency_drop=max_coherency_drop)
        rungs.append({"n": n, "plain": plain, "rows": ranked})
        steer_rows = [r for r in ranked if r["family"] == "STEER"]
        if len(steer_rows) <= 1 or n == n_max:
            break
        keep = {r["label"] for r in steer_rows[: math.ceil(len(steer_rows) / 2)]}
        alive = [c for c in alive if c.label in keep]
    last = rungs[-1]
    chosen = next((r for r in last["rows"] if r["family"] == "STEER" and r["feasible"]), None)
    return _write(out_dir, rungs, chosen, objective=objective, max_coherency_drop=max_coherency_drop)


def _request(template, cell: Cell, n: int, out_dir: Path):
    """The cell's GenerateRequest for at least ``n`` samples (more where an earlier tune of the
    same cell went further: its file is reused, never cut)."""
    config = dataclasses.replace(template.config, **cell.settings)
    out = out_dir / "cells" / cell.file_name
    return dataclasses.replace(template, config=config, n=max(n, _records_in(out)), out=out, resume=True, quiet=True)


def _records_in(path: Path) -> int:
    return sum(1 for line in path.read_bytes().split(b"\n") if line.strip()) if path.is_file() else 0


def _evaluate(template, cell: Cell, n: int, out_dir: Path, models, embed, seed: int) -> dict:
    """Generate the cell up to ``n`` samples (nothing when its file has them) and score its first n."""
    from steer.data.metrics import evaluate, summary_row

    request = _request(template, cell, n, out_dir)
    summary = run_generation(plan_generation(request), models=models)
    texts = read_texts(request.out)[:n]
    row = {"family": cell.family, "label": cell.label, **cell.settings, "n": n,
           **summary_row(evaluate(template.real_texts, texts, embedder=embed, seed=seed, knn=False)),
           "seconds": summary.seconds}  # fmt: skip
    return row


def _write(out_dir: Path, rungs: list[dict], chosen: dict | None, *, objective: str, max_coherency_drop: float) -> TuneResult:
    from steer.data.report import plot_frontiers

    plain = rungs[-1]["plain"]
    table_path, json_path, plot_path = out_dir / "tune.md", out_dir / "tune.json", out_dir / "frontier.png"
    json_path.write_text(json.dumps({"objective": objective, "max_coherency_drop": max_coherency_drop, "rungs": rungs,
                                     "chosen": chosen}, indent=1) + "\n")  # fmt: skip
    (out_dir / "chosen.json").write_text(json.dumps({"chosen": chosen, "plain": plain}, indent=1) + "\n")
    table_path.write_text(tune_markdown(rungs, chosen, objective=objective, max_coherency_drop=max_coherency_drop))
    first = rungs[0]
    marked = next((r for r in first["rows"] if chosen and r["label"] == chosen["label"]), None)
    plot_frontiers([first["plain"], *first["rows"]], plot_path, x=objective, chosen=marked,
                   title=f"rung 0, {first['n']} samples per cell: each family's frontier")  # fmt: skip
    return TuneResult(rungs, chosen, plain, table_path, json_path, plot_path)


def choice_sentence(chosen: dict | None, plain: dict, *, objective: str, max_coherency_drop: float) -> str:
    if chosen is None:
        return (f"No STEER cell kept its coherency within {100 * max_coherency_drop:g}% of plain sampling's "
                f"({plain['coherency']:.3f}) at the last rung: loosen --max-coherency-drop or add smaller gammas and etas.")
    return (f"Chosen: gamma {chosen['gamma']:g}, eta {chosen['eta']:g}: {objective} {chosen[objective]:.3f} vs plain "
            f"sampling's {plain[objective]:.3f}, coherency {chosen['coherency']:.3f} vs {plain['coherency']:.3f} "
            f"(bound {(1 - max_coherency_drop) * plain['coherency']:.3f}), at {chosen['n']} samples.")


def tune_markdown(rungs: list[dict], chosen: dict | None, *, objective: str, max_coherency_drop: float) -> str:
    columns = (objective, "coherency", "diversity", "normalised_3grams", "vendi_score", "self_bleu", "authenticity_auc", "mauve")
    columns = tuple(dict.fromkeys(columns))
    lines = [f"# steer tune: the most diverse cell within {100 * max_coherency_drop:g}% of plain sampling's coherency", "",
             f"**{choice_sentence(chosen, rungs[-1]['plain'], objective=objective, max_coherency_drop=max_coherency_drop)}**", ""]  # fmt: skip
    for index, rung in enumerate(rungs):
        lines += [f"## Rung {index}: {rung['n']} samples per cell", "",
                  "| family | cell | feasible | " + " | ".join(c.replace("_", " ") for c in columns) + " |",
                  "|---|---|---|" + "---:|" * len(columns)]  # fmt: skip
        for row in [rung["plain"], *rung["rows"]]:
            cells = [("-" if row.get(c) is None else f"{row[c]:.3f}") for c in columns]
            feasible = "reference" if row["family"] == "plain" else ("yes" if row["feasible"] else "no")
            lines.append(f"| {row['family']} | {row['label']} | {feasible} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
