"""Architectures the engine has no forward for still work from the command line: steer generate
falls back to Hugging Face generate with the drop-in SteerLogitsProcessor, says so in one line,
and writes the same records, resumably."""

from __future__ import annotations

import json

import pytest
from model_dirs import save_lora_adapter, save_model_pair

from steer.cli import main

FAST = ["--max-new-tokens", "6", "--batch-size", "2", "--quiet"]


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    path = tmp_path_factory.mktemp("real") / "real.txt"
    path.write_text("hello world\nthe cat sat\nfoo bar baz\nanother one\nfine weather today\n")
    return path


@pytest.mark.parametrize("arch", ["opt", "gpt_neox"])
def test_an_architecture_without_an_engine_forward_generates_and_resumes(tmp_path, capsys, real, arch):
    expert, base = save_model_pair(tmp_path, arch)
    capsys.readouterr()  # saving prints progress bars
    out = tmp_path / "out.jsonl"
    common = ["generate", "--expert", str(expert), "--base", str(base), "--real", str(real), "--out", str(out), *FAST]
    assert main([*common, "--n", "3"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("steer: ") and "drop-in SteerLogitsProcessor" in err[0]
    assert f"no forward for {arch}" in err[0]
    assert main([*common, "--n", "5", "--resume"]) == 0
    rows = records(out)
    assert [r["id"] for r in rows] == list(range(5)) and len({r["seed"] for r in rows}) == 5
    assert all(r["text"].strip() and len(r["negative_ids"]) == 5 for r in rows)


@pytest.mark.parametrize("arch", ["qwen3", "gemma2", "phi3"])
def test_the_families_run_by_their_own_layers_generate_on_the_engine(tmp_path, capsys, real, arch):
    """Qwen3, Gemma 2 and Phi-3 were drop-in architectures; the engine runs them now: no notice."""
    expert, base = save_model_pair(tmp_path, arch)
    capsys.readouterr()
    out = tmp_path / "out.jsonl"
    common = ["generate", "--expert", str(expert), "--base", str(base), "--real", str(real), "--out", str(out), *FAST]
    assert main([*common, "--n", "3"]) == 0
    assert "drop-in" not in capsys.readouterr().err
    assert main([*common, "--n", "5", "--resume"]) == 0
    rows = records(out)
    assert [r["id"] for r in rows] == list(range(5)) and all(r["text"].strip() for r in rows)


def test_a_lora_expert_of_an_unsupported_architecture_runs_with_its_adapters_off_as_the_base(tmp_path, real):
    _, base = save_model_pair(tmp_path, "gpt_neox")
    adapter = save_lora_adapter(tmp_path, base, targets=("query_key_value", "dense_4h_to_h"))
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--expert", str(adapter), "--real", str(real), "--out", str(out), "--n", "3", "--negative-mode", "separate", *FAST]) == 0
    assert [r["id"] for r in records(out)] == [0, 1, 2]


@pytest.mark.parametrize("extra", [["--eta", "0", "--gamma", "0.5"], ["--eta", "0", "--gamma", "0", "--top-p", "0.8"]])
def test_the_drop_in_path_draws_the_tokens_the_engine_draws(models, tmp_path, monkeypatch, extra):
    """Same seeds, same counter-based noise: without negatives (whose draws the two schedules
    order differently) the records' texts are the engine's."""
    common = ["generate", "--expert", str(models["expert"]), "--base", str(models["base"]), "--real", str(models["real"]), "--n", "6", *FAST, *extra]
    engine_out, dropin_out = tmp_path / "engine.jsonl", tmp_path / "dropin.jsonl"
    assert main([*common, "--out", str(engine_out)]) == 0
    monkeypatch.setattr("steer.engine.models.unsupported_reason", lambda *_: "forced for the test")
    assert main([*common, "--out", str(dropin_out)]) == 0
    assert [r["text"] for r in records(dropin_out)] == [r["text"] for r in records(engine_out)]
    assert [r["seed"] for r in records(dropin_out)] == [r["seed"] for r in records(engine_out)]


@pytest.mark.parametrize("dropin", [False, True], ids=["engine", "drop-in"])
def test_share_negatives_gives_each_group_of_samples_one_draw(models, tmp_path, monkeypatch, dropin):
    if dropin:
        monkeypatch.setattr("steer.engine.models.unsupported_reason", lambda *_: "forced for the test")
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--expert", str(models["expert"]), "--base", str(models["base"]), "--real", str(models["real"]),
                 "--out", str(out), "--n", "9", "--share-negatives", "3", "--num-negatives", "2", *FAST]) == 0  # fmt: skip
    groups = {}
    for record in records(out):
        assert record["share_negatives"] == 3
        groups.setdefault(record["seed"] // 3, set()).add(tuple(record["negative_ids"]))
    assert all(len(draws) == 1 for draws in groups.values()) and len(groups) >= 3
