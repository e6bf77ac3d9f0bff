"""``ToolParser``: the interface every tool-call format implements.

A format subclass supplies ``stream()`` (its ``ToolCallStream``), ``render_calls()`` and the
pieces the shared prompt and grammar code asks for (``_instructions``, ``_calls_rule``,
``_call_rules``, ``_text_terminal``), and may claim chat templates with ``matches_template``.

Policies (the same for every format):

- Malformed markup (bad JSON, wrong structure, unclosed at the end) is content text, never an
  exception: ``parse()`` loses nothing the model wrote.
- Calls naming a function that is not in ``tools`` are still calls: the client decides what to
  do with them (``tools`` only matters for prompts and grammars).
- A stream cannot take back a call it has announced. With ``stream(incremental=True)`` (the
  default) a call of a markup format (hermes, mistral, qwen3_coder, deepseek_v3, phi4_mini)
  is announced once its name is known and its arguments have begun; if the model then breaks
  the markup, or generation stops inside the call (max_tokens), the call ends as sent (its
  arguments are then not valid JSON, as with OpenAI's own truncated calls) and the rest of
  that broken block is dropped rather than leaked as content, whereas ``parse()`` reports such
  a block as content. ``stream(incremental=False)`` sends each call whole once its markup is
  closed and matches ``parse()`` exactly on every input.
- ``parallel_tool_calls: false`` is the grammar's to enforce: ``call_grammar(parallel=False)``
  allows one call at most, in every mode; parsing reads whatever calls the text holds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from candle_agents.errors import ConfigError
from candle_agents.openai.tool_parsers.calls import ParsedMessage, merge_steps
from candle_agents.openai.tool_parsers.grammar import (
    _dumps,
    _functions,
    _parameters,
    _placeholder_arguments,
    _rule_names,
    _show_placeholders,
)
from candle_agents.openai.tool_parsers.streams import ToolCallStream


class ToolParser(ABC):
    """Reads (and writes, prompts for and constrains) one tool-call format."""

    name: ClassVar[str]
    # True when the markup is a special token the detokenizer must keep.
    needs_special_tokens: ClassVar[bool] = False

    @classmethod
    def matches_template(cls, chat_template: str) -> bool:
        """Whether a chat template shows this format's tool-call convention.

        ``detect_tool_parser`` asks each registered format in turn; the default never claims one.
        """
        return False

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
        """System-prompt text listing ``tools`` and the exact format to call them in.

        The example call names the first tool and shows its arguments as ``<name>``
        placeholders, for the model to fill from the request.
        """
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
            # Placeholders (<city>), not values: a small model copies example values.
            arguments, names = _placeholder_arguments(_parameters(specs[0]))
            example = {"name": specs[0]["name"], "arguments": _dumps(arguments)}
            call = self.render_calls([{"function": example}])
            lines.append("For example:\n" + _show_placeholders(call, names))
        lines.append(otherwise)
        return "\n".join(lines)

    def call_grammar(self, tools: list[dict], mode: str, parallel: bool = True) -> str:
        """A llguidance lark grammar constraining the model's output to calls of ``tools``.

        ``mode`` is "required" (one call, or one or more if ``parallel``), "auto" (plain text
        that cannot be taken for the call markup, or calls: again one unless ``parallel``),
        "none" (only such text) or a function name (exactly one call of it). Each call's
        arguments must match its tool's JSON schema.
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
