"""read_texts: every input format read as it is meant (a CSV's header is not an example, a
pretty-printed JSON array is one document), and every bad input refused with one line that names
the file and what is wrong."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pytest

from steer.data.io import DataError, read_texts

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

TEXTS = ["the cat sat", "a dog barked, twice", 'she said "hi"', "naïve café"]


def write_csv(path, rows, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, delimiter=delimiter).writerows(rows)
    return path


def write_parquet(path, columns):
    pq.write_table(pa.table(columns), path)
    return path


def refused(path, text_field="text") -> str:
    """The message read_texts refuses ``path`` with: one line, naming the file."""
    with pytest.raises(DataError) as error:
        read_texts(path, text_field)
    message = str(error.value)
    assert str(path) in message and "\n" not in message, message
    return message


# --- CSV and TSV ---------------------------------------------------------------------------------


def test_csv_header_row_is_not_an_example(tmp_path):
    path = write_csv(tmp_path / "real.csv", [["text", "label"], *([t, i] for i, t in enumerate(TEXTS))])
    assert read_texts(path) == TEXTS


def test_csv_reads_the_column_named_by_text_field(tmp_path):
    path = write_csv(tmp_path / "real.csv", [["id", "body", "label"], *([i, f"  {t}  ", "x"] for i, t in enumerate(TEXTS)), [9, "   ", "y"]])
    assert read_texts(path, "body") == TEXTS  # stripped, the blank one skipped


def test_csv_quoted_multiline_field_bom_and_crlf(tmp_path):
    path = tmp_path / "real.csv"
    path.write_bytes(b'\xef\xbb\xbftext,label\r\n"first line\r\nsecond, line",1\r\nplain,2\r\n\r\n')
    assert read_texts(path) == ["first line\r\nsecond, line", "plain"]


def test_csv_huge_field(tmp_path):
    huge = "word " * 200_000  # 1 MB: past the csv module's default field limit of 128 KiB
    path = write_csv(tmp_path / "real.csv", [["text"], [huge], ["small"]])
    assert read_texts(path) == [huge.strip(), "small"]
    assert csv.field_size_limit() == 131072  # the process-wide limit is left as it was


def test_tsv(tmp_path):
    path = write_csv(tmp_path / "real.tsv", [["label", "text"], *([i, t] for i, t in enumerate(TEXTS))], delimiter="\t")
    assert read_texts(path) == TEXTS


def test_csv_without_the_column_lists_the_columns(tmp_path):
    path = write_csv(tmp_path / "real.csv", [["body", "label"], ["hello", 1]])
    message = refused(path)
    assert "no column 'text'" in message and "body, label" in message and "--text-field" in message and "header" in message


def test_csv_row_with_a_wrong_number_of_fields_names_its_line(tmp_path):
    path = tmp_path / "real.csv"
    path.write_text('text,label\n"two\nlines",1\nok,2\ntoo,many,fields\n')
    message = refused(path)
    assert "line 5" in message and "3 fields" in message and "header has 2" in message


def test_csv_with_only_a_header_holds_no_examples(tmp_path):
    path = write_csv(tmp_path / "real.csv", [["text", "label"]])
    assert "holds no" in refused(path)


# --- Parquet and Arrow ---------------------------------------------------------------------------


def test_parquet(tmp_path):
    path = write_parquet(tmp_path / "real.parquet", {"label": list(range(5)), "body": [*TEXTS, "  "]})
    assert read_texts(path, "body") == TEXTS


def test_parquet_large_string_and_dictionary_columns(tmp_path):
    large = pa.array(TEXTS, type=pa.large_string())
    path = write_parquet(tmp_path / "large.parquet", {"text": large})
    assert read_texts(path) == TEXTS
    path = write_parquet(tmp_path / "dictionary.parquet", {"text": pa.array(TEXTS * 2).dictionary_encode()})
    assert read_texts(path) == TEXTS * 2


def test_parquet_without_the_column_lists_the_columns(tmp_path):
    path = write_parquet(tmp_path / "real.parquet", {"body": TEXTS, "label": [1, 2, 3, 4]})
    message = refused(path)
    assert "no column 'text'" in message and "body, label" in message and "--text-field" in message


def test_parquet_non_string_column_names_its_type(tmp_path):
    path = write_parquet(tmp_path / "real.parquet", {"text": [1, 2, 3]})
    message = refused(path)
    assert "int64" in message and "not strings" in message


def test_parquet_null_names_its_row(tmp_path):
    path = write_parquet(tmp_path / "real.parquet", {"text": ["a", "b", None, "d"]})
    message = refused(path)
    assert "row 2" in message and "null" in message


def test_corrupt_parquet(tmp_path):
    good = write_parquet(tmp_path / "good.parquet", {"text": TEXTS}).read_bytes()
    path = tmp_path / "real.parquet"
    path.write_bytes(good[:4] + b"\0" * (len(good) - 8) + good[-4:])
    assert "Parquet" in refused(path)
    path.write_text("text\nnot parquet at all\n")
    assert "Parquet" in refused(path)


def test_arrow_ipc_file_and_stream(tmp_path):
    table = pa.table({"text": TEXTS})
    with pa.ipc.new_file(tmp_path / "file.arrow", table.schema) as writer:
        writer.write_table(table)
    with pa.ipc.new_stream(tmp_path / "stream.arrow", table.schema) as writer:
        writer.write_table(table)
    assert read_texts(tmp_path / "file.arrow") == TEXTS
    assert read_texts(tmp_path / "stream.arrow") == TEXTS


# --- JSON arrays and JSONL -----------------------------------------------------------------------


def test_pretty_printed_json_array_of_objects(tmp_path):
    path = tmp_path / "real.json"
    path.write_text(json.dumps([{"text": t, "label": i} for i, t in enumerate(TEXTS)], indent=2))
    assert read_texts(path) == TEXTS


def test_json_array_of_strings(tmp_path):
    path = tmp_path / "real.json"
    path.write_text("\n  " + json.dumps([*TEXTS, " "], indent=4, ensure_ascii=False))
    assert read_texts(path) == TEXTS


def test_json_array_element_that_is_not_a_string_names_the_element(tmp_path):
    path = tmp_path / "real.json"
    path.write_text(json.dumps(["a", "b", "c", 3]))
    message = refused(path)
    assert "element 3" in message and "number" in message


def test_json_array_object_without_the_field(tmp_path):
    path = tmp_path / "real.json"
    path.write_text(json.dumps([{"text": "a"}, {"body": "b"}], indent=2))
    message = refused(path)
    assert "element 1" in message and "no field 'text'" in message and "body" in message and "--text-field" in message


def test_json_array_syntax_error_names_its_line(tmp_path):
    path = tmp_path / "real.json"
    path.write_text('[\n  {"text": "a"},\n  {"text": "b",}\n]\n')
    message = refused(path)
    assert "line 3" in message and "not valid JSON" in message


def test_top_level_json_object_names_its_list(tmp_path):
    path = tmp_path / "real.json"
    path.write_text(json.dumps({"version": 2, "data": [{"text": t} for t in TEXTS]}, indent=2))
    message = refused(path)
    assert "JSON array" in message and "JSONL" in message and "'data'" in message


def test_one_line_json_object_is_a_one_record_jsonl_file(tmp_path):
    path = tmp_path / "real.json"
    path.write_text('{"text": "only one"}\n')
    assert read_texts(path) == ["only one"]


def test_jsonl_and_text_with_a_bom(tmp_path):
    jsonl, text = tmp_path / "real.jsonl", tmp_path / "real.txt"
    jsonl.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps({"text": t}) + "\n" for t in TEXTS).encode())
    text.write_bytes(b"\xef\xbb\xbf" + "\n".join(TEXTS).encode())
    assert read_texts(jsonl) == TEXTS
    assert read_texts(text) == TEXTS
    no_extension = tmp_path / "real"
    no_extension.write_bytes(jsonl.read_bytes())
    assert read_texts(no_extension) == TEXTS  # still recognised as JSONL by its first line


def test_jsonl_text_with_unicode_line_separators_is_one_record(tmp_path):
    # json.dumps(ensure_ascii=False) (steer generate's output) leaves U+2028, U+0085 and form
    # feeds raw inside strings: they are not line breaks of a JSONL file.
    texts = ["one\u2028two", "three\x85four", "five\x0csix"]
    path = tmp_path / "real.jsonl"
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    assert read_texts(path) == texts


@pytest.mark.parametrize("content, message", [
    ('{"text": "a"}\n[1, 2]\n', "line 2: expected a JSON object, got an array"),
    ('{"text": "a"}\n{"text": null}\n', "line 2: field 'text' is null, not a string"),
    ('{"text": "a"}\n{"text": 7}\n', "line 2: field 'text' is a number, not a string"),
    ('{"text": "a"}\n{"body": "b"}\n', "line 2: no field 'text' (fields: body)"),
    ('{"text": "a"}\n{"text": \n', "line 2: not valid JSON"),
    ('{"text": ' + "9" * 5000 + "}\n", "line 1: not valid JSON"),
    ('{"text": ' + "[" * 100_000 + "}\n", "line 1: not valid JSON"),
], ids=["array", "null", "number", "missing", "syntax", "huge-int", "deep"])
def test_jsonl_bad_records_name_the_line(tmp_path, content, message):
    path = tmp_path / "real.jsonl"
    path.write_text(content)
    assert message in refused(path)


def test_deeply_nested_json_array(tmp_path):
    path = tmp_path / "real.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    assert "nested too deeply" in refused(path)


# --- Hugging Face datasets folders --------------------------------------------------------------


@pytest.fixture(scope="module")
def datasets_module():
    return pytest.importorskip("datasets")


def test_datasets_folder(tmp_path, datasets_module):
    folder = tmp_path / "ds"
    datasets_module.Dataset.from_dict({"body": [*TEXTS, ""], "label": [0, 1, 2, 3, 4]}).save_to_disk(str(folder))
    assert read_texts(folder, "body") == TEXTS
    message = refused(folder)
    assert "no column 'text'" in message and "body, label" in message


def test_dataset_dict_folder_with_one_split(tmp_path, datasets_module):
    folder = tmp_path / "ds"
    datasets_module.DatasetDict({"train": datasets_module.Dataset.from_dict({"text": TEXTS})}).save_to_disk(str(folder))
    assert read_texts(folder) == TEXTS


def test_dataset_dict_folder_with_two_splits_asks_for_one(tmp_path, datasets_module):
    folder = tmp_path / "ds"
    split = datasets_module.Dataset.from_dict
    datasets_module.DatasetDict({"train": split({"text": TEXTS}), "test": split({"text": ["held out"]})}).save_to_disk(str(folder))
    message = refused(folder)
    assert "train, test" in message and str(folder / "train") in message
    assert read_texts(folder / "test") == ["held out"]


def test_folder_that_is_not_a_dataset(tmp_path):
    (tmp_path / "some.txt").write_text("hello\n")
    assert "not a file" in refused(tmp_path)


def test_datasets_folder_without_the_datasets_package(tmp_path, datasets_module, monkeypatch):
    import builtins

    folder = tmp_path / "ds"
    datasets_module.Dataset.from_dict({"text": TEXTS}).save_to_disk(str(folder))
    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets" or name.startswith("datasets."):
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    assert "pip install 'steer[data]'" in refused(folder)


# --- what is not text ----------------------------------------------------------------------------


def test_binary_file(tmp_path):
    path = tmp_path / "real.txt"
    path.write_bytes(b"hello\0world\x01\x02 and more\n")
    assert "looks like a binary file" in refused(path)


def test_compressed_file_under_a_text_name(tmp_path):
    path = tmp_path / "real.jsonl"
    path.write_bytes(gzip.compress(b'{"text": "a"}\n'))
    message = refused(path)
    assert "binary" in message and "gzip" in message


@pytest.mark.parametrize("name", ["real.jsonl.gz", "real.zip", "real.xz", "real.bz2", "real.zst", "real.xlsx"])
def test_unsupported_extension(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"PK\x03\x04 whatever")
    assert "not read" in refused(path)


def test_utf16_text(tmp_path):
    path = tmp_path / "real.txt"
    path.write_text("\n".join(TEXTS), encoding="utf-16")
    message = refused(path)
    assert "UTF-16" in message and "UTF-8" in message


def test_latin1_text_names_the_line(tmp_path):
    path = tmp_path / "real.txt"
    path.write_bytes("fine\nalso fine\ncaf\xe9\n".encode("latin-1"))
    message = refused(path)
    assert "line 3" in message and "UTF-8" in message


def test_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "real.txt"
    path.write_text("hello\n")

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    monkeypatch.setattr(Path, "read_text", denied)
    monkeypatch.setattr(Path, "open", denied)
    assert "Permission denied" in refused(path)


# --- through steer eval --------------------------------------------------------------------------


REAL = [f"example number {i} says {word} and more" for i, word in enumerate("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split())]
SYNTHETIC = [f"sample {i} tells of {w} today" for i, w in enumerate("one two three four five six seven eight nine ten eleven".split())]


def test_eval_reads_a_csv_against_a_parquet_file(tmp_path, capsys):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    from steer.cli import main

    real = write_csv(tmp_path / "real.csv", [["text", "label"], *([t, i] for i, t in enumerate(REAL))])
    synthetic = write_parquet(tmp_path / "synthetic.parquet", {"text": SYNTHETIC})
    out = tmp_path / "ev"
    assert main(["eval", "--real", str(real), "--synthetic", str(synthetic), "--out", str(out), "--embedder", "tfidf", "--no-knn"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["counts"]["real_input"] == len(REAL)  # the header row is not an example
    assert metrics["counts"]["synthetic"] == len(SYNTHETIC)
    assert (out / "report.html").is_file()


def test_generation_settings_of_files_that_are_not_steer_output(tmp_path, datasets_module):
    from steer.data.evaluation import generation_settings

    folder = tmp_path / "ds"
    datasets_module.Dataset.from_dict({"text": TEXTS}).save_to_disk(str(folder))
    (tmp_path / "array.json").write_text(json.dumps([{"text": t, "gamma": 0.2} for t in TEXTS], indent=2))
    (tmp_path / "deep.txt").write_text("[" * 100_000 + "\n")
    (tmp_path / "digits.txt").write_text("9" * 5000 + "\n")
    paths = [
        write_csv(tmp_path / "real.csv", [["text", "gamma"], ["a", 0.2]]),
        write_parquet(tmp_path / "real.parquet", {"text": TEXTS, "gamma": [0.2] * 4}),
        folder, tmp_path / "array.json", tmp_path / "deep.txt", tmp_path / "digits.txt",
    ]
    for path in paths:
        assert generation_settings(path) is None, path
