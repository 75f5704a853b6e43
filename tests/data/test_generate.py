"""steer generate: output records, resume, duplicates, and bad input refused before any model loads."""

from __future__ import annotations

import json

import pytest
from model_dirs import REAL_TEXTS, character_tokenizer

from steer.cli import main
from steer.data import generate as generate_module
from steer.data.io import read_texts
from steer.data.output import SampleWriter

REAL = REAL_TEXTS
FAST = ["--max-new-tokens", "10", "--batch-size", "4", "--quiet"]


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def generate(models, out, *extra):
    return main(["generate", "--expert", str(models["expert"]), "--base", str(models["base"]), "--real", str(models["real"]), "--out", str(out), *FAST, *extra])


def test_records_say_what_produced_them(models, tmp_path):
    out = tmp_path / "out.jsonl"
    assert generate(models, out, "--n", "12", "--num-negatives", "2") == 0
    rows = records(out)
    assert [r["id"] for r in rows] == list(range(12))
    assert len({r["text"].lower() for r in rows}) == 12 and all(r["text"].strip() for r in rows)
    assert len({r["seed"] for r in rows}) == 12
    for row in rows:
        assert (row["gamma"], row["eta"], row["num_negatives"], row["run_seed"]) == (0.2, 0.2, 2, 0)
        assert len(row["negative_ids"]) == 2
        for label in row["negative_ids"]:
            kind, index = label.split(":")
            assert kind in ("real", "synthetic") and (kind == "real" and int(index) < len(REAL) or kind == "synthetic" and int(index) < row["id"])
    assert any(label.startswith("synthetic:") for row in rows for label in row["negative_ids"])


def test_a_run_is_reproducible_and_resume_completes_it(models, tmp_path):
    whole, part = tmp_path / "whole.jsonl", tmp_path / "part.jsonl"
    assert generate(models, whole, "--n", "10") == 0
    assert generate(models, part, "--n", "4") == 0
    assert [r["text"] for r in records(part)] == [r["text"] for r in records(whole)][:4]
    assert generate(models, part, "--n", "10", "--resume") == 0
    rows = records(part)
    assert [r["id"] for r in rows] == list(range(10)) and len({r["text"] for r in rows}) == 10
    # the resumed run wrote what the whole run wrote: same samples, seeds and negatives
    keys = ("text", "seed", "negative_ids", "finish_reason")
    assert [[r[k] for k in keys] for r in rows] == [[r[k] for k in keys] for r in records(whole)]
    assert generate(models, part, "--n", "10", "--resume") == 0  # already complete: nothing to do
    assert len(records(part)) == 10


def test_torn_last_line_is_cut_off_and_regenerated(models, tmp_path):
    out = tmp_path / "out.jsonl"
    assert generate(models, out, "--n", "5") == 0
    with open(out, "ab") as handle:
        handle.write(b'{"id": 5, "text": "torn')
    with SampleWriter(out) as writer:
        assert len(writer.existing) == 5
    assert out.read_bytes().endswith(b"\n")
    assert generate(models, out, "--n", "7", "--resume") == 0
    assert [r["id"] for r in records(out)] == list(range(7))


def test_lora_adapter_expert_runs_in_one_forward(models, tmp_path):
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--expert", str(models["adapter"]), "--real", str(models["real"]), "--out", str(out), "--n", "4", *FAST]) == 0
    first = records(out)[0]
    assert len(records(out)) == 4
    assert first["expert"] == str(models["adapter"].resolve()) and first["base"] == str(models["base"].resolve())  # the base it names
    assert first["expert_digest"] and first["base_digest"]


def test_plain_text_real_file_and_keep_duplicates(models, tmp_path):
    real = tmp_path / "real.txt"
    real.write_text("\n".join(REAL) + "\n\n")
    assert read_texts(real) == REAL
    out = tmp_path / "out.jsonl"
    code = main(["generate", "--expert", str(models["expert"]), "--real", str(real), "--out", str(out), "--n", "6",
                 "--gamma", "0", "--eta", "0", "--temperature", "0", "--keep-duplicates", *FAST])
    assert code == 0
    assert len({r["text"] for r in records(out)}) == 1  # greedy: the same text every time, kept


def test_a_model_that_only_repeats_itself_stops_with_an_error(models, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    code = main(["generate", "--expert", str(models["expert"]), "--real", str(models["real"]), "--out", str(out), "--n", "3",
                 "--gamma", "0", "--eta", "0", "--temperature", "0", *FAST])
    assert code == 2 and "repeats itself" in capsys.readouterr().err
    assert len(records(out)) == 1  # what was written is kept


def test_resume_refuses_other_settings(models, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert generate(models, out, "--n", "2") == 0
    assert generate(models, out, "--n", "4", "--resume", "--eta", "0.5") == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "eta: file 0.2 vs now 0.5" in err
    assert len(records(out)) == 2


def test_eos_exempt_is_a_setting_of_the_run(models, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert generate(models, out, "--n", "3", "--eos-exempt", "--eta", "0.6") == 0
    assert all(r["eos_exempt"] is True for r in records(out))
    assert generate(models, out, "--n", "5", "--resume", "--eta", "0.6") == 2
    assert "eos_exempt: file True vs now False" in capsys.readouterr().err
    assert generate(models, out, "--n", "5", "--resume", "--eta", "0.6", "--eos-exempt") == 0
    assert len(records(out)) == 5


def test_records_from_before_eos_exempt_resume_without_it(models, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert generate(models, out, "--n", "2") == 0
    out.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "eos_exempt"}) + "\n" for r in records(out)))
    assert generate(models, out, "--n", "3", "--resume", "--eos-exempt") == 2
    assert "eos_exempt: file False (written before steer recorded it) vs now True" in capsys.readouterr().err
    assert generate(models, out, "--n", "3", "--resume") == 0


BAD_INPUT = [
    (["--real", "{missing}"], "file not found"),
    (["--real", "{empty}"], "holds no examples"),
    (["--real", "{real}", "--text-field", "body"], "no field 'body'"),
    (["--real", "{real}", "--n", "-3"], "--n must be a whole number >= 1"),
    (["--real", "{real}", "--n", "0"], "--n must be a whole number >= 1"),
    (["--real", "{real}", "--gamma", "-1"], "--gamma"),
    (["--real", "{real}", "--top-p", "0"], "--top-p"),
    (["--real", "{real}", "--batch-size", "0"], "--batch-size"),
    (["--real", "{real}", "--out", "{exists}"], "already exists"),
    (["--real", "{real}", "--base", "{other_tokenizer}"], "tokenizers of --expert and --base differ"),
    (["--real", "{real}", "--base", "{nowhere}"], "--base"),
    (["--real", "{real}", "--device", "cuda:7"], "--device"),
    (["--real", "{real}", "--prompt", "x" * 300], "more than the model's context of 256 tokens"),
    (["--real", "{real}", "--eta", "0", "--max-new-tokens", "1000"], "more than the model's context"),
    (["--real", "{real}", "--seed", str(2**62)], "seed must be None or an int in [0, 2^62)"),
]


@pytest.mark.parametrize("arguments, message", BAD_INPUT, ids=[m for _, m in BAD_INPUT])
def test_bad_input_fails_before_any_model_loads(models, tmp_path, monkeypatch, capsys, arguments, message):
    import torch

    if "cuda:7" in arguments and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")

    def no_loading(*_, **__):
        raise AssertionError("a model was loaded although the input is bad")

    monkeypatch.setattr(generate_module, "load_models", no_loading)
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "exists.jsonl").write_text('{"text": "x"}\n')
    other = tmp_path / "other"
    from model_dirs import _llama

    tokenizer = character_tokenizer(extra="#")
    _llama(len(tokenizer), 5).save_pretrained(other)
    tokenizer.save_pretrained(other)
    names = {"missing": tmp_path / "nope.jsonl", "empty": tmp_path / "empty.txt", "real": models["real"], "exists": tmp_path / "exists.jsonl",
             "other_tokenizer": other, "nowhere": tmp_path / "no-model"}
    arguments = [a.format(**names) for a in arguments]
    base = [] if "--base" in arguments else ["--base", str(models["base"])]
    out = [] if "--out" in arguments else ["--out", str(tmp_path / "out.jsonl")]
    code = main(["generate", "--expert", str(models["expert"]), *base, *out, *arguments, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and err.splitlines()[-1].startswith("steer generate: error: ")
    assert not (tmp_path / "out.jsonl").exists() or (tmp_path / "out.jsonl").stat().st_size == 0


def test_a_full_expert_with_gamma_needs_a_base(models, tmp_path, capsys):
    code = main(["generate", "--expert", str(models["expert"]), "--real", str(models["real"]), "--out", str(tmp_path / "o.jsonl")])
    assert code == 2 and "give --base" in capsys.readouterr().err


def test_expert_without_real_examples_is_refused(models, capsys):
    assert main(["generate", "--expert", str(models["expert"])]) == 2
    assert "--expert needs --real" in capsys.readouterr().err


def test_the_records_do_not_depend_on_the_batch_size_given_the_pool_round(models, tmp_path):
    """steer.data.rounds: the schedule (how many samples decode at once) changes nothing."""
    outs = []
    for batch in ("1", "3", "8"):
        out = tmp_path / f"batch{batch}.jsonl"
        assert main(["generate", "--expert", str(models["expert"]), "--base", str(models["base"]), "--real", str(models["real"]),
                     "--out", str(out), "--max-new-tokens", "10", "--quiet", "--n", "14", "--num-negatives", "2",
                     "--batch-size", batch, "--pool-round", "3"]) == 0  # fmt: skip
        outs.append([(r["text"], r["seed"], r["negative_ids"]) for r in records(out)])
    assert outs[0] == outs[1] == outs[2]
    assert any(label.startswith("synthetic:") for _, _, labels in outs[0] for label in labels)


def test_a_bad_pool_round_is_refused(models, tmp_path, capsys):
    assert generate(models, tmp_path / "o.jsonl", "--n", "2", "--pool-round", "0") == 2
    assert "--pool-round must be a whole number >= 1" in capsys.readouterr().err


def test_workers_without_ray_say_what_to_install(models, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    out = tmp_path / "o.jsonl"
    assert generate(models, out, "--n", "2", "--workers", "2") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("steer generate: error:") and 'pip install -e ".[ray]"' in err and "\n" not in err
    assert not out.exists()


@pytest.mark.parametrize("option, value", [("--workers", "0"), ("--threads-per-worker", "0"), ("--gpus-per-worker", "-1")])
def test_bad_scale_out_options_are_refused(models, tmp_path, capsys, option, value):
    extra = [option, value] if option == "--workers" else ["--workers", "1", option, value]
    assert generate(models, tmp_path / "o.jsonl", "--n", "2", *extra) == 2
    assert option in capsys.readouterr().err


def test_per_example_kv_is_a_setting_of_the_run(models, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert generate(models, out, "--n", "6", "--per-example-kv", "--num-negatives", "3") == 0
    assert all(r["per_example_kv"] is True and len(r["negative_ids"]) == 3 for r in records(out))
    assert "per-example KV:" in capsys.readouterr().out  # the chunks' hit rate
    assert generate(models, out, "--n", "8", "--resume", "--num-negatives", "3") == 2
    assert "per_example_kv: file True vs now False" in capsys.readouterr().err
    assert generate(models, out, "--n", "8", "--resume", "--num-negatives", "3", "--per-example-kv") == 0
    assert len(records(out)) == 8
    assert generate(models, tmp_path / "separate.jsonl", "--n", "2", "--per-example-kv", "--negative-mode", "separate") == 2
    assert "--per-example-kv: per_example_kv applies to negative_mode 'concat'" in capsys.readouterr().err


def test_per_example_kv_needs_the_engine(models, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("steer.engine.models.unsupported_reason", lambda *_: "forced for the test")
    out = tmp_path / "out.jsonl"
    assert generate(models, out, "--n", "2", "--per-example-kv") == 2
    assert "--per-example-kv: forced for the test" in capsys.readouterr().err
    assert not out.exists() or not records(out)
