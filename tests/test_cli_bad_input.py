"""Bad input to every command, in one table: each case exits with code 2 and one line on stderr,
``steer <command>: error: ...``, naming the problem; no model (nor embedding model) loads where the
problem is in the arguments; and the output is untouched: every file around ``--out`` (a foreign
JSONL file, a genuine steer output of other settings, a Parquet output, a results directory, ...)
keeps its sha256, and no file or directory appears or disappears.

A case is (argv with {placeholders}, a substring of the message, what exists at --out beforehand,
whether a model may load). ``{out}`` is the output path of the case's kind (see OUTPUTS); the
other placeholders name the inputs built once for the module (see the ``inputs`` fixture).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from model_dirs import REAL_TEXTS, _llama, character_tokenizer, save_expert_and_base, save_lora_adapter

import steer.data.embeddings
import steer.data.evaluation
import steer.data.generate
import steer.data.sweep
import steer.demo.run
from steer.cli import main

COMMANDS = ("info", "generate", "eval", "sweep", "demo")
FAST = ["--max-new-tokens", "4", "--batch-size", "4", "--quiet"]
FOREIGN_JSONL = b'{"text": "a record of some other tool"}\n{"text": "and another one"}\n'
TORN = b'{"id": 3, "text": "cut by a ki'


# -- the inputs ---------------------------------------------------------------------------------------


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _edit_json(path: Path, **changes) -> None:
    value = json.loads(path.read_text())
    value.update(changes)
    path.write_text(json.dumps(value))


def _bad_models(root: Path, expert: Path, adapter: Path) -> dict[str, Path]:
    """Model directories that are wrong in one way each."""
    from safetensors.torch import load_file, save_file

    bad = root / "bad-models"
    bad.mkdir()
    found = {}
    found["model_file"] = bad / "model.safetensors"
    shutil.copy(expert / "model.safetensors", found["model_file"])
    found["no_config"] = _copy(expert, bad / "no-config")
    (found["no_config"] / "config.json").unlink()
    found["bad_config"] = _copy(expert, bad / "bad-config")
    (found["bad_config"] / "config.json").write_text('{"model_type": "llama", ')
    found["auto_map"] = _copy(expert, bad / "auto-map")
    _edit_json(found["auto_map"] / "config.json", auto_map={"AutoModelForCausalLM": "evil.EvilModel"})
    found["auto_map_tokenizer"] = _copy(expert, bad / "auto-map-tokenizer")
    _edit_json(found["auto_map_tokenizer"] / "tokenizer_config.json", auto_map={"AutoTokenizer": ["evil.EvilTokenizer", None]})
    found["pickle_only"] = _copy(expert, bad / "pickle-only")
    torch.save(load_file(found["pickle_only"] / "model.safetensors"), found["pickle_only"] / "pytorch_model.bin")
    (found["pickle_only"] / "model.safetensors").unlink()
    found["no_weights"] = _copy(expert, bad / "no-weights")
    (found["no_weights"] / "model.safetensors").unlink()
    found["corrupt_weights"] = _copy(expert, bad / "corrupt-weights")
    (found["corrupt_weights"] / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}   ")
    found["stripped_weights"] = _copy(expert, bad / "stripped-weights")  # one tensor taken out
    weights = load_file(found["stripped_weights"] / "model.safetensors")
    del weights["model.layers.1.mlp.down_proj.weight"]
    save_file(weights, found["stripped_weights"] / "model.safetensors", metadata={"format": "pt"})
    found["nan_weights"] = _copy(expert, bad / "nan-weights")  # a row of its LM head NaN: every step's logits hold NaN
    weights = load_file(found["nan_weights"] / "model.safetensors")
    weights["lm_head.weight"][5] = float("nan")
    save_file(weights, found["nan_weights"] / "model.safetensors", metadata={"format": "pt"})
    found["more_layers"] = _copy(expert, bad / "more-layers")  # a config.json that is not the checkpoint's
    _edit_json(found["more_layers"] / "config.json", num_hidden_layers=json.loads((expert / "config.json").read_text())["num_hidden_layers"] + 2)
    found["broken_tokenizer"] = _copy(expert, bad / "broken-tokenizer")
    (found["broken_tokenizer"] / "tokenizer.json").write_text("{this is not a tokenizer")
    found["no_tokenizer"] = _copy(expert, bad / "no-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (found["no_tokenizer"] / name).unlink(missing_ok=True)
    found["adapter_stripped"] = _copy(adapter, bad / "adapter-stripped")  # a lora_A taken out
    weights = load_file(found["adapter_stripped"] / "adapter_model.safetensors")
    stripped = next(name for name in sorted(weights) if "lora_A" in name)
    del weights[stripped]
    save_file(weights, found["adapter_stripped"] / "adapter_model.safetensors", metadata={"format": "pt"})
    found["adapter_no_base"] = _copy(adapter, bad / "adapter-no-base")
    _edit_json(found["adapter_no_base"] / "adapter_config.json", base_model_name_or_path=None)
    found["adapter_gone_base"] = _copy(adapter, bad / "adapter-gone-base")
    _edit_json(found["adapter_gone_base"] / "adapter_config.json", base_model_name_or_path=str(root / "deleted-base"))
    tokenizer = character_tokenizer(extra="#")
    found["other_tokenizer"] = bad / "other-tokenizer"
    _llama(len(tokenizer), 5).save_pretrained(found["other_tokenizer"])
    tokenizer.save_pretrained(found["other_tokenizer"])
    tokenizer = character_tokenizer()
    found["small_vocab"] = bad / "small-vocab"  # the tokenizer has more ids than the model's embedding
    _llama(len(tokenizer) - 4, 6).save_pretrained(found["small_vocab"])
    tokenizer.save_pretrained(found["small_vocab"])
    return found


def _bad_real_files(root: Path) -> dict[str, Path]:
    files = root / "real-files"
    files.mkdir()
    contents = {
        "empty": ("empty.txt", b"\n  \n"),
        "binary": ("binary.txt", bytes(range(256))),
        "gzip": ("real.jsonl.gz", b"\x1f\x8b\x08\x00junk"),
        "latin1": ("latin1.txt", "caf\xe9 au lait\n".encode("latin-1")),
        "utf16": ("utf16.txt", "hello\n".encode("utf-16")),
        "bad_json": ("bad.jsonl", b'{"text": "fine"}\n{"text": "unfinished\n'),
        "number_field": ("number.jsonl", b'{"text": "fine"}\n{"text": 5}\n'),
        "half_pair": ("half-pair.jsonl", b'{"text": "fine"}\n{"text": "half a pair \\ud800"}\n'),
        "csv_no_column": ("real.csv", b"body,label\nhello world,1\nthe cat sat,2\n"),
        "few": ("few.txt", b"one text\ntwo texts\nthree texts\n"),
        "single": ("single.txt", b"one text alone\n"),
    }
    found = {name: files / filename for name, (filename, _) in contents.items()}
    for name, (_, data) in contents.items():
        found[name].write_bytes(data)
    found["missing"] = files / "no-such-file.jsonl"
    found["folder"] = files / "a-folder"
    found["folder"].mkdir()
    (found["folder"] / "readme.txt").write_text("not a datasets folder\n")
    # Unreadable although it exists: the tests may run as root, whom chmod 000 does not stop.
    found["unreadable"] = Path("/proc/self/mem")
    twelve = [f"example number {i} tells of {word} today" for i, word in enumerate(["ab", "cd", "ef", "gh", "ij", "kl", "mn", "op", "qr", "st", "uv", "wx"])]
    found["real12"] = files / "real12.jsonl"
    found["real12"].write_text("".join(json.dumps({"text": t}) + "\n" for t in twelve))
    found["synthetic12"] = files / "synthetic12.txt"
    found["synthetic12"].write_text("\n".join(f"sample {i} speaks of {t}" for i, t in enumerate(twelve)) + "\n")
    return found


def _generate_argv(names: dict, out, *extra: str) -> list[str]:
    return ["generate", "--expert", str(names["expert"]), "--base", str(names["base"]), "--real", str(names["real"]),
            "--out", str(out), "--n", "3", *FAST, *extra]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The models, real files and genuine steer outputs every case draws on (built once)."""
    root = tmp_path_factory.mktemp("bad-input")
    expert, base = save_expert_and_base(root)
    adapter = save_lora_adapter(root, base)
    real = root / "real.jsonl"
    real.write_text("".join(json.dumps({"text": t, "label": i}) + "\n" for i, t in enumerate(REAL_TEXTS)))
    names = {"expert": expert, "base": base, "adapter": adapter, "real": real, "nowhere": root / "no-model-here"}
    names |= _bad_models(root, expert, adapter)
    names |= _bad_real_files(root)
    genuine = root / "genuine"
    genuine.mkdir()
    # Outputs of steer generate itself: of other settings (eta 0.4), and of the cases' own settings
    # but one sample more than their --n 3.
    assert main(_generate_argv(names, genuine / "other.jsonl", "--eta", "0.4")) == 0
    assert main(_generate_argv(names, genuine / "other.parquet", "--eta", "0.4")) == 0
    assert main(_generate_argv(names, genuine / "four.jsonl", "--n", "4")) == 0
    import pyarrow
    import pyarrow.parquet

    pyarrow.parquet.write_table(pyarrow.table({"text": ["not steer's", "records"]}), genuine / "foreign.parquet")
    outputs = {
        "other": (genuine / "other.jsonl").read_bytes(),
        "other_parquet": (genuine / "other.parquet").read_bytes(),
        "four": (genuine / "four.jsonl").read_bytes(),
        "foreign_parquet": (genuine / "foreign.parquet").read_bytes(),
    }
    unseeded = json.loads(outputs["four"].split(b"\n")[0])
    del unseeded["seed"]
    outputs["unseeded"] = json.dumps(unseeded).encode() + b"\n"  # the run's settings, but no seed to continue after
    assert outputs["other"].count(b"\n") == 3 and outputs["four"].count(b"\n") == 4
    return {"names": {key: str(value) for key, value in names.items()}, "outputs": outputs}


# What exists before a case runs, in its own empty directory (the working directory of the run):
# kind -> (the path {out} names, {file: content}; a content of None is a directory).
OUTPUTS = {
    "foreign": ("out.jsonl", {"out.jsonl": FOREIGN_JSONL}),
    "other": ("out.jsonl", {"out.jsonl": "other"}),
    "torn_other": ("out.jsonl", {"out.jsonl": ("other", TORN)}),
    "four": ("out.jsonl", {"out.jsonl": "four"}),
    "unseeded": ("out.jsonl", {"out.jsonl": "unseeded"}),
    "parquet": ("out.parquet", {"out.parquet": "other_parquet"}),
    "foreign_parquet": ("out.parquet", {"out.parquet": "foreign_parquet"}),
    "junk_parquet": ("out.parquet", {"out.parquet": b"PAR1 but nothing after it"}),
    "foreign_journal": ("out.parquet", {"out.parquet.partial.jsonl": FOREIGN_JSONL}),
    "csv": ("out.csv", {"out.csv": b"text\nsome text\n"}),
    "txt": ("out.txt", {"out.txt": b"a line of text\n"}),
    "no_extension": ("out", {"out": b"some bytes\n"}),
    "new": ("new.jsonl", {"keep.jsonl": FOREIGN_JSONL}),
    "new_nested": ("new/deeper/out.jsonl", {"keep.jsonl": FOREIGN_JSONL}),
    "under_a_file": ("a-file/out.jsonl", {"a-file": b"a file, not a directory\n"}),
    "dir": ("results", {"results": None, "results/earlier.txt": b"from an earlier run\n"}),
    "new_dir": ("new-results", {"keep.txt": b"untouched\n"}),
    "file": ("results.txt", {"results.txt": b"a file where a directory should be\n"}),
    "foreign_cell": ("results", {"results": None, "results/gamma0_eta0.jsonl": FOREIGN_JSONL}),
}


def _content(outputs: dict, content) -> bytes:
    if isinstance(content, tuple):
        return b"".join(_content(outputs, part) for part in content)
    return outputs[content] if isinstance(content, str) else content


def _snapshot(directory: Path) -> dict[str, str]:
    """Every path under ``directory``: "dir", or the sha256 of the file."""
    found = {}
    for path in sorted(directory.rglob("*")):
        key = str(path.relative_to(directory))
        found[key] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


# -- the table ----------------------------------------------------------------------------------------


def case(argv, message, out, *, loads=False, id):
    return pytest.param(argv, message, out, loads, id=id)


def gen(*extra, message, out="foreign", resume=True, expert="{expert}", base="{base}", real="{real}", loads=False, id):
    """A steer generate case: the module's models and real set, --out {out} (by default a foreign
    JSONL file, with --resume), then ``extra`` (argparse keeps the last of a repeated option)."""
    argv = ["generate"]
    argv += ["--expert", expert] if expert else []
    argv += ["--base", base] if base else []
    argv += ["--real", real] if real else []
    argv += ["--out", "{out}", "--n", "3", *FAST, *(["--resume"] if resume else []), *extra]
    return case(argv, message, out, loads=loads, id=f"generate: {id}")


def ev(*extra, message, out="dir", drop=(), loads=False, id):
    options = {"--real": "{real12}", "--synthetic": "{synthetic12}", "--out": "{out}", "--embedder": "tfidf"}
    argv = ["eval"] + [item for key, value in options.items() if key not in drop for item in (key, value)] + list(extra)
    return case(argv, message, out, loads=loads, id=f"eval: {id}")


def sw(*extra, message, out="dir", expert="{adapter}", loads=False, id):
    argv = ["sweep"] + (["--expert", expert] if expert else [])
    argv += ["--real", "{real}", "--gammas", "0", "--etas", "0", "--n", "3", *FAST, "--embedder", "tfidf", "--out", "{out}", *extra]
    return case(argv, message, out, loads=loads, id=f"sweep: {id}")


def demo(*extra, message, out="dir", id):
    return case(["demo", "--out", "{out}", "--n", "10", "--quiet", "--embedder", "tfidf", *extra], message, out, id=f"demo: {id}")


INVALID_INT, INVALID_FLOAT = "invalid int value", "invalid float value"

CASES = [
    # numbers, for every numeric option of generate
    gen("--n", "0", message="--n must be a whole number >= 1, got 0", id="--n 0"),
    gen("--n", "-3", message="--n must be a whole number >= 1, got -3", id="--n negative"),
    gen("--n", "1.5", message=f"argument --n: {INVALID_INT}: '1.5'", id="--n not whole"),
    gen("--n", "many", message=f"argument --n: {INVALID_INT}: 'many'", id="--n not a number"),
    gen("--n", "nan", message=f"argument --n: {INVALID_INT}: 'nan'", id="--n nan"),
    gen("--batch-size", "0", message="--batch-size must be a whole number >= 1, got 0", id="--batch-size 0"),
    gen("--batch-size", "-2", message="--batch-size must be a whole number >= 1", id="--batch-size negative"),
    gen("--batch-size", "four", message=f"argument --batch-size: {INVALID_INT}", id="--batch-size not a number"),
    gen("--gamma", "-1", message="--gamma: gamma must be a finite number >= 0", id="--gamma negative"),
    gen("--gamma", "nan", message="--gamma: gamma must be a finite number >= 0.0, got nan", id="--gamma nan"),
    gen("--gamma", "inf", message="--gamma: gamma must be a finite number >= 0.0, got inf", id="--gamma inf"),
    gen("--gamma", "0.2x", message=f"argument --gamma: {INVALID_FLOAT}: '0.2x'", id="--gamma not a number"),
    gen("--eta", "1.5", message="--eta: eta must be <= 1, got 1.5", id="--eta over 1"),
    gen("--eta", "-0.1", message="--eta: eta must be a finite number >= 0", id="--eta negative"),
    gen("--eta", "nan", message="--eta: eta must be a finite number >= 0.0, got nan", id="--eta nan"),
    gen("--eta=-inf", message="--eta: eta must be a finite number >= 0.0, got -inf", id="--eta -inf"),
    gen("--top-k", "-1", message="--top-k: top_k must be an int >= 0", id="--top-k negative"),
    gen("--top-k", "2.5", message=f"argument --top-k: {INVALID_INT}: '2.5'", id="--top-k not whole"),
    gen("--top-p", "0", message="--top-p: top_p must be in (0, 1]", id="--top-p 0"),
    gen("--top-p", "1.5", message="--top-p: top_p must be in (0, 1]", id="--top-p over 1"),
    gen("--top-p", "nan", message="--top-p: top_p must be in (0, 1]", id="--top-p nan"),
    gen("--temperature", "-1", message="--temperature: temperature must be a finite number >= 0", id="--temperature negative"),
    gen("--temperature", "inf", message="--temperature: temperature must be a finite number >= 0.0, got inf", id="--temperature inf"),
    gen("--temperature", "nan", message="--temperature: temperature must be a finite number >= 0.0, got nan", id="--temperature nan"),
    gen("--temperature", "hot", message=f"argument --temperature: {INVALID_FLOAT}: 'hot'", id="--temperature not a number"),
    gen("--max-new-tokens", "0", message="--max-new-tokens: max_new_tokens must be an int >= 1", id="--max-new-tokens 0"),
    gen("--max-new-tokens", "ten", message=f"argument --max-new-tokens: {INVALID_INT}", id="--max-new-tokens not a number"),
    gen("--max-new-tokens", "1000", message="plus --max-new-tokens 1000 is more than the model's context of 256 tokens",
        id="--max-new-tokens over the context"),
    gen("--max-new-tokens", "250", message="cannot hold 5 negative example(s) plus --max-new-tokens 250", id="--max-new-tokens leaves no room for negatives"),
    gen("--num-negatives", "-1", message="--num-negatives: num_negatives must be an int >= 0", id="--num-negatives negative"),
    gen("--num-negatives", "0", message="--num-negatives: num_negatives must be >= 1 when eta > 0", id="--num-negatives 0 with eta > 0"),
    gen("--num-negatives", "200", message="cannot hold 200 negative example(s)", id="--num-negatives over the context"),
    gen("--num-negatives", "2.0", message=f"argument --num-negatives: {INVALID_INT}", id="--num-negatives not whole"),
    gen("--seed", "-1", message="--seed: seed must be None or an int in [0, 2^62), got -1", id="--seed negative"),
    gen("--seed", str(2**62), message="--seed: seed must be None or an int in [0, 2^62)", id="--seed 2^62"),
    gen("--seed", "zero", message=f"argument --seed: {INVALID_INT}: 'zero'", id="--seed not a number"),
    # choices, devices, dtypes
    gen("--negative-mode", "mixed", message="argument --negative-mode: invalid choice: 'mixed'", id="--negative-mode"),
    gen("--device", "cuda:99", message="--device cuda:99: ", id="--device cuda:99"),
    gen("--device", "tpu", message="--device 'tpu' is not a device", id="--device unknown"),
    gen("--device", "meta", message="--device meta: steer runs on cpu or cuda devices", id="--device meta"),
    gen("--dtype", "float64", message="--dtype 'float64': choose auto, float32, bfloat16, float16", id="--dtype float64"),
    gen("--dtype", "int8", message="--dtype 'int8'", id="--dtype int8"),
    # the real examples
    gen("--real", "{missing}", message="file not found: ", id="--real missing"),
    gen("--real", "{empty}", message="holds no examples (the file is empty)", id="--real empty"),
    gen("--real", "{unreadable}", message="/proc/self/mem: cannot read it", id="--real unreadable"),
    gen("--real", "{binary}", message="looks like a binary file", id="--real binary"),
    gen("--real", "{gzip}", message="gzip-compressed files are not read", id="--real gzip"),
    gen("--real", "{latin1}", message="line 1: not UTF-8 text", id="--real latin-1"),
    gen("--real", "{utf16}", message="is UTF-16 text; steer reads UTF-8", id="--real UTF-16"),
    gen("--real", "{bad_json}", message="line 2: not valid JSON", id="--real broken JSONL"),
    gen("--text-field", "body", message="line 1: no field 'body' (fields: label, text); choose one with --text-field", id="--text-field absent"),
    gen("--real", "{number_field}", message="line 2: field 'text' is a number, not a string", id="--real text not a string"),
    gen("--real", "{half_pair}", message="line 2, field 'text': not valid Unicode: a lone surrogate (U+D800) at character 12",
        id="--real JSON escapes half a surrogate pair"),
    gen("--prompt", "caf\udce9", message="argument --prompt: not valid Unicode: a lone surrogate (U+DCE9) at character 3",
        id="--prompt bytes not UTF-8"),
    gen("--real", "{csv_no_column}", message="no column 'text' (columns: body, label", id="--real CSV without the column"),
    gen("--real", "{folder}", message="not a file: ", id="--real a folder"),
    # --out
    gen(message="steer writes .jsonl or .parquet files, not .csv", out="csv", resume=False, id="--out .csv"),
    gen(message="steer writes .jsonl or .parquet files, not .txt", out="txt", id="--out .txt --resume"),
    gen(message="steer writes .jsonl or .parquet files, not files without an extension", out="no_extension", id="--out without extension"),
    gen(message="is a directory: give a .jsonl or .parquet file path", out="dir", id="--out a directory"),
    gen(message="already exists: pass --resume", out="foreign", resume=False, id="--out exists without --resume"),
    gen(message="already exists: pass --resume", out="parquet", resume=False, id="--out Parquet exists without --resume"),
    gen(message="line 1: not a steer sample record", out="foreign", id="--resume onto a foreign file"),
    gen(message="record 1 was written with other settings (eta: file 0.4 vs now 0.2)", out="other", id="--resume onto other settings"),
    gen(message="record 1 was written with other settings (eta: file 0.4 vs now 0.2)", out="torn_other", id="--resume onto other settings, torn"),
    gen(message="already holds 4 samples, more than --n 3", out="four", id="--resume onto more than --n"),
    gen(message="record 1 has no seed, not one a run with --seed 0 draws", out="unseeded", id="--resume onto a record without a seed"),
    gen(message="record 1 was written with other settings", out="parquet", id="--resume onto Parquet of other settings"),
    gen(message="row 0: not a steer sample record", out="foreign_parquet", id="--resume onto a foreign Parquet file"),
    gen(message="not a readable Parquet file", out="junk_parquet", id="--resume onto a broken Parquet file"),
    gen(message="out.parquet.partial.jsonl, line 1: not a steer sample record", out="foreign_journal", id="--resume onto a foreign Parquet journal"),
    gen(message="cannot create the output file", out="under_a_file", id="--out inside a file"),
    gen("--n", "0", message="--n must be a whole number >= 1", out="new_nested", id="--out in new directories, --n 0"),
    # the models
    gen(expert="{nowhere}", message="--expert ", id="--expert nonexistent"),
    gen(base="{nowhere}", message="no such directory, and no model of that id in the local Hugging Face cache", id="--base nonexistent"),
    gen(expert="{model_file}", message="expected a model directory, got a file", id="--expert a file"),
    gen(expert="{no_config}", message="directory has no config.json or adapter_config.json", id="--expert without config.json"),
    gen(expert="{bad_config}", message="config.json is not a readable JSON file", id="--expert config.json broken"),
    gen(expert="{auto_map}", message="config.json asks to run the model's own Python code (auto_map)", id="--expert auto_map"),
    gen(base="{auto_map_tokenizer}", message="tokenizer_config.json asks to run the model's own Python code", id="--base tokenizer auto_map"),
    gen(expert="{pickle_only}", message="has only pickle weights (pytorch_model.bin)", id="--expert pickle only"),
    gen(expert="{no_weights}", message="no weights found (no *.safetensors file)", id="--expert without weights"),
    gen(expert="{broken_tokenizer}", message="could not load its tokenizer", id="--expert broken tokenizer"),
    gen("--gamma", "0", expert="{no_tokenizer}", base=None, message="no tokenizer found with the expert or the base model", id="no tokenizer"),
    gen(base="{no_tokenizer}", message="could not load its tokenizer", id="--base without a tokenizer"),
    gen(expert="{adapter_no_base}", base=None, message="is a PEFT adapter that names no base model: give --base", id="adapter naming no base"),
    gen(expert="{adapter_gone_base}", base=None, message="--base (from adapter_config.json of --expert) ", id="adapter naming a missing base"),
    gen(base="{other_tokenizer}", message="the tokenizers of --expert and --base differ", id="tokenizer mismatch"),
    gen(expert="{small_vocab}", message="but the model's vocabulary has", id="tokenizer larger than the model"),
    gen(expert=None, message="--base needs --expert", id="--base without --expert"),
    gen(real=None, message="--expert needs --real", id="--expert without --real"),
    gen(base=None, message="gamma > 0 contrasts the expert with its base: give --base", id="gamma > 0, full expert, no base"),
    gen(expert="{corrupt_weights}", message="could not load the model", out="new_nested", loads=True, id="corrupt weights, new --out"),
    gen(expert="{adapter_stripped}", message="the LoRA adapter's file lacks 1 of its tensors (base_model.model.model.layers.0.",
        out="new_nested", loads=True, id="a lora_A missing from the adapter"),
    gen(expert="{nan_weights}", message="logits contain NaN (batch row 0, stream 0); NaN logits cannot be sampled from: the model's numbers went wrong",
        out="new_nested", loads=True, id="NaN in the weights"),
    gen(expert="{stripped_weights}", message="the weights lack 1 of the model's parameters (model.layers.1.mlp.down_proj.weight)",
        out="new_nested", loads=True, id="a tensor missing from the weights"),
    gen(expert="{more_layers}", message="transformers would fill them with random values", out="new_nested", loads=True,
        id="config.json with more layers than the weights"),
    # argparse
    gen("--bogus", message="unrecognized arguments: --bogus", id="unknown option"),
    gen("--n", message="argument --n: expected one argument", id="--n without its value"),
    # steer eval
    ev(message="is a file, not a directory", out="file", id="--out a file"),
    ev("--synthetic", "{few}", message="the synthetic set has 3 texts; evaluation needs at least 10", id="too few synthetic"),
    ev("--synthetic", "{single}", message="the synthetic set has 1 text; evaluation needs at least 10", id="one synthetic"),
    ev("--real", "{few}", message="the real set has 3 texts; evaluation needs at least 10", out="new_dir", id="too few real, new --out"),
    ev("--synthetic", "{empty}", message="holds no examples", id="--synthetic empty"),
    ev("--synthetic", "{binary}", message="looks like a binary file", id="--synthetic binary"),
    ev("--real", "{missing}", message="file not found", id="--real missing"),
    ev("--text-field", "body", message="no field 'body'", id="--text-field absent"),
    ev("--embedder", "bert", message="argument --embedder: invalid choice: 'bert'", id="--embedder"),
    ev("--seed", "-1", message="--seed must be a whole number in [0, 2^32)", id="--seed negative"),
    ev("--seed", str(2**32), message="--seed must be a whole number in [0, 2^32)", id="--seed 2^32"),
    ev("--seed", "x", message=f"argument --seed: {INVALID_INT}", id="--seed not a number"),
    ev(drop=("--synthetic",), message="the following arguments are required: --synthetic", id="--synthetic missing"),
    case(["eval"], "the following arguments are required: --real, --synthetic, --out", "dir", id="eval: no arguments"),
    # steer sweep
    sw("--gammas", "0,x", message="argument --gammas: expected comma-separated numbers, got '0,x'", id="--gammas junk"),
    sw("--gammas", ",", message="argument --gammas: expected at least one number", id="--gammas empty"),
    sw("--gammas", "0,-1", message="--gamma: gamma must be a finite number >= 0", id="--gammas negative"),
    sw("--gammas", "nan", message="--gamma: gamma must be a finite number >= 0.0, got nan", id="--gammas nan"),
    sw("--etas", "0,2", message="--eta: eta must be <= 1, got 2.0", id="--etas cell eta 2"),
    sw("--etas", "0.2", "--num-negatives", "0", message="--num-negatives: num_negatives must be >= 1 when eta > 0", id="--etas with --num-negatives 0"),
    sw("--etas", "0,2", message="--eta: eta must be <= 1", out="new_dir", id="--etas cell eta 2, new --out"),
    sw("--n", "0", message="--n must be a whole number >= 1", id="--n 0"),
    sw("--top-p", "2", message="--top-p: top_p must be in (0, 1]", id="--top-p 2"),
    sw("--seed", "-1", message="--seed: seed must be None or an int in [0, 2^62)", id="--seed negative"),
    sw("--embedder", "bert", message="argument --embedder: invalid choice: 'bert'", id="--embedder"),
    sw(message="is a file", out="file", id="--out a file"),
    sw(expert="{nowhere}", message="--expert ", id="--expert nonexistent"),
    sw("--base", "{base}", expert=None, message="--base needs --expert", id="--base without --expert"),
    sw(message="gamma0_eta0.jsonl, line 1: not a steer sample record", out="foreign_cell", id="a foreign cell file"),
    # steer demo
    demo("--n", "5", message="--n 5: the demo evaluates its samples, which needs at least 10", id="--n 5"),
    demo("--n", "0", message="--n must be a whole number >= 1", id="--n 0"),
    demo("--n", "ten", message=f"argument --n: {INVALID_INT}", id="--n not a number"),
    demo("--batch-size", "0", message="--batch-size must be a whole number >= 1", id="--batch-size 0"),
    demo(message="is a file: the demo writes a directory of results", out="file", id="--out a file"),
    demo("--n", "5", message="the demo evaluates its samples", out="new_dir", id="--n 5, new --out"),
    demo("--seed", "-1", message="--seed must be a whole number in [0, 2^32)", id="--seed negative"),
    demo("--seed", str(2**32), message="--seed must be a whole number in [0, 2^32)", id="--seed 2^32"),
    demo("--embedder", "bert", message="argument --embedder: invalid choice: 'bert'", id="--embedder"),
    # steer info and steer itself
    case(["info", "extra"], "unrecognized arguments: extra", "new", id="info: an argument"),
    case(["bogus"], "argument command: invalid choice: 'bogus'", "new", id="steer: unknown command"),
    case(["--bogus"], "unrecognized arguments: --bogus", "new", id="steer: unknown option"),
    case([], "no command given", "new", id="steer: no command"),
]


def test_the_table_is_large_and_covers_every_command():
    assert len(CASES) >= 45
    commands = {c.values[0][0] if c.values[0] and c.values[0][0] in COMMANDS else "steer" for c in CASES}
    assert commands == set(COMMANDS) | {"steer"}
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("argv, message, out_kind, loads", CASES)
def test_bad_input_is_one_line_exit_2_and_leaves_the_output_untouched(inputs, tmp_path, monkeypatch, capsys, argv, message, out_kind, loads):
    if "{unreadable}" in argv and not os.path.exists("/proc/self/mem"):
        pytest.skip("no /proc/self/mem to stand for an unreadable file")
    if "cuda:99" in argv and torch.cuda.device_count() > 99:
        pytest.skip("this machine has a cuda:99")
    work = tmp_path / "work"
    work.mkdir()
    out_name, existing = OUTPUTS[out_kind]
    for name, content in existing.items():
        path = work / name
        if content is None:
            path.mkdir(parents=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_content(inputs["outputs"], content))
    out = work / out_name
    out_sha = hashlib.sha256(out.read_bytes()).hexdigest() if out.is_file() else None
    before = _snapshot(work)
    monkeypatch.chdir(work)  # default outputs (synthetic.jsonl, steer-sweep, ...) would land here too
    if not loads:
        def no_loading(*_, **__):
            raise AssertionError("a model was loaded although the problem is in the arguments")

        for module in (steer.data.generate, steer.data.sweep, steer.demo.run):
            monkeypatch.setattr(module, "load_models", no_loading)
        for module in (steer.data.embeddings, steer.data.evaluation):
            monkeypatch.setattr(module, "make_embedder", no_loading)
    capsys.readouterr()

    names = inputs["names"] | {"out": str(out)}
    try:
        code = main([argument.format(**names) for argument in argv])
    except SystemExit as exit_info:  # argparse
        code = exit_info.code
    captured = capsys.readouterr()

    command = argv[0] if argv and argv[0] in COMMANDS else None
    prefix = f"steer {command}: error: " if command else "steer: error: "
    lines = captured.err.splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith(prefix), lines
    assert message in lines[0]
    if not loads and argv:  # refused before anything ran: nothing said on stdout either
        assert captured.out == ""
    if out_sha is not None:
        assert hashlib.sha256(out.read_bytes()).hexdigest() == out_sha, f"{out} changed"
    assert _snapshot(work) == before  # no file changed, appeared or disappeared
