"""Chat requests to prompts: messages rendered through the model's own chat template.

Templates that know about tools get the tools and the structured tool calls
and results, as transformers would pass them. Templates that don't (the
default SmolLM2 template, plain ChatML) get the tools described in the system
prompt in the format the tool parser reads, earlier calls written out in that
format, and tool results as ``<tool_response>`` blocks in a user turn.
"""

from __future__ import annotations

import json
from typing import Any

from candle_agents.errors import TokenizationError
from candle_agents.openai.errors import OpenAIError
from candle_agents.openai.protocol import (
    AssistantMessage,
    ChatCompletionRequest,
    Content,
    SystemMessage,
    TextPart,
    ToolMessage,
    UserMessage,
)
from candle_agents.openai.tool_parsers import ToolParser


def template_supports_tools(chat_template: str | None) -> bool:
    """Whether the template reads a ``tools`` variable (Qwen, Llama 3.1+, Mistral, Hermes)."""
    return bool(chat_template) and "tools" in chat_template


def offered_tools(request: ChatCompletionRequest) -> list[dict[str, Any]] | None:
    """The request's tools, shown to the model even with tool_choice "none".

    As vLLM does by default: the prompt stays the same whatever the choice, so
    an agent's turns keep sharing their prefix in the cache; "none" is enforced
    in decoding instead (the reply cannot be call markup).
    """
    if not request.tools:
        return None
    return [t.model_dump(exclude_none=True) for t in request.tools]


def content_text(content: Content | None, where: str) -> str:
    """A message's text; the models served here read text only, so other parts are an error."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, TextPart):
            raise OpenAIError(
                f"{where}.content[{j}] is of type {part.type!r}; this server's models read "
                "text only: send text parts",
                param=f"{where}.content[{j}].type",
            )
        texts.append(part.text)
    return "\n".join(texts)


def build_messages(
    request: ChatCompletionRequest,
    parser: ToolParser,
    native_tools: bool,
    tools: list[dict[str, Any]] | None,
) -> list[dict[str, Any]]:
    """The request's messages as the dicts a chat template reads."""
    out: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}  # tool_call_id -> function name, for tool messages
    results_turn: dict[str, Any] | None = None  # the user turn carrying tool results
    for i, msg in enumerate(request.messages):
        where = f"messages[{i}]"
        if isinstance(msg, SystemMessage):
            out.append({"role": "system", "content": content_text(msg.content, where)})
        elif isinstance(msg, UserMessage):
            out.append(_named({"role": "user", "content": content_text(msg.content, where)}, msg))
        elif isinstance(msg, AssistantMessage):
            out.append(_assistant(msg, where, parser, native_tools, call_names))
        elif isinstance(msg, ToolMessage):
            text = content_text(msg.content, where)
            name = msg.name or call_names.get(msg.tool_call_id, "")
            if native_tools:
                out.append(
                    {
                        "role": "tool",
                        "content": text,
                        "tool_call_id": msg.tool_call_id,
                        "name": name,
                    }
                )
            else:
                block = f"<tool_response>\n{text}\n</tool_response>"
                if results_turn is not None and out and out[-1] is results_turn:
                    results_turn["content"] += "\n" + block  # one turn's results together
                else:
                    results_turn = {"role": "user", "content": block}
                    out.append(results_turn)
    if tools and not native_tools:
        _describe_tools(out, parser.render_tools_prompt(tools))
    return out


def _named(entry: dict[str, Any], msg: UserMessage | AssistantMessage) -> dict[str, Any]:
    if msg.name:
        entry["name"] = msg.name
    return entry


def _assistant(
    msg: AssistantMessage,
    where: str,
    parser: ToolParser,
    native_tools: bool,
    call_names: dict[str, str],
) -> dict[str, Any]:
    text = msg.refusal if msg.content is None and msg.refusal else content_text(msg.content, where)
    entry: dict[str, Any] = {"role": "assistant", "content": text}
    reasoning = msg.reasoning_content or msg.reasoning
    if reasoning:
        # Templates that keep earlier reasoning (Qwen3 within a tool-calling turn) read
        # this field; rendering the reasoning the model wrote keeps the prefix cached.
        entry["reasoning_content"] = reasoning
    if not msg.tool_calls:
        return _named(entry, msg)
    calls = [c.model_dump() for c in msg.tool_calls]
    for c in msg.tool_calls:
        call_names[c.id] = c.function.name
    if native_tools:
        # Templates index into the arguments (Qwen: `tool_call.arguments | tojson`),
        # so they get the decoded object, as transformers passes it.
        entry["tool_calls"] = [
            {
                "id": c["id"],
                "type": "function",
                "function": {
                    "name": c["function"]["name"],
                    "arguments": _decode_arguments(c["function"]["arguments"]),
                },
            }
            for c in calls
        ]
    else:
        written = parser.render_calls(calls)
        entry["content"] = f"{text}\n{written}" if text else written
    return _named(entry, msg)


def _decode_arguments(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except (TypeError, ValueError):
        return arguments


def _describe_tools(messages: list[dict[str, Any]], description: str) -> None:
    if messages and messages[0]["role"] == "system":
        messages[0]["content"] = f"{messages[0]['content']}\n\n{description}".lstrip()
    else:
        messages.insert(0, {"role": "system", "content": description})


def merge_same_roles(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Join consecutive user or system turns, for templates that insist roles alternate."""
    merged: list[dict[str, Any]] = []
    for m in messages:
        prev = merged[-1] if merged else None
        if (
            prev is not None
            and m["role"] == prev["role"]
            and m["role"] in ("user", "system")
            and set(m) <= {"role", "content"}
            and set(prev) <= {"role", "content"}
        ):
            prev["content"] = f"{prev['content']}\n\n{m['content']}"
        else:
            merged.append(dict(m))
    return merged


def render_prompt(
    engine: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    template_kwargs: dict[str, Any] | None,
) -> list[int]:
    """Token ids of the rendered conversation, ready for generation."""
    text = render_text(engine, messages, tools, template_kwargs)
    # The template writes BOS itself where the model wants one.
    return engine.tokenize(text, add_special_tokens=False)


def render_text(
    engine: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    template_kwargs: dict[str, Any] | None,
) -> str:
    """The conversation rendered by the chat template (tokenize it without special tokens)."""
    kwargs = dict(template_kwargs or {})
    try:
        return engine.apply_chat_template(messages, tools=tools, **kwargs)
    except TokenizationError as first:
        merged = merge_same_roles(messages)
        if merged == messages:
            raise OpenAIError(str(first), param="messages") from first
        try:
            return engine.apply_chat_template(merged, tools=tools, **kwargs)
        except TokenizationError as exc:
            raise OpenAIError(str(exc), param="messages") from exc
