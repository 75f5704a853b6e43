"""``steer tune``: the most diverse (gamma, eta) whose coherency stays within a bound of plain
sampling's (and, when asked, its MAUVE within a bound of plain sampling's and its authenticity
AUC under a ceiling), found by successive halving over a grid, and shown against the frontiers
of the usual diversity knobs (temperature, top-p, min-p).

Rung 0 generates ``n_min`` samples for every cell: the STEER grid, plain sampling (gamma = eta =
0), and the baselines. A cell is *feasible* when it meets every bound (``Bounds``) at that rung:
coherency at least (1 - max drop) times plain sampling's; with ``max_mauve_drop``, MAUVE at least
(1 - that) times plain sampling's; with ``max_auc``, an authenticity AUC at most that (0.5: a
classifier cannot tell the cell's texts from real ones). Coherency alone is blind to texts that
are coherent but plainly unlike the real ones (the demo jokes' most diverse cell has an AUC of
0.98); the other two bounds see that. Cells are ranked feasible first, by the objective (higher =
more diverse), then the infeasible ones by how far they fall short (the sum over the bounds of
the shortfall, relative to the bound); the better half of the STEER cells goes on
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
import warnings
from dataclasses import dataclass
from pathlib import Path

from steer.config import check_steer_coefficients
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


# Coherency and MAUVE are means over float32 embeddings: a miss smaller than this is rounding, not
# a cell worse than plain sampling (two cells of coherency ~1e-18 must not be told apart by it).
METRIC_TOLERANCE = 1e-6
NEAR_ZERO_COHERENCY = 1e-3  # below it, "within x% of plain sampling's coherency" bounds nothing


@dataclass(frozen=True)
class Bounds:
    """What a cell must keep to be feasible, measured against plain sampling at the same rung."""

    max_coherency_drop: float = 0.05  # coherency >= (1 - this) x plain sampling's
    max_mauve_drop: float | None = None  # MAUVE >= (1 - this) x plain sampling's; None: not bounded
    max_auc: float | None = None  # authenticity AUC <= this; None: not bounded

    def check(self) -> None:
        """A DataError naming the option that is out of range."""
        for option, drop, what in (("--max-coherency-drop", self.max_coherency_drop, "coherency"),
                                   ("--max-mauve-drop", self.max_mauve_drop, "MAUVE")):  # fmt: skip
            if drop is not None and not (isinstance(drop, (int, float)) and 0 <= drop < 1):
                raise DataError(f"{option} must be in [0, 1) (a fraction of plain sampling's {what}), got {drop}")
        if self.max_auc is not None and not (isinstance(self.max_auc, (int, float)) and 0.5 <= self.max_auc <= 1):
            raise DataError(f"--max-auc must be in [0.5, 1] (0.5: the texts cannot be told from real ones), got {self.max_auc}")

    def limits(self, plain: dict) -> list[tuple[str, str, float]]:
        """(metric, ">=" or "<=", limit) of every bound, against ``plain``'s row. A metric that was
        not computed (MAUVE without the mauve package) is a DataError: the bound cannot be judged."""
        limits = [("coherency", ">=", (1 - self.max_coherency_drop) * plain["coherency"])]
        if self.max_mauve_drop is not None:
            limits.append(("mauve", ">=", (1 - self.max_mauve_drop) * _metric(plain, "mauve")))
        if self.max_auc is not None:
            limits.append(("authenticity_auc", "<=", self.max_auc))
        return limits

    def shortfall(self, row: dict, plain: dict) -> float:
        """0 for a feasible row; else the sum, over the bounds it misses, of how far it misses
        them relative to the limit (so bounds in different units add up)."""
        total = 0.0
        for metric, op, limit in self.limits(plain):
            value = _metric(row, metric)
            miss = limit - value if op == ">=" else value - limit
            if miss > METRIC_TOLERANCE:
                total += miss / max(abs(limit), 1e-12)
        return total

    def describe(self) -> str:
        parts = [f"within {100 * self.max_coherency_drop:g}% of plain sampling's coherency"]
        if self.max_mauve_drop is not None:
            parts.append(f"{100 * self.max_mauve_drop:g}% of its MAUVE")
        if self.max_auc is not None:
            parts.append(f"an authenticity AUC of at most {self.max_auc:g}")
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]

    def loosen_hint(self) -> str:
        options = ["--max-coherency-drop"] + ["--max-mauve-drop"] * (self.max_mauve_drop is not None)
        options += ["--max-auc"] * (self.max_auc is not None)
        return ", ".join(options)


def _metric(row: dict, metric: str) -> float:
    value = row.get(metric)
    if value is None:
        why = " (pip install mauve-text)" if metric == "mauve" else ""
        raise DataError(f"{row.get('family', '')} {row.get('label', '')}: {metric} was not computed{why}, so its bound cannot be judged")
    return value


def check_options(*, bounds: Bounds, objective: str, n_min: int, n_max: int) -> None:
    bounds.check()
    if bounds.max_mauve_drop is not None:
        from steer.data.metrics import mauve_available

        ok, note = mauve_available()
        if not ok:
            raise DataError(f"--max-mauve-drop bounds MAUVE, which cannot be computed here: {note}")
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


def rank(rows: list[dict], plain: dict, *, objective: str, bounds: Bounds) -> list[dict]:
    """Rows marked feasible or not against ``plain`` and ordered best first: the feasible by the
    objective, then the others by their shortfall (nearest to feasible first)."""
    for row in rows:
        row["shortfall"] = bounds.shortfall(row, plain)
        row["feasible"] = row["shortfall"] == 0
    return sorted(rows, key=lambda r: (not r["feasible"], -r[objective] if r["feasible"] else r["shortfall"]))


def run_tune(template, out_dir: Path, *, gammas, etas, bounds: Bounds = Bounds(), objective: str = "diversity",
             n_min: int = 64, n_max: int = 256, baselines: bool = True, embedder: str = "auto", seed: int = 0,
             log=print) -> TuneResult:  # fmt: skip
    """``template``: the GenerateRequest every cell derives from (its config is the run's; each
    cell sets its own fields, ``n`` and ``out``)."""
    from steer.data.embeddings import make_embedder

    check_options(bounds=bounds, objective=objective, n_min=n_min, n_max=n_max)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {out_dir} is a file: steer tune writes a directory of cells, tables and a plot")
    from steer.data.metrics import MIN_TEXTS

    if len(template.real_texts) < MIN_TEXTS:
        raise DataError(f"the real set {template.real_name} has {len(template.real_texts)} texts: steer tune evaluates every cell against it, which needs at least {MIN_TEXTS}")
    candidates = grid_cells(gammas, etas)
    if not candidates:
        raise DataError("the grid has no STEER cell: give --gammas or --etas other than 0")
    for cell in candidates:
        try:
            check_steer_coefficients(cell.settings["gamma"], cell.settings["eta"], rescale=template.config.rescale)
        except ValueError as error:
            raise DataError(f"--gammas/--etas: the cell {cell.label}: {error}") from None
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
        if index == 0 and abs(plain["coherency"]) < NEAR_ZERO_COHERENCY:
            warnings.warn(f"plain sampling's coherency is {plain['coherency']:.2g} under this embedder: a bound "
                          "relative to it hardly tells cells apart (texts that share no words or meaning with "
                          "the real ones; try --embedder minilm)", stacklevel=2)  # fmt: skip
        ranked = rank([r for r in rows if r["family"] != "plain"], plain, objective=objective, bounds=bounds)
        rungs.append({"n": n, "plain": plain, "rows": ranked})
        steer_rows = [r for r in ranked if r["family"] == "STEER"]
        if len(steer_rows) <= 1 or n == n_max:
            break
        keep = {r["label"] for r in steer_rows[: math.ceil(len(steer_rows) / 2)]}
        alive = [c for c in alive if c.label in keep]
    last = rungs[-1]
    chosen = next((r for r in last["rows"] if r["family"] == "STEER" and r["feasible"]), None)
    return _write(out_dir, rungs, chosen, objective=objective, bounds=bounds)


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


def _write(out_dir: Path, rungs: list[dict], chosen: dict | None, *, objective: str, bounds: Bounds) -> TuneResult:
    from steer.data.report import plot_frontiers

    plain = rungs[-1]["plain"]
    table_path, json_path, plot_path = out_dir / "tune.md", out_dir / "tune.json", out_dir / "frontier.png"
    json_path.write_text(json.dumps({"objective": objective, **dataclasses.asdict(bounds), "rungs": rungs,
                                     "chosen": chosen}, indent=1) + "\n")  # fmt: skip
    (out_dir / "chosen.json").write_text(json.dumps({"chosen": chosen, "plain": plain}, indent=1) + "\n")
    table_path.write_text(tune_markdown(rungs, chosen, objective=objective, bounds=bounds))
    first = rungs[0]
    marked = next((r for r in first["rows"] if chosen and r["label"] == chosen["label"]), None)
    plot_frontiers([first["plain"], *first["rows"]], plot_path, x=objective, chosen=marked,
                   title=f"rung 0, {first['n']} samples per cell: each family's frontier")  # fmt: skip
    return TuneResult(rungs, chosen, plain, table_path, json_path, plot_path)


_NAMES = {"coherency": "coherency", "mauve": "MAUVE", "authenticity_auc": "authenticity AUC"}


def choice_sentence(chosen: dict | None, plain: dict, *, objective: str, bounds: Bounds) -> str:
    if chosen is None:
        return (f"No STEER cell kept {bounds.describe()} at the last rung (plain sampling: coherency "
                f"{plain['coherency']:.3f}): loosen {bounds.loosen_hint()} or add smaller gammas and etas.")
    kept = ", ".join(f"{_NAMES[metric]} {chosen[metric]:.3f} vs {plain[metric]:.3f} (bound {limit:.3f})"
                     for metric, _, limit in bounds.limits(plain))  # fmt: skip
    return (f"Chosen: gamma {chosen['gamma']:g}, eta {chosen['eta']:g}: {objective} {chosen[objective]:.3f} vs plain "
            f"sampling's {plain[objective]:.3f}, {kept}, at {chosen['n']} samples.")


def tune_markdown(rungs: list[dict], chosen: dict | None, *, objective: str, bounds: Bounds) -> str:
    columns = (objective, "coherency", "diversity", "normalised_3grams", "vendi_score", "self_bleu", "authenticity_auc", "mauve")
    columns = tuple(dict.fromkeys(columns))
    lines = [f"# steer tune: the most diverse cell {bounds.describe()}", "",
             f"**{choice_sentence(chosen, rungs[-1]['plain'], objective=objective, bounds=bounds)}**", ""]  # fmt: skip
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
