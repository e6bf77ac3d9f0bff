"""examples/ai_gateway: run the gateway on loopback and use it with the official openai client."""

from __future__ import annotations

import httpx
import openai
import pytest

from candle_agents import Engine

KEYS = {
    "sk-alice": {"name": "alice", "models": ["fast", "precise"], "requests_per_minute": 30},
    "sk-bob": {"name": "bob", "models": ["fast"], "requests_per_minute": 2},
    "sk-carol": {"name": "carol", "models": ["fast"], "requests_per_minute": 30},
}
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def gateway(load_example):
    return load_example("ai_gateway")


@pytest.fixture(scope="module")
def engine():
    with Engine.from_pretrained(kv_cache_memory=64 * 2**20, max_model_len=1024) as eng:
        yield eng


@pytest.fixture(scope="module")
def url(gateway, engine, serve):
    # The real aliases, with smaller caps so that the test generates few tokens.
    aliases = {
        "fast": gateway.Alias(max_tokens=4),
        "precise": gateway.Alias(max_tokens=8, temperature=0.0),
    }
    with serve(gateway.create_app(engine, keys=KEYS, aliases=aliases)) as base:
        yield base


def client(url: str, key: str) -> openai.OpenAI:
    # max_retries=0: the client would otherwise retry 429s and hide them.
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


@pytest.fixture(autouse=True)
def all_blocks_freed(engine):
    yield
    assert engine.wait_idle(10), "requests are still running after the test"
    assert engine.num_free_blocks == engine.num_blocks


def test_models_lists_the_aliases_a_key_may_use(url):
    assert [m.id for m in client(url, "sk-alice").models.list()] == ["fast", "precise"]
    assert [m.id for m in client(url, "sk-bob").models.list()] == ["fast"]


def test_precise_alias_forces_greedy_decoding_streamed_or_not(url):
    alice = client(url, "sk-alice")
    # The client asks for a hot temperature and many tokens; "precise" gives temperature 0
    # and at most 8 tokens, so a streamed answer equals the non-streamed one token for token.
    kw = dict(model="precise", messages=QUESTION, temperature=1.5, max_tokens=500)
    whole = alice.chat.completions.create(**kw)
    assert whole.model == "precise"
    assert "Paris" in whole.choices[0].message.content
    assert 0 < whole.usage.completion_tokens <= 8

    chunks = list(alice.chat.completions.create(**kw, stream=True))
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) > 1, "the answer came in one piece, not streamed"
    assert "".join(texts) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    # The gateway always asks the engine for usage, but passes it on only when asked.
    assert all(c.usage is None for c in chunks)


def test_fast_alias_caps_max_tokens(url):
    reply = client(url, "sk-alice").chat.completions.create(
        model="fast", messages=QUESTION, max_tokens=100, extra_body={"ignore_eos": True}
    )
    assert reply.usage.completion_tokens == 4
    assert reply.choices[0].finish_reason == "length"


def test_errors_are_openai_shaped(url):
    with pytest.raises(openai.AuthenticationError) as err:
        client(url, "sk-wrong").chat.completions.create(model="fast", messages=QUESTION)
    assert err.value.status_code == 401
    assert err.value.code == "invalid_api_key"

    bob = client(url, "sk-bob")
    with pytest.raises(openai.PermissionDeniedError) as err:
        bob.chat.completions.create(model="precise", messages=QUESTION)
    assert err.value.status_code == 403
    assert err.value.param == "model"

    with pytest.raises(openai.NotFoundError) as err:
        bob.chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert err.value.code == "model_not_found"

    with pytest.raises(openai.BadRequestError) as err:
        bob.chat.completions.create(model="fast", messages=[])
    assert err.value.param == "messages"


def test_rate_limit_per_key(url):
    bob = client(url, "sk-bob")  # 2 requests a minute; refused ones above do not count
    for _ in range(2):
        bob.chat.completions.create(model="fast", messages=QUESTION, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as err:
        bob.chat.completions.create(model="fast", messages=QUESTION, max_tokens=1)
    assert err.value.status_code == 429
    assert err.value.code == "rate_limit_exceeded"
    # Other keys are not affected.
    client(url, "sk-alice").chat.completions.create(model="fast", messages=QUESTION, max_tokens=1)


def test_usage_is_accounted_per_key(url):
    carol = client(url, "sk-carol")
    whole = carol.chat.completions.create(model="fast", messages=QUESTION)
    stream = carol.chat.completions.create(
        model="fast", messages=QUESTION, stream=True, stream_options={"include_usage": True}
    )
    streamed = [c for c in stream if c.usage is not None]
    assert len(streamed) == 1

    usage = httpx.get(f"{url}/usage", headers={"Authorization": "Bearer sk-carol"}).json()
    assert usage["client"] == "carol"
    assert usage["requests"] == 2
    assert usage["prompt_tokens"] == whole.usage.prompt_tokens + streamed[0].usage.prompt_tokens
    assert usage["completion_tokens"] == (
        whole.usage.completion_tokens + streamed[0].usage.completion_tokens
    )
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    # The counters are per key: without a valid key there is nothing to see.
    assert httpx.get(f"{url}/usage").status_code == 401
