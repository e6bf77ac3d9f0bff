"""What a tool-call parser produces: calls, parsed messages and streamed deltas.

These are the public results every format shares; ``merge_steps`` turns a stream's steps back
into the message ``ToolParser.parse()`` returns.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Iterable
from dataclasses import dataclass, field

_ID_ALPHABET = string.ascii_letters + string.digits


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
