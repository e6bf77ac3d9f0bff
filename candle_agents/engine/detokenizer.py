"""Incremental detokenization with stop strings matched across token boundaries.

Text is decoded token by token with the tokenizers library's DecodeStream,
which holds back incomplete UTF-8 sequences (CJK, emoji split over byte
tokens). Text that could still become a stop string is held back too, so a
stop string never reaches the caller, even in pieces.
"""

from __future__ import annotations

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Tokenizer, stop: list[str], skip_special_tokens: bool = True):
        self._tokenizer = tokenizer
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)
        self._stop = stop
        self._max_stop = max((len(s) for s in stop), default=0)
        self.text = ""  # everything decoded so far (until a stop string cuts it)
        self._emitted = 0
        self.stop_string: str | None = None

    def add(self, token_id: int) -> str:
        """Feed one token; return the newly releasable text ('' if none yet)."""
        piece = self._stream.step(self._tokenizer, token_id)
        if piece:
            start = max(0, len(self.text) - self._max_stop + 1)
            self.text += piece
            if self._stop:
                self._find_stop(start)
        return self._release(final=self.stop_string is not None)

    def flush(self) -> str:
        """Release what was held back for a possible stop string (at the end)."""
        return self._release(final=True)

    def _find_stop(self, start: int) -> None:
        best = None
        for s in self._stop:
            idx = self.text.find(s, start)
            if idx != -1 and (best is None or idx < best[0]):
                best = (idx, s)
        if best is not None:
            self.text = self.text[: best[0]]
            self.stop_string = best[1]

    def _release(self, final: bool) -> str:
        end = len(self.text)
        if not final and self._stop:
            end -= self._partial_stop_suffix()
        out = self.text[self._emitted : end]
        self._emitted = max(self._emitted, end)
        return out

    def _partial_stop_suffix(self) -> int:
        """Length of the longest tail of the text that begins some stop string."""
        text = self.text
        for n in range(min(self._max_stop - 1, len(text)), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self._stop):
                return n
        return 0
