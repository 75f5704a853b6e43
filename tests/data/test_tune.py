"""steer tune: successive halving over the grid with a coherency bound, cells reused across rungs,
the frontiers of the baselines beside it."""

from __future__ import annotations

import json

import pytest

from steer.cli import main
from steer.data.report import pareto_frontier
from steer.data.tune import Bounds, baseline_cells, choice_sentence, rank, rung_sizes


def test_rung_sizes_double_up_to_the_last():
    assert rung_sizes(64, 256) == [64, 128, 256]
    assert rung_sizes(50, 300) == [50, 100, 200, 300]
    assert rung_sizes(20, 20) == [20]


def test_rank_puts_feasible_cells_first_by_the_objective():
    plain = {"coherency": 0.20}
    rows = [{"label": "a", "coherency": 0.30, "diversity": 0.5}, {"label": "b", "coherency": 0.195, "diversity": 0.9},
            {"label": "c", "coherency": 0.10, "diversity": 0.99}, {"label": "d", "coherency": 0.15, "diversity": 0.1}]  # fmt: skip
    ranked = rank(rows, plain, objective="diversity", bounds=Bounds(0.05))  # bound: 0.19
    assert [r["label"] for r in ranked] == ["b", "a", "d", "c"]  # b, a feasible by diversity; then by coherency
    assert [r["feasible"] for r in ranked] == [True, True, False, False]


def test_a_miss_within_rounding_is_no_miss():
    """Coherency near 0 (texts that share nothing with the real ones) differs between cells by
    rounding alone: that does not make a cell infeasible; a real miss, however small, does."""
    bounds = Bounds(0.05)
    assert bounds.shortfall({"coherency": -2.4e-19}, {"coherency": 4.2e-18}) == 0
    assert bounds.shortfall({"coherency": 0.19 - 5e-7}, {"coherency": 0.2}) == 0
    assert bounds.shortfall({"coherency": 0.1899}, {"coherency": 0.2}) == pytest.approx(1e-4 / 0.19)


def test_mauve_and_auc_bounds_make_a_coherent_but_unreal_cell_infeasible():
    plain = {"coherency": 0.20, "diversity": 0.5, "mauve": 0.60, "authenticity_auc": 0.80}
    rows = [  # a: the most diverse, coherent, but told from real texts at once (the demo jokes' choice)
        {"label": "a", "coherency": 0.25, "diversity": 0.9, "mauve": 0.10, "authenticity_auc": 0.98},
        {"label": "b", "coherency": 0.20, "diversity": 0.7, "mauve": 0.55, "authenticity_auc": 0.85},
        {"label": "c", "coherency": 0.20, "diversity": 0.8, "mauve": 0.50, "authenticity_auc": 0.86},
        {"label": "d", "coherency": 0.18, "diversity": 0.6, "mauve": 0.58, "authenticity_auc": 0.84},
    ]
    assert [r["label"] for r in rank(rows, plain, objective="diversity", bounds=Bounds(0.05))][:2] == ["a", "c"]
    bounds = Bounds(0.05, max_mauve_drop=0.1, max_auc=0.9)  # MAUVE >= 0.54, AUC <= 0.9, coherency >= 0.19
    ranked = rank(rows, plain, objective="diversity", bounds=bounds)
    assert [(r["label"], r["feasible"]) for r in ranked] == [("b", True), ("d", False), ("c", False), ("a", False)]
    # shortfalls relative to each limit: d misses coherency by 0.01 / 0.19, c MAUVE by 0.04 / 0.54,
    # a MAUVE by 0.44 / 0.54 and the AUC by 0.08 / 0.9
    assert ranked[1]["shortfall"] == pytest.approx(0.01 / 0.19)
    assert ranked[2]["shortfall"] == pytest.approx(0.04 / 0.54)
    assert ranked[3]["shortfall"] == pytest.approx(0.44 / 0.54 + 0.08 / 0.9)
    chosen = {**ranked[0], "gamma": 0.2, "eta": 0.4, "n": 64}
    sentence = choice_sentence(chosen, plain, objective="diversity", bounds=bounds)
    assert sentence == ("Chosen: gamma 0.2, eta 0.4: diversity 0.700 vs plain sampling's 0.500, coherency 0.200 vs 0.200 "
                        "(bound 0.190), MAUVE 0.550 vs 0.600 (bound 0.540), authenticity AUC 0.850 vs 0.800 (bound 0.900), "
                        "at 64 samples.")  # fmt: skip
    assert "an authenticity AUC of at most 0.9" in choice_sentence(None, plain, objective="diversity", bounds=bounds)


def test_a_bound_on_a_metric_that_was_not_computed_is_an_error():
    from steer.data.io import DataError

    plain = {"family": "plain", "label": "plain", "coherency": 0.2, "mauve": None}
    with pytest.raises(DataError, match="plain plain: mauve was not computed .pip install mauve-text., so its bound cannot be judged"):
        rank([{"coherency": 0.2, "diversity": 0.5, "mauve": 0.5}], plain, objective="diversity", bounds=Bounds(0.05, max_mauve_drop=0.1))


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
    captured = capsys.readouterr()
    printed = captured.out
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
    # the tiny models write random characters, which share no TF-IDF terms with the real texts:
    # every coherency is ~0 (rounding), so no cell misses the bound and the most diverse is chosen
    assert "steer tune: warning: plain sampling's coherency is" in captured.err and "try --embedder minilm" in captured.err
    chosen = result["chosen"]
    assert code == 0 and chosen["feasible"] and chosen["n"] == 20
    assert chosen["diversity"] == max(r["diversity"] for r in second)
    assert f"Chosen: gamma {chosen['gamma']:g}, eta {chosen['eta']:g}" in printed
    assert (out / "frontier.png").stat().st_size > 10_000 and "## Rung 1: 20 samples per cell" in (out / "tune.md").read_text()
    assert main(args) == code  # a second run reuses every cell (nothing to generate) and chooses the same
    again = json.loads((out / "tune.json").read_text())["chosen"]
    assert {**again, "seconds": 0} == {**chosen, "seconds": 0} and again["seconds"] < 0.5


@pytest.mark.parametrize("extra, message", [
    (["--max-coherency-drop", "1.5"], "--max-coherency-drop must be in [0, 1)"),
    (["--max-mauve-drop", "-0.1"], "--max-mauve-drop must be in [0, 1) (a fraction of plain sampling's MAUVE)"),
    (["--max-mauve-drop", "nan"], "--max-mauve-drop must be in [0, 1)"),
    (["--max-auc", "0.3"], "--max-auc must be in [0.5, 1] (0.5: the texts cannot be told from real ones), got 0.3"),
    (["--max-auc", "nan"], "--max-auc must be in [0.5, 1]"),
    (["--n-min", "5"], "--n-min must be at least 10"),
    (["--n-min", "50", "--n-max", "20"], "--n-max (20) must be at least --n-min (50)"),
    (["--gammas", "0", "--etas", "0"], "the grid has no STEER cell"),
    (["--etas", "0.2,-1"], "--gammas/--etas: the cell gamma=0,eta=-1: eta must be a finite number >= 0.0"),
    (["--gammas", "0.2,inf"], "--gammas/--etas: the cell gamma=inf,eta=0: gamma must be a finite number"),
    (["--etas", "1.5"], "--gammas/--etas: the cell gamma=0,eta=1.5: eta must be <= 1"),
    (["--real", "{small}"], "has 5 texts: steer tune evaluates every cell against it, which needs at least 10"),
])  # fmt: skip
def test_bad_tune_options_are_refused(models, real, tmp_path, capsys, extra, message):
    extra = [str(models["real"]) if e == "{small}" else e for e in extra]
    args = ["tune", "--expert", str(models["expert"]), "--base", str(models["base"]), "--real", str(real),
            "--out", str(tmp_path / "tune"), "--embedder", "tfidf", *extra]  # fmt: skip
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "tune").exists()


def test_tune_with_mauve_and_auc_bounds_records_them_and_says_which_to_loosen(models, real, tmp_path, capsys):
    out = tmp_path / "tune"
    args = ["tune", "--expert", str(models["expert"]), "--base", str(models["base"]), "--real", str(real),
            "--gammas", "0.5", "--etas", "0.5", "--n-min", "10", "--n-max", "10", "--max-new-tokens", "8", "--no-baselines",
            "--batch-size", "6", "--embedder", "tfidf", "--max-coherency-drop", "0.9", "--max-mauve-drop", "0.9",
            "--max-auc", "0.5", "--out", str(out)]  # fmt: skip
    code = main(args)
    printed = capsys.readouterr().out
    result = json.loads((out / "tune.json").read_text())
    assert (result["max_coherency_drop"], result["max_mauve_drop"], result["max_auc"]) == (0.9, 0.9, 0.5)
    [row] = result["rungs"][0]["rows"]
    assert row["mauve"] is not None and row["authenticity_auc"] is not None
    assert row["feasible"] == (row["authenticity_auc"] <= 0.5 and row["mauve"] >= 0.1 * result["rungs"][0]["plain"]["mauve"])
    if not row["feasible"]:  # random tiny models' texts are told from the real ones: AUC above 0.5
        assert code == 1 and "loosen --max-coherency-drop, --max-mauve-drop, --max-auc" in printed
    title = (out / "tune.md").read_text().splitlines()[0]
    assert title == ("# steer tune: the most diverse cell within 90% of plain sampling's coherency, 90% of its MAUVE "
                     "and an authenticity AUC of at most 0.5")  # fmt: skip
