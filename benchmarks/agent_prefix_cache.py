"""How much of an agent conversation's prompt the prefix cache serves.

A 5-turn conversation on the embedded default model with `mcp-server-time`
(from PyPI, over stdio) as the tool server: the first request forces a tool
call (two model turns: the call, then the answer), the next ones chain with
``previous_response_id``. Every model turn re-renders the whole conversation,
so without prefix caching each turn would prefill everything again. Prints,
per request, the input tokens, how many came from the cache, and the time;
then the same conversation on an engine with prefix caching off, as the peer.

    python benchmarks/agent_prefix_cache.py [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from candle_agents import Engine
from candle_agents.responses import ConversationOptions, ResponsesSession

QUESTIONS = [
    "What time is it in UTC?",
    "And what day of the week is it?",
    "Is it morning or evening there?",
    "Thanks. Say goodbye.",
]


async def conversation(enable_prefix_caching: bool) -> list[dict]:
    engine = Engine.from_pretrained(
        kv_cache_memory=128 * 2**20,
        max_model_len=4096,
        enable_prefix_caching=enable_prefix_caching,
    )
    rows = []
    try:
        async with ResponsesSession(engine) as session:
            await session.add_mcp_server(
                "time",
                command=sys.executable,
                args=["-m", "mcp_server_time", "--local-timezone", "UTC"],
            )
            previous = None
            for i, question in enumerate(QUESTIONS):
                options = ConversationOptions(
                    tool_choice="get_current_time" if i == 0 else "auto",
                    temperature=0,
                    max_output_tokens=48,
                )
                start = time.perf_counter()
                result = await session.run_conversation(question, options, previous)
                elapsed = time.perf_counter() - start
                previous = result.response.id
                usage = result.usage
                rows.append(
                    {
                        "request": i + 1,
                        "model_turns": result.turns_taken,
                        "tool_calls": len(result.tool_calls_executed),
                        "input_tokens": usage.input_tokens,
                        "cached_tokens": usage.input_tokens_details.cached_tokens,
                        "output_tokens": usage.output_tokens,
                        "seconds": round(elapsed, 3),
                    }
                )
    finally:
        engine.shutdown()
    return rows


def report(name: str, rows: list[dict]) -> dict:
    print(f"\n{name}")
    print("request  turns  calls  input  cached  share   output  seconds")
    for r in rows:
        share = r["cached_tokens"] / r["input_tokens"] if r["input_tokens"] else 0.0
        print(
            f"{r['request']:>7}  {r['model_turns']:>5}  {r['tool_calls']:>5}  "
            f"{r['input_tokens']:>5}  {r['cached_tokens']:>6}  {share:>5.0%}  "
            f"{r['output_tokens']:>6}  {r['seconds']:>7.2f}"
        )
    inputs = sum(r["input_tokens"] for r in rows)
    cached = sum(r["cached_tokens"] for r in rows)
    seconds = sum(r["seconds"] for r in rows)
    turns = sum(r["model_turns"] for r in rows)
    print(
        f"total: {turns} model turns, {inputs} input tokens, {cached} cached "
        f"({cached / inputs:.0%}), {seconds:.2f} s"
    )
    return {
        "rows": rows,
        "model_turns": turns,
        "input_tokens": inputs,
        "cached_tokens": cached,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    cached = report("prefix caching on", asyncio.run(conversation(True)))
    plain = report("prefix caching off (peer)", asyncio.run(conversation(False)))
    print(f"\ntime with caching / without: {cached['seconds'] / plain['seconds']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cached": cached, "uncached": plain}, f, indent=2)


if __name__ == "__main__":
    main()
