"""Every failure answers in OpenAI's error JSON, with the status the official client expects."""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from candle_agents.errors import ConfigError
from candle_agents.server import create_app

HI = [{"role": "user", "content": "hi"}]


def _error(exc: openai.APIStatusError) -> dict:
    """The error object, checked to have OpenAI's shape."""
    body = exc.response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert exc.body == error  # what the client exposes
    return error


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"temperature": 5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0]"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"top_logprobs": 2}, None),  # needs logprobs=true: a whole-request rule
    ],
)
def test_invalid_params_are_400_naming_the_field(client, engine, change, param):
    kw = {"model": engine.model_name, "messages": HI, "max_tokens": 2, **change}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**kw)
    error = _error(info.value)
    assert info.value.status_code == 400
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    if param:
        assert param in error["message"]


@pytest.mark.parametrize(
    "change",
    [
        {"top_p": 1e-30},
        {"top_k": -1},
        {"top_k": 10**12},
        {"min_p": 1.0},
        {"repetition_penalty": 1e300},
        {"frequency_penalty": -2, "presence_penalty": 2},
        {"min_tokens": 10**9},
        {"stop": [""]},
        {"stop_token_ids": [10**9]},
        {"seed": -1},
        {"top_p": 5e-324},
        {"temperature": 5e-324},
        {"repetition_penalty": 5e-324},
        {"logit_bias": {"0": 1}},
        {"seed": 2**64},
    ],
)
def test_extreme_valid_values_are_never_a_server_error(http, change):
    """Values the schema allows: the answer is a completion or a 400, never a 5xx."""
    body = {"messages": HI, "max_tokens": 2, **change}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code in (200, 400), r.text
    assert "error" in r.json() if r.status_code == 400 else r.json()["choices"]


def test_missing_messages_is_400(http):
    r = http.post("/v1/chat/completions", json={"model": "x", "max_tokens": 2})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "messages"


def test_context_overflow_names_limit_and_count(client, engine):
    long = "word " * (engine.max_model_len + 100)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=engine.model_name, messages=[{"role": "user", "content": long}], max_tokens=2
        )
    error = _error(info.value)
    assert error["code"] == "context_length_exceeded"
    numbers = [int(n) for n in re.findall(r"\d+", error["message"])]
    assert engine.max_model_len in numbers
    assert any(n > engine.max_model_len for n in numbers)  # the prompt's token count


def test_unknown_model_is_404(client, http):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=HI, max_tokens=2)
    error = _error(info.value)
    assert error["code"] == "model_not_found"
    assert "no-such-model" in error["message"]
    r = http.get("/v1/models/no-such-model")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b'{"messages": [', "invalid_json"),
        (b"not json at all", "invalid_json"),
        (b"", "missing_body"),
        (b"[1, 2]", "invalid_body"),
        (b'"just a string"', "invalid_body"),
    ],
)
def test_malformed_body_is_400(http, content, code):
    r = http.post(
        "/v1/chat/completions", content=content, headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == code


def test_unknown_route_and_wrong_method(http):
    r = http.get("/v1/nothing-here")
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = http.get("/v1/chat/completions")
    assert r.status_code == 405
    assert "POST" in r.headers["allow"]
    assert "not allowed" in r.json()["error"]["message"]


@pytest.fixture(scope="module")
def keyed(engine, live_server, api_key):
    return live_server(create_app(engine, api_key=api_key, cors_origins=["http://ui.example"]))


def test_api_key_is_required_on_v1(keyed, engine, api_key):
    for key in ("wrong-key", api_key + "x", api_key[:-1]):
        with pytest.raises(openai.AuthenticationError) as info:
            keyed.client(api_key=key).models.list()
        assert _error(info.value)["code"] == "invalid_api_key"
        assert info.value.response.headers["www-authenticate"] == "Bearer"
    r = httpx.post(f"{keyed.api_url}/chat/completions", json={"messages": HI})
    assert r.status_code == 401  # no header at all; checked before the body
    assert "Authorization: Bearer" in r.json()["error"]["message"]
    good = keyed.client(api_key=api_key)
    assert [m.id for m in good.models.list().data] == [engine.model_name]
    r = good.chat.completions.create(model=engine.model_name, messages=HI, max_tokens=2)
    assert r.choices[0].message.content
    metrics = httpx.get(f"{keyed.url}/metrics").text
    assert 'candle_http_requests_total{endpoint="/v1/models",status="401"} 3.0' in metrics
    # Health, metrics and the UI stay open: probes and browsers carry no key.
    assert httpx.get(f"{keyed.url}/health").status_code == 200
    assert httpx.get(f"{keyed.url}/metrics").status_code == 200
    assert httpx.get(f"{keyed.url}/").status_code == 200


def test_cors_preflight_and_headers(keyed, server):
    origin = {"Origin": "http://ui.example"}
    r = httpx.options(
        f"{keyed.api_url}/chat/completions",
        headers={
            **origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "http://ui.example"
    # A 401 still carries the header, so the browser can show the reason.
    r = httpx.get(f"{keyed.api_url}/models", headers=origin)
    assert r.status_code == 401
    assert r.headers["access-control-allow-origin"] == "http://ui.example"
    r = httpx.get(f"{keyed.api_url}/models", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    # Without cors_origins nothing is allowed cross-origin.
    r = httpx.get(f"{server.api_url}/models", headers=origin)
    assert "access-control-allow-origin" not in r.headers


def test_queue_full_is_503(engine, server, live_server, idle):
    """16 long streams hold every slot; one more request waits; the next one is refused."""
    bounded = live_server(create_app(engine, max_waiting=1))
    body = {
        "messages": HI,
        "max_tokens": 40,  # 16 of these fit in the KV cache, so none is preempted
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
    }
    preempted = engine.scheduler.num_preemptions
    with httpx.Client(timeout=120) as http:
        holders: list[httpx.Response] = []
        # Kept alive: dropping a half-read line iterator makes httpx close the connection,
        # which (rightly) aborts the request.
        readers = []
        try:
            for _ in range(engine.config.max_num_seqs):
                request = http.build_request(
                    "POST", f"{server.api_url}/chat/completions", json=body
                )
                holders.append(http.send(request, stream=True))
                assert holders[-1].status_code == 200
            for resp in holders:  # once each has produced a token, each is running
                readers.append(resp.iter_lines())
                _read_until_a_token(readers[-1])
            state = (engine.num_running, engine.num_waiting, engine.scheduler.num_preemptions)
            assert state == (engine.config.max_num_seqs, 0, preempted), state
            request = http.build_request("POST", f"{bounded.api_url}/chat/completions", json=body)
            holders.append(http.send(request, stream=True))
            assert holders[-1].status_code == 200  # admitted, and queued
            assert engine.num_waiting == 1
            with pytest.raises(openai.InternalServerError) as info:
                bounded.client().chat.completions.create(
                    model=engine.model_name, messages=HI, max_tokens=2
                )
            assert info.value.status_code == 503
            error = _error(info.value)
            assert error["code"] == "queue_full"
            assert error["type"] == "server_overloaded"
        finally:
            for resp in holders:
                resp.close()  # disconnecting aborts them all; `idle` checks the blocks


def test_one_request_may_not_ask_for_more_than_the_queue_bound(engine, live_server, idle):
    bounded = live_server(create_app(engine, max_waiting=4))
    client = bounded.client()
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=engine.model_name, prompt=["a", "b", "c"], n=2)
    error = _error(info.value)
    assert (error["param"], error["code"]) == ("prompt", "too_many_completions")
    assert "6 completions (3 prompts x n=2)" in error["message"]
    assert "at most 4" in error["message"]
    ok = client.completions.create(
        model=engine.model_name, prompt=["a", "b"], n=2, max_tokens=2, temperature=0
    )
    assert len(ok.choices) == 4


def _read_until_a_token(lines) -> None:
    for line in lines:
        if '"content":"' in line and '"content":""' not in line:
            return
    raise AssertionError("the stream ended before its first token")


def test_create_app_rejects_engine_and_engine_settings(engine):
    with pytest.raises(ConfigError, match="max_model_len"):
        create_app(engine, max_model_len=64)
