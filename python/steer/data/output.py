"""The output of ``steer generate``: records that survive a kill, and files that are never damaged.

Two formats, chosen by the extension of ``--out``:

    .jsonl     one JSON record per line, appended, flushed and fsynced as each sample finishes
    .parquet   the same records in a JSONL journal (``<out>.partial.jsonl``) while the run goes on,
               written to the Parquet file in one atomic rename when the run has all its samples

Opening an existing output (``--resume``) reads and checks every record *before anything in the
file changes*: a file steer did not write, or wrote with other settings, is refused and comes out
byte-identical. Only then is a torn last line (the process died inside a write; steer's lines
always begin with ``{"id": ``) cut off. A failed write (a full disk) is rolled back to the last
complete record, so what is on disk stays valid for ``--resume``. A file this run created is
removed again when the run fails before its first sample: no command leaves an empty output.
"""

from __future__ import annotations

import fcntl
import importlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from steer.data.io import DataError, import_pyarrow
from steer.text_checks import lone_surrogate_problem

RECORD_START = b'{"id": '  # json.dumps of a record whose first key is "id"
OUTPUT_FORMATS = {".jsonl": "jsonl", ".parquet": "parquet"}
RecordCheck = Callable[[list[dict]], None]  # raises DataError when the records may not be continued


def output_format(path: Path) -> str:
    """"jsonl" or "parquet" by the extension of ``path``; DataError for any other."""
    found = OUTPUT_FORMATS.get(Path(path).suffix.lower())
    if found is None:
        raise DataError(f"--out {path}: steer writes .jsonl or .parquet files, not {Path(path).suffix or 'files without an extension'}")
    if found == "parquet":
        _pyarrow()
    return found


def journal_path(path: Path) -> Path:
    """Where a Parquet run keeps its records until it is complete."""
    return Path(path).with_name(Path(path).name + ".partial.jsonl")


def _pyarrow():
    """pyarrow with its parquet submodule loaded (``pyarrow.parquet`` is used below)."""
    pyarrow = import_pyarrow("writing Parquet")
    importlib.import_module("pyarrow.parquet")
    return pyarrow


def _is_record(value) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("id"), int) and not isinstance(value["id"], bool) and value["id"] >= 0
        and isinstance(value.get("text"), str)
    )


def parse_jsonl_records(path: Path, data: bytes) -> tuple[list[dict], int, bool]:
    """(records, bytes of ``data`` to keep, whether a newline must be added) of a JSONL output.

    Raises DataError, naming the line, for anything steer does not write: a line that is not a
    JSON record with an int ``id`` and a string ``text``, repeated ids, bytes that are not UTF-8,
    an unterminated last line that is neither a complete record nor the start of one.
    """
    complete = data.rfind(b"\n") + 1
    lines = data[:complete].split(b"\n")[:-1]  # split on b"\n" only: texts may hold U+2028 and friends
    records, seen = [], {}
    for number, line in enumerate(lines, start=1):
        if line.strip():
            _append_record(path, number, line, records, seen)
    tail = data[complete:]
    if not tail.strip():  # nothing, or an unterminated blank line: end it, so the next record starts its own line
        return records, len(data), bool(tail)
    try:
        last = json.loads(tail.decode("utf-8"))
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or a number of over 4300 digits
        last = None
    if _is_record(last):  # killed after the record, before its newline: keep it whole
        _append_record(path, len(lines) + 1, tail, records, seen)
        return records, len(data), True
    if tail.startswith(RECORD_START):  # a record torn by a kill inside its write
        return records, complete, False
    raise DataError(f"{path}, line {len(lines) + 1}: not a steer sample record; this file was not written by steer generate (or was edited): fix or move it")


def _append_record(path: Path, number: int, line: bytes, records: list[dict], seen: dict[int, int]) -> None:
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"{path}, line {number}: not UTF-8 text; this file was not written by steer generate: fix or move it") from None
    except (ValueError, RecursionError):  # not JSON (ValueError also covers numbers of over 4300 digits)
        raise DataError(f"{path}, line {number}: not a JSON record; this file was not written by steer generate (or was edited): fix or move it") from None
    if not _is_record(record):
        raise DataError(f"{path}, line {number}: not a steer sample record (steer's records have an int 'id' and a string 'text')")
    problem = lone_surrogate_problem(record["text"])
    if problem is not None:  # steer writes decoded tokens, never half a surrogate pair
        raise DataError(f"{path}, line {number}: its text is {problem}; this file was edited: fix or move it")
    if record["id"] in seen:
        raise DataError(f"{path}, line {number}: repeats the id {record['id']} of line {seen[record['id']]}; two runs were joined into one file")
    seen[record["id"]] = number
    records.append(record)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _missing_parents(path: Path) -> list[Path]:
    """The directories above ``path`` that do not exist yet, innermost first."""
    missing, parent = [], path.parent
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    return missing


def _cannot(action: str, path: Path, error: OSError) -> DataError:
    return DataError(f"{path}: cannot {action} ({error.strerror or error})")


class SampleWriter:
    """Appends records to a JSONL file, one flushed and fsynced line per record.

    Holds an exclusive lock on the file while open, so two runs never write into one file.
    ``check(records)`` (the records already in the file) runs before anything changes and may
    refuse them with a DataError; the records are then in ``existing``.
    """

    def __init__(self, path, *, check: RecordCheck | None = None) -> None:
        self.path = Path(path)
        self.written = 0
        self._fd = -1
        if self.path.exists() and not self.path.is_file():
            raise DataError(f"{self.path} is not a regular file")
        self._created_dirs = _missing_parents(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.created = self._open()
        except OSError as error:
            self._remove_created_dirs()
            raise _cannot("create the output file", self.path, error) from None
        try:
            self._lock()
            self.existing = self._recover(check)
        except BaseException:
            self.close()
            raise

    def _open(self) -> bool:
        """Open the file for appending; True when this call created it."""
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
        try:
            self._fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o644)
            return True
        except FileExistsError:
            self._fd = os.open(self.path, flags)
            return False

    def _lock(self) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(f"{self.path} is being written by another process (another steer generate?)") from None

    def _recover(self, check: RecordCheck | None) -> list[dict]:
        try:
            data = self.path.read_bytes()
        except OSError as error:
            raise _cannot("read the output file", self.path, error) from None
        records, keep, add_newline = parse_jsonl_records(self.path, data)
        if check is not None:
            check(records)
        # Only now, with every record known to be ours and continuable, may the file change.
        try:
            if keep < len(data):
                os.ftruncate(self._fd, keep)
            if add_newline:
                os.write(self._fd, b"\n")
                os.fsync(self._fd)
        except OSError as error:
            raise _cannot("repair the torn last line of", self.path, error) from None
        return records

    def write(self, record: dict) -> None:
        """Append one record durably; on failure the file is rolled back to its last complete line."""
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        size = os.fstat(self._fd).st_size
        try:
            written = os.write(self._fd, line)  # one write of an O_APPEND fd: whole, or torn at the end
            while written < len(line):
                written += os.write(self._fd, line[written:])
            os.fsync(self._fd)
            if self.created and self.written == 0:
                _fsync_directory(self.path.parent)  # the new file's name is durable too
        except OSError as error:
            self._roll_back(size)
            raise DataError(
                f"{self.path}: writing sample {record.get('id')} failed ({error.strerror or error}); the "
                f"{len(self.existing) + self.written} samples before it are intact: fix that and continue with --resume"
            ) from None
        self.written += 1

    def _roll_back(self, size: int) -> None:
        try:
            os.ftruncate(self._fd, size)
        except OSError:
            pass  # a torn last line is what --resume cuts off anyway

    def close(self) -> None:
        if self._fd < 0:
            return
        if self.created and self.written == 0 and os.fstat(self._fd).st_size == 0:
            self.path.unlink(missing_ok=True)  # nothing was written: leave no empty file behind
            self._remove_created_dirs()
        os.close(self._fd)  # also drops the lock
        self._fd = -1

    def _remove_created_dirs(self) -> None:
        for directory in self._created_dirs:
            try:
                directory.rmdir()
            except OSError:
                return  # not empty (or gone): it is someone's now

    def finish(self) -> None:
        """The run has all its samples (JSONL needs nothing more)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_parquet_records(path: Path) -> list[dict]:
    """The records of a Parquet output of steer generate; DataError for any other Parquet file."""
    pyarrow = _pyarrow()
    try:
        rows = pyarrow.parquet.read_table(path).to_pylist()
    except (OSError, pyarrow.ArrowException) as error:
        raise DataError(f"{path}: not a readable Parquet file ({error})") from None
    seen: dict[int, int] = {}
    for number, row in enumerate(rows):
        if not _is_record(row):
            raise DataError(f"{path}, row {number}: not a steer sample record (steer's records have an int 'id' and a string 'text')")
        if row["id"] in seen:
            raise DataError(f"{path}, row {number}: repeats the id {row['id']} of row {seen[row['id']]}")
        seen[row["id"]] = number
    return rows


class ParquetSampleWriter:
    """Records into a JSONL journal beside ``path``; ``finish()`` writes them to ``path`` as Parquet.

    Resuming: the journal, when there is one (a killed run), holds every record; otherwise the
    records of an existing ``path`` (a finished run asked for more) are checked and copied into a
    new journal. ``path`` itself is replaced only by an atomic rename of the complete file.
    """

    def __init__(self, path, *, check: RecordCheck | None = None) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_file():
            raise DataError(f"{self.path} is not a regular file")
        self._journal = SampleWriter(journal_path(self.path), check=check)
        self._adopted = False  # the journal is a copy of a finished file's records
        try:
            self.existing = self._journal.existing or self._adopt_finished_file(check)
        except BaseException:
            self._journal.close()
            raise
        self._records = list(self.existing)
        self._new = 0  # records written by this run

    def _adopt_finished_file(self, check: RecordCheck | None) -> list[dict]:
        if not self.path.exists():
            return []
        records = read_parquet_records(self.path)
        if check is not None:
            check(records)
        for record in records:
            self._journal.write(record)
        self._journal.existing, self._journal.written = records, 0
        self._adopted = True
        return records

    def write(self, record: dict) -> None:
        self._journal.write(record)
        self._records.append(record)
        self._new += 1

    def finish(self) -> None:
        if self._adopted and self._new == 0:
            return  # the finished file already holds every record: leave it as it is
        pyarrow = _pyarrow()
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            pyarrow.parquet.write_table(pyarrow.Table.from_pylist(self._records), temporary)
            with open(temporary, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
            _fsync_directory(self.path.parent)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            raise DataError(
                f"{self.path}: writing the Parquet file failed ({error.strerror or error}); every sample is in "
                f"{self._journal.path}: fix that and run again with --resume"
            ) from None
        self._journal.close()
        self._journal.path.unlink(missing_ok=True)

    def close(self) -> None:
        adopted_only = self._journal.created and self._new == 0 and self.path.exists()
        self._journal.close()
        if adopted_only:  # a copy of the finished file and nothing more: the file is the record
            self._journal.path.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def existing_records(path) -> list[dict]:
    """The records already in an output (for Parquet: its journal when there is one), read without
    changing anything; DataError for a file steer did not write. Lets a caller refuse a resume
    before it loads any model; the writer checks again when it opens the file."""
    path = Path(path)
    if output_format(path) == "parquet":
        journal = journal_path(path)
        if journal.is_file() and journal.stat().st_size > 0:
            path = journal
        elif path.is_file():
            return read_parquet_records(path)
        else:
            return []
    if not path.is_file():
        return []
    try:
        data = path.read_bytes()
    except OSError as error:
        raise _cannot("read the output file", path, error) from None
    return parse_jsonl_records(path, data)[0]


def open_output(path, *, check: RecordCheck | None = None):
    """The writer for ``path`` by its extension (see :func:`output_format`)."""
    if output_format(path) == "parquet":
        return ParquetSampleWriter(path, check=check)
    return SampleWriter(path, check=check)
