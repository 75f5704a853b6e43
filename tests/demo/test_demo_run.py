"""``steer demo`` end to end on the bundled models: every file it promises, and bad input refused."""

import json

import pytest

from steer.cli import main

pytest.importorskip("peft")
pytest.importorskip("pyjokes")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

DEMO_FILES = (
    "real.jsonl", "synthetic.jsonl", "plain_expert.jsonl", "metrics.json", "plain_expert_metrics.json",
    "report.html", "ngram_diversity.png", "embedding_map.png",
)


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    assert main(["demo", "--out", str(out), "--n", "16", "--batch-size", "8", "--embedder", "tfidf", "--quiet"]) == 0
    return out


def test_demo_writes_data_metrics_plots_and_report(demo_dir):
    for name in DEMO_FILES:
        assert (demo_dir / name).is_file() and (demo_dir / name).stat().st_size > 0, name
    steer, plain = _records(demo_dir / "synthetic.jsonl"), _records(demo_dir / "plain_expert.jsonl")
    assert len(steer) == len(plain) == 16
    assert len({r["text"] for r in steer}) == 16 and all(r["text"].strip() for r in steer)
    assert {(r["gamma"], r["eta"]) for r in steer} == {(0.2, 0.2)}
    assert {(r["gamma"], r["eta"]) for r in plain} == {(0.0, 0.0)}
    assert all(len(r["negative_ids"]) == 5 for r in steer)  # num_negatives, drawn from real and synthetic
    metrics = json.loads((demo_dir / "metrics.json").read_text())
    assert metrics["counts"]["synthetic"] == 16 and metrics["generation"]["gamma"] == 0.2
    assert 0 <= metrics["summary"]["normalised_3grams"] <= 1
    report = (demo_dir / "report.html").read_text()
    assert "plain expert" in report  # the baseline beside STEER
    assert "data:image/png;base64," in report and "http" not in report.split("<footer>")[0].lower()


def test_demo_rerun_keeps_what_it_wrote_and_says_so(demo_dir, capsys):
    before = (demo_dir / "synthetic.jsonl").read_bytes()
    capsys.readouterr()
    assert main(["demo", "--out", str(demo_dir), "--n", "16", "--batch-size", "8", "--embedder", "tfidf", "--quiet"]) == 0
    assert (demo_dir / "synthetic.jsonl").read_bytes() == before
    out = capsys.readouterr().out
    assert f"STEER: 16 samples reused from {demo_dir / 'synthetic.jsonl'}, written by an earlier run" in out
    assert "plain expert: 16 samples reused from" in out


def test_demo_and_report_say_in_words_which_set_wins_on_what(demo_dir, capsys):
    from steer.data.metrics import verdict

    steer_summary = json.loads((demo_dir / "metrics.json").read_text())["summary"]
    plain_summary = json.loads((demo_dir / "plain_expert_metrics.json").read_text())["summary"]
    sentence = verdict("STEER", steer_summary, "plain expert", plain_summary)
    assert "is better on" in sentence or "a tie on" in sentence
    for label in ("normalised 3-grams", "diversity", "coherency", "authenticity AUC", "copies of real texts"):
        assert label in sentence  # every headline metric is placed on one side or the other
    report = (demo_dir / "report.html").read_text()
    assert '<p class="verdict">Against plain expert' in report


def test_the_verdict_reads_each_metric_the_right_way():
    from steer.data.metrics import verdict

    ours = {"diversity": 0.6, "coherency": 0.2, "authenticity_auc": 0.9, "mauve": 0.4, "exact_copy_fraction": 0.0}
    theirs = {"diversity": 0.5, "coherency": 0.2, "authenticity_auc": 0.6, "mauve": 0.5, "exact_copy_fraction": 0.1}
    assert verdict("A", ours, "B", theirs) == (
        "A is better on diversity (0.600 vs 0.500), copies of real texts (0.000 vs 0.100); "
        "B is better on authenticity AUC (0.600 vs 0.900), MAUVE (0.500 vs 0.400); a tie on coherency."
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--n", "0"], "--n"),
        (["--n", "5"], "at least 10"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_demo_rejects_bad_input_before_loading(tmp_path, capsys, args, message):
    out = tmp_path / "bad"
    assert main(["demo", "--out", str(out), *args, "--quiet"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("steer demo: error:") and message in error
    assert not (out / "synthetic.jsonl").exists()


def test_demo_refuses_an_out_that_is_a_file(tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("keep me")
    assert main(["demo", "--out", str(out), "--quiet"]) == 2
    assert "--out" in capsys.readouterr().err and out.read_text() == "keep me"


def test_generate_without_model_arguments_uses_the_demo_models(tmp_path):
    out = tmp_path / "jokes.jsonl"
    assert main(["generate", "--n", "4", "--out", str(out), "--max-new-tokens", "16", "--quiet"]) == 0
    records = _records(out)
    assert len(records) == 4 and records[0]["expert"].endswith("expert") and records[0]["base"].endswith("base")
    assert all(label.startswith(("real:", "synthetic:")) for r in records for label in r["negative_ids"])
