"""The reasoning-parser interface: where a model's reasoning ends and its answer begins.

A parser knows its block's markers and splits a choice's text into reasoning
and content, whole (``split``) or as it streams (``stream``): a marker split
across deltas is held back, never shown as content. It also says how a chat
template switches thinking on or off, and what text the engine writes to open
or close a block itself (for a grammar, or when the thinking budget runs out).

Whitespace around the reasoning and before the answer is trimmed, as the
templates that render earlier turns' reasoning trim it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass
class ReasoningStep:
    """What a piece of output adds to a choice's reasoning and to its content."""

    reasoning: str = ""
    content: str = ""


class ReasoningParser:
    """One reasoning convention: a block from ``start`` to ``end`` before the answer.

    ``content_start``, when set, is markup between the block and the answer that is
    not part of either (gpt-oss writes the final channel's header there).
    """

    name: ClassVar[str]
    start: ClassVar[str]
    end: ClassVar[str]
    content_start: ClassVar[str] = ""
    # True when the markers are special tokens the detokenizer must keep.
    needs_special_tokens: ClassVar[bool] = False

    @classmethod
    def matches_template(cls, chat_template: str) -> bool:
        """Whether a chat template shows this convention."""
        return False

    def template_kwargs(self, enabled: bool | None, effort: str | None) -> dict[str, Any]:
        """Chat-template variables that switch thinking on or off (None: the template's way)."""
        return {}

    @property
    def open_text(self) -> str:
        """What the engine writes to open a block the prompt left to the model."""
        return self.start + "\n"

    @property
    def close_text(self) -> str:
        """What the engine writes to end a block whose budget ran out."""
        return "\n" + self.end + "\n\n" + self.content_start

    def opens_in_prompt(self, prompt: str) -> bool:
        """Whether the rendered prompt ends inside an open block (the model starts reasoning)."""
        return prompt.rfind(self.start) > prompt.rfind(self.end)

    def off_suffix(self, prompt: str) -> str:
        """Text to append to a rendered prompt so that the model answers without reasoning."""
        if self.opens_in_prompt(prompt):
            return "\n" + self.end + "\n\n" + self.content_start
        if prompt.rstrip().endswith(self.end):
            return ""  # the template wrote an empty block itself
        return self.start + "\n\n" + self.end + "\n\n" + self.content_start

    def split(self, text: str, open_at_start: bool) -> ReasoningStep:
        """A whole choice's reasoning and content."""
        reasoning, content = _settled(self, text, open_at_start, final=True)
        return ReasoningStep(reasoning, content)

    def stream(self, open_at_start: bool) -> ReasoningStream:
        return ReasoningStream(self, open_at_start)


class ReasoningStream:
    """Splits one choice's streamed text: ``feed`` each delta, then ``finish``."""

    def __init__(self, parser: ReasoningParser, open_at_start: bool) -> None:
        self._parser = parser
        self._open = open_at_start
        self._text = ""
        self._reasoning = 0  # characters of settled reasoning already returned
        self._content = 0

    def feed(self, text: str) -> ReasoningStep:
        self._text += text
        return self._step(final=False)

    def finish(self) -> ReasoningStep:
        """Whatever was held back for a possible marker, now that the text is complete."""
        return self._step(final=True)

    def _step(self, final: bool) -> ReasoningStep:
        reasoning, content = _settled(self._parser, self._text, self._open, final)
        step = ReasoningStep(reasoning[self._reasoning :], content[self._content :])
        self._reasoning, self._content = len(reasoning), len(content)
        return step


def _settled(
    parser: ReasoningParser, text: str, open_at_start: bool, final: bool
) -> tuple[str, str]:
    """The reasoning and content ``text`` settles so far (everything, when ``final``).

    Each only grows as text is appended: a possible marker prefix and trailing
    whitespace stay out until what follows decides them.
    """
    start = 0
    if not open_at_start:
        head = text.lstrip()
        if not head.startswith(parser.start):
            if not final and parser.start.startswith(head):
                return "", ""  # might still open a block
            return "", _answer(parser, text, final, after_block=False)
        start = len(text) - len(head) + len(parser.start)
    end = text.find(parser.end, start)
    if end < 0:
        reasoning = text[start:].lstrip()
        if not final:
            held = _marker_prefix(reasoning, parser.end)
            reasoning = reasoning[: len(reasoning) - held].rstrip()
        return reasoning.rstrip() if final else reasoning, ""
    reasoning = text[start:end].strip()
    return reasoning, _answer(parser, text[end + len(parser.end) :], final, after_block=True)


def _answer(parser: ReasoningParser, rest: str, final: bool, after_block: bool) -> str:
    """The content in ``rest``: the text after a block, or the whole text without one."""
    header = parser.content_start
    if not header:
        return rest.lstrip() if after_block else rest
    head = rest.lstrip()
    if head.startswith(header):
        return head[len(header) :].lstrip()
    if not final and header.startswith(head):
        return ""  # the header may still be coming
    if after_block:
        # Between a block and the answer's header there is only channel markup.
        at = rest.find(header)
        if at >= 0:
            return rest[at + len(header) :].lstrip()
        if not final:
            return ""
    return rest.lstrip() if after_block else rest


def _marker_prefix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that begins ``marker``."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0
