"""ResponsesSession: the agent loop in-process, on the default model and real MCP servers."""

from __future__ import annotations

import json
import sys

import pytest

from candle_agents import Engine
from candle_agents.mcp import McpConnectionError
from candle_agents.responses import ConversationOptions, ResponsesSession
from tests.support.mcp_servers import DEMO_SERVER, SECRET_WORD

ENGINE = dict(kv_cache_memory=64 * 2**20, max_model_len=2048, max_num_seqs=8)


@pytest.fixture(scope="module")
def engine():
    eng = Engine.from_pretrained(**ENGINE)
    yield eng
    eng.shutdown()


@pytest.fixture()
async def session(engine):
    async with ResponsesSession(engine) as s:
        await s.add_mcp_server("demo", command=sys.executable, args=[str(DEMO_SERVER)])
        yield s
    assert engine.wait_idle(10) and engine.num_free_blocks == engine.num_blocks


async def test_forced_tool_call_then_final_message(session):
    result = await session.run_conversation(
        "What is the secret word?",
        ConversationOptions(tool_choice="get_secret_word", temperature=0, max_output_tokens=80),
    )
    assert result.status == "completed"
    assert [(c.server, c.name, c.output) for c in result.tool_calls_executed] == [
        ("demo", "get_secret_word", SECRET_WORD)
    ]
    assert result.turns_taken == 2
    assert result.final_message.strip()
    assert result.output[-1]["type"] == "message"
    assert result.usage.input_tokens_details.cached_tokens > 0
    assert 0 < result.cached_share < 1


async def test_stream_matches_the_run(session):
    options = ConversationOptions(tool_choice="add", temperature=0, max_output_tokens=60)
    events = [e async for e in session.stream_conversation("Add 2 and 3.", options)]
    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(1, len(events) + 1))
    final = events[-1].response
    call = next(i for i in final["output"] if i["type"] == "mcp_call")
    args = json.loads(call["arguments"])
    assert call["output"] == str(args["a"] + args["b"])
    added = [e.item["type"] for e in events if e.type == "response.output_item.added"]
    done = [e.item["type"] for e in events if e.type == "response.output_item.done"]
    assert added == done == [i["type"] for i in final["output"]]


async def test_max_turns_stops_as_incomplete(session):
    result = await session.run_conversation(
        "What is the secret word?",
        ConversationOptions(tool_choice="get_secret_word", max_turns=1, temperature=0),
    )
    assert result.status == "incomplete" and result.incomplete_reason == "max_turns"
    assert result.turns_taken == 1 and len(result.tool_calls_executed) == 1


async def test_a_call_cut_off_by_the_token_limit_never_runs(session):
    options = ConversationOptions(tool_choice="echo", max_output_tokens=19, temperature=0)
    events = [e async for e in session.stream_conversation("Echo hello.", options)]
    final = events[-1].response
    assert events[-1].type == "response.incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    (call,) = [i for i in final["output"] if i["type"] == "mcp_call"]
    assert call["status"] == "incomplete" and call["output"] is None
    assert "response.mcp_call.in_progress" not in [e.type for e in events]
    added = [e.item["id"] for e in events if e.type == "response.output_item.added"]
    done = [e.item["id"] for e in events if e.type == "response.output_item.done"]
    assert added == done


async def test_tool_errors_go_to_the_model_not_out_of_the_loop(session):
    result = await session.run_conversation(
        "Please fail with message boom.",
        ConversationOptions(tool_choice="fail", temperature=0, max_output_tokens=40),
    )
    (call,) = result.tool_calls_executed
    assert call.name == "fail" and call.output is None and call.error
    assert result.status in ("completed", "incomplete")


async def test_allowed_tools_limit_what_the_model_sees(session):
    result = await session.run_conversation(
        "Echo hello.",
        ConversationOptions(
            allowed_tools=["echo"], tool_choice="required", temperature=0, max_output_tokens=40
        ),
    )
    listed = result.output[0]
    assert listed["type"] == "mcp_list_tools"
    assert [t["name"] for t in listed["tools"]] == ["echo"]
    assert [c.name for c in result.tool_calls_executed] == ["echo"]


async def test_mcp_server_time_from_pypi(engine):
    async with ResponsesSession(engine) as session:
        args = ["-m", "mcp_server_time", "--local-timezone", "UTC"]
        tools = await session.add_mcp_server("time", command=sys.executable, args=args)
        assert "get_current_time" in {t.name for t in tools}
        result = await session.run_conversation(
            "What time is it now in the UTC timezone?",
            ConversationOptions(
                tool_choice="get_current_time", temperature=0, max_output_tokens=60
            ),
        )
    (call,) = result.tool_calls_executed
    assert call.server == "time" and call.name == "get_current_time"
    # The real server answered: a time, or its own complaint about the model's timezone.
    assert (call.output and "datetime" in json.loads(call.output)) or call.error


async def test_a_server_that_cannot_start_is_a_clear_error(engine):
    async with ResponsesSession(engine) as session:
        with pytest.raises(McpConnectionError, match="broken"):
            await session.add_mcp_server("broken", command=sys.executable, args=["-c", "pass"])
        assert session.servers == []


async def test_chained_turns_reuse_the_prefix_cache(session):
    """A 5-turn conversation: every turn after the first reads earlier turns from the cache."""
    options = ConversationOptions(temperature=0, max_output_tokens=24)
    previous = None
    shares = []
    for question in ("Hi!", "Name a color.", "Name a fruit.", "Name a city.", "Thanks!"):
        result = await session.run_conversation(question, options, previous_response_id=previous)
        previous = result.response.id
        shares.append(result.cached_share)
    assert shares[0] < shares[-1]
    assert all(s > 0.5 for s in shares[1:]), shares
