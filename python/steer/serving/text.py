"""Tokens to text as they arrive, with stop strings: what a stream may send so far.

A token can end in the middle of a UTF-8 character (byte-level BPE), and the text so far can end
with the start of a stop string; neither may reach the client yet. ``TextStream`` decodes the
whole completion each time (completions are short; the decode is exact where incremental
schemes guess), holds back a trailing replacement character and the longest tail that begins a
stop string, and cuts the text before the first stop string it finds.
"""

from __future__ import annotations


class TextStream:
    """The text of one completion, fed token by token."""

    def __init__(self, tokenizer, stops: list[str]) -> None:
        self.tokenizer, self.stops = tokenizer, list(stops)
        self.token_ids: list[int] = []
        self.text = ""  # all the decoded text so far (cut at a stop string once one is found)
        self.sent = 0  # characters of text already handed out
        self.stopped = False  # a stop string was found: the completion ends here

    def add(self, token_ids: list[int]) -> str:
        """Take new tokens; return the text that may be sent now ('' if none). After a stop
        string the completion is over and later tokens are ignored."""
        if self.stopped or not token_ids:
            return ""
        self.token_ids.extend(token_ids)
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        cut = self._first_stop(text)
        if cut is not None:
            self.text, self.stopped = text[:cut], True
            return self._take(len(self.text))
        self.text = text
        safe = len(text)
        if text.endswith("\ufffd"):  # an unfinished multi-byte character
            safe -= 1
        safe -= self._stop_prefix_length(text[:safe])
        return self._take(max(safe, self.sent))

    def finish(self) -> str:
        """The text held back, at the end of the completion (EOS or the length limit)."""
        return self._take(len(self.text))

    def _take(self, end: int) -> str:
        piece = self.text[self.sent : end]
        self.sent = max(self.sent, end)
        return piece

    def _first_stop(self, text: str) -> int | None:
        # A stop string can only be new where it overlaps the text not yet sent.
        start = max(0, self.sent - max((len(s) for s in self.stops), default=0))
        found = [i for i in (text.find(s, start) for s in self.stops) if i >= 0]
        return min(found) if found else None

    def _stop_prefix_length(self, text: str) -> int:
        """Characters at the end of ``text`` that begin some stop string (held back)."""
        longest = 0
        for stop in self.stops:
            for length in range(min(len(stop) - 1, len(text)), longest, -1):
                if stop.startswith(text[-length:]):
                    longest = length
                    break
        return longest
