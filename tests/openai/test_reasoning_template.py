"""A reasoning model's own template (a tiny random Qwen3 with a Qwen3-style template):
the convention is detected from it, it switches thinking itself, and earlier turns'
reasoning is rendered where the template puts it."""

from __future__ import annotations

import json
import shutil

import pytest

from candle_agents import Engine
from candle_agents.openai import OpenAIAdapter
from candle_agents.openai.chat import build_messages, render_text
from candle_agents.openai.protocol import ChatCompletionRequest
from candle_agents.openai.reasoning import ThinkReasoningParser

# What Qwen3's template does with thinking, in a few lines: earlier reasoning rendered
# in a think block before the answer; enable_thinking=false writes an empty block.
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' and m.reasoning_content %}"
    "<think>\n{{ m.reasoning_content }}\n</think>\n\n{% endif %}"
    "{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
    "{% endif %}{% endif %}"
)


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("thinking") / "qwen3"
    shutil.copytree(tiny_model_dir("qwen3"), folder)
    (folder / "chat_template.jinja").write_text(TEMPLATE)
    eng = Engine.from_pretrained(str(folder), kv_cache_memory=4 * 2**20)
    yield eng
    eng.shutdown()


def test_the_convention_comes_from_the_template(engine):
    assert isinstance(OpenAIAdapter(engine).reasoning_parser, ThinkReasoningParser)
    assert OpenAIAdapter(engine, reasoning_parser="none").reasoning_parser is None


async def test_the_template_switches_thinking_off_itself(engine):
    adapter = OpenAIAdapter(engine)
    base = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
    off = adapter.plan_chat(ChatCompletionRequest(**base, reasoning_effort="none"))
    text = engine.detokenize(off.prompt_ids, skip_special_tokens=False)
    # the template wrote the empty block (enable_thinking=false); nothing was added to it
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert text.count("<think>") == 1
    assert all(p.reasoning is None for p in off.params)  # the engine follows no block
    on = adapter.plan_chat(ChatCompletionRequest(**base))
    assert on.params[0].reasoning is not None and not on.reasoning_open
    response = await adapter.chat_completion(
        {**base, "max_tokens": 48, "response_format": {"type": "json_object"}, "thinking_budget": 3}
    )
    message = response.choices[0].message
    assert message.reasoning_content and "</think>" not in (message.content or "")


def test_earlier_reasoning_is_rendered_by_the_template(engine):
    request = ChatCompletionRequest(
        messages=[
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4", "reasoning_content": "Two and two."},
            {"role": "user", "content": "And 3+3?"},
        ]
    )
    adapter = OpenAIAdapter(engine)
    messages = build_messages(request, adapter.tool_parser, adapter.native_tools, None)
    text = render_text(engine, messages, None, None)
    turn = "<|im_start|>assistant\n<think>\nTwo and two.\n</think>\n\n4<|im_end|>"
    assert turn in text
    # the answer the model wrote (block, then answer) is the prefix of the next prompt
    reply = json.dumps({"a": 1})
    first = render_text(engine, messages[:1], None, None)
    written = first + "<think>\nTwo and two.\n</think>\n\n" + reply
    again = [
        *messages[:1],
        {"role": "assistant", "content": reply, "reasoning_content": "Two and two."},
    ]
    assert render_text(engine, again, None, None).startswith(written)
