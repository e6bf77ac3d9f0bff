"""The engine follows a reasoning block: it counts its tokens, closes it when the budget
runs out, and starts a request's grammar only after it (default model, greedy)."""

from __future__ import annotations

import json

import pytest

from candle_agents import ConfigError, Engine, GenerationParams, Grammar
from candle_agents.engine.params import ReasoningControl
from tests.support.checks import assert_all_blocks_free

CLOSE = "\n</think>\n\n"


@pytest.fixture(scope="module")
def engine():
    eng = Engine.from_pretrained(kv_cache_memory=32 * 2**20)
    yield eng
    eng.shutdown()


def ids(engine: Engine, text: str) -> tuple[int, ...]:
    return tuple(engine.tokenize(text, add_special_tokens=False))


def prompt(engine: Engine, question: str, opened: bool) -> list[int]:
    text = engine.apply_chat_template([{"role": "user", "content": question}])
    return ids(engine, text + ("<think>\n" if opened else ""))


def control(engine: Engine, **kw) -> ReasoningControl:
    return ReasoningControl(start="<think>", end="</think>", close_ids=ids(engine, CLOSE), **kw)


def test_the_budget_closes_the_block_with_the_engines_own_tokens(engine):
    close = ids(engine, CLOSE)
    params = GenerationParams(
        max_tokens=24,
        temperature=0.0,
        reasoning=control(engine, open_at_start=True, budget=5),
    )
    result = engine.generate(prompt(engine, "Why is the sky blue?", opened=True), params)
    assert tuple(result.token_ids[5 : 5 + len(close)]) == close  # right after 5 of its own
    assert "</think>" in result.text
    # the reasoning ends with the token that completes the end marker
    assert 5 < result.usage.reasoning_tokens <= 5 + len(close)
    plain = engine.generate(
        prompt(engine, "Why is the sky blue?", opened=True),
        GenerationParams(max_tokens=24, temperature=0.0),
    )
    assert plain.token_ids[:5] == result.token_ids[:5]  # the same model up to the budget
    assert plain.usage.reasoning_tokens == 0
    assert_all_blocks_free(engine)


def test_a_grammar_starts_after_the_block(engine):
    params = GenerationParams(
        max_tokens=64,
        temperature=0.0,
        grammar=Grammar.json_object(),
        reasoning=control(engine, budget=6, open_ids=ids(engine, "<think>\n")),
    )
    result = engine.generate(prompt(engine, "Describe a cat as JSON.", opened=False), params)
    assert result.text.startswith("<think>\n")  # opened by the engine, not the grammar
    reasoning, _, answer = result.text.partition("</think>")
    assert reasoning and result.finish_reason == "stop"
    assert isinstance(json.loads(answer), dict)  # the grammar held from the block's end
    assert result.usage.reasoning_tokens > 6
    assert_all_blocks_free(engine)


def test_without_a_block_nothing_is_counted(engine):
    params = GenerationParams(max_tokens=12, temperature=0.0, reasoning=control(engine, budget=3))
    result = engine.generate(prompt(engine, "Say hello.", opened=False), params)
    assert "</think>" not in result.text  # the model answered: no block, no budget
    assert result.usage.reasoning_tokens == 0


def test_bad_reasoning_settings_are_refused(engine):
    question = prompt(engine, "hi", opened=False)
    with pytest.raises(ConfigError, match="budget needs close_ids"):
        GenerationParams(reasoning=ReasoningControl(start="<think>", end="</think>", budget=3))
    with pytest.raises(ConfigError, match="needs open_ids"):
        engine.generate(
            question, GenerationParams(grammar=Grammar.json_object(), reasoning=control(engine))
        )
    bad = ReasoningControl(start="<think>", end="</think>", close_ids=(10**7,), budget=2)
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        engine.generate(question, GenerationParams(reasoning=bad))
    assert_all_blocks_free(engine)
