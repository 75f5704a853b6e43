"""steer generate's output: foreign files come out byte-identical, a full disk leaves a resumable
file, a failed run leaves no empty file, Parquet output, and the OS errors said in one line."""

from __future__ import annotations

import errno
import hashlib
import json
import os

import pytest

from steer.cli import main
from steer.data import output as output_module
from steer.data.io import DataError
from steer.data.output import SampleWriter, journal_path, parse_jsonl_records

FAST = ["--max-new-tokens", "6", "--batch-size", "4", "--quiet"]


def generate(models, out, *extra):
    return main(["generate", "--expert", str(models["expert"]), "--base", str(models["base"]), "--real", str(models["real"]), "--out", str(out), *FAST, *extra])


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- item 1: --resume never changes a file it refuses ---------------------------------------------------


FOREIGN_FILES = {
    "jsonl without ids, unterminated": b'{"text": "a"}\n{"text": "b"}',
    "plain text": b"first line\nsecond line without newline",
    "json array": b'[{"text": "a"}]',
    "binary": bytes(range(256)),
    "latin-1": "caf\xe9\n".encode("latin-1"),
    "records then garbage": b'{"id": 0, "text": "a"}\nnot json',
    "repeated ids": b'{"id": 0, "text": "a"}\n{"id": 0, "text": "b"}\n',
}


@pytest.mark.parametrize("content", FOREIGN_FILES.values(), ids=FOREIGN_FILES.keys())
def test_resume_leaves_a_file_steer_did_not_write_byte_identical(models, tmp_path, capsys, content):
    out = tmp_path / "d.jsonl"
    out.write_bytes(content)
    assert generate(models, out, "--n", "5", "--resume") == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("steer generate: error: ")
    assert out.read_bytes() == content


def test_resume_leaves_a_file_of_other_settings_byte_identical_even_when_torn(models, tmp_path, capsys):
    out = tmp_path / "d.jsonl"
    assert generate(models, out, "--n", "3") == 0
    with open(out, "ab") as handle:
        handle.write(b'{"id": 3, "text": "to')  # torn by a kill
    before = sha256(out)
    assert generate(models, out, "--n", "5", "--resume", "--eta", "0.4") == 2
    assert "other settings" in capsys.readouterr().err
    assert sha256(out) == before
    assert generate(models, out, "--n", "5", "--resume") == 0  # the same settings: cut and continued
    assert [r["id"] for r in records(out)] == [0, 1, 2, 3, 4]


def test_a_complete_last_record_without_its_newline_is_kept(models, tmp_path):
    out = tmp_path / "d.jsonl"
    assert generate(models, out, "--n", "3") == 0
    out.write_bytes(out.read_bytes().rstrip(b"\n"))
    assert generate(models, out, "--n", "4", "--resume") == 0
    assert [r["id"] for r in records(out)] == [0, 1, 2, 3]


def test_texts_with_unicode_line_separators_survive_a_resume(tmp_path):
    record = {"id": 0, "text": "one\u2028two\x85three\rfour"}
    data = (json.dumps(record, ensure_ascii=False) + "\n").encode()
    assert parse_jsonl_records(tmp_path / "x.jsonl", data) == ([record], len(data), False)


# -- item 6: OS errors in one line; a full disk leaves a valid file; no empty file -----------------------


def test_a_record_whose_text_escapes_half_a_surrogate_pair_is_refused_naming_its_line(tmp_path):
    """steer writes decoded tokens, never half a pair: such a text was edited in, and joining the
    pool it would fail in the tokenizer, so the resume stops before anything changes."""
    data = b'{"id": 0, "text": "fine"}\n{"id": 1, "text": "half \\udfff"}\n'
    with pytest.raises(DataError, match=r"x.jsonl, line 2: its text is not valid Unicode: a lone surrogate \(U\+DFFF\)"):
        parse_jsonl_records(tmp_path / "x.jsonl", data)


def test_a_full_disk_rolls_back_the_torn_record_and_the_file_resumes(models, tmp_path, monkeypatch, capsys):
    out = tmp_path / "d.jsonl"
    real_write, calls = os.write, {"n": 0}

    def write_until_full(fd, data):
        calls["n"] += 1
        if calls["n"] == 3:  # the third record: half of it lands, then the disk is full
            real_write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(output_module.os, "write", write_until_full)
    assert generate(models, out, "--n", "6") == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and str(out) in err[0] and "--resume" in err[0]
    assert [r["id"] for r in records(out)] == [0, 1]  # rolled back to the last complete record
    monkeypatch.setattr(output_module.os, "write", real_write)
    assert generate(models, out, "--n", "6", "--resume") == 0
    assert [r["id"] for r in records(out)] == list(range(6))


def test_a_read_only_output_is_one_line_and_leaves_nothing(models, tmp_path, monkeypatch, capsys):
    out = tmp_path / "sub" / "d.jsonl"
    real_open = os.open

    def read_only(path, flags, *mode):
        if str(path) == str(out) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *mode)

    monkeypatch.setattr(output_module.os, "open", read_only)
    assert generate(models, out, "--n", "2") == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "Read-only file system" in err[0] and str(out) in err[0]
    assert not out.exists() and not out.parent.exists()  # the directory it made is gone again


def test_a_run_that_fails_before_its_first_sample_leaves_no_empty_file(models, tmp_path, monkeypatch, capsys):
    from steer.data import generate as generate_module

    def broken_engine(*_, **__):
        raise DataError("the engine could not start")

    monkeypatch.setattr(generate_module, "build_engine", broken_engine)
    out = tmp_path / "d.jsonl"
    assert generate(models, out, "--n", "2") == 2
    assert "could not start" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("option, value", [("--dtype", "float8"), ("--device", "tpu"), ("--device", "cuda:99")])
def test_dtype_and_device_errors_leave_no_file(models, tmp_path, capsys, option, value):
    out = tmp_path / "d.jsonl"
    assert generate(models, out, "--n", "2", option, value) == 2
    assert capsys.readouterr().err.startswith(f"steer generate: error: {option}")
    assert not out.exists()


def test_eval_out_naming_an_existing_file_is_one_line(tmp_path, capsys):
    real = tmp_path / "real.txt"
    real.write_text("\n".join(f"text number {i} here" for i in range(12)))
    taken = tmp_path / "taken"
    taken.write_text("mine")
    assert main(["eval", "--real", str(real), "--synthetic", str(real), "--out", str(taken), "--embedder", "tfidf", "--no-knn"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and str(taken) in err[0] and "not a directory" in err[0]
    assert taken.read_text() == "mine"


def test_the_writer_never_truncates_before_the_check_passes(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"id": 0, "text": "a"}\n{"id": 1, "te')

    def refuse(records):
        raise DataError("no")

    with pytest.raises(DataError):
        SampleWriter(path, check=refuse)
    assert path.read_bytes() == b'{"id": 0, "text": "a"}\n{"id": 1, "te'
    with SampleWriter(path) as writer:
        assert [r["id"] for r in writer.existing] == [0]
    assert path.read_bytes() == b'{"id": 0, "text": "a"}\n'


# -- item 8 (writing side): Parquet by extension, other extensions refused -------------------------------


def test_parquet_output_is_written_whole_and_resumes(models, tmp_path):
    pyarrow_parquet = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "d.parquet"
    assert generate(models, out, "--n", "3") == 0
    table = pyarrow_parquet.read_table(out).to_pylist()
    assert [r["id"] for r in table] == [0, 1, 2] and all(isinstance(r["text"], str) for r in table)
    assert not journal_path(out).exists()
    reference = tmp_path / "d.jsonl"
    assert generate(models, reference, "--n", "5") == 0
    assert generate(models, out, "--n", "5", "--resume") == 0
    resumed = pyarrow_parquet.read_table(out).to_pylist()
    assert [r["id"] for r in resumed] == list(range(5))
    assert [r["text"] for r in resumed][:3] == [r["text"] for r in records(reference)][:3]
    before = sha256(out)
    assert generate(models, out, "--n", "5", "--resume") == 0  # complete: left as it is
    assert sha256(out) == before and not journal_path(out).exists()


def test_a_killed_parquet_run_resumes_from_its_journal(models, tmp_path, monkeypatch):
    pyarrow_parquet = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "d.parquet"

    def killed(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(output_module.ParquetSampleWriter, "finish", killed)
    assert generate(models, out, "--n", "3") == 130
    assert not out.exists() and len(records(journal_path(out))) == 3
    monkeypatch.undo()
    assert generate(models, out, "--n", "4") == 2  # without --resume: refused, the journal is a run's
    assert generate(models, out, "--n", "4", "--resume") == 0
    assert [r["id"] for r in pyarrow_parquet.read_table(out).to_pylist()] == [0, 1, 2, 3]


def test_a_foreign_parquet_file_is_refused_and_unchanged(models, tmp_path, capsys):
    pytest.importorskip("pyarrow")
    import pyarrow
    import pyarrow.parquet

    out = tmp_path / "d.parquet"
    pyarrow.parquet.write_table(pyarrow.table({"text": ["a", "b"]}), out)
    before = sha256(out)
    assert generate(models, out, "--n", "4", "--resume") == 2
    assert "not a steer sample record" in capsys.readouterr().err
    assert sha256(out) == before and not journal_path(out).exists()


@pytest.mark.parametrize("name", ["d.csv", "d.json", "d", "d.txt"])
def test_other_output_extensions_are_refused(models, tmp_path, capsys, name):
    out = tmp_path / name
    assert generate(models, out, "--n", "2") == 2
    assert "steer writes .jsonl or .parquet" in capsys.readouterr().err
    assert not out.exists()


def test_a_parquet_file_that_cannot_be_written_leaves_the_journal_to_resume_from(models, tmp_path, monkeypatch, capsys):
    pyarrow_parquet = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "d.parquet"

    def disk_full(*_, **__):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pyarrow_parquet, "write_table", disk_full)
    assert generate(models, out, "--n", "3") == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "--resume" in err[0]
    assert not out.exists() and not out.with_name(out.name + ".tmp").exists()
    assert [r["id"] for r in records(journal_path(out))] == [0, 1, 2]
    monkeypatch.undo()
    assert generate(models, out, "--n", "3", "--resume") == 0
    assert [r["id"] for r in pyarrow_parquet.read_table(out).to_pylist()] == [0, 1, 2]
    assert not journal_path(out).exists()
