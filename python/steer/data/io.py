"""Reading real examples and writing synthetic ones, crash-safe.

Real examples: JSONL with a text field (``{"text": ...}`` per line), or plain text with one example
per line. Synthetic output: JSONL, one record per sample, appended and flushed to disk as each
sample finishes, so a killed run loses only the samples in flight. A torn last line (the process
died inside a write) is cut off when the file is opened again; every complete line is kept.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path


class DataError(ValueError):
    """Bad input data or arguments: the message names the file, line or field at fault."""


def _looks_like_jsonl(path: Path, first_line: str) -> bool:
    return path.suffix.lower() in (".jsonl", ".json", ".ndjson") or first_line.lstrip().startswith("{")


def read_texts(path, text_field: str = "text") -> list[str]:
    """The examples of ``path``: the ``text_field`` of each JSONL record, or each non-empty line of
    a plain text file. Blank lines are skipped; anything else malformed raises DataError."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"file not found: {path}")
    if not path.is_file():
        raise DataError(f"not a file: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text ({error})") from None
    first = next((line for line in lines if line.strip()), "")
    if not first:
        raise DataError(f"{path} holds no examples (the file is empty)")
    if not _looks_like_jsonl(path, first):
        return [line.strip() for line in lines if line.strip()]
    texts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}, line {number}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")
        if text_field not in record:
            fields = ", ".join(sorted(record)) or "none"
            raise DataError(f"{path}, line {number}: no field {text_field!r} (fields: {fields}); choose one with --text-field")
        text = record[text_field]
        if not isinstance(text, str):
            raise DataError(f"{path}, line {number}: field {text_field!r} is a {type(text).__name__}, not a string")
        if text.strip():
            texts.append(text.strip())
    if not texts:
        raise DataError(f"{path} holds no non-empty {text_field!r} values")
    return texts


def texts_digest(texts: list[str]) -> str:
    """A short fingerprint of a list of texts: ties a run's negative-example ids to its real set."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()[:16]


class SampleWriter:
    """Appends JSON records to a JSONL file, one flushed and fsynced line per record.

    Holds an exclusive lock on the file while open, so two runs never write into one file.
    Opening cuts off a torn last line left by a killed run; the complete records already in the
    file are in ``existing``.
    """

    def __init__(self, path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise DataError(f"{self.path} is being written by another process (another steer generate?)") from None
        try:
            self.existing = self._recover()
        except BaseException:
            self.close()
            raise

    def _recover(self) -> list[dict]:
        data = Path(self.path).read_bytes()
        complete = data[: data.rfind(b"\n") + 1]  # a line without its newline was torn by a kill
        if len(complete) != len(data):
            os.truncate(self.path, len(complete))
        records = []
        for number, line in enumerate(complete.decode("utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(
                    f"{self.path}, line {number}: not a JSON record; this file was not written by steer generate "
                    "(or was edited): fix or move it"
                ) from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise DataError(f"{self.path}, line {number}: not a steer sample record (no 'text')")
            records.append(record)
        return records

    def write(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        written = os.write(self._fd, line)  # one write of an O_APPEND fd: the line lands whole or torn at the end
        while written < len(line):
            written += os.write(self._fd, line[written:])
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # also drops the lock
            self._fd = -1

    def __enter__(self) -> "SampleWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
