"""Tools and tool results as the model sees them, built from MCP wire dicts.

Everything here works on the JSON form of MCP messages, so it needs no SDK.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

# OpenAI-style function names; the strictest rule among the APIs tools are given to.
_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_INVALID_CHARS = re.compile(r"[^a-zA-Z0-9_-]")
_MAX_NAME = 64


@dataclass(frozen=True)
class McpTool:
    """One tool of one MCP server, under the name the model sees.

    ``exposed_name`` equals ``name`` unless the name collides across servers (then
    ``f"{server}__{name}"``) or is not a valid function name (then sanitized); it
    always matches ``^[a-zA-Z0-9_-]{1,64}$``.
    """

    server: str
    name: str
    exposed_name: str
    description: str
    input_schema: dict = field(hash=False)
    annotations: dict | None = field(default=None, hash=False)

    def to_openai_tool(self) -> dict:
        """The tool as an OpenAI chat ``tools`` entry."""
        return {
            "type": "function",
            "function": {
                "name": self.exposed_name,
                "description": self.description,
                "parameters": copy.deepcopy(self.input_schema),
            },
        }


@dataclass
class McpToolResult:
    """The outcome of a tool call; ``text`` is what the model is given."""

    text: str
    is_error: bool = False
    structured: Any | None = None
    content: list[dict] = field(default_factory=list)


def error_result(text: str) -> McpToolResult:
    """A failed call, as the model should read it."""
    return McpToolResult(text=text, is_error=True, content=[{"type": "text", "text": text}])


def tool_from_wire(server: str, data: Mapping[str, Any]) -> McpTool:
    """An McpTool from one ``tools/list`` entry (its JSON form)."""
    schema = data.get("inputSchema")
    if not isinstance(schema, dict) or not schema:
        schema = {"type": "object", "properties": {}}
    annotations = data.get("annotations")
    name = data["name"]
    return McpTool(
        server=server,
        name=name,
        exposed_name=sanitize_name(name),
        description=data.get("description") or data.get("title") or "",
        input_schema=schema,
        annotations=dict(annotations) if isinstance(annotations, Mapping) else None,
    )


def result_from_wire(data: Mapping[str, Any]) -> McpToolResult:
    """An McpToolResult from a ``tools/call`` result (its JSON form).

    Text blocks are joined with newlines; other blocks become short placeholders
    (the model cannot use base64 bytes); with no blocks, structured content is
    given as compact JSON.
    """
    content = [dict(block) for block in data.get("content") or []]
    structured = data.get("structuredContent")
    parts = [_block_text(block) for block in content]
    if parts:
        text = "\n".join(parts)
    elif structured is not None:
        text = json.dumps(structured, ensure_ascii=False, separators=(",", ":"))
    else:
        text = ""
    return McpToolResult(
        text=text, is_error=bool(data.get("isError")), structured=structured, content=content
    )


def _block_text(block: Mapping[str, Any]) -> str:
    kind = block.get("type")
    if kind == "text":
        return str(block.get("text", ""))
    if kind in ("image", "audio"):
        mime = block.get("mimeType") or kind
        return f"[{mime} {kind}, {_base64_size(block.get('data'))} bytes]"
    if kind == "resource":
        resource = block.get("resource") or {}
        if "text" in resource:
            return str(resource["text"])
        mime = resource.get("mimeType") or "unknown type"
        size = _base64_size(resource.get("blob"))
        return f"[resource {resource.get('uri', '?')} ({mime}), {size} bytes]"
    if kind == "resource_link":
        return f"[resource link: {block.get('uri', '?')}]"
    return f"[{kind} content]"


def _base64_size(data: Any) -> int:
    """Decoded size of base64 text, without decoding it."""
    if not isinstance(data, str):
        return 0
    data = data.strip()
    padding = len(data) - len(data.rstrip("="))
    return len(data) * 3 // 4 - padding


def sanitize_name(name: str) -> str:
    """``name`` made a valid function name: invalid characters become ``_``, long ones are cut."""
    if _NAME_RE.match(name):
        return name
    clean = _INVALID_CHARS.sub("_", name) or "tool"
    if len(clean) > _MAX_NAME:
        clean = _with_digest(clean, name)
    return clean


def assign_exposed_names(tools: Iterable[McpTool]) -> list[McpTool]:
    """Give each tool its toolset-wide name.

    A name offered by several servers becomes ``f"{server}__{name}"`` on each of
    them; names still equal after sanitizing get a short digest, so every
    exposed name is unique and stable for the same set of tools.
    """
    tools = list(tools)
    servers_per_name = Counter(name for _, name in {(t.server, t.name) for t in tools})
    named = []
    for tool in tools:
        base = tool.name if servers_per_name[tool.name] == 1 else f"{tool.server}__{tool.name}"
        named.append((tool, sanitize_name(base)))
    counts = Counter(exposed for _, exposed in named)
    result = []
    for tool, exposed in named:
        if counts[exposed] > 1:
            exposed = _with_digest(exposed, f"{tool.server}\0{tool.name}")
        result.append(tool if tool.exposed_name == exposed else replace(tool, exposed_name=exposed))
    return result


def _with_digest(clean: str, original: str) -> str:
    digest = hashlib.sha1(original.encode()).hexdigest()[:8]
    return f"{clean[: _MAX_NAME - len(digest) - 1]}_{digest}"
