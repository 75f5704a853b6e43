"""Checks on text from outside (a JSON file, an HTTP body, the command line) before a tokenizer sees it.

JSON may escape half a UTF-16 surrogate pair ("\\ud800"), and Python turns command-line bytes that
are not UTF-8 into lone surrogates (PEP 383). Such a str is no Unicode text: a fast tokenizer
raises a TypeError on it, and writing it as UTF-8 fails, so it is refused where it comes in,
with the place named.
"""

from __future__ import annotations


def first_lone_surrogate(text: str) -> int | None:
    """The index of the first code point of ``text`` that UTF-8 cannot encode (a lone surrogate), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return error.start
    return None


def lone_surrogate_problem(text: str) -> str | None:
    """What is wrong with ``text``, in words, or None when it is valid Unicode."""
    index = first_lone_surrogate(text)
    if index is None:
        return None
    return f"not valid Unicode: a lone surrogate (U+{ord(text[index]):04X}) at character {index}"
