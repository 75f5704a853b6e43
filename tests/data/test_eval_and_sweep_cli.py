"""steer eval and steer sweep from the command line: files written, bad input refused in one line."""

from __future__ import annotations

import json

import pytest
from model_dirs import save_expert_and_base, save_lora_adapter

from steer.cli import main

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

REAL = [f"example number {i} says {word} and more" for i, word in enumerate("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split())]


@pytest.fixture()
def files(tmp_path):
    real = tmp_path / "real.jsonl"
    real.write_text("".join(json.dumps({"body": t}) + "\n" for t in REAL))
    synthetic = tmp_path / "synthetic.txt"
    synthetic.write_text("\n".join(f"sample {i} tells of {w} today" for i, w in enumerate("one two three four five six seven eight nine ten eleven".split())) + "\n")
    return real, synthetic


def test_eval_writes_metrics_plots_and_report(files, tmp_path, capsys):
    real, synthetic = files
    out = tmp_path / "eval"
    assert main(["eval", "--real", str(real), "--synthetic", str(synthetic), "--text-field", "body", "--out", str(out), "--embedder", "tfidf"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["counts"]["synthetic"] == 11 and metrics["counts"]["real_input"] == 12
    assert {"normalised_3grams", "diversity", "coherency", "authenticity_auc", "mauve"} <= set(metrics["summary"])
    for name in ("report.html", "embedding_map.png", "ngram_diversity.png"):
        assert (out / name).stat().st_size > 1000
    assert "normalised 3-grams" in capsys.readouterr().out


EVAL_BAD = [
    (["--real", "{missing}"], "file not found"),
    (["--text-field", "nope"], "no field 'nope'"),
    (["--synthetic", "{few}"], "synthetic set has 3 texts"),
    (["--embedder", "bert"], "invalid choice"),
]


@pytest.mark.parametrize("arguments, message", EVAL_BAD, ids=[m for _, m in EVAL_BAD])
def test_eval_rejects_bad_input(files, tmp_path, capsys, arguments, message):
    real, synthetic = files
    few = tmp_path / "few.txt"
    few.write_text("a b c\nd e f\ng h i\n")
    names = {"missing": tmp_path / "missing.jsonl", "few": few}
    given = dict(zip(arguments[::2], [a.format(**names) for a in arguments[1::2]]))
    options = {"--real": str(real), "--synthetic": str(synthetic), "--out": str(tmp_path / "o"), "--text-field": "body", **given}
    argv = ["eval"] + [item for pair in options.items() for item in pair]
    if "invalid choice" in message:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    else:
        assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_sweep_writes_a_cell_per_setting_and_the_tradeoff(tmp_path, capsys):
    _, base = save_expert_and_base(tmp_path)
    adapter = save_lora_adapter(tmp_path, base)
    real = tmp_path / "real.txt"
    real.write_text("\n".join(REAL) + "\n")
    out = tmp_path / "sweep"
    argv = ["sweep", "--expert", str(adapter), "--real", str(real), "--gammas", "0,0.5", "--etas", "0,0.5", "--n", "10",
            "--max-new-tokens", "10", "--out", str(out), "--embedder", "tfidf", "--quiet"]
    assert main(argv) == 0
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [(r["gamma"], r["eta"]) for r in rows] == [(0, 0), (0, 0.5), (0.5, 0), (0.5, 0.5)]
    assert all(0 <= r["diversity"] <= 1 for r in rows)
    assert (out / "tradeoff.png").stat().st_size > 1000 and "gamma" in (out / "sweep.md").read_text()
    for gamma, eta in ((0, 0), (0.5, 0.5)):
        assert len((out / f"gamma{gamma:g}_eta{eta:g}.jsonl").read_text().splitlines()) == 10
    assert main(argv) == 0  # a finished sweep is reused, not regenerated


def test_sweep_rejects_bad_grids(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--gammas", "0,x"])
    assert "comma-separated numbers" in capsys.readouterr().err
    assert main(["sweep", "--gammas", "-1", "--n", "5"]) == 2
    assert "--gamma" in capsys.readouterr().err
