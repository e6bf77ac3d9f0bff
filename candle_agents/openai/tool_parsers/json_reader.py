"""Incremental JSON: a character-by-character reader for argument values and call objects.

``_Json`` checks a JSON value character by character and rewrites it as
``json.dumps(value, ensure_ascii=False)`` would, so hermes and mistral arguments stream as the
model writes them and still come out normalised (same text whichever way they were read).
``_CallReader`` builds on it to read a whole ``{"name": ..., "arguments": {...}}`` call object;
``_Call`` is what a stream knows (and has sent) of one call.
"""

from __future__ import annotations

import json
import math
import re

_WS = " \t\n\r"

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
