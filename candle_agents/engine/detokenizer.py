"""Incremental detokenization with stop strings matched across token boundaries.

Text is decoded token by token (``TextStream``), holding back what later
tokens could still change: incomplete UTF-8 sequences (CJK, emoji split over
byte tokens) and runs of SentencePiece byte-fallback tokens. Text that could
still become a stop string is held back too, so a stop string never reaches
the caller, even in pieces.
"""

from __future__ import annotations

from collections.abc import Collection

from tokenizers import Tokenizer


def byte_token_ids(tokenizer: Tokenizer) -> frozenset[int]:
    """Ids of SentencePiece byte-fallback tokens (``<0x00>``..``<0xFF>``), if any."""
    vocab = tokenizer.get_vocab(with_added_tokens=False)
    return frozenset(
        i for t, i in vocab.items() if len(t) == 6 and t.startswith("<0x") and t[-1] == ">"
    )


class TextStream:
    """Token ids in, new text out: the pieces add up to decoding all the ids at once.

    Each step decodes a short window: the ids since the previous release point
    give the context (a SentencePiece leading space), the ids after it are the
    new text. New text waits while it ends in an incomplete UTF-8 sequence
    (U+FFFD) or in a byte-fallback token: SentencePiece decoders turn a run of
    byte tokens into text only as a whole, and an invalid run becomes one
    U+FFFD per byte, valid ones included, so a run is final only once it ends.
    (The tokenizers library's DecodeStream raises on such runs instead.)
    """

    def __init__(
        self, tokenizer: Tokenizer, skip_special_tokens: bool, byte_ids: Collection[int] = ()
    ) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._byte_ids = byte_ids
        self._ids: list[int] = []
        self._prefix = 0  # the context window starts here
        self._read = 0  # text of ids before this has been released

    def _decode(self, start: int, end: int) -> str:
        return self._tokenizer.decode(self._ids[start:end], skip_special_tokens=self._skip)

    def step(self, token_id: int) -> str:
        self._ids.append(token_id)
        if token_id in self._byte_ids:
            return ""
        return self._release(final=False)

    def flush(self) -> str:
        """Whatever is held back, decoded as it stands (at the end of the output)."""
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self._read == len(self._ids):
            return ""
        before = self._decode(self._prefix, self._read)
        after = self._decode(self._prefix, len(self._ids))
        if not final and (len(after) <= len(before) or after.endswith("\ufffd")):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before) :]


class IncrementalDetokenizer:
    def __init__(
        self,
        tokenizer: Tokenizer,
        stop: list[str],
        skip_special_tokens: bool = True,
        byte_ids: Collection[int] = (),
    ):
        self._stream = TextStream(tokenizer, skip_special_tokens, byte_ids)
        self._stop = stop
        self._max_stop = max((len(s) for s in stop), default=0)
        self.text = ""  # everything decoded so far (until a stop string cuts it)
        self._emitted = 0
        self.stop_string: str | None = None

    def add(self, token_id: int) -> str:
        """Feed one token; return the newly releasable text ('' if none yet)."""
        self._take(self._stream.step(token_id))
        return self._release(final=self.stop_string is not None)

    def flush(self) -> str:
        """Release everything held back (at the end): undecided bytes, a possible stop string."""
        if self.stop_string is None:
            self._take(self._stream.flush())
        return self._release(final=True)

    def _take(self, piece: str) -> None:
        if piece:
            start = max(0, len(self.text) - self._max_stop + 1)
            self.text += piece
            if self._stop:
                self._find_stop(start)

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
