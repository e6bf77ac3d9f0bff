"""Streaming: the incremental state machines that split model output into content and calls.

Each format is one incremental state machine (a ``ToolCallStream``), and ``ToolParser.parse()``
runs that same machine over the whole text, so streamed and whole-text results cannot drift
apart. Two shapes cover the formats so far:

- ``_MarkupStream``: text with blocks of calls opened by a marker (hermes, mistral,
  qwen3_coder, deepseek_v3, phi4_mini, gemma); a format subclasses it with its markers and a
  character-level ``_push`` (``_Expect`` matches the markers inside a block).
- ``_WholeMessageStream``: the whole message is either calls or content (llama3_json,
  pythonic, granite); a format passes it two functions, ``looks_like_calls`` and
  ``read_calls``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from candle_agents.openai.tool_parsers.calls import StreamStep, ToolCallDelta, make_call_id
from candle_agents.openai.tool_parsers.json_reader import _COMPLETE, _MORE, _WS, _Call


class ToolCallStream:
    """Splits a model's output, fed as it is decoded, into content and tool-call deltas.

    One stream per generated message; not thread-safe. Content deltas never contain markup:
    text that could be the start of the markup is held back until it is known not to be.
    Leading and trailing whitespace of the content is not sent, so the content deltas add up
    to exactly the ``content`` that ``parse()`` returns.
    """

    def __init__(self, *, incremental: bool = True) -> None:
        self._incremental = incremental
        self._buf = ""  # text received and not yet settled
        self._step = StreamStep()
        self._content_started = False
        self._pending_ws = ""  # trailing content whitespace: sent only if more content follows
        self._next_index = 0
        self._finished = False

    def feed(self, delta: str) -> StreamStep:
        """New decoded text from the model; returns what can be sent now."""
        if self._finished:
            raise RuntimeError("ToolCallStream.feed() called after finish()")
        self._buf += delta
        self._process(final=False)
        return self._take()

    def finish(self) -> StreamStep:
        """End of generation: flush held-back text; an unfinished call becomes content.

        (Unless the stream has already announced it: see the ``base`` module docstring.)
        """
        if not self._finished:
            self._finished = True
            self._process(final=True)
        return self._take()

    def _process(self, final: bool) -> None:
        raise NotImplementedError

    def _take(self) -> StreamStep:
        step, self._step = self._step, StreamStep()
        return step

    def _content(self, text: str) -> None:
        if not self._content_started:
            text = text.lstrip()
            if not text:
                return
            self._content_started = True
        body = text.rstrip()
        if body:
            self._step.content += self._pending_ws + body
            self._pending_ws = text[len(body) :]
        else:
            self._pending_ws += text

    def _sync(self, calls: list[_Call], block_done: bool) -> None:
        """Send what may be sent of ``calls``, in order: announce, then argument fragments."""
        if not (self._incremental or block_done):
            return
        step = self._step
        for call in calls:
            if call.index is None:
                if call.name is None or call.args is None:
                    return  # later calls must not overtake this one
                call.index = self._next_index
                self._next_index += 1
                step.tool_calls.append(ToolCallDelta(call.index, make_call_id(), call.name, ""))
            args = call.args or []
            if call.sent < len(args):
                text = "".join(args[call.sent :])
                call.sent = len(args)
                last = step.tool_calls[-1] if step.tool_calls else None
                if last is not None and last.index == call.index:
                    last.arguments = (last.arguments or "") + text
                else:
                    step.tool_calls.append(ToolCallDelta(call.index, arguments=text))
            if not call.complete:
                return


def _held_length(text: str, start: int, marker: str) -> int:
    """Length of the longest end of ``text[start:]`` that begins ``marker``."""
    for k in range(min(len(marker) - 1, len(text) - start), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


_TEXT, _BLOCK, _SKIP = range(3)


class _MarkupStream(ToolCallStream):
    """Text with blocks of calls opened by a marker (hermes, mistral and others)."""

    _open: ClassVar[str]  # the markup that opens a block
    _skip_to: ClassVar[str]  # after a broken, already announced block: drop text up to this
    _skip_past: ClassVar[bool]  # ...and this too

    def __init__(self, *, incremental: bool = True) -> None:
        super().__init__(incremental=incremental)
        self._mode = _TEXT
        self._raw: list[str] = []  # the block's text so far: content again if it breaks
        self._calls: list[_Call] = []

    def _process(self, final: bool) -> None:
        buf, pos = self._buf, 0
        while True:
            end = len(buf)
            while pos < end:
                if self._mode == _TEXT:
                    at = buf.find(self._open, pos)
                    if at < 0:
                        keep = 0 if final else _held_length(buf, pos, self._open)
                        self._content(buf[pos : end - keep])
                        pos = end - keep
                        break
                    self._content(buf[pos:at])
                    pos = at + len(self._open)
                    self._raw = [self._open]
                    self._calls = []
                    self._mode = _BLOCK
                    self._begin()
                elif self._mode == _BLOCK:
                    ch = buf[pos]
                    result = self._push(ch)
                    if result == _MORE:
                        self._raw.append(ch)
                        pos += 1
                    elif result == _COMPLETE:
                        pos += 1
                        self._sync(self._calls, block_done=True)
                        self._mode = _TEXT
                    else:
                        buf, pos = self._broken() + buf[pos:], 0
                        end = len(buf)
                else:
                    at = buf.find(self._skip_to, pos)
                    if at < 0:
                        pos = end - (0 if final else _held_length(buf, pos, self._skip_to))
                        break
                    pos = at + len(self._skip_to) if self._skip_past else at
                    self._mode = _TEXT
            if final and self._mode == _BLOCK:  # unclosed at the end
                if self._may_end():
                    self._sync(self._calls, block_done=True)
                    self._mode = _TEXT
                    break
                buf, pos = self._broken(), 0
                continue
            break
        self._buf = buf[pos:]
        if self._mode == _BLOCK:
            self._sync(self._calls, block_done=False)

    def _broken(self) -> str:
        """The block is not a well-formed call; returns the text to read again.

        Unless the stream has announced one of its calls, the opening marker becomes content
        and the rest is read again as text (it may hold the next block, as in
        ``[TOOL_CALLS]f[TOOL_CALLS]g[ARGS]{}``); otherwise the rest of the block is skipped.
        """
        self._sync(self._calls, block_done=False)
        again = ""
        if any(call.index is not None for call in self._calls):
            self._mode = _SKIP
        else:
            self._content(self._open)
            again = "".join(self._raw[1:])
            self._mode = _TEXT
        self._raw = []
        self._calls = []
        return again

    def _begin(self) -> None:
        raise NotImplementedError

    def _push(self, ch: str) -> int:
        raise NotImplementedError

    def _may_end(self) -> bool:
        """Whether the text may end here, the block being whole without its closing markup."""
        return False


class _Expect:
    """Matches one of several markers, character by character, after optional whitespace."""

    __slots__ = ("_got", "_options")

    def __init__(self, *options: str) -> None:
        self._options = options
        self._got = ""

    @property
    def started(self) -> bool:
        return bool(self._got)

    def push(self, ch: str) -> str | bool:
        """The marker once it is complete; True while one may still follow; False if none can."""
        if not self._got and ch in _WS:
            return True
        self._got += ch
        for option in self._options:
            if option == self._got:
                return option
            if option.startswith(self._got):
                return True
        return False


class _WholeMessageStream(ToolCallStream):
    """Formats where the whole message is either calls or content (llama3_json, pythonic).

    Text that could start a list of calls is held back to the end; as soon as it cannot, it
    streams as content.
    """

    def __init__(
        self,
        looks_like_calls: Callable[[str], bool | None],
        read_calls: Callable[[str], list[tuple[str, str]] | None],
        *,
        incremental: bool = True,
    ) -> None:
        super().__init__(incremental=incremental)
        self._looks_like_calls = looks_like_calls
        self._read_calls = read_calls
        self._verdict: bool | None = None  # None: undecided yet

    def _process(self, final: bool) -> None:
        if self._verdict is None and self._buf.strip():
            self._verdict = self._looks_like_calls(self._buf.lstrip())
        if self._verdict is False:
            self._content(self._buf)
            self._buf = ""
        elif final:
            calls = self._read_calls(self._buf)
            if calls is None:
                self._content(self._buf)
            else:
                pending = []
                for name, arguments in calls:
                    call = _Call(name)
                    call.args = [arguments]
                    call.complete = True
                    pending.append(call)
                self._sync(pending, block_done=True)
            self._buf = ""


def _strip_prefix_token(text: str, token: str) -> str | None:
    """``text`` (stripped) without a leading ``token``; None while it may still be that token."""
    text = text.lstrip()
    if token.startswith(text):
        return None
    return text[len(token) :].lstrip() if text.startswith(token) else text
