"""Fixtures for the tool-call tests: ``guidance``, llguidance on the default tokenizer."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def guidance():
    llg = pytest.importorskip("llguidance")
    from candle_agents.engine.loader import open_checkpoint
    from candle_agents.errors import ModelLoadError

    try:
        tokenizer = open_checkpoint(None).tokenizer
    except ModelLoadError as exc:
        pytest.skip(f"default model not installed: {exc}")
    ll_tokenizer = llg.LLTokenizer(tokenizer.to_str(), eos_token=2)

    def accepts(grammar: str, text: str) -> bool:
        matcher = llg.LLMatcher(ll_tokenizer, llg.LLMatcher.grammar_from_lark(grammar), log_level=0)
        assert not matcher.is_error(), matcher.get_error()
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        return bool(matcher.consume_tokens(ids)) and matcher.is_accepting()

    return accepts
