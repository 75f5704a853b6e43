"""Reading real examples (and the fingerprint of a set of them).

:func:`read_texts` reads JSONL with a text field (``{"text": ...}`` per line), plain text with one
example per line, a JSON array (of objects with the text field, or of strings), CSV or TSV with a
header row, Parquet or Arrow with a text column, or a Hugging Face ``datasets`` folder written by
``save_to_disk``; whatever is wrong with the input raises DataError, naming the file and, where
there is one, the line, element or row. Writing synthetic samples: :mod:`steer.data.output`.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
from pathlib import Path

from steer.text_checks import lone_surrogate_problem


class DataError(ValueError):
    """Bad input data or arguments: the message names the file, line or field at fault."""


JSONL_SUFFIXES = (".jsonl", ".ndjson")
CSV_DELIMITERS = {".csv": ",", ".tsv": "\t"}
ARROW_SUFFIXES = (".arrow", ".feather")
UNREAD_SUFFIXES = {
    ".gz": "gzip-compressed", ".tgz": "gzip-compressed", ".zip": "zip", ".xz": "xz-compressed",
    ".bz2": "bzip2-compressed", ".zst": "zstd-compressed", ".7z": "7-Zip", ".tar": "tar",
    ".xlsx": "Excel", ".xls": "Excel", ".ods": "OpenDocument spreadsheet", ".pkl": "pickle",
    ".pickle": "pickle", ".npy": "NumPy", ".npz": "NumPy", ".h5": "HDF5", ".hdf5": "HDF5",
    ".avro": "Avro", ".orc": "ORC", ".pdf": "PDF", ".docx": "Word",
}
"""Extensions of formats that are not read, and what to call them in the refusal."""
BINARY_SIGNATURES = {
    b"\x1f\x8b": "gzip-compressed", b"PK\x03\x04": "zip", b"\xfd7zXZ\x00": "xz-compressed",
    b"BZh91AY&SY": "bzip2-compressed", b"\x28\xb5\x2f\xfd": "zstd-compressed", b"PAR1": "Parquet",
    b"ARROW1": "Arrow", b"\xff\xff\xff\xff": "Arrow stream", b"%PDF": "PDF",
}
"""First bytes of binary formats, named when a file that should be text is not."""
UTF16_32_BOMS = {
    codecs.BOM_UTF32_LE: "UTF-32", codecs.BOM_UTF32_BE: "UTF-32",  # before UTF-16: FF FE starts both
    codecs.BOM_UTF16_LE: "UTF-16", codecs.BOM_UTF16_BE: "UTF-16",
}
CSV_FIELD_LIMIT = 2**31 - 1  # the csv module's limit is a C long: 32 bits on Windows
SAVE_TO_DISK_FILES = ("dataset_info.json", "state.json")


def read_texts(path, text_field: str = "text") -> list[str]:
    """The examples of ``path``, stripped, blank ones skipped.

    What is read depends on what ``path`` is: a folder is a Hugging Face ``datasets`` folder
    (``save_to_disk``; of a DatasetDict, the only split, else pass the split's folder); ``.parquet``
    and ``.arrow``/``.feather`` files: the ``text_field`` column; ``.csv``/``.tsv``: the
    ``text_field`` column, the first row being the header; ``.json``: a JSON array of objects (their
    ``text_field``) or of strings, or else JSONL; ``.jsonl``/``.ndjson``, or a file whose first line
    starts with ``{``: the ``text_field`` of each JSON record; anything else: each line of a UTF-8
    text file. Anything malformed raises DataError naming the file and the line (lines counted
    from 1), element or row (counted from 0, as indices) at fault.
    """
    path = Path(path)
    try:
        return _read_examples(path, text_field)
    except OSError as error:  # permission denied, I/O error, ...: from any of the readers
        raise DataError(f"{path}: cannot read it ({error.strerror or one_line(error)})") from None


def _read_examples(path: Path, text_field: str) -> list[str]:
    if not path.exists():
        raise DataError(f"file not found: {path}")
    if path.is_dir():
        return _read_datasets_folder(path, text_field)
    if not path.is_file():
        raise DataError(f"not a file: {path}")
    suffix = path.suffix.lower()
    if suffix in UNREAD_SUFFIXES:
        raise DataError(f"{path}: {UNREAD_SUFFIXES[suffix]} files are not read; unpack or convert it to JSONL, CSV, Parquet or plain text")
    if suffix == ".parquet":
        return _read_parquet(path, text_field)
    if suffix in ARROW_SUFFIXES:
        return _read_arrow_ipc(path, text_field)
    text = _read_utf8(path)
    if not text.strip():
        raise DataError(f"{path} holds no examples (the file is empty)")
    if suffix in CSV_DELIMITERS:
        return _read_csv(path, text, text_field, CSV_DELIMITERS[suffix])
    if suffix == ".json" and text.lstrip().startswith("["):
        return _read_json_array(path, text, text_field)
    lines = _lines(text)
    first = next(line for line in lines if line.strip())
    if suffix in JSONL_SUFFIXES or suffix == ".json" or first.lstrip().startswith("{"):
        return _read_jsonl(path, text, lines, text_field)
    return [line.strip() for line in lines if line.strip()]


def one_line(error: BaseException) -> str:
    """An exception's message on one line, of a sensible length (pyarrow's run over lines)."""
    message = " ".join(str(error).split()) or type(error).__name__
    return message if len(message) <= 300 else message[:297] + "..."


def _names(names) -> str:
    """Field or column names for a message, on one line: quoted where they hold a newline and the like."""
    return ", ".join(name if isinstance(name, str) and name.isprintable() else repr(name) for name in names) or "none"


def _kept(path: Path, texts, text_field: str) -> list[str]:
    kept = [text.strip() for text in texts if text.strip()]
    if not kept:
        raise DataError(f"{path} holds no non-empty {text_field!r} values")
    return kept


# --- text files: plain, JSONL, JSON arrays, CSV ---------------------------------------------------


def _read_utf8(path: Path) -> str:
    """The text of a file that should be UTF-8, without a leading byte order mark."""
    data = path.read_bytes()
    for bom, encoding in UTF16_32_BOMS.items():
        if data.startswith(bom):
            raise DataError(f"{path} is {encoding} text; steer reads UTF-8: convert it, e.g. iconv -f {encoding} -t UTF-8")
    # No text encoding but UTF-16/32 has NUL bytes: read as lines, they would make garbage examples.
    if b"\0" in data:
        raise DataError(f"{path} looks like a binary file ({_binary_kind(data) or 'it holds NUL bytes'}), not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        if _binary_kind(data):
            raise DataError(f"{path} looks like a binary file ({_binary_kind(data)}), not text") from None
        line = data.count(b"\n", 0, error.start) + 1
        raise DataError(f"{path}, line {line}: not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start}); save it as UTF-8") from None


def _binary_kind(data: bytes) -> str | None:
    """What the first bytes say a file that is not text is ("gzip-compressed data"), if they say."""
    return next((f"{name} data" for magic, name in BINARY_SIGNATURES.items() if data.startswith(magic)), None)


def _lines(text: str) -> list[str]:
    """Lines ended by \\n, \\r\\n or \\r only: str.splitlines also breaks at U+2028, U+0085, form
    feeds and other characters that json.dumps(ensure_ascii=False) leaves raw inside strings."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _parse_json(path: Path, text: str, line: int | None = None):
    """The JSON value of ``text``: line ``line`` of a JSONL file, or (None) a whole document."""
    where = "" if line is None else f", line {line}"
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        where = f", line {line or error.lineno}"
        raise DataError(f"{path}{where}: not valid JSON ({error.msg})") from None
    except RecursionError:
        raise DataError(f"{path}{where}: not valid JSON (nested too deeply)") from None
    except ValueError as error:  # a number of more than 4300 digits, which Python refuses to convert
        raise DataError(f"{path}{where}: not valid JSON ({one_line(error)})") from None


def _json_kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {str: "a string", list: "an array", dict: "an object"}.get(type(value), type(value).__name__)


def _record_text(path: Path, where: str, record, text_field: str) -> str:
    """The text of one JSON record (a line of JSONL, an element of an array), checked."""
    if not isinstance(record, dict):
        raise DataError(f"{path}, {where}: expected a JSON object, got {_json_kind(record)}")
    if text_field not in record:
        raise DataError(f"{path}, {where}: no field {text_field!r} (fields: {_names(sorted(record))}); choose one with --text-field")
    text = record[text_field]
    if not isinstance(text, str):
        raise DataError(f"{path}, {where}: field {text_field!r} is {_json_kind(text)}, not a string")
    return _unicode_text(path, f"{where}, field {text_field!r}", text)


def _unicode_text(path: Path, where: str, text: str) -> str:
    """``text`` if it is valid Unicode: a JSON string may escape half a surrogate pair ("\\ud800"),
    which no tokenizer encodes and no UTF-8 output file can hold."""
    problem = lone_surrogate_problem(text)
    if problem is not None:
        raise DataError(f"{path}, {where}: {problem} (a JSON escape of half a surrogate pair)")
    return text


def _read_jsonl(path: Path, text: str, lines: list[str], text_field: str) -> list[str]:
    try:
        texts = [
            _record_text(path, f"line {number}", _parse_json(path, line, number), text_field)
            for number, line in enumerate(lines, start=1)
            if line.strip()
        ]
    except DataError as error:
        # A pretty-printed object or a one-line {"data": [...]} fails as JSONL: say what it is instead.
        document = _whole_document(text)
        if isinstance(document, dict) and (text.strip().count("\n") or _list_keys(document)):
            raise _top_level_object_error(path, document, text_field) from None
        raise error from None
    return _kept(path, texts, text_field)


def _whole_document(text: str):
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _list_keys(document: dict) -> list[str]:
    return [key for key, value in document.items() if isinstance(value, list)]


def _top_level_object_error(path: Path, document: dict, text_field: str) -> DataError:
    message = f"{path} holds one JSON object; expected a JSON array of examples, or JSONL (one object with a {text_field!r} field per line)"
    keys = _list_keys(document)
    if len(keys) == 1:
        message += f": its key {keys[0]!r} holds a list, save that list alone"
        if keys[0].isidentifier():
            message += f" (e.g. jq '.{keys[0]}' {path.name})"
    return DataError(message)


def _read_json_array(path: Path, text: str, text_field: str) -> list[str]:
    elements = _parse_json(path, text)
    if not isinstance(elements, list):  # "[1] [2]" and the like fail in json.loads; this is a guard
        raise DataError(f"{path}: expected a JSON array, got {_json_kind(elements)}")
    texts = []
    for index, element in enumerate(elements):
        if isinstance(element, str):
            texts.append(_unicode_text(path, f"element {index}", element))
        elif isinstance(element, dict):
            texts.append(_record_text(path, f"element {index}", element, text_field))
        else:
            raise DataError(f"{path}, element {index}: expected a string or a JSON object, got {_json_kind(element)}")
    return _kept(path, texts, text_field)


def _read_csv(path: Path, text: str, text_field: str, delimiter: str) -> list[str]:
    # The limit is process-wide: raise it for this read only (a text may be longer than 128 KiB).
    previous_limit = csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        return _kept(path, _csv_column(path, text, text_field, delimiter), text_field)
    finally:
        csv.field_size_limit(previous_limit)


def _csv_column(path: Path, text: str, text_field: str, delimiter: str):
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header, column, line = None, None, 1  # line: where the next row starts (a quoted field may span lines)
    try:
        for row in reader:
            row_line, line = line, reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue  # a blank line (or one of blank fields only)
            if header is None:
                header = [name.strip() for name in row]
                column = _csv_text_column(path, header, text_field)
            elif len(row) != len(header):
                raise DataError(f"{path}, line {row_line}: {_count(len(row), 'field')}, the header has {len(header)}")
            else:
                yield row[column]
    except csv.Error as error:
        raise DataError(f"{path}, line {line}: not valid {'CSV' if delimiter == ',' else 'TSV'} ({one_line(error)})") from None


def _count(number: int, thing: str) -> str:
    return f"{number} {thing}" + ("" if number == 1 else "s")


def _csv_text_column(path: Path, header: list[str], text_field: str) -> int:
    matches = [index for index, name in enumerate(header) if name == text_field]
    if not matches:
        raise DataError(f"{path}: no column {text_field!r} (columns: {_names(header)}; the first row is read as the header); choose one with --text-field")
    if len(matches) > 1:
        raise DataError(f"{path}: the header names {len(matches)} columns {text_field!r}; rename all but one")
    return matches[0]


# --- columnar: Parquet, Arrow, datasets folders ---------------------------------------------------


def import_pyarrow(purpose: str):
    """pyarrow, or a DataError saying that ``purpose`` ("reading x.parquet") needs it."""
    try:
        import pyarrow
    except ImportError:
        raise DataError(f"{purpose} needs the pyarrow package: pip install 'steer[data]'") from None
    return pyarrow


def _no_column(path: Path, columns, text_field: str) -> DataError:
    return DataError(f"{path}: no column {text_field!r} (columns: {_names(columns)}); choose one with --text-field")


def _column_texts(path: Path, column, text_field: str) -> list[str]:
    """The strings of an Arrow column, checked: of a string type, without nulls."""
    pa = import_pyarrow(f"reading {path}")
    kind = column.type
    if pa.types.is_dictionary(kind) and _is_arrow_string(pa, kind.value_type):
        column, kind = column.cast(kind.value_type), kind.value_type
    if not _is_arrow_string(pa, kind):
        raise DataError(f"{path}: column {text_field!r} holds {kind} values, not strings")
    try:
        column.validate(full=True)  # a damaged file can decode into strings that are not UTF-8, or bad offsets
        values = column.to_pylist()
    except (pa.ArrowException, ValueError) as error:
        raise DataError(f"{path}: column {text_field!r} is damaged ({one_line(error)})") from None
    if column.null_count:
        row = values.index(None)
        raise DataError(f"{path}, row {row}: column {text_field!r} is null, not a string")
    return _kept(path, values, text_field)


def _is_arrow_string(pa, kind) -> bool:
    is_string_view = getattr(pa.types, "is_string_view", lambda _: False)  # pyarrow >= 16
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or is_string_view(kind)


def _read_parquet(path: Path, text_field: str) -> list[str]:
    import_pyarrow(f"reading {path}")
    import pyarrow.parquet as pq

    # pyarrow raises ArrowInvalid, OSError, ValueError, ... on corrupt files, with no documented set:
    # any failure inside it means the file is not readable Parquet.
    try:
        with pq.ParquetFile(path) as parquet:
            columns = parquet.schema_arrow.names
            column = parquet.read(columns=[text_field]).column(text_field) if text_field in columns else None
    except Exception as error:
        raise DataError(f"{path}: not a readable Parquet file ({one_line(error)})") from None
    if column is None:
        raise _no_column(path, columns, text_field)
    return _column_texts(path, column, text_field)


def _read_arrow_ipc(path: Path, text_field: str) -> list[str]:
    pa = import_pyarrow(f"reading {path}")
    failure = None
    for open_reader in (pa.ipc.open_file, pa.ipc.open_stream):  # the file format (Feather v2), then the stream format
        try:  # as for Parquet: any failure inside pyarrow, names included, means not readable Arrow
            with pa.OSFile(str(path)) as source:
                table = open_reader(source).read_all()
            columns = table.column_names
            column = table.column(text_field) if text_field in columns else None
        except Exception as error:
            failure = failure or error  # the file format's complaint: the stream reader's says less
            continue
        if column is None:
            raise _no_column(path, columns, text_field)
        return _column_texts(path, column, text_field)
    raise DataError(f"{path}: not a readable Arrow file ({one_line(failure)})")


def _read_datasets_folder(path: Path, text_field: str) -> list[str]:
    if (path / "dataset_dict.json").is_file():
        path = _only_split(path)
    if not all((path / name).is_file() for name in SAVE_TO_DISK_FILES):
        raise DataError(f"not a file: {path} (a folder is read only when it is a Hugging Face datasets folder, written by save_to_disk)")
    try:
        import datasets
    except ImportError:
        raise DataError(f"reading a datasets folder ({path}) needs the datasets package: pip install 'steer[data]'") from None
    # As for pyarrow: datasets raises FileNotFoundError, JSONDecodeError, KeyError, ArrowInvalid, ...
    # on damaged folders.
    try:
        dataset = datasets.load_from_disk(str(path))
        columns = dataset.column_names
        column = dataset.with_format("arrow")[text_field] if text_field in columns else None
    except Exception as error:
        raise DataError(f"{path}: not a readable datasets folder ({one_line(error)})") from None
    if not isinstance(dataset, datasets.Dataset):
        raise DataError(f"{path}: not a single dataset; pass the folder of one of its splits")
    if column is None:
        raise _no_column(path, columns, text_field)
    return _column_texts(path, column, text_field)


def _only_split(path: Path) -> Path:
    """The folder of a DatasetDict's split, when it has one: there is no option to choose one."""
    try:
        splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
    except (ValueError, RecursionError, KeyError, TypeError):
        raise DataError(f"{path}: dataset_dict.json is not a datasets split list") from None
    if not isinstance(splits, list) or not splits or not all(isinstance(split, str) for split in splits):
        raise DataError(f"{path}: dataset_dict.json is not a datasets split list")
    if len(splits) > 1:
        raise DataError(f"{path} is a DatasetDict with splits {_names(splits)}; steer reads one split: pass its folder instead, e.g. {path / splits[0]}")
    return path / splits[0]


def texts_digest(texts: list[str]) -> str:
    """A short fingerprint of a list of texts: ties a run's negative-example ids to its real set."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()[:16]
