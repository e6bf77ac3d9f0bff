"""Tool-call parsers: read the calls a model writes in its own markup, whole or streamed.

Formats (``TOOL_PARSERS``):

- ``hermes``: ``<tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>``, repeatable, text
  may come before, between and after (Qwen2.5/3, Hermes, most ChatML models).
- ``llama3_json``: the whole message is ``{"name": "f", "parameters": {...}}`` (optionally after
  ``<|python_tag|>``), several separated by ``;``.
- ``mistral``: ``[TOOL_CALLS]`` then a JSON list of calls, or ``[TOOL_CALLS]f[ARGS]{...}``
  (repeatable); text before it is content.
- ``pythonic``: the whole message is a Python list of calls, ``[f(a=1, b="x"), g()]``.

Design. Each format is one incremental state machine (a ``ToolCallStream``), and ``parse()``
runs that same machine over the whole text, so streamed and whole-text results cannot drift
apart. Argument JSON is read by ``_Json``, which checks it character by character and rewrites
it as ``json.dumps(value, ensure_ascii=False)`` would, so hermes and mistral arguments stream as
the model writes them and still come out normalised (same text whichever way they were read).

Policies (the same for every format):

- Malformed markup (bad JSON, wrong structure, unclosed at the end) is content text, never an
  exception: ``parse()`` loses nothing the model wrote.
- Calls naming a function that is not in ``tools`` are still calls: the client decides what to
  do with them (``tools`` only matters for prompts and grammars).
- A stream cannot take back a call it has announced. With ``stream(incremental=True)`` (the
  default) a hermes/mistral call is announced once its name is known and its arguments have
  begun; if the model then breaks the JSON, or generation stops inside the call (max_tokens),
  the call ends as sent (its arguments are then not valid JSON, as with OpenAI's own truncated
  calls) and the rest of that broken block is dropped rather than leaked as content, whereas
  ``parse()`` reports such a block as content. ``stream(incremental=False)`` sends each call
  whole once its markup is closed and matches ``parse()`` exactly on every input.
"""

from __future__ import annotations

import ast
import contextlib
import json
import keyword
import math
import re
import secrets
import string
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from candle_agents.errors import ConfigError

__all__ = [
    "TOOL_PARSERS",
    "HermesToolParser",
    "Llama3JsonToolParser",
    "MistralToolParser",
    "ParsedMessage",
    "PythonicToolParser",
    "StreamStep",
    "ToolCall",
    "ToolCallDelta",
    "ToolCallStream",
    "ToolParser",
    "detect_tool_parser",
    "get_tool_parser",
    "make_call_id",
    "merge_steps",
]

_ID_ALPHABET = string.ascii_letters + string.digits
_WS = " \t\n\r"


def make_call_id() -> str:
    """A fresh OpenAI-style call id: ``call_`` and 24 random alphanumerics."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


# -- results ----------------------------------------------------------------------------


@dataclass
class ToolCall:
    """One complete call."""

    id: str
    name: str
    arguments: str  # JSON text of the arguments object, non-ASCII unescaped


@dataclass
class ParsedMessage:
    """A model message split into its text and its calls."""

    content: str | None  # text outside the call markup, stripped; None if empty
    tool_calls: list[ToolCall]


@dataclass
class ToolCallDelta:
    """One piece of a streamed call, in OpenAI's shape.

    The first delta of a call has ``index``, ``id``, ``name`` and ``arguments`` ("" or the first
    fragment); later ones only ``index`` and the next argument fragment.
    """

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str | None = None


@dataclass
class StreamStep:
    """What one ``feed()``/``finish()`` produced."""

    content: str = ""  # new content text (never markup)
    tool_calls: list[ToolCallDelta] = field(default_factory=list)


def merge_steps(steps: Iterable[StreamStep]) -> ParsedMessage:
    """Put a stream's steps back together into the message ``parse()`` would return."""
    content: list[str] = []
    calls: dict[int, ToolCall] = {}
    for step in steps:
        content.append(step.content)
        for delta in step.tool_calls:
            if delta.id is not None:
                calls[delta.index] = ToolCall(delta.id, delta.name or "", delta.arguments or "")
            elif delta.index in calls:
                calls[delta.index].arguments += delta.arguments or ""
    text = "".join(content).strip()
    return ParsedMessage(text or None, [calls[i] for i in sorted(calls)])


# -- incremental JSON -------------------------------------------------------------------

(
    _VALUE,
    _FIRST_KEY,
    _KEY,
    _COLON,
    _AFTER,
    _FIRST_ITEM,
    _STRING,
    _ESCAPE,
    _UNICODE,
    _NUMBER,
    _LITERAL,
    _DONE,
    _FAILED,
) = range(13)

_NUMBER_CHARS = frozenset("0123456789+-.eE")
_NUMBER_RE = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_HEX = frozenset("0123456789abcdefABCDEF")
_SIMPLE_ESCAPES = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}
_LITERALS = {"t": "true", "f": "false", "n": "null"}


def _escape_char(c: str) -> str:
    """One decoded string character as ``json.dumps(..., ensure_ascii=False)`` writes it."""
    if c == '"' or c == "\\" or c < " ":
        return json.dumps(c)[1:-1]
    if "\ud800" <= c <= "\udfff":
        # A lone surrogate stays escaped so the text remains encodable as UTF-8.
        return f"\\u{ord(c):04x}"
    return c


def _normalise_number(text: str) -> str:
    try:
        if not any(c in text for c in ".eE"):
            return str(int(text))
        value = float(text)
    except ValueError:  # an int too long for str(): keep the model's digits
        return text
    # json.dumps writes floats with repr; out-of-range ones would become "Infinity".
    return repr(value) if math.isfinite(value) else text


class _Json:
    """Reads one JSON value character by character.

    It checks the value as it goes and appends it to ``out`` the way
    ``json.dumps(value, ensure_ascii=False)`` would write it, so a caller can stream a normalised
    value while the model is still writing it. Differences from ``json.loads``: raw control
    characters inside strings are accepted (small models write raw newlines in code) and
    duplicate keys are kept.
    """

    __slots__ = ("_hex", "_high", "_key", "_literal", "_stack", "_token", "first", "out", "state")

    def __init__(self) -> None:
        self.out: list[str] = []
        self.state = _VALUE
        self.first = ""  # first character of the value: tells its type
        self._stack: list[str] = []  # closing brackets of the open containers
        self._key = False  # the string being read is an object key
        self._hex = ""  # digits of a \uXXXX escape
        self._high = ""  # a high surrogate waiting for its low half
        self._token = ""  # number or literal read so far
        self._literal = ""  # the literal being matched

    @property
    def done(self) -> bool:
        return self.state == _DONE

    @property
    def failed(self) -> bool:
        return self.state == _FAILED

    def push(self, ch: str) -> bool:
        """Read one character; False if it is not part of the value (ended before it, or bad)."""
        while True:
            state = self.state
            if state == _STRING:
                if ch == '"':
                    self._end_string()
                elif ch == "\\":
                    self.state = _ESCAPE
                else:
                    self._flush_high()
                    self.out.append(ch if ch >= " " else _escape_char(ch))
                return True
            if state == _ESCAPE:
                if ch == "u":
                    self._hex = ""
                    self.state = _UNICODE
                    return True
                if ch not in _SIMPLE_ESCAPES:
                    return self._fail()
                self._decoded(_SIMPLE_ESCAPES[ch])
                self.state = _STRING
                return True
            if state == _UNICODE:
                if ch not in _HEX:
                    return self._fail()
                self._hex += ch
                if len(self._hex) == 4:
                    self._decoded(chr(int(self._hex, 16)))
                    self.state = _STRING
                return True
            if state == _NUMBER:
                if ch in _NUMBER_CHARS:
                    self._token += ch
                    return True
                if not self._end_number():
                    return False
                continue  # the character after the number belongs to the container
            if state == _LITERAL:
                token = self._token + ch
                if not self._literal.startswith(token):
                    return self._fail()
                self._token = token
                if token == self._literal:
                    self.out.append(token)
                    self._value_done()
                return True
            if state in (_DONE, _FAILED):
                return False
            if ch in _WS:
                return True
            if state in (_VALUE, _FIRST_ITEM):
                if state == _FIRST_ITEM and ch == "]":
                    self._close(ch)
                    return True
                return self._start_value(ch)
            if state == _AFTER:
                if ch == ",":
                    self.out.append(", ")
                    self.state = _KEY if self._stack[-1] == "}" else _VALUE
                elif ch == self._stack[-1]:
                    self._close(ch)
                else:
                    return self._fail()
                return True
            if state == _COLON:
                if ch != ":":
                    return self._fail()
                self.out.append(": ")
                self.state = _VALUE
                return True
            # _FIRST_KEY or _KEY
            if ch == '"':
                self.out.append('"')
                self._key = True
                self.state = _STRING
            elif ch == "}" and state == _FIRST_KEY:
                self._close(ch)
            else:
                return self._fail()
            return True

    def end(self) -> bool:
        """The input ended: complete a top-level number; True if a whole value was read."""
        if self.state == _NUMBER and not self._stack:
            self._end_number()
        return self.state == _DONE

    def _start_value(self, ch: str) -> bool:
        if not self._stack and not self.first:
            self.first = ch
        if ch == "{" or ch == "[":
            self._stack.append("}" if ch == "{" else "]")
            self.out.append(ch)
            self.state = _FIRST_KEY if ch == "{" else _FIRST_ITEM
        elif ch == '"':
            self.out.append('"')
            self.state = _STRING
        elif ch == "-" or "0" <= ch <= "9":
            self._token = ch
            self.state = _NUMBER
        elif ch in _LITERALS:
            self._token = ch
            self._literal = _LITERALS[ch]
            self.state = _LITERAL
        else:
            return self._fail()
        return True

    def _decoded(self, c: str) -> None:
        """A character decoded from an escape: pair surrogates like json.loads does."""
        if self._high:
            if "\udc00" <= c <= "\udfff":
                pair = 0x10000 + ((ord(self._high) - 0xD800) << 10) + (ord(c) - 0xDC00)
                self._high = ""
                self.out.append(chr(pair))
                return
            self._flush_high()
        if "\ud800" <= c <= "\udbff":
            self._high = c
        else:
            self.out.append(_escape_char(c))

    def _flush_high(self) -> None:
        if self._high:
            self.out.append(_escape_char(self._high))
            self._high = ""

    def _end_string(self) -> None:
        self._flush_high()
        self.out.append('"')
        if self._key:
            self._key = False
            self.state = _COLON
        else:
            self._value_done()

    def _end_number(self) -> bool:
        if not _NUMBER_RE.fullmatch(self._token):
            return self._fail()
        self.out.append(_normalise_number(self._token))
        self._value_done()
        return True

    def _close(self, ch: str) -> None:
        self._stack.pop()
        self.out.append(ch)
        self._value_done()

    def _value_done(self) -> None:
        self.state = _AFTER if self._stack else _DONE

    def _fail(self) -> bool:
        self.state = _FAILED
        return False


def _normalise_json(text: str) -> tuple[str, str] | None:
    """``text`` as one normalised JSON value and its first character, or None if it is not."""
    reader = _Json()
    for i, ch in enumerate(text):
        if not reader.push(ch):
            if reader.failed or text[i:].strip(_WS):
                return None
            break
    else:
        reader.end()
    return ("".join(reader.out), reader.first) if reader.done else None


# -- call objects -----------------------------------------------------------------------

_MORE, _COMPLETE, _FAIL = 0, 1, 2  # what a block reader says about the character it was given


class _Call:
    """A call being read: what is known of it so far, and what the stream has sent of it."""

    __slots__ = ("args", "complete", "index", "name", "sent")

    def __init__(self, name: str | None = None) -> None:
        self.name = name
        # Normalised arguments text; grows while an arguments object is being read.
        self.args: list[str] | None = None
        self.complete = False
        self.index: int | None = None  # set once the stream has announced the call
        self.sent = 0  # pieces of ``args`` already sent


_ARGUMENT_KEYS = ("arguments", "parameters")
(
    _R_OPEN,
    _R_FIRST_KEY,
    _R_NEXT_KEY,
    _R_KEY,
    _R_COLON,
    _R_VALUE_START,
    _R_VALUE,
    _R_AFTER,
    _R_DONE,
) = range(9)


class _CallReader(_Call):
    """Reads a call object ``{"name": ..., "arguments": {...}}`` character by character.

    "parameters" is an alias of "arguments"; arguments given as a JSON string holding an object
    are decoded; missing arguments mean ``{}``; other keys (an "id", say) are read and ignored.
    """

    __slots__ = ("_args_seen", "_json", "_key", "_phase")

    def __init__(self) -> None:
        super().__init__()
        self._phase = _R_OPEN
        self._json: _Json | None = None
        self._key: str | None = None
        self._args_seen = False

    def push(self, ch: str) -> int:
        while True:
            phase = self._phase
            if phase in (_R_KEY, _R_VALUE):
                reader = self._json
                assert reader is not None
                consumed = reader.push(ch)
                if reader.failed:
                    return _FAIL
                if not reader.done:
                    return _MORE
                if not self._value_read():
                    return _FAIL
                if consumed:
                    return _MORE
                continue  # a number ended before ``ch``
            if ch in _WS and phase != _R_DONE:
                return _MORE
            if phase == _R_OPEN:
                if ch != "{":
                    return _FAIL
                self._phase = _R_FIRST_KEY
            elif phase in (_R_FIRST_KEY, _R_NEXT_KEY):
                if ch != '"':
                    return _FAIL  # also "{}": a call needs a name
                self._json = _Json()
                self._json.push(ch)
                self._phase = _R_KEY
            elif phase == _R_COLON:
                if ch != ":":
                    return _FAIL
                self._phase = _R_VALUE_START
            elif phase == _R_VALUE_START:
                if not self._start_value(ch):
                    return _FAIL
                continue
            elif phase == _R_AFTER:
                if ch == ",":
                    self._phase = _R_NEXT_KEY
                elif ch == "}" and self.name is not None:
                    if self.args is None:
                        self.args = ["{}"]
                    self.complete = True
                    self._phase = _R_DONE
                    return _COMPLETE
                else:
                    return _FAIL
            else:
                return _FAIL
            return _MORE

    def _start_value(self, ch: str) -> bool:
        key = self._key
        if key == "name" and (self.name is not None or ch != '"'):
            return False
        self._json = _Json()
        if key in _ARGUMENT_KEYS:
            if self._args_seen or ch not in '{"':
                return False
            self._args_seen = True
            if ch == "{":
                self.args = self._json.out  # streamed as it grows
        self._phase = _R_VALUE
        return True

    def _value_read(self) -> bool:
        assert self._json is not None
        text = "".join(self._json.out)
        if self._phase == _R_KEY:
            self._key = json.loads(text)
            self._phase = _R_COLON
            return True
        if self._key == "name":
            name = json.loads(text)
            if not name:
                return False
            self.name = name
        elif self._key in _ARGUMENT_KEYS and self.args is None:
            # Arguments written as a JSON string: it must hold an object.
            decoded = _normalise_json(json.loads(text))
            if decoded is None or decoded[1] != "{":
                return False
            self.args = [decoded[0]]
        self._phase = _R_AFTER
        return True


# -- streams ----------------------------------------------------------------------------


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

        (Unless the stream has already announced it: see the module docstring.)
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
    """Text with blocks of calls opened by a marker (hermes, mistral)."""

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


_HERMES_OPEN = "<tool_call>"
_HERMES_CLOSE = "</tool_call>"


class _HermesStream(_MarkupStream):
    _open = _HERMES_OPEN
    _skip_to = _HERMES_CLOSE
    _skip_past = True

    def _begin(self) -> None:
        self._reader = _CallReader()
        self._calls = [self._reader]
        self._closed = -1  # characters of the closing tag matched; -1 while in the object

    def _push(self, ch: str) -> int:
        if self._closed < 0:
            result = self._reader.push(ch)
            if result == _COMPLETE:
                self._closed = 0
                return _MORE
            return result
        if self._closed == 0 and ch in _WS:
            return _MORE
        if ch != _HERMES_CLOSE[self._closed]:
            return _FAIL
        self._closed += 1
        return _COMPLETE if self._closed == len(_HERMES_CLOSE) else _MORE


_MISTRAL_OPEN = "[TOOL_CALLS]"
_MISTRAL_ARGS = "[ARGS]"
_MISTRAL_CALL_ID = "[CALL_ID]"
(
    _M_START,
    _M_ITEM_START,
    _M_ITEM,
    _M_ITEM_AFTER,
    _M_NAME,
    _M_TAG,
    _M_CALL_ID,
    _M_ARGS_START,
    _M_ARGS,
) = range(9)


def _is_name_char(ch: str) -> bool:
    return ch.isalnum() or ch in "_-."


class _MistralStream(_MarkupStream):
    _open = _MISTRAL_OPEN
    _skip_to = _MISTRAL_OPEN
    _skip_past = False

    def _begin(self) -> None:
        self._phase = _M_START
        self._reader: _CallReader | None = None
        self._name = ""
        self._tag = ""
        self._had_id = False
        self._args: _Json | None = None

    def _push(self, ch: str) -> int:
        phase = self._phase
        if phase == _M_ITEM:  # a call object in the list form
            assert self._reader is not None
            result = self._reader.push(ch)
            if result == _COMPLETE:
                self._phase = _M_ITEM_AFTER
                return _MORE
            return result
        if phase == _M_ARGS:  # the arguments object of the name form
            assert self._args is not None
            self._args.push(ch)
            if self._args.failed:
                return _FAIL
            if self._args.done:
                self._calls[-1].complete = True
                return _COMPLETE
            return _MORE
        if phase == _M_START:
            if ch in _WS:
                return _MORE
            if ch == "[":
                self._phase = _M_ITEM_START
            elif _is_name_char(ch):
                self._name = ch
                self._phase = _M_NAME
            else:
                return _FAIL
        elif phase == _M_ITEM_START:
            if ch in _WS:
                return _MORE
            if ch != "{":
                return _FAIL  # also "[]": the marker must bring at least one call
            self._reader = _CallReader()
            self._calls.append(self._reader)
            self._reader.push(ch)
            self._phase = _M_ITEM
        elif phase == _M_ITEM_AFTER:
            if ch in _WS:
                return _MORE
            if ch == "]":
                return _COMPLETE
            if ch != ",":
                return _FAIL
            self._phase = _M_ITEM_START
        elif phase in (_M_NAME, _M_CALL_ID):
            if ch == "[":
                self._tag = ch
                self._phase = _M_TAG
            elif not _is_name_char(ch):
                return _FAIL
            elif phase == _M_NAME:
                self._name += ch
        elif phase == _M_TAG:
            self._tag += ch
            if self._tag == _MISTRAL_ARGS:
                self._phase = _M_ARGS_START
            elif self._tag == _MISTRAL_CALL_ID and not self._had_id:
                # Some versions write the call's id before its arguments; ours replace it.
                self._had_id = True
                self._phase = _M_CALL_ID
            elif not (
                _MISTRAL_ARGS.startswith(self._tag)
                or (not self._had_id and _MISTRAL_CALL_ID.startswith(self._tag))
            ):
                return _FAIL
        elif phase == _M_ARGS_START:
            if ch in _WS:
                return _MORE
            if ch != "{":
                return _FAIL
            self._args = _Json()
            self._args.push(ch)
            call = _Call(self._name)
            call.args = self._args.out
            self._calls.append(call)
            self._phase = _M_ARGS
        return _MORE


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


# -- tool specs ---------------------------------------------------------------------------


def _functions(tools: list[dict] | None) -> list[dict]:
    """The function specs of OpenAI tool dicts (bare function dicts accepted), first of a name."""
    found: dict[str, dict] = {}
    for tool in tools or []:
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            continue
        spec = tool.get("function", tool)
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            found.setdefault(spec["name"], spec)
    return list(found.values())


def _parameters(spec: dict) -> dict:
    """The JSON schema of a function's arguments; an empty one means any object."""
    params = spec.get("parameters")
    if not isinstance(params, dict) or not params:
        return {"type": "object", "properties": {}}
    if "type" not in params:
        return {"type": "object", **params}
    return params


def _example_value(schema: Any, depth: int = 0) -> Any:
    """A plausible value for ``schema``, for the example call in a tools prompt."""
    if not isinstance(schema, dict):
        return "..."
    if "const" in schema:
        return schema["const"]
    for key in ("enum", "examples"):
        if isinstance(schema.get(key), list) and schema[key]:
            return schema[key][0]
    if "default" in schema:
        return schema["default"]
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return _example_value(schema[key][0], depth)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        return _example_arguments(schema, depth + 1) if depth < 3 else {}
    if kind == "array":
        return [_example_value(schema.get("items"), depth + 1)] if depth < 3 else []
    return {"integer": 1, "number": 1.5, "boolean": True, "null": None}.get(str(kind), "...")


def _example_arguments(schema: dict, depth: int = 0) -> dict:
    props = schema.get("properties")
    if not isinstance(props, dict) or not props:
        return {}
    required = [k for k in schema.get("required") or [] if k in props] or list(props)[:1]
    return {k: _example_value(props[k], depth) for k in required}


def _call_arguments(call: dict) -> tuple[str, Any]:
    """Name and arguments (decoded when they are JSON) of an OpenAI-shaped call dict."""
    spec = call.get("function", call)
    arguments = spec.get("arguments")
    if isinstance(arguments, str):
        # Not JSON: passed on as the string it is, so the model still sees it.
        with contextlib.suppress(ValueError):
            arguments = json.loads(arguments) if arguments.strip() else {}
    elif arguments is None:
        arguments = {}
    return str(spec.get("name", "")), arguments


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _lark_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


# JSON in grammars is written the way json.dumps writes it (and our parsers normalise to):
# llguidance's default flexible whitespace lets small models ramble in blanks until max_tokens,
# and fixed separators let it force the tokens of a call's name and keys.
_JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _lark_json(schema: dict) -> str:
    return "%json " + json.dumps({**schema, "x-guidance": _JSON_STYLE})


def _rule_names(names: list[str]) -> list[str]:
    """Distinct lark rule names, one per function name."""
    taken: set[str] = set()
    rules = []
    for i, name in enumerate(names):
        rule = "call_" + re.sub(r"[^a-z0-9_]", "_", name.lower())
        if rule in taken:
            rule = f"{rule}_{i}"
        taken.add(rule)
        rules.append(rule)
    return rules


def _text_without(marker: str) -> str:
    """A lark terminal for any text not containing ``marker``."""
    escaped = re.escape(marker).replace("/", "\\/")
    return f"/(?s:.*)/ & ~/(?s:.*){escaped}(?s:.*)/"


# -- parsers ------------------------------------------------------------------------------


class ToolParser(ABC):
    """Reads (and writes, prompts for and constrains) one tool-call format."""

    name: ClassVar[str]
    # True when the markup is a special token the detokenizer must keep.
    needs_special_tokens: ClassVar[bool] = False

    def parse(self, text: str, tools: list[dict] | None = None) -> ParsedMessage:
        """Split a whole message into content and calls; malformed markup stays content."""
        stream = self.stream(tools, incremental=False)
        return merge_steps([stream.feed(text), stream.finish()])

    @abstractmethod
    def stream(
        self, tools: list[dict] | None = None, *, incremental: bool = True
    ) -> ToolCallStream:
        """A stream for one message; see the module docstring for ``incremental``."""

    @abstractmethod
    def render_calls(self, calls: list[dict]) -> str:
        """OpenAI-shaped calls as the text the model would have written (for plain templates)."""

    def render_tools_prompt(self, tools: list[dict]) -> str:
        """System-prompt text listing ``tools`` and the exact format to call them in."""
        specs = _functions(tools)
        lines = [
            "You can call these functions (name, description and JSON Schema of the arguments):"
        ]
        for spec in specs:
            entry = {"name": spec["name"]}
            if spec.get("description"):
                entry["description"] = spec["description"]
            entry["parameters"] = _parameters(spec)
            lines.append(_dumps(entry))
        how, otherwise = self._instructions()
        lines.append(how)
        if specs:
            example = {
                "name": specs[0]["name"],
                "arguments": _dumps(_example_arguments(_parameters(specs[0]))),
            }
            lines.append("For example:\n" + self.render_calls([{"function": example}]))
        lines.append(otherwise)
        return "\n".join(lines)

    def call_grammar(self, tools: list[dict], mode: str, parallel: bool = True) -> str:
        """A llguidance lark grammar constraining the model's output to calls of ``tools``.

        ``mode`` is "required" (one call, or one or more if ``parallel``), "auto" (plain text
        that cannot be taken for the call markup, or calls), "none" (only such text) or a
        function name (exactly one call of it). Each call's arguments must match its tool's
        JSON schema.
        """
        if mode == "none":
            return f"start: TEXT\nTEXT: {self._text_terminal()}\n"
        specs = _functions(tools)
        if not specs:
            raise ConfigError("a tool-call grammar needs at least one function tool", field="tools")
        if mode not in ("auto", "required"):
            chosen = [spec for spec in specs if spec["name"] == mode]
            if not chosen:
                known = ", ".join(repr(spec["name"]) for spec in specs)
                raise ConfigError(
                    f"tool_choice {mode!r} is not 'auto', 'required' or the name of one of the "
                    f"tools ({known})",
                    field="tool_choice",
                )
            specs, parallel = chosen, False
        rules = _rule_names([spec["name"] for spec in specs])
        lines = [
            "start: TEXT | calls" if mode == "auto" else "start: calls",
            self._calls_rule(parallel),
            "call: " + self._call_expr(" | ".join(rules)),
        ]
        for rule, spec in zip(rules, specs):
            lines.extend(self._call_rules(rule, spec))
        if mode == "auto":
            lines.append("TEXT: " + self._text_terminal())
        return "\n".join(lines) + "\n"

    # What each format supplies to the shared prompt and grammar code.

    @abstractmethod
    def _instructions(self) -> tuple[str, str]:
        """For the tools prompt: how to write calls, and what to do when no call is needed."""

    @abstractmethod
    def _calls_rule(self, parallel: bool) -> str:
        """The ``calls`` rule: one call, or several."""

    def _call_expr(self, alternatives: str) -> str:
        return f"({alternatives})"

    @abstractmethod
    def _call_rules(self, rule: str, spec: dict) -> list[str]:
        """Rules for one call of ``spec``, the first named ``rule``."""

    @abstractmethod
    def _text_terminal(self) -> str:
        """Plain text that cannot be mistaken for calls (mode "auto")."""


def _split_definitions(schema: dict) -> tuple[dict, dict]:
    """``schema`` without its definitions, and those definitions.

    Refs such as ``#/$defs/Item`` point from the document root, so when a schema is nested
    in another one its definitions must move to the new root.
    """
    defs = {key: schema[key] for key in ("$defs", "definitions") if key in schema}
    return {k: v for k, v in schema.items() if k not in defs}, defs


def _json_call_rule(rule: str, spec: dict, arguments_key: str) -> str:
    params, defs = _split_definitions(_parameters(spec))
    schema = {
        "type": "object",
        "properties": {"name": {"const": spec["name"]}, arguments_key: params},
        "required": ["name", arguments_key],
        "additionalProperties": False,
        **defs,
    }
    return f"{rule}: {_lark_json(schema)}"


class HermesToolParser(ToolParser):
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks (ChatML models)."""

    name = "hermes"

    def stream(
        self, tools: list[dict] | None = None, *, incremental: bool = True
    ) -> ToolCallStream:
        return _HermesStream(incremental=incremental)

    def render_calls(self, calls: list[dict]) -> str:
        blocks = []
        for call in calls:
            name, arguments = _call_arguments(call)
            body = _dumps({"name": name, "arguments": arguments})
            blocks.append(f"{_HERMES_OPEN}\n{body}\n{_HERMES_CLOSE}")
        return "".join(blocks)  # glued, as the call grammar writes them

    def _instructions(self) -> tuple[str, str]:
        return (
            "To call a function, write its name and arguments as JSON inside tags, exactly "
            "like this, one block per call:\n"
            f'{_HERMES_OPEN}\n{{"name": <function name>, "arguments": <arguments object>}}\n'
            f"{_HERMES_CLOSE}",
            "If no function is needed, answer normally without these tags.",
        )

    def _calls_rule(self, parallel: bool) -> str:
        # No newline between calls: a small model offered "\n" after a call
        # takes it and then must start another call, looping to max_tokens;
        # with the next "<tool_call>" glued on, it chooses between that and EOS.
        return "calls: call+" if parallel else "calls: call"

    def _call_expr(self, alternatives: str) -> str:
        return f"{_lark_string(_HERMES_OPEN + chr(10))} ({alternatives}) " + _lark_string(
            "\n" + _HERMES_CLOSE
        )

    def _call_rules(self, rule: str, spec: dict) -> list[str]:
        return [_json_call_rule(rule, spec, "arguments")]

    def _text_terminal(self) -> str:
        return _text_without(_HERMES_OPEN)


class MistralToolParser(ToolParser):
    """``[TOOL_CALLS]`` and a JSON list of calls, or ``[TOOL_CALLS]name[ARGS]{...}``."""

    name = "mistral"
    needs_special_tokens = True

    def stream(
        self, tools: list[dict] | None = None, *, incremental: bool = True
    ) -> ToolCallStream:
        return _MistralStream(incremental=incremental)

    def render_calls(self, calls: list[dict]) -> str:
        items = []
        for call in calls:
            name, arguments = _call_arguments(call)
            items.append({"name": name, "arguments": arguments})
        return _MISTRAL_OPEN + _dumps(items) if items else ""

    def _instructions(self) -> tuple[str, str]:
        return (
            f"To call functions, write {_MISTRAL_OPEN} followed by a JSON list of calls, exactly "
            f'like this: {_MISTRAL_OPEN}[{{"name": <function name>, "arguments": <arguments '
            "object>}, ...]",
            "If no function is needed, answer normally.",
        )

    def _calls_rule(self, parallel: bool) -> str:
        # [TOOL_CALLS] is written as text: llguidance cannot name a special token spelt with
        # brackets, and a tokenizer without it (our default) has to spell it anyway.
        more = ' (", " call)*' if parallel else ""
        return f'calls: {_lark_string(_MISTRAL_OPEN + "[")} call{more} "]"'

    def _call_rules(self, rule: str, spec: dict) -> list[str]:
        return [_json_call_rule(rule, spec, "arguments")]

    def _text_terminal(self) -> str:
        return _text_without(_MISTRAL_OPEN)


# llama3_json: a call is an object with a name and its arguments and nothing else, so that a
# JSON answer such as {"name": "Ada", "age": 36} is not taken for a call of "Ada".
_LLAMA_TAG = "<|python_tag|>"


def _strip_prefix_token(text: str, token: str) -> str | None:
    """``text`` (stripped) without a leading ``token``; None while it may still be that token."""
    text = text.lstrip()
    if token.startswith(text):
        return None
    return text[len(token) :].lstrip() if text.startswith(token) else text


def _llama_looks_like_calls(head: str) -> bool | None:
    rest = _strip_prefix_token(head, _LLAMA_TAG)
    if rest is None or not rest:
        return None
    if rest[0] != "{":
        return False
    rest = rest[1:].lstrip()
    return (rest[0] == '"') if rest else None


def _llama_call(value: Any) -> tuple[str, str] | None:
    if not isinstance(value, dict) or set(value) - {"name", *_ARGUMENT_KEYS}:
        return None
    name = value.get("name")
    present = [key for key in _ARGUMENT_KEYS if key in value]
    if not isinstance(name, str) or not name or len(present) != 1:
        return None
    arguments = value[present[0]]
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    try:
        return name, json.dumps(arguments, ensure_ascii=False, allow_nan=False)
    except ValueError:  # NaN or Infinity, which json.loads lets through
        return None


def _llama_read_calls(text: str) -> list[tuple[str, str]] | None:
    rest = _strip_prefix_token(text, _LLAMA_TAG)
    if not rest:
        return None
    decoder = json.JSONDecoder(strict=False)  # raw newlines in strings, as hermes allows
    calls: list[tuple[str, str]] = []
    pos = 0
    while True:
        try:
            value, pos = decoder.raw_decode(rest, pos)
        except (ValueError, RecursionError):
            return None
        call = _llama_call(value)
        if call is None:
            return None
        calls.append(call)
        while pos < len(rest) and rest[pos] in _WS:
            pos += 1
        if pos == len(rest):
            return calls
        if rest[pos] != ";":
            return None
        pos += 1
        while pos < len(rest) and rest[pos] in _WS:
            pos += 1


class Llama3JsonToolParser(ToolParser):
    """A message that is only ``{"name": ..., "parameters": {...}}`` objects, ``;``-separated."""

    name = "llama3_json"

    def stream(
        self, tools: list[dict] | None = None, *, incremental: bool = True
    ) -> ToolCallStream:
        return _WholeMessageStream(
            _llama_looks_like_calls, _llama_read_calls, incremental=incremental
        )

    def render_calls(self, calls: list[dict]) -> str:
        parts = []
        for call in calls:
            name, arguments = _call_arguments(call)
            parts.append(_dumps({"name": name, "parameters": arguments}))
        return "; ".join(parts)

    def _instructions(self) -> tuple[str, str]:
        return (
            "To call a function, reply with only a JSON object, exactly like this, and no other "
            'text: {"name": <function name>, "parameters": <arguments object>}\n'
            'For several calls, separate the objects with "; ".',
            "If no function is needed, answer normally (not starting with {).",
        )

    def _calls_rule(self, parallel: bool) -> str:
        return 'calls: call ("; " call)*' if parallel else "calls: call"

    def _call_rules(self, rule: str, spec: dict) -> list[str]:
        return [_json_call_rule(rule, spec, "parameters")]

    def _text_terminal(self) -> str:
        return r"/\s*([^\s{](?s:.*))?/"


# pythonic: [f(a=1, b="x"), g()] read with ``ast``; values are literals only.
_PY_START = "<|python_start|>"
_PY_END = "<|python_end|>"
_JSON_NAMES = {"true": True, "false": False, "null": None}


def _pythonic_looks_like_calls(head: str) -> bool | None:
    rest = _strip_prefix_token(head, _PY_START)
    if rest is None or not rest:
        return None
    match = re.match(r"\[\s*(?:([A-Za-z_][\w.]*)\s*(\(?))?", rest)
    if match is None:
        return False
    if match.group(2):
        return True
    if match.end() == len(rest):
        return None  # the text ends inside "[name ": wait for more
    return False


def _py_literal(node: ast.AST) -> Any:
    """The value of a literal expression; ValueError for anything else."""
    if isinstance(node, ast.Constant) and (
        node.value is None or isinstance(node.value, (str, int, float))
    ):
        value = node.value
        if isinstance(value, str) and re.search("[\ud800-\udfff]", value):
            # \ud83d\ude00 in a Python literal gives two surrogates: pair them as JSON would.
            value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return value
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, (ast.USub, ast.UAdd))
        and isinstance(node.operand, ast.Constant)
        and type(node.operand.value) in (int, float)
    ):
        return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
    if isinstance(node, ast.List):
        return [_py_literal(item) for item in node.elts]
    if isinstance(node, ast.Dict):
        result = {}
        for key, value in zip(node.keys, node.values):
            name = _py_literal(key) if key is not None else None
            if not isinstance(name, str):
                raise ValueError("dict keys must be strings")
            result[name] = _py_literal(value)
        return result
    if isinstance(node, ast.Name) and node.id in _JSON_NAMES:
        return _JSON_NAMES[node.id]  # models trained on JSON often write these
    raise ValueError("not a literal")


def _dotted_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted_name(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _pythonic_read_calls(text: str) -> list[tuple[str, str]] | None:
    source = _strip_prefix_token(text, _PY_START)
    if not source:
        return None
    source = source.rstrip()
    if source.endswith(_PY_END):
        source = source[: -len(_PY_END)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in model-written strings
            tree = ast.parse(source.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if not isinstance(tree.body, ast.List) or not tree.body.elts:
        return None
    calls = []
    for node in tree.body.elts:
        if not isinstance(node, ast.Call) or node.args:
            return None
        name = _dotted_name(node.func)
        if name is None:
            return None
        arguments: dict[str, Any] = {}
        try:
            for kw in node.keywords:
                value = _py_literal(kw.value)
                given = {kw.arg: value} if kw.arg is not None else value
                # f(**{"not-an-identifier": 1}) is how such keys are written; a repeated key
                # is an error in Python (ast.parse leaves that check to the compiler).
                if not isinstance(given, dict) or given.keys() & arguments.keys():
                    return None
                arguments.update(given)
            calls.append((name, json.dumps(arguments, ensure_ascii=False, allow_nan=False)))
        except (ValueError, RecursionError):
            return None
    return calls


def _py_value(value: Any) -> str:
    """A JSON value as a Python literal, strings double-quoted as the call grammar writes them."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, (str, int, float)):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_py_value(item) for item in value) + "]"
    if isinstance(value, dict):
        items = (f"{_dumps(str(k))}: {_py_value(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    return repr(value)


class PythonicToolParser(ToolParser):
    """A message that is only a Python list of calls (Llama 3.2/4 pythonic)."""

    name = "pythonic"

    def stream(
        self, tools: list[dict] | None = None, *, incremental: bool = True
    ) -> ToolCallStream:
        return _WholeMessageStream(
            _pythonic_looks_like_calls, _pythonic_read_calls, incremental=incremental
        )

    def render_calls(self, calls: list[dict]) -> str:
        items = []
        for call in calls:
            name, arguments = _call_arguments(call)
            if not isinstance(arguments, dict):
                arguments = {"arguments": arguments}  # not an object: passed on as one value
            plain = []
            odd = {}
            for key, value in arguments.items():
                if key.isidentifier() and not keyword.iskeyword(key):
                    plain.append(f"{key}={_py_value(value)}")
                else:
                    odd[key] = value
            if odd:
                plain.append(f"**{_py_value(odd)}")
            items.append(f"{name}({', '.join(plain)})")
        return f"[{', '.join(items)}]" if items else ""

    def _instructions(self) -> tuple[str, str]:
        return (
            "To call functions, reply with only a Python list of calls with keyword arguments "
            "and literal values, exactly like this, and no other text: "
            "[func_name1(param1=value1, param2=value2), func_name2(param=value)]",
            "If no function is needed, answer normally (not starting with [).",
        )

    def _calls_rule(self, parallel: bool) -> str:
        more = ' (", " call)*' if parallel else ""
        return f'calls: "[" call{more} "]"'

    def _call_rules(self, rule: str, spec: dict) -> list[str]:
        params, defs = _split_definitions(_parameters(spec))
        props = params.get("properties")
        props = props if isinstance(props, dict) else {}
        required = set(params.get("required") or [])
        rules: list[str] = []
        items: list[tuple[str, bool]] = []
        for i, (key, schema) in enumerate(props.items()):
            value_rule = f"{rule}_arg{i}"
            schema = schema if isinstance(schema, dict) else {}
            rules.append(f"{value_rule}: {_lark_json({**schema, **defs})}")
            if key.isidentifier() and not keyword.iskeyword(key):
                item = f"{_lark_string(key + '=')} {value_rule}"
            else:
                item = f'{_lark_string("**{" + _dumps(key) + ": ")} {value_rule} "}}"'
            items.append((item, key in required))
        if not items:
            return [f"{rule}: {_lark_string(spec['name'] + '()')}"]
        head = f"{rule}: {_lark_string(spec['name'] + '(')} "
        return [head + _keyword_arguments(items) + ' ")"', *rules]

    def _text_terminal(self) -> str:
        return r"/\s*([^\s\[](?s:.*))?/"


def _keyword_arguments(items: list[tuple[str, bool]]) -> str:
    """Lark for keyword arguments in the given order, optional ones omissible, comma-separated."""

    def rest(k: int) -> str:
        return " ".join(
            f'", " {item}' if required else f'(", " {item})?' for item, required in items[k:]
        )

    alternatives = []
    for k, (item, required) in enumerate(items):
        alternatives.append(f"{item} {rest(k + 1)}".strip())
        if required:  # the first required argument is always written first or after optional ones
            return "(" + " | ".join(alternatives) + ")"
    return "(" + " | ".join(alternatives) + ")?"


# -- registry -----------------------------------------------------------------------------

TOOL_PARSERS: dict[str, type[ToolParser]] = {
    cls.name: cls
    for cls in (HermesToolParser, Llama3JsonToolParser, MistralToolParser, PythonicToolParser)
}

# The pythonic format as Llama 3.2/4 pythonic templates describe it to the model.
_PYTHONIC_TEMPLATE_RE = re.compile(r"\[\s*func_name\d*\s*\(")


def get_tool_parser(name: str) -> ToolParser:
    """A parser by name ("llama3-json" and other spellings with dashes/case accepted)."""
    key = str(name).strip().lower().replace("-", "_")
    if key not in TOOL_PARSERS:
        known = ", ".join(sorted(TOOL_PARSERS))
        raise ConfigError(
            f"unknown tool parser {name!r}; known tool parsers: {known}", field="tool_parser"
        )
    return TOOL_PARSERS[key]()


def detect_tool_parser(chat_template: str | None) -> str:
    """The parser a chat template's tool convention calls for; "hermes" when it shows none."""
    template = chat_template or ""
    if _MISTRAL_OPEN in template:
        return "mistral"
    if _PYTHONIC_TEMPLATE_RE.search(template):
        return "pythonic"
    if _LLAMA_TAG in template or ("ipython" in template and "parameters" in template):
        return "llama3_json"
    # Hermes is the ChatML convention and the default: SmolLM2's template has no tool support.
    return "hermes"
