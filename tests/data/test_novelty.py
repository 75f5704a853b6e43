"""The novelty gate (steer generate --novelty-threshold): a sample too close to the pool is sampled
again; the records say how many were turned away, and a resumed run keeps the count."""

from __future__ import annotations

import json

import pytest

from steer.cli import main
from steer.data.io import DataError
from steer.data.novelty import EmbeddingGate, MinHashGate, make_gate, resolve_method

FAST = ["--max-new-tokens", "24", "--batch-size", "4", "--quiet"]


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def generate(out, *extra):
    """steer generate on the demo models and jokes (the tiny test models write random characters,
    which share no words and embed alike)."""
    return main(["generate", "--out", str(out), *FAST, *extra])


def test_minhash_gate_turns_away_near_duplicates():
    gate = make_gate("minhash", 0.5, ["the quick brown fox jumps over the lazy dog today"])
    assert not gate.admits("the quick brown fox jumps over the lazy dog today")
    assert not gate.admits("The quick brown fox jumps over the lazy dog today!")  # case; one shingle differs
    assert gate.admits("a completely different sentence about cats and their owners")
    gate.add("a completely different sentence about cats and their owners")
    assert not gate.admits("a completely different sentence about cats and their owners")


def test_embedding_gate_is_the_largest_cosine_to_the_pool():
    gate = make_gate("minilm", 0.9, ["Why do programmers prefer dark mode? Because light attracts bugs."])
    assert gate.similarity("Why do programmers prefer dark mode? Because light attracts bugs.") == pytest.approx(1.0, abs=1e-5)
    assert not gate.admits("Why do programmers prefer dark mode? Because light attracts bugs.")
    assert gate.admits("The weather in Lisbon was sunny all week.")
    assert isinstance(gate, EmbeddingGate) and resolve_method("auto") == "minilm"
    assert isinstance(make_gate("minhash", 0.5, []), MinHashGate)


@pytest.mark.parametrize("method, threshold", [("minhash", 0.15), ("minilm", 0.7)])
def test_accepted_samples_pass_the_gate_and_the_rejections_are_counted(tmp_path, capsys, method, threshold):
    from steer.demo.models import demo_real_examples

    out = tmp_path / "out.jsonl"
    assert generate(out, "--n", "12", "--novelty-threshold", str(threshold), "--novelty-method", method) == 0
    rows = records(out)
    assert len(rows) == 12 and all(r["novelty_threshold"] == threshold and r["novelty_method"] == method for r in rows)
    counts = [r["novelty_rejected"] for r in rows]
    assert counts == sorted(counts) and counts[-1] > 0, counts  # some were turned away
    assert f"novelty gate: {counts[-1]} samples too close to the pool" in capsys.readouterr().out
    check = make_gate(method, threshold, demo_real_examples())
    for row in rows:  # each record was novel against the real examples and the records before it
        assert check.admits(row["text"]), row["text"]
        check.add(row["text"])


def test_a_resumed_run_keeps_the_count_and_writes_what_the_whole_run_writes(tmp_path, capsys):
    whole, part = tmp_path / "whole.jsonl", tmp_path / "part.jsonl"
    gate = ["--novelty-threshold", "0.15", "--novelty-method", "minhash"]
    assert generate(whole, "--n", "12", *gate) == 0
    assert generate(part, "--n", "5", *gate) == 0
    assert generate(part, "--n", "12", "--resume", *gate) == 0
    keys = ("id", "text", "seed", "negative_ids", "novelty_rejected")
    assert [[r[k] for k in keys] for r in records(part)] == [[r[k] for k in keys] for r in records(whole)]
    assert records(whole)[-1]["novelty_rejected"] > 0
    capsys.readouterr()
    assert generate(part, "--n", "14", "--resume", "--novelty-threshold", "0.3", "--novelty-method", "minhash") == 2
    assert "novelty_threshold: file 0.15 vs now 0.3" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "1.5", "-0.2", "nan"])
def test_a_bad_threshold_is_refused(tmp_path, capsys, value):
    assert generate(tmp_path / "out.jsonl", "--n", "2", "--novelty-threshold", value) == 2
    assert "--novelty-threshold must be a number in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()


def test_a_method_without_a_threshold_is_refused(tmp_path, capsys):
    """--novelty-method alone would run no gate at all: said, not ignored."""
    assert generate(tmp_path / "out.jsonl", "--n", "2", "--novelty-method", "minhash") == 2
    assert "--novelty-method chooses the novelty gate's similarity, which is off without --novelty-threshold" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()


def test_minhash_without_datasketch_says_what_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_datasketch(name, *args, **kwargs):
        if name.startswith("datasketch"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_datasketch)
    with pytest.raises(DataError, match="needs datasketch: pip install datasketch"):
        MinHashGate(0.5)


def test_each_finished_sample_is_decoded_once(tmp_path, monkeypatch):
    """The gate embeds a step's finished samples in one batch (prepare) and judges them later:
    their texts are decoded once, for both."""
    from steer.data.generate import RoundRun

    decoded = []
    original = RoundRun._text

    def counting(self, tokens):
        decoded.append(tuple(tokens))
        return original(self, tokens)

    monkeypatch.setattr(RoundRun, "_text", counting)
    out = tmp_path / "out.jsonl"
    assert generate(out, "--n", "6", "--novelty-threshold", "0.15", "--novelty-method", "minhash") == 0
    judged = 6 + records(out)[-1]["novelty_rejected"]  # at least: accepted and turned away (and any duplicates)
    # decoding for the batch and again for the verdict took 2 per judged attempt; now 1 per finished
    # attempt, which is at most the judged ones plus the batch's last 4 still waiting their turn
    assert len(decoded) < 2 * judged, (len(decoded), judged)
