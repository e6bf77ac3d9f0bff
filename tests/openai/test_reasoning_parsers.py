"""Reasoning parsers: whole and streamed splits agree, at every split point, and no
marker leaks into content."""

from __future__ import annotations

import pytest

from candle_agents.errors import ConfigError
from candle_agents.openai.reasoning import (
    HarmonyReasoningParser,
    ThinkReasoningParser,
    detect_reasoning_parser,
    get_reasoning_parser,
)

THINK = ThinkReasoningParser()
HARMONY = HarmonyReasoningParser()

# (parser, output text, open_at_start, reasoning, content)
CASES = [
    (
        THINK,
        "<think>\nLet me add 2 and 2.\n</think>\n\nIt is 4.",
        False,
        "Let me add 2 and 2.",
        "It is 4.",
    ),
    (THINK, "Let me see.\n</think>\n\n4", True, "Let me see.", "4"),  # R1: the prompt opened it
    (THINK, "Just the answer.", False, "", "Just the answer."),
    (THINK, "  <think>a < b </thin but </think>x", False, "a < b </thin but", "x"),
    (
        THINK,
        "<think>\nstill thinking when the tokens ran out",
        False,
        "still thinking when the tokens ran out",
        "",
    ),
    (THINK, "<thinking is not a block", False, "", "<thinking is not a block"),
    (THINK, "", False, "", ""),
    (
        HARMONY,
        "<|channel|>analysis<|message|>User asks 2+2.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>4",
        False,
        "User asks 2+2.",
        "4",
    ),
    (HARMONY, "<|channel|>final<|message|>Straight to it.", False, "", "Straight to it."),
]


def streamed(parser, text, open_at_start, cuts):
    stream = parser.stream(open_at_start)
    reasoning, content = "", ""
    pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]
    for piece in pieces:
        step = stream.feed(piece)
        reasoning += step.reasoning
        content += step.content
        for marker in (parser.start, parser.end, parser.content_start):
            if marker:
                assert marker not in content
    tail = stream.finish()
    return reasoning + tail.reasoning, content + tail.content


@pytest.mark.parametrize("parser, text, open_at_start, reasoning, content", CASES)
def test_whole_split(parser, text, open_at_start, reasoning, content):
    step = parser.split(text, open_at_start)
    assert (step.reasoning, step.content) == (reasoning, content)


@pytest.mark.parametrize("parser, text, open_at_start, reasoning, content", CASES)
def test_streamed_split_at_every_offset(parser, text, open_at_start, reasoning, content):
    for cut in range(len(text) + 1):
        assert streamed(parser, text, open_at_start, [cut]) == (reasoning, content), cut
    # and one character at a time
    assert streamed(parser, text, open_at_start, list(range(1, len(text)))) == (reasoning, content)


def test_markers_are_held_back_until_decided():
    stream = THINK.stream(open_at_start=False)
    assert stream.feed("<thi").content == ""  # may open a block
    step = stream.feed("nk>x </th")
    assert step.reasoning == "x" and step.content == ""  # "</th" may close it
    step = stream.feed("ink>\n\nAnswer")
    assert step.reasoning == "" and step.content == "Answer"


def test_thinking_switches():
    assert THINK.template_kwargs(False, None) == {"enable_thinking": False}
    assert THINK.template_kwargs(None, None) == {}
    # a template that opened the block (DeepSeek-R1) is closed; one that wrote an empty
    # block (Qwen3 with enable_thinking off) is left alone; others get an empty block
    assert THINK.off_suffix("<|User|>hi<|Assistant|><think>\n") == "\n</think>\n\n"
    assert THINK.off_suffix("<|im_start|>assistant\n<think>\n\n</think>\n\n") == ""
    assert THINK.off_suffix("<|im_start|>assistant\n") == "<think>\n\n</think>\n\n"
    assert THINK.opens_in_prompt("<think>\n") and not THINK.opens_in_prompt("<think></think>")
    assert HARMONY.template_kwargs(True, "high") == {"reasoning_effort": "high"}
    assert HARMONY.needs_special_tokens and not THINK.needs_special_tokens


def test_registry_and_detection():
    assert (
        detect_reasoning_parser("{{ '<think>\\n' }}{{ content.split('</think>')[-1] }}") == "think"
    )
    assert detect_reasoning_parser("<|start|>assistant<|channel|>final<|message|>") == "gpt_oss"
    assert detect_reasoning_parser("{% for m in messages %}<|im_start|>{% endfor %}") == "none"
    assert detect_reasoning_parser(None) == "none"
    for name in ("qwen3", "deepseek_r1", "smollm3", "think", "Deepseek-R1"):
        assert isinstance(get_reasoning_parser(name), ThinkReasoningParser)
    assert isinstance(get_reasoning_parser("gpt_oss"), HarmonyReasoningParser)
    assert get_reasoning_parser("none") is None
    with pytest.raises(
        ConfigError, match=r"unknown reasoning parser 'o1'.*known reasoning parsers"
    ):
        get_reasoning_parser("o1")
