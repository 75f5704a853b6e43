"""benchmarks/quality/run_quality.py on the demo domain, two methods, one small seed: it runs, and
what it writes (tables, verdict, plot, every run's numbers) is there and consistent."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("peft")
pytest.importorskip("pyjokes")
pytest.importorskip("matplotlib")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "quality" / "run_quality.py"


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("run_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_quality"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["run_quality"]


def test_quality_experiment_smoke(quality, tmp_path, monkeypatch):
    by_name = {m.name: m for m in quality.METHODS}
    _, stem, title = quality.EXPERIMENTS["baselines"]
    monkeypatch.setitem(quality.EXPERIMENTS, "baselines", ((by_name["plain expert"], by_name["STEER (defaults)"]), stem, title))
    out = tmp_path / "results"
    quality.main(["--domains", "pyjokes", "--seeds", "0,1", "--n", "12", "--max-new-tokens", "16", "--batch-size", "6",
                  "--embedder", "tfidf", "--workdir", str(tmp_path / "work"), "--out", str(out)])
    table = (out / "quality.md").read_text()
    assert "| plain expert |" in table and "| STEER (defaults) |" in table and "STEER (defaults) vs plain expert" in table
    assert (out / "tradeoff_pyjokes.png").stat().st_size > 10_000
    result = json.loads((out / "quality.json").read_text())["results"][0]
    assert len(result["runs"]) == 4 and {r["samples"] for r in result["runs"]} == {12}
    steer = next(e for e in result["summary"] if e["method"] == "STEER (defaults)")
    runs = [r["normalised_3grams"] for r in result["runs"] if r["method"] == "STEER (defaults)"]
    assert steer["normalised_3grams"] == pytest.approx(sum(runs) / 2)
    assert len(list((tmp_path / "work" / "baselines" / "pyjokes").glob("*.jsonl"))) == 4


def test_unknown_domain_is_refused(quality, tmp_path):
    with pytest.raises(SystemExit, match="unknown domain"):
        quality.main(["--domains", "wikipedia", "--workdir", str(tmp_path), "--out", str(tmp_path / "r")])
