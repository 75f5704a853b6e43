"""Properties of ``steer generate --resume`` over random files: a genuine output cut at any byte, random
bytes, random JSON lines, and genuine records mixed with junk. Whatever the file, the run either
refuses it (exit code 2, one line on stderr, the file byte-identical) or, only when the file is a
prefix of steer records of the very same settings (a torn last line allowed), keeps those records
and appends valid new ones until the file holds --n; never anything else. And the writer underneath
(``SampleWriter``, ``parse_jsonl_records``) on random bytes: a DataError or a consistent answer,
and the file never changed when a check refuses the records.

The models load once for the module (``load_models`` is patched to hand out the loaded pair), so
an example costs a plan and a few decode steps of the tiny models.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import pytest

from steer.cli import main
from steer.data import generate as generate_module
from steer.data.generate import RUN_FIELDS
from steer.data.io import DataError
from steer.data.output import RECORD_START, SampleWriter, parse_jsonl_records

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

N = 6
FAST = ["--max-new-tokens", "4", "--batch-size", "4", "--num-negatives", "2", "--quiet"]
RUNS = settings(max_examples=18, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FILES = settings(max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
WRITER = settings(max_examples=300, deadline=None, database=None)


def argv(models, out, *extra):
    return ["generate", "--expert", str(models["expert"]), "--base", str(models["base"]), "--real", str(models["real"]),
            "--out", str(out), "--n", str(N), *FAST, *extra]


@pytest.fixture(scope="module")
def genuine(models, tmp_path_factory):
    """A genuine output of N records, its lines, and the run's settings; load_models patched for
    the module to return the models loaded once."""
    out = tmp_path_factory.mktemp("resume") / "genuine.jsonl"
    with pytest.MonkeyPatch.context() as patch:
        loaded = []
        real_load = generate_module.load_models

        def load_once(sources, *, dtype):
            if not loaded:
                loaded.append(real_load(sources, dtype=dtype))
            return loaded[0]

        patch.setattr(generate_module, "load_models", load_once)
        assert main(argv(models, out)) == 0
        data = out.read_bytes()
        lines = data.split(b"\n")[:-1]
        assert len(lines) == N and all(line.startswith(RECORD_START) for line in lines)
        first = json.loads(lines[0])
        yield {"data": data, "lines": lines, "metadata": {key: first[key] for key in RUN_FIELDS}, "run_seed": first["run_seed"]}


def resume(models, capsys, data: bytes) -> tuple[int, list[str], bytes, bytes]:
    """``steer generate --resume`` onto a file holding ``data``: (exit code, stderr lines, the
    file before, the file after)."""
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "out.jsonl"
        out.write_bytes(data)
        capsys.readouterr()
        code = main(argv(models, out, "--resume"))
        err = capsys.readouterr().err.splitlines()
        after = out.read_bytes()
        assert sorted(p.name for p in Path(directory).iterdir()) == ["out.jsonl"]  # nothing beside it
    return code, err, data, after


def record_of(line: bytes):
    """The record a line holds by the documented format (an object with an int id >= 0 and a
    string text), or None."""
    try:
        value = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    ok = isinstance(value, dict) and type(value.get("id")) is int and value["id"] >= 0 and isinstance(value.get("text"), str)
    return value if ok else None


def expected_kept(data: bytes, genuine) -> tuple[bytes, list[dict]] | None:
    """What a resume may keep of ``data`` (the bytes it must start with afterwards, the records),
    or None when the file must be refused: every line a record of this run's settings with an int
    seed the run could have drawn, ids distinct, at most N of them, the last line possibly torn."""
    complete = data.rfind(b"\n") + 1
    lines = [line for line in data[:complete].split(b"\n")[:-1] if line.strip()]
    records = [record_of(line) for line in lines]
    kept, tail = data, data[complete:]
    if tail.strip():
        last = record_of(tail)
        if last is not None:
            records.append(last)
            kept = data + b"\n"
        elif tail.startswith(RECORD_START):
            kept = data[:complete]
        else:
            return None
    elif tail:  # an unterminated blank line: ended, so that the first new record starts its own line
        kept = data + b"\n"
    if any(r is None for r in records) or len({r["id"] for r in records}) < len(records) or len(records) > N:
        return None
    for r in records:
        if any(r.get(key, object()) != value for key, value in genuine["metadata"].items()):
            return None
        if type(r.get("seed")) is not int or not 0 <= r["seed"] - genuine["run_seed"] < 2**61:
            return None
    return kept, records


def assert_outcome(genuine, code, err, before, after):
    """The run refused in one line and left the file alone, or kept what it may keep and appended
    valid records of the run's settings up to N; which of the two is decided by the file."""
    expected = expected_kept(before, genuine)
    if expected is None:
        assert code == 2 and len(err) == 1 and err[0].startswith("steer generate: error: "), (code, err)
        assert after == before
        return "refused"
    kept, existing = expected
    assert code == 0 and err == [], (code, err)
    assert after.startswith(kept)
    new = [json.loads(line) for line in after[len(kept):].split(b"\n")[:-1]]
    assert after.endswith(b"\n") and len(existing) + len(new) == N
    first_id = max((r["id"] for r in existing), default=-1) + 1
    assert [r["id"] for r in new] == list(range(first_id, first_id + len(new)))
    last_seed = max((r["seed"] for r in existing), default=genuine["run_seed"] - 1)
    for record in new:
        assert {key: record[key] for key in RUN_FIELDS} == genuine["metadata"]
        assert record["text"].strip() and record["seed"] > last_seed
    texts = [" ".join(r["text"].split()).lower() for r in new]
    old = {" ".join(r["text"].split()).lower() for r in existing}
    assert len(set(texts)) == len(texts) and not old & set(texts)  # no duplicates were added
    return f"resumed after {len(existing)} records"


# -- (a) a genuine output cut at any byte ------------------------------------------------------------------


def cut_points(length: int, line_starts: list[int]):
    """Anywhere, and often just after a line's start, where a cut leaves a tail that no longer
    begins with '{"id": ' (the foreign-looking case)."""
    near_a_start = st.sampled_from(line_starts).flatmap(lambda start: st.integers(start, min(start + len(RECORD_START) + 1, length)))
    return st.one_of(st.integers(0, length), near_a_start)


@RUNS
@given(st.data())
def test_a_genuine_output_cut_anywhere_resumes_or_is_refused_untouched(models, genuine, capsys, data):
    whole = genuine["data"]
    line_starts = [0] + [i + 1 for i, byte in enumerate(whole) if byte == ord("\n")][:-1]
    cut = data.draw(cut_points(len(whole), line_starts), label="cut")
    code, err, before, after = resume(models, capsys, whole[:cut])
    tail = before[before.rfind(b"\n") + 1 :]
    foreign_looking = 0 < len(tail) < len(RECORD_START)  # '{', '{"id', ...: not yet steer's start of a line
    assert (expected_kept(before, genuine) is None) == foreign_looking
    event(assert_outcome(genuine, code, err, before, after))
    if foreign_looking:
        assert "not a steer sample record" in err[0]
    else:
        complete = [line for line in after.split(b"\n")[:-1]]
        assert [json.loads(line)["id"] for line in complete] == list(range(N))


@pytest.mark.parametrize("line", [0, N - 1])
@pytest.mark.parametrize("offset", range(len(RECORD_START) + 2))
def test_every_cut_at_the_start_of_a_line(models, genuine, capsys, line, offset):
    """The boundary, byte by byte: a cut inside '{"id": ' is foreign-looking, from its last byte on
    it is a torn record that is cut off."""
    start = sum(len(previous) + 1 for previous in genuine["lines"][:line])
    code, err, before, after = resume(models, capsys, genuine["data"][: start + offset])
    assert (code == 2) == (0 < offset < len(RECORD_START))
    assert_outcome(genuine, code, err, before, after)


# -- (b) random files ----------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["id", "text", "seed", "eta", "x"]) | st.text(max_size=4), inner, max_size=4),
    max_leaves=8,
)
EDITABLE = ["id", "text", "seed", "gamma", "eta", "expert_digest", "run_seed", "finish_reason"]
line_recipes = st.one_of(
    st.tuples(st.just("genuine"), st.integers(0, N - 1)),
    st.tuples(st.just("genuine"), st.integers(0, N - 1)),
    st.tuples(st.just("edited"), st.integers(0, N - 1), st.sampled_from(EDITABLE), json_values),
    st.tuples(st.just("dropped"), st.integers(0, N - 1), st.sampled_from(["seed", "text", "id", "top_k"])),
    st.tuples(st.just("json"), json_values),
    st.tuples(st.just("bytes"), st.binary(max_size=24)),
    st.tuples(st.just("blank"), st.sampled_from([b"", b" ", b"\t", b"\r"])),
)
# Genuine records in any order and number, with at most one other line among them: the files
# that may well be resumed.
mostly_genuine = st.tuples(st.permutations(list(range(N))), st.integers(0, N), st.lists(line_recipes, max_size=1), st.integers(0, N)).map(
    lambda t: [("genuine", i) for i in t[0][: t[1]]][: t[3]] + t[2] + [("genuine", i) for i in t[0][: t[1]]][t[3] :]
)
file_recipes = st.tuples(
    st.one_of(st.lists(line_recipes, max_size=7), mostly_genuine),
    st.booleans(),  # a newline after the last line
    st.none() | st.tuples(st.integers(0, N - 1), st.integers(0, 60)),  # a torn copy of a genuine line at the end
)


def build_file(genuine, recipe) -> bytes:
    lines, final_newline, torn = recipe
    built = []
    for kind, *args in lines:
        if kind == "genuine":
            built.append(genuine["lines"][args[0]])
        elif kind in ("edited", "dropped"):
            record = json.loads(genuine["lines"][args[0]])
            if kind == "edited":
                record[args[1]] = args[2]
            else:
                record.pop(args[1])
            built.append(json.dumps(record, ensure_ascii=False).encode("utf-8"))
        elif kind == "json":
            built.append(json.dumps(args[0]).encode("utf-8"))
        else:
            built.append(args[0])
    data = b"\n".join(built) + (b"\n" if built and final_newline else b"")
    if torn is not None:
        line, length = torn
        data += (b"\n" if data and not data.endswith(b"\n") else b"") + genuine["lines"][line][:length]
    return data


@FILES
@given(file_recipes)
def test_resume_onto_random_records_and_junk_refuses_untouched_or_appends_valid_records(models, genuine, capsys, recipe):
    code, err, before, after = resume(models, capsys, build_file(genuine, recipe))
    event(assert_outcome(genuine, code, err, before, after))


@FILES
@given(st.binary(max_size=200))
def test_resume_onto_random_bytes(models, genuine, capsys, data):
    code, err, before, after = resume(models, capsys, data)
    event(assert_outcome(genuine, code, err, before, after))


@pytest.mark.parametrize("seed", [None, "3", 1.5, True, -1, 2**70], ids=repr)
def test_a_record_with_a_seed_this_run_could_not_have_drawn_is_refused(models, genuine, capsys, seed):
    """Found by the property above: the resumed run continues after the records' largest seed, so
    a record without an int seed (or with one outside the run's range) used to crash the run."""
    record = json.loads(genuine["lines"][0])
    if seed is None:
        record.pop("seed")
    else:
        record["seed"] = seed
    code, err, before, after = resume(models, capsys, json.dumps(record).encode() + b"\n")
    assert code == 2 and len(err) == 1 and "seed" in err[0] and after == before, err


@pytest.mark.parametrize("blank", [b" ", b"\x0c", b"\x0b", b"\t\r"], ids=repr)
def test_records_appended_after_an_unterminated_blank_line_start_their_own_line(models, genuine, capsys, blank):
    """Found by the writer property below: a file ending in a blank line without its newline (a
    form feed, spaces) was resumed with the first record appended to that line, giving a line
    that json.loads refuses (form feed, vertical tab) or that no longer begins with '{"id": ', so
    a kill inside that write left a file --resume refused."""
    data = genuine["lines"][0] + b"\n" + blank
    code, err, before, after = resume(models, capsys, data)
    assert code == 0 and after.startswith(data + b"\n"), err
    assert all(line.startswith(RECORD_START) for line in after.split(b"\n")[:-1] if line.strip())
    assert_outcome(genuine, code, err, before, after)


# -- (c) the writer on random bytes --------------------------------------------------------------------------


class Refused(Exception):
    pass


def refuse(records):
    raise Refused


def refuse_as_data_error(records):
    raise DataError("refused by the check")


@WRITER
@given(st.one_of(st.binary(max_size=120), st.lists(st.sampled_from([b'{"id": 0, "text": "a"}', b'{"id": 1, "text": "b"}', b'{"id": ', b"", b"x", b'{"id": 1, "text": 2}', b'{"id": 2, "text": "\xe2\x80\xa8"}']), max_size=5).map(b"\n".join)))
def test_the_writer_on_random_bytes_refuses_or_repairs_consistently_and_never_changes_a_refused_file(data):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "out.jsonl"
        try:
            records, keep, add_newline = parse_jsonl_records(path, data)
        except DataError as error:
            assert "\n" not in str(error) and str(path) in str(error)
            parsed = None
        else:
            assert 0 <= keep <= len(data) and all(record_of(json.dumps(r).encode()) for r in records)
            assert len({r["id"] for r in records}) == len(records)
            assert keep == len(data) or data[keep - 1 : keep] in (b"\n", b"")
            assert not add_newline or (keep == len(data) and not data.endswith(b"\n"))
            repaired = data[:keep] + (b"\n" if add_newline else b"")
            assert parse_jsonl_records(path, repaired) == (records, len(repaired), False)  # a repaired file is clean
            parsed = records, repaired
        for check in (refuse, refuse_as_data_error):  # a refusing check: the file is never changed
            path.write_bytes(data)
            with pytest.raises((DataError, Refused)):
                SampleWriter(path, check=check)
            assert path.read_bytes() == data
        path.write_bytes(data)
        seen = []
        if parsed is None:
            with pytest.raises(DataError):
                SampleWriter(path, check=seen.append)
            assert path.read_bytes() == data and seen == []
            return
        records, repaired = parsed
        with SampleWriter(path, check=seen.append) as writer:
            assert seen == [records] and writer.existing == records
            assert path.read_bytes() == repaired  # only the documented repair
            new_id = max((r["id"] for r in records), default=-1) + 1
            writer.write({"id": new_id, "text": "appended"})
        again, keep, add_newline = parse_jsonl_records(path, path.read_bytes())
        assert again == records + [{"id": new_id, "text": "appended"}] and not add_newline


def test_a_refused_file_keeps_its_sha256_through_the_writer(tmp_path):
    """The cheapest form of the promise, on a torn genuine-looking file: the torn line stays."""
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"id": 0, "text": "a"}\n{"id": 1, "text": "to')
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(Refused):
        SampleWriter(path, check=refuse)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
