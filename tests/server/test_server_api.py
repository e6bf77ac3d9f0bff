"""Text completions, models, health, metrics, concurrency and disconnects."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

PROMPT = "The capital of France is"


def test_completion_string_and_token_ids(client, engine, idle):
    kw = dict(model=engine.model_name, max_tokens=8, temperature=0)
    r = client.completions.create(prompt=PROMPT, **kw)
    assert r.object == "text_completion"
    (choice,) = r.choices
    assert choice.text
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == len(engine.tokenize(PROMPT))
    by_ids = client.completions.create(prompt=engine.tokenize(PROMPT), **kw)
    assert by_ids.choices[0].text == choice.text


def test_completion_stream_and_echo(client, engine, idle):
    kw = dict(model=engine.model_name, prompt=PROMPT, max_tokens=8, temperature=0)
    whole = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(**kw, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    echoed = client.completions.create(**kw, echo=True).choices[0].text
    assert echoed == PROMPT + whole


def test_completion_list_of_prompts(client, engine, idle):
    r = client.completions.create(
        model=engine.model_name, prompt=[PROMPT, "One, two,"], max_tokens=4, temperature=0
    )
    assert sorted(c.index for c in r.choices) == [0, 1]


def test_models(client, http, engine):
    (card,) = client.models.list().data
    assert card.id == engine.model_name
    assert card.object == "model"
    r = http.get(f"/v1/models/{engine.model_name}")
    assert r.status_code == 200
    assert r.json()["max_model_len"] == engine.max_model_len


def test_health(http):
    r = http.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


def test_app_shuts_down_only_the_engine_it_loaded(engine, live_server):
    from candle_agents import CandleError, GenerationParams
    from candle_agents.server import create_app

    one_token = GenerationParams(max_tokens=1)
    given = live_server(create_app(engine))
    given.stop()
    assert engine.generate("hi", one_token).usage.completion_tokens == 1  # still serving

    app = create_app(kv_cache_memory=2**21, max_model_len=32)  # loads (and owns) its own
    owned = live_server(app)
    assert httpx.get(f"{owned.url}/health").json() == {"status": "ok"}
    owned.stop()  # the lifespan's end shuts the engine down
    with pytest.raises(CandleError):
        app.state.engine.generate("hi", one_token)
    # Served again, the app reports its engine gone.
    again = live_server(app)
    r = httpx.get(f"{again.url}/health")
    assert r.status_code == 503
    assert r.json()["status"] != "ok"
    r = httpx.post(f"{again.api_url}/completions", json={"prompt": "hi", "max_tokens": 1})
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "engine_stopped"


def _scrape(http) -> dict[tuple[str, tuple], float]:
    r = http.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def _get(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_with_requests(client, http, engine, idle):
    chat = {"endpoint": "/v1/chat/completions"}
    model = {"model": engine.model_name}
    before = _scrape(http)
    client.chat.completions.create(
        model=engine.model_name,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        extra_body={"ignore_eos": True},  # all 4 tokens, whatever the sampler draws
    )
    streamed = list(
        client.chat.completions.create(
            model=engine.model_name,
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=6,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
    )
    token_chunks = sum(bool(c.choices and c.choices[0].delta.content) for c in streamed)
    http.post("/v1/chat/completions", json={"messages": []})  # a 400
    after = _scrape(http)

    def moved(name: str, **labels) -> float:
        return _get(after, name, **labels) - _get(before, name, **labels)

    assert moved("candle_http_requests_total", status="200", **chat) == 2
    assert moved("candle_http_requests_total", status="400", **chat) == 1
    assert moved("candle_e2e_request_latency_seconds_count", **chat) == 3
    assert moved("candle_time_to_first_token_seconds_count", **chat) == 1  # the stream
    assert moved("candle_inter_token_latency_seconds_count", **chat) == token_chunks - 1
    assert token_chunks > 1
    assert moved("candle_generation_tokens_total", **model) >= 4 + 6
    assert moved("candle_prompt_tokens_total", **model) > 0
    assert moved("candle_requests_finished_total", **model) == 2
    for gauge in ("candle_requests_running", "candle_requests_waiting"):
        assert (gauge, tuple(model.items())) in after
    assert 0.0 <= _get(after, "candle_kv_cache_usage_ratio", **model) <= 1.0
    assert _get(after, "candle_kv_cache_blocks", **model) == engine.num_blocks
    rate = _get(after, "candle_prefix_cache_hit_rate", **model)
    stats = engine.stats
    assert rate == pytest.approx(stats.cached_tokens / stats.prompt_tokens)
    assert rate > 0  # the same system prompt keeps coming back


async def test_sixteen_concurrent_clients(server, engine, idle):
    client = server.async_client()
    questions = [f"Name a fruit that starts with the letter {c}." for c in "ABCDEFGHIJKLMNOP"]
    results = await asyncio.gather(
        *(
            client.chat.completions.create(
                model=engine.model_name,
                messages=[{"role": "user", "content": q}],
                max_tokens=8,
                temperature=0,
            )
            for q in questions
        )
    )
    assert len({r.id for r in results}) == 16
    assert all(r.choices[0].message.content for r in results)
    await client.close()


async def test_disconnected_stream_is_aborted(server, engine, idle):
    """A client gone mid-stream frees its KV blocks at once, while the others finish."""
    long = {
        "messages": [{"role": "user", "content": "Count to one thousand."}],
        "max_tokens": 1000,  # minutes of work if it were not aborted
        "ignore_eos": True,
        "stream": True,
    }
    client = server.async_client()

    async def short() -> str:
        r = await client.chat.completions.create(
            model=engine.model_name,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=6,
        )
        return r.choices[0].message.content

    async def leave_early() -> int:
        async with (
            httpx.AsyncClient(timeout=60) as http,
            http.stream("POST", f"{server.api_url}/chat/completions", json=long) as resp,
        ):
            events = 0
            async for line in resp.aiter_lines():
                events += line.startswith("data:")
                if events == 4:
                    break
        return events

    events, *answers = await asyncio.gather(leave_early(), short(), short())
    assert events == 4
    assert all(answers)
    start = time.monotonic()
    assert await asyncio.to_thread(engine.wait_idle, 10)
    assert time.monotonic() - start < 10
    assert engine.num_free_blocks == engine.num_blocks
    await client.close()


def test_disconnected_non_stream_request_is_aborted(server, engine, idle):
    body = {
        "messages": [{"role": "user", "content": "Count to one thousand."}],
        "max_tokens": 1000,
        "ignore_eos": True,
    }
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.api_url}/chat/completions", json=body, timeout=1.5)
    assert engine.wait_idle(10), "the abandoned request kept running"
    assert engine.num_free_blocks == engine.num_blocks


def test_importing_the_package_does_not_import_fastapi():
    code = (
        "import sys, candle_agents, candle_agents.openai; "
        "bad = {'fastapi', 'starlette', 'uvicorn', 'sse_starlette'} & set(sys.modules); "
        "assert not bad, bad"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
