"""Properties of read_texts over random input: whatever the bytes, the answer is a list of stripped
non-empty strings or a one-line DataError naming the file, never another exception; and what a
writer puts in (JSONL, JSON arrays, csv.writer tables, text in any encoding) is what comes out."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest

from steer.data.io import DataError, read_texts

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

# Function-scoped tmp_path would be shared by all examples of a property: each example writes its
# file anew under a folder of the module's.
FAST = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
FEW = settings(max_examples=12, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("readers")


def read_or_refuse(path, text_field="text"):
    """read_texts' list, or None when it refused the file in a proper one-line DataError; any
    other exception fails the test."""
    try:
        texts = read_texts(path, text_field)
    except DataError as error:
        message = str(error)
        assert str(path) in message and "\n" not in message, message
        return None
    assert isinstance(texts, list) and texts
    assert all(isinstance(t, str) and t and t == t.strip() for t in texts)
    return texts


def columnar_files() -> dict[str, bytes]:
    """Small valid Parquet and Arrow (file and stream format) files, to damage."""
    table = pa.table({"text": ["a", "b c", None, "d"], "n": [1, 2, 3, 4]})
    files = {}
    for name, write in (("table.parquet", pq.write_table), ("file.arrow", pa.ipc.new_file), ("stream.arrow", pa.ipc.new_stream)):
        sink = io.BytesIO()
        if name.endswith(".parquet"):
            write(table, sink)
        else:
            with write(sink, table.schema) as writer:
                writer.write_table(table)
        files[name] = sink.getvalue()
    return files


VALID_COLUMNAR = columnar_files()
# Random tails after beginnings that steer each reader past its first check.
BEGINNINGS = [b"", b"\xef\xbb\xbf", b'{"text": ', b"[", b'[{"text": ', b"text,label\n", b"text\n", b"PAR1", b"ARROW1\0\0", b"\xff\xff\xff\xff", b"\xff\xfe", b"\x1f\x8b"]
random_bytes = st.one_of(
    st.binary(max_size=2000),
    st.tuples(st.sampled_from(BEGINNINGS), st.binary(max_size=500)).map(lambda parts: parts[0] + parts[1]),
    st.binary(max_size=500).map(lambda tail: b"PAR1" + tail + b"PAR1"),
    st.tuples(st.sampled_from([b"[", b'{"a": [', b"text\n\""]), st.integers(1, 50_000)).map(lambda parts: parts[0] * parts[1]),
)
EXTENSIONS = [".jsonl", ".json", ".csv", ".tsv", ".txt", ".parquet", ".arrow", ""]


@pytest.mark.parametrize("extension", EXTENSIONS, ids=[e or "none" for e in EXTENSIONS])
@FAST
@given(data=random_bytes)
def test_random_bytes_give_texts_or_a_data_error(folder, extension, data):
    path = folder / f"random{extension}"
    path.write_bytes(data)
    read_or_refuse(path)


@pytest.mark.parametrize("name", list(VALID_COLUMNAR))
@FAST
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8))
def test_damaged_parquet_and_arrow_give_texts_or_a_data_error(folder, name, flips):
    data = bytearray(VALID_COLUMNAR[name])
    for position, value in flips:
        data[position % len(data)] = value
    path = folder / f"damaged-{name}"
    path.write_bytes(bytes(data))
    read_or_refuse(path)


@FEW
@given(info=st.binary(max_size=200), state=st.binary(max_size=200), arrow=st.binary(max_size=200))
def test_a_datasets_folder_of_random_files_gives_a_data_error(folder, info, state, arrow):
    pytest.importorskip("datasets")
    dataset = folder / "ds"
    dataset.mkdir(exist_ok=True)
    (dataset / "dataset_info.json").write_bytes(info)
    (dataset / "state.json").write_bytes(state)
    (dataset / "data-00000-of-00001.arrow").write_bytes(arrow)
    assert read_or_refuse(dataset) is None


def lines_of(text: str) -> list[str]:
    """The examples of a plain text file: its lines (ended by \\n, \\r\\n or \\r), stripped, blank ones left out."""
    return [line.strip() for line in re.split(r"\r\n|\r|\n", text) if line.strip()]


LATIN1 = st.characters(max_codepoint=255)


@FAST
@given(data=st.data(), encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"]))
def test_text_in_any_encoding_is_read_as_utf8_or_refused(folder, data, encoding):
    text = data.draw(st.text(alphabet=LATIN1) if encoding == "latin-1" else st.text(), label="text")
    encoded = text.encode(encoding)
    path = folder / "encoded.txt"
    path.write_bytes(encoded)
    texts = read_or_refuse(path)
    try:
        decoded = encoded.decode("utf-8-sig")
    except UnicodeDecodeError:
        assert texts is None  # not UTF-8: refused, never read as mojibake
        return
    expected = lines_of(decoded)
    if "\0" in decoded or not expected or expected[0].startswith("{"):
        return  # binary-looking, empty, or read as JSONL: refused or read, either is right
    assert texts == expected


SIZES = st.integers(min_value=1_000_000, max_value=4_000_000)


@FEW
@given(size=SIZES, word=st.text(min_size=1, max_size=5).filter(str.strip), extension=st.sampled_from([".txt", ".jsonl", ".json", ".csv"]))
def test_a_huge_single_line_is_one_example(folder, size, word, extension):
    line = (word * (size // len(word) + 1))[:size].replace("\n", " ").replace("\r", " ").replace("\0", " ")
    path = folder / f"huge{extension}"
    if extension == ".txt":
        path.write_text("short\n" + line + "\n", encoding="utf-8")
    elif extension == ".jsonl":
        path.write_text(json.dumps({"text": "short"}) + "\n" + json.dumps({"text": line}) + "\n", encoding="utf-8")
    elif extension == ".json":
        path.write_text(json.dumps(["short", line]), encoding="utf-8")
    else:
        with open(path, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([["text"], ["short"], [line]])
    texts = read_or_refuse(path)
    expected = ["short"] + ([line.strip()] if line.strip() else [])
    assert texts == expected


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
records = st.one_of(
    json_values,
    st.builds(lambda text, rest: {**rest, "text": text}, st.text(), st.dictionaries(st.text(max_size=5), json_values, max_size=2)),
    st.builds(lambda value: {"text": value}, json_values),
)


def expected_texts(values, allow_strings: bool):
    """What read_texts must return for these records, or None where it must refuse them."""
    texts = []
    for value in values:
        if allow_strings and isinstance(value, str):
            texts.append(value)
        elif isinstance(value, dict) and isinstance(value.get("text"), str):
            texts.append(value["text"])
        else:
            return None
    texts = [t.strip() for t in texts if t.strip()]
    return texts or None


@FAST
@given(values=st.lists(records, min_size=1, max_size=6), ascii_only=st.booleans())
def test_jsonl_of_mixed_values(folder, values, ascii_only):
    path = folder / "mixed.jsonl"
    path.write_text("".join(json.dumps(v, ensure_ascii=ascii_only) + "\n" for v in values), encoding="utf-8")
    assert read_or_refuse(path) == expected_texts(values, allow_strings=False)


@FAST
@given(values=st.lists(st.one_of(records, st.text()), max_size=6), ascii_only=st.booleans(), indent=st.sampled_from([None, 0, 2]))
def test_json_array_of_mixed_values(folder, values, ascii_only, indent):
    path = folder / "mixed.json"
    path.write_text(json.dumps(values, ensure_ascii=ascii_only, indent=indent), encoding="utf-8")
    assert read_or_refuse(path) == expected_texts(values, allow_strings=True)


header_names = st.lists(st.text(alphabet="abcdefgh_ 0123", min_size=1, max_size=6).map(str.strip).filter(bool), min_size=1, max_size=4, unique=True)
cells = st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=["Cs"]), max_size=20)


@FAST
@given(data=st.data(), header=header_names, delimiter=st.sampled_from([",", "\t"]), bom=st.booleans())
def test_csv_tables_round_trip_their_text_column(folder, data, header, delimiter, bom):
    rows = data.draw(st.lists(st.lists(cells, min_size=len(header), max_size=len(header)), max_size=8), label="rows")
    column = data.draw(st.integers(0, len(header) - 1), label="column")
    path = folder / ("table.csv" if delimiter == "," else "table.tsv")
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as handle:
        csv.writer(handle, delimiter=delimiter).writerows([header, *rows])
    expected = [row[column].strip() for row in rows if row[column].strip()]
    assert read_or_refuse(path, header[column]) == (expected or None)
