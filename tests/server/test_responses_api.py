"""/v1/responses over real HTTP with the official client, and real MCP servers as tools.

The MCP servers are the demo server of tests/support/mcp_servers (stdio from the
operator's config, Streamable HTTP by server_url). Forced tool choices make the
135M model call a tool; what must be right is everything around the call.
"""

from __future__ import annotations

import json
import sys

import httpx
import openai
import pytest

from candle_agents.server import create_app
from tests.support.mcp_servers import DEMO_SERVER, SECRET_WORD, start_http_server

SECRET = {"type": "mcp", "server_label": "demo", "name": "get_secret_word"}


def demo_config(*args: str) -> dict:
    return {"mcpServers": {"demo": {"command": sys.executable, "args": [str(DEMO_SERVER), *args]}}}


def mcp_tool(label: str = "demo", **kw) -> dict:
    return {"type": "mcp", "server_label": label, "require_approval": "never", **kw}


@pytest.fixture(scope="module")
def http_mcp():
    url, stop = start_http_server()
    yield url
    stop()


@pytest.fixture(scope="module")
def server(engine, live_server, http_mcp, tmp_path_factory):
    db = tmp_path_factory.mktemp("responses") / "responses.db"
    app = create_app(
        engine,
        mcp_config=demo_config(),
        mcp_allow_urls=[http_mcp.rsplit("/", 1)[0], "http://127.0.0.1:9/"],
        mcp_call_timeout=3.0,
        responses_db=db,
    )
    srv = live_server(app)
    srv.db = db
    return srv


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return server.client()


def items(response, kind):
    return [i for i in response.output if i.type == kind]


def test_named_mcp_tool_runs_and_the_model_answers(client, idle):
    response = client.responses.create(
        model="smollm2-135m-instruct",
        input="What is the secret word?",
        tools=[mcp_tool()],
        tool_choice=SECRET,
        temperature=0,
        max_output_tokens=120,
    )
    assert response.status == "completed", response.error
    kinds = [i.type for i in response.output]
    assert kinds[:2] == ["mcp_list_tools", "mcp_call"]
    listed = {t.name for t in response.output[0].tools}
    assert {"get_secret_word", "add", "echo"} <= listed
    call = response.output[1]
    assert call.server_label == "demo" and call.name == "get_secret_word"
    assert call.output == SECRET_WORD and call.error is None
    assert kinds[-1] == "message" and response.output_text.strip()
    usage = response.usage
    assert usage.input_tokens > 0 and usage.output_tokens > 0
    # The answering turn re-reads the first turn's prompt from the prefix cache.
    assert usage.input_tokens_details.cached_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_streaming_events_parse_in_the_official_client(client, idle):
    stream = client.responses.create(
        model="smollm2-135m-instruct",
        input="What is the secret word?",
        tools=[mcp_tool()],
        tool_choice=SECRET,
        temperature=0,
        max_output_tokens=60,
        stream=True,
    )
    events = list(stream)
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    numbers = [e.sequence_number for e in events]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    for expected in (
        "response.mcp_list_tools.in_progress",
        "response.mcp_list_tools.completed",
        "response.mcp_call_arguments.done",
        "response.mcp_call.in_progress",
        "response.mcp_call.completed",
        "response.output_item.added",
        "response.output_item.done",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
    ):
        assert expected in types, expected
    final = events[-1].response
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text
    # The stored response is the streamed one.
    assert client.responses.retrieve(final.id).output_text == final.output_text


def test_stream_helper_returns_the_final_response(client, idle):
    with client.responses.stream(
        model="smollm2-135m-instruct",
        input="Say hello in one short sentence.",
        temperature=0,
        max_output_tokens=200,
    ) as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()  # needs response.completed
    assert final.status == "completed"
    assert "".join(texts) == final.output_text


def test_server_url_by_allowed_prefix_sends_headers(client, http_mcp, idle):
    response = client.responses.create(
        model="smollm2-135m-instruct",
        input="Who am I?",
        tools=[
            mcp_tool(
                "remote",
                server_url=http_mcp,
                headers={"X-Trace": "t1"},
                authorization="tok-123",
                allowed_tools=["whoami", "echo"],
            )
        ],
        tool_choice={"type": "mcp", "server_label": "remote", "name": "whoami"},
        temperature=0,
        max_output_tokens=40,
    )
    assert {t.name for t in response.output[0].tools} == {"whoami", "echo"}
    call = items(response, "mcp_call")[0]
    assert "Bearer tok-123" in call.output


def test_disallowed_server_url_is_a_400_naming_the_flag(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(
            model="smollm2-135m-instruct",
            input="hi",
            tools=[mcp_tool("evil", server_url="http://10.0.0.1/mcp")],
        )
    body = err.value.body
    assert "--mcp-allow-url" in body["message"] and body["param"] == "tools[0].server_url"


def test_unknown_server_label_is_a_400(client):
    with pytest.raises(openai.BadRequestError, match="not one of this server's configured"):
        client.responses.create(model="smollm2-135m-instruct", input="hi", tools=[mcp_tool("x")])


def test_unreachable_server_is_a_clear_424_or_failed_event(client, idle):
    dead = mcp_tool("dead", server_url="http://127.0.0.1:9/mcp")
    with pytest.raises(openai.APIStatusError) as err:
        client.responses.create(model="smollm2-135m-instruct", input="hi", tools=[dead])
    assert err.value.status_code == 424
    assert "dead" in err.value.body["message"]
    events = list(
        client.responses.create(
            model="smollm2-135m-instruct", input="hi", tools=[dead], stream=True
        )
    )
    assert events[-1].type == "response.failed"
    assert "dead" in events[-1].response.error.message
    assert "response.mcp_list_tools.failed" in [e.type for e in events]


def test_function_tool_round_trip(client, idle):
    weather = {
        "type": "function",
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
    first = client.responses.create(
        model="smollm2-135m-instruct",
        input="What is the weather in Paris?",
        tools=[weather],
        tool_choice={"type": "function", "name": "get_weather"},
        temperature=0,
    )
    assert first.status == "completed"
    call = items(first, "function_call")[0]
    assert call.name == "get_weather" and "city" in json.loads(call.arguments)
    second = client.responses.create(
        model="smollm2-135m-instruct",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}],
        tools=[weather],
        temperature=0,
        max_output_tokens=40,
    )
    assert second.status in ("completed", "incomplete")
    assert items(second, "message") and not items(second, "function_call")
    assert second.previous_response_id == first.id


def test_approval_requests_then_the_approved_call_runs(client, idle):
    tool = {"type": "mcp", "server_label": "demo", "allowed_tools": ["get_secret_word"]}
    first = client.responses.create(
        model="smollm2-135m-instruct",
        input="What is the secret word?",
        tools=[tool],
        tool_choice=SECRET,
        temperature=0,
    )
    asked = items(first, "mcp_approval_request")
    assert len(asked) == 1 and asked[0].name == "get_secret_word"
    assert not items(first, "mcp_call")
    approve = {"type": "mcp_approval_response", "approval_request_id": asked[0].id, "approve": True}
    second = client.responses.create(
        model="smollm2-135m-instruct",
        previous_response_id=first.id,
        input=[approve],
        tools=[tool],
        temperature=0,
        max_output_tokens=40,
    )
    call = items(second, "mcp_call")[0]
    assert call.approval_request_id == asked[0].id and call.output == SECRET_WORD
    # An answer to nothing pending is refused.
    with pytest.raises(openai.BadRequestError, match="no pending approval request"):
        client.responses.create(
            model="smollm2-135m-instruct",
            previous_response_id=second.id,
            input=[approve],
            tools=[tool],
        )


def test_crash_and_timeout_become_tool_errors_and_the_server_recovers(client, idle):
    for name, fragment in (("crash", "demo"), ("slow", "timed out")):
        response = client.responses.create(
            model="smollm2-135m-instruct",
            input=f"Call {name} with seconds 30.",
            tools=[mcp_tool(allowed_tools=[name])],
            tool_choice={"type": "mcp", "server_label": "demo", "name": name},
            temperature=0,
            max_output_tokens=40,
        )
        call = items(response, "mcp_call")[0]
        assert call.status == "failed" and call.output is None
        assert fragment in json.dumps(call.error.to_dict()), call.error
        assert response.status in ("completed", "incomplete")
    # The operator's server (its child was killed by crash) serves the next call.
    again = client.responses.create(
        model="smollm2-135m-instruct",
        input="What is the secret word?",
        tools=[mcp_tool()],
        tool_choice=SECRET,
        temperature=0,
        max_output_tokens=60,
    )
    assert items(again, "mcp_call")[0].output == SECRET_WORD


def test_json_schema_text_format(client, idle):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "rainy": {"type": "boolean"}},
        "required": ["city", "rainy"],
        "additionalProperties": False,
    }
    response = client.responses.create(
        model="smollm2-135m-instruct",
        input="Describe Paris weather as JSON.",
        text={"format": {"type": "json_schema", "name": "weather", "schema": schema}},
        temperature=0,
        max_output_tokens=60,
    )
    data = json.loads(response.output_text)
    assert set(data) == {"city", "rainy"} and isinstance(data["rainy"], bool)


def test_chains_survive_a_restart_and_delete_ends_them(server, engine, live_server, idle):
    first = server.client().responses.create(
        model="smollm2-135m-instruct",
        input="My name is Ada. Say ok.",
        temperature=0,
        max_output_tokens=8,
    )
    restarted = live_server(create_app(engine, responses_db=server.db))
    client = restarted.client()
    assert client.responses.retrieve(first.id).output_text == first.output_text
    second = client.responses.create(
        model="smollm2-135m-instruct",
        previous_response_id=first.id,
        input="What is my name?",
        temperature=0,
        max_output_tokens=8,
    )
    assert second.previous_response_id == first.id
    inputs = client.responses.input_items.list(second.id)
    assert [i.type for i in inputs.data] == ["message"]
    # The second turn's prompt contains the first exchange: its tokens come from the cache.
    assert second.usage.input_tokens > first.usage.input_tokens
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError, match="not found"):
        client.responses.create(
            model="smollm2-135m-instruct", previous_response_id=first.id, input="again"
        )


def test_bad_requests_are_openai_errors(server):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        bad = http.post("/v1/responses", json={"input": [{"role": "robot", "content": "x"}]})
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "input[0].role"
        tool = http.post("/v1/responses", json={"input": "x", "tools": [{"type": "web_search"}]})
        assert tool.status_code == 400 and "web_search" in tool.json()["error"]["message"]
        missing = http.get("/v1/responses/resp_nope")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "response_not_found"
