"""Helpers shared by the tool-call tests: format names, markers, sample tools and stream drivers."""

from __future__ import annotations

import json
import random

from candle_agents.openai.tool_parsers import (
    ParsedMessage,
    StreamStep,
    ToolParser,
    make_call_id,
)

# The original formats (test_tool_parsers.py, test_tool_grammars.py) and the newer ones
# (test_tool_formats.py, test_tool_format_grammars.py).
PARSER_NAMES = ["hermes", "llama3_json", "mistral", "pythonic"]
FORMATS = ["deepseek_v3", "gemma", "granite", "phi4_mini", "qwen3_coder"]

# deepseek_v3 (fullwidth bars, "▁" for spaces)
DS_OPEN, DS_CLOSE = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
DS_CALL, DS_END, DS_SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
# phi4_mini, granite, gemma
PHI_OPEN, PHI_CLOSE = "<|tool_call|>", "<|/tool_call|>"
GRANITE = "<|tool_call|>"
FENCE = "```tool_code"


def calls_of(message: ParsedMessage) -> list[tuple[str, dict]]:
    return [(call.name, json.loads(call.arguments)) for call in message.tool_calls]


def summary(message: ParsedMessage) -> tuple[str | None, list[tuple[str, str]]]:
    return message.content, [(call.name, call.arguments) for call in message.tool_calls]


def chunks_of(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def random_chunks(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 8))))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


def run_stream(parser: ToolParser, pieces: list[str], incremental: bool = True) -> list[StreamStep]:
    stream = parser.stream(None, incremental=incremental)
    return [stream.feed(piece) for piece in pieces] + [stream.finish()]


def openai_call(name: str, arguments: dict) -> dict:
    return {
        "id": make_call_id(),
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


def splittings(text: str) -> list[list[str]]:
    rng = random.Random(text)
    out = [chunks_of(text, size) for size in range(1, 8)]
    if len(text) > 1:
        out += [random_chunks(text, rng) for _ in range(12)]
    return out


FUZZ_ROUNDS = 300
NOISE = '{}[]()":,;= \n<>/\\aé🎉0'


def mutate(text: str, rng: random.Random) -> str:
    """A few random edits: what a small model gets wrong."""
    chars = list(text)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(chars) + 1)
        action = rng.choice(["insert", "delete", "replace", "cut"])
        if action == "cut":
            return "".join(chars[:at])
        if action == "insert" or at == len(chars):
            chars.insert(at, rng.choice(NOISE))
        elif action == "delete":
            del chars[at]
        else:
            chars[at] = rng.choice(NOISE)
    return "".join(chars)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name"},
                    "days": {"type": "integer"},
                },
                "required": ["city"],
            },
        },
    },
    {"type": "function", "function": {"name": "get_time", "description": "The time now."}},
]


def weather(city="Paris", **more) -> dict:
    return openai_call("get_weather", {"city": city, **more})
