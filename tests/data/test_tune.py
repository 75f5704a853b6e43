"""steer tune: successive halving over the grid with a coherency bound, cells reused across rungs,
the frontiers of the baselines beside it."""

from __future__ import annotations

import json

import pytest

from steer.cli import main
from steer.data.report import pareto_frontier
from steer.data.tune import baseline_cells, rank, rung_sizes


def test_rung_sizes_double_up_to_the_last():
    assert rung_sizes(64, 256) == [64, 128, 256]
    assert rung_sizes(50, 300) == [50, 100, 200, 300]
    assert rung_sizes(20, 20) == [20]


def test_rank_puts_feasible_cells_first_by_the_objective():
    plain = {"coherency": 0.20}
    rows = [{"label": "a", "coherency": 0.30, "diversity": 0.5}, {"label": "b", "coherency": 0.195, "diversity": 0.9},
            {"label": "c", "coherency": 0.10, "diversity": 0.99}, {"label": "d", "coherency": 0.15, "diversity": 0.1}]  # fmt: skip
    ranked = rank(rows, plain, objective="diversity", max_coherency_drop=0.05)  # bound: 0.19
    assert [r["label"] for r in ranked] == ["b", "a", "d", "c"]  # b, a feasible by diversity; then by coherency
    assert [r["feasible"] for r in ranked] == [True, True, False, False]


def test_pareto_frontier():
    points = [(0.1, 0.9), (0.5, 0.5), (0.4, 0.4), (0.9, 0.1), (0.5, 0.6)]
    assert pareto_frontier(points) == [(0.1, 0.9), (0.5, 0.6), (0.9, 0.1)]


def test_min_p_cells_are_the_plausibility_floor_at_alpha_m_to_the_t():
    cells = {c.label: c for c in baseline_cells() if c.family == "min-p"}
    assert cells["m=0.1"].settings["plausibility_alpha"] == pytest.approx(0.1**1.5)
    assert cells["m=0.1"].settings["temperature"] == 1.5 and cells["m=0.1"].settings["top_k"] == 0


@pytest.fixture
def real(tmp_path):
    path = tmp_path / "real.txt"  # evaluation wants at least 10 real texts
    path.write_text("".join(f"{a} {b}\n" for a in ("the cat", "a dog", "my bird", "one fish") for b in ("sat", "ran", "hid")))
    return path


def test_tune_halves_the_grid_reuses_cells_and_chooses_within_the_bound(models, real, tmp_path, capsys):
    out = tmp_path / "tune"
    args = ["tune", "--expert", str(models["expert"]), "--base", str(models["base"]), "--real", str(real),
            "--gammas", "0,0.5", "--etas", "0,0.5", "--n-min", "10", "--n-max", "20", "--max-new-tokens", "8",
            "--batch-size", "6", "--embedder", "tfidf", "--max-coherency-drop", "0.5", "--out", str(out)]  # fmt: skip
    code = main(args)
    printed = capsys.readouterr().out
    result = json.loads((out / "tune.json").read_text())
    rungs = result["rungs"]
    assert [r["n"] for r in rungs] == [10, 20]
    first = {(r["family"], r["label"]) for r in rungs[0]["rows"]}
    assert {f for f, _ in first} == {"STEER", "temperature", "top-p", "min-p"} and len(first) == 3 + 10
    second = [r for r in rungs[1]["rows"]]
    assert len(second) == 2 and all(r["family"] == "STEER" for r in second)  # the better half of 3 STEER cells
    best_two = [r["label"] for r in rungs[0]["rows"] if r["family"] == "STEER"][:2]
    assert {r["label"] for r in second} == set(best_two)
    for row in second:  # a cell's rung-0 samples are the first of its rung-1 file
        lines = (out / "cells" / f"STEER_{row['label']}.jsonl".replace("=", "").replace(",", "_")).read_text().splitlines()
        assert len(lines) == 20
    chosen = result["chosen"]
    if chosen is None:
        assert code == 1 and "No STEER cell kept its coherency" in printed
    else:
        assert code == 0 and chosen["feasible"] and chosen["n"] == 20
        assert chosen["coherency"] >= 0.5 * rungs[-1]["plain"]["coherency"]
        assert f"Chosen: gamma {chosen['gamma']:g}, eta {chosen['eta']:g}" in printed
    assert (out / "frontier.png").stat().st_size > 10_000 and "## Rung 1: 20 samples per cell" in (out / "tune.md").read_text()
    assert main(args) == code  # a second run reuses every cell (nothing to generate) and chooses the same
    again = json.loads((out / "tune.json").read_text())["chosen"]
    assert (again is None and chosen is None) or ({**again, "seconds": 0} == {**chosen, "seconds": 0} and again["seconds"] < 0.5)


@pytest.mark.parametrize("extra, message", [
    (["--max-coherency-drop", "1.5"], "--max-coherency-drop must be in [0, 1)"),
    (["--n-min", "5"], "--n-min must be at least 10"),
    (["--n-min", "50", "--n-max", "20"], "--n-max (20) must be at least --n-min (50)"),
    (["--gammas", "0", "--etas", "0"], "the grid has no STEER cell"),
    (["--real", "{small}"], "has 5 texts: steer tune evaluates every cell against it, which needs at least 10"),
])  # fmt: skip
def test_bad_tune_options_are_refused(models, real, tmp_path, capsys, extra, message):
    extra = [str(models["real"]) if e == "{small}" else e for e in extra]
    args = ["tune", "--expert", str(models["expert"]), "--base", str(models["base"]), "--real", str(real),
            "--out", str(tmp_path / "tune"), "--embedder", "tfidf", *extra]  # fmt: skip
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "tune").exists()
