"""Model loading runs no code that comes with a model, reads pickles only when asked (and then as
tensors only), and a resumed run continues only with the very same models."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import shutil
import sys

import pytest
import torch

from steer.cli import main

FAST = ["--max-new-tokens", "6", "--batch-size", "4", "--quiet"]
EVIL_MODULE = """
import pathlib
pathlib.Path({marker!r}).write_text("the model's code ran")
from transformers import LlamaConfig as EvilConfig
"""


def copy_model(models, tmp_path, name="expert"):
    target = tmp_path / name
    shutil.copytree(models[name], target)
    return target


def run(models, expert, out, *extra, base=None):
    base = ["--base", str(base or models["base"])]
    return main(["generate", "--expert", str(expert), *base, "--real", str(models["real"]), "--out", str(out), "--n", "2", *FAST, *extra])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("steer generate: error: "), err
    return err[0]


def write_pickle_weights(directory, name):
    """Replace the safetensors weights of ``directory`` by a torch.save pickle named ``name``."""
    from safetensors.torch import load_file

    safetensors_file = next(directory.glob("*.safetensors"))
    torch.save(load_file(safetensors_file), directory / name)
    safetensors_file.unlink()


# -- item 2: no model code, no pickles unless asked ------------------------------------------------------


@pytest.mark.parametrize("config_file", ["config.json", "tokenizer_config.json"])
def test_a_model_asking_to_run_its_own_code_is_refused_without_a_prompt(models, tmp_path, monkeypatch, capsys, config_file):
    expert = copy_model(models, tmp_path)
    marker = tmp_path / "ran"
    (expert / "evil.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    config = json.loads((expert / config_file).read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilConfig", "AutoTokenizer": ["evil.EvilConfig", None]}
    (expert / config_file).write_text(json.dumps(config))
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\ny\ny\n"))  # whoever asks gets a yes: nobody may ask
    assert run(models, expert, tmp_path / "out.jsonl") == 2
    line = one_error_line(capsys)
    assert "auto_map" in line and "never runs code that comes with a model" in line
    assert not marker.exists() and not (tmp_path / "out.jsonl").exists()


def test_every_from_pretrained_in_the_package_refuses_remote_code():
    """No call site forgets trust_remote_code=False (PEFT's loads adapter weights only)."""
    from pathlib import Path

    import steer

    for path in Path(steer.__file__).parent.rglob("*.py"):
        source = path.read_text()
        start = source.find(".from_pretrained(")
        while start >= 0:
            depth, end = 0, start + len(".from_pretrained")
            for end in range(end, len(source)):
                depth += {"(": 1, ")": -1}.get(source[end], 0)
                if depth == 0:
                    break
            receiver = source[max(0, start - 12) : start]
            if not receiver.endswith("PeftModel"):
                assert "trust_remote_code=False" in source[start:end], f"{path}: {source[start - 30 : end + 1]}"
            start = source.find(".from_pretrained(", end)


def test_pickle_weights_are_refused_unless_asked_then_loaded_as_tensors(models, tmp_path, capsys):
    expert = copy_model(models, tmp_path)
    write_pickle_weights(expert, "pytorch_model.bin")
    assert run(models, expert, tmp_path / "a.jsonl") == 2
    line = one_error_line(capsys)
    assert "pytorch_model.bin" in line and "--allow-pickle" in line
    assert run(models, expert, tmp_path / "b.jsonl", "--allow-pickle") == 0


def test_a_pickle_adapter_is_refused_unless_asked(models, tmp_path, capsys):
    adapter = copy_model(models, tmp_path, "adapter")
    write_pickle_weights(adapter, "adapter_model.bin")
    out = tmp_path / "a.jsonl"
    code = main(["generate", "--expert", str(adapter), "--real", str(models["real"]), "--out", str(out), "--n", "2", *FAST])
    assert code == 2 and "adapter_model.bin" in one_error_line(capsys)
    code = main(["generate", "--expert", str(adapter), "--real", str(models["real"]), "--out", str(out), "--n", "2", "--allow-pickle", *FAST])
    assert code == 0


def test_a_malicious_pickle_is_one_line_and_never_runs(models, tmp_path, capsys):
    expert = copy_model(models, tmp_path)
    write_pickle_weights(expert, "pytorch_model.bin")
    marker = tmp_path / "ran"
    # A pickle whose unpickling would call pathlib.Path.write_text(marker): refused by weights_only.
    import pathlib

    class Evil:
        def __reduce__(self):
            return (pathlib.Path.write_text, (pathlib.Path(marker), "the pickle ran"))

    with open(expert / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"model.embed_tokens.weight": Evil()}, handle)
    assert run(models, expert, tmp_path / "a.jsonl", "--allow-pickle") == 2
    line = one_error_line(capsys)
    assert "could not load the model" in line and str(expert) in line
    assert not marker.exists() and not (tmp_path / "a.jsonl").exists()


def test_a_corrupt_safetensors_file_is_one_line(models, tmp_path, capsys):
    expert = copy_model(models, tmp_path)
    (expert / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    assert run(models, expert, tmp_path / "a.jsonl") == 2
    assert "could not load the model" in one_error_line(capsys)


def test_a_model_without_weights_is_refused_before_loading(models, tmp_path, capsys):
    expert = copy_model(models, tmp_path)
    (expert / "model.safetensors").unlink()
    assert run(models, expert, tmp_path / "a.jsonl") == 2
    assert "no weights found" in one_error_line(capsys)


# -- item 3: a resume continues only with the same models -------------------------------------------------


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_different_model_at_the_same_path_is_refused_on_resume(models, tmp_path, capsys):
    expert = copy_model(models, tmp_path)
    out = tmp_path / "out.jsonl"
    assert run(models, expert, out) == 0
    record = json.loads(out.read_text().splitlines()[0])
    assert record["expert"] == str(expert.resolve()) and record["base"] == str(models["base"].resolve())
    assert len(record["expert_digest"]) == 16 and record["base_digest"] != record["expert_digest"]
    shutil.rmtree(expert)
    shutil.copytree(models["base"], expert)  # same architecture and tokenizer, other weights
    before = sha256(out)
    assert main(["generate", "--expert", str(expert), "--base", str(models["base"]), "--real", str(models["real"]), "--out", str(out), "--n", "4", "--resume", *FAST]) == 2
    line = one_error_line(capsys)
    assert "the expert" in line and "digest" in line
    assert sha256(out) == before


def test_the_same_model_by_another_spelling_of_its_path_resumes(models, tmp_path, monkeypatch):
    adapter = copy_model(models, tmp_path, "adapter")
    out = tmp_path / "out.jsonl"
    common = ["--real", str(models["real"]), "--out", str(out), *FAST]
    assert main(["generate", "--expert", str(adapter) + "/", *common, "--n", "2"]) == 0
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--expert", "adapter", *common, "--n", "4", "--resume"]) == 0
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [0, 1, 2, 3]


def test_digests_sample_large_weight_files(tmp_path, monkeypatch):
    from steer.data import models as models_module

    monkeypatch.setattr(models_module, "FULLY_HASHED_BYTES", 1024)
    monkeypatch.setattr(models_module, "CHUNK_BYTES", 64)
    directory = tmp_path / "m"
    directory.mkdir()
    (directory / "config.json").write_text("{}")
    weights = bytearray(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}" + bytes(100_000))
    (directory / "model.safetensors").write_bytes(bytes(weights))
    first = models_module.model_digest(directory)
    weights[40_000:60_000] = b"\x01" * 20_000  # changed weights (a fine-tune changes all of them)
    (directory / "model.safetensors").write_bytes(bytes(weights))
    assert models_module.model_digest(directory) != first
