"""A tiny agent framework on ResponsesSession: a plan of steps, each one a model turn with tools.

The agent connects to an MCP server over stdio (the warehouse next to this
file), then walks a plan. Each step is an instruction and, where the step needs
it, the tool the model must call; the model fills in the arguments from the
conversation so far (earlier tool results included), the session runs the tool
and the model reads the result. Steps chain with ``previous_response_id``, so
every step sees, and re-uses from the prefix cache, everything before it.

Small local models follow a plan far better than they make one: the framework
decides *what* happens next, the model decides *with which values*.

    python examples/agent_framework/agent.py ["Reserve 3 blue mugs."]
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from candle_agents.responses import ConversationOptions, ConversationResult, ResponsesSession

SERVER = Path(__file__).with_name("warehouse_server.py")


@dataclass
class Step:
    instruction: str
    tool: str | None = None  # the tool this step must call; None: answer in words


# "{task}" is replaced by the customer's request: repeating it in each step keeps a small
# model on the values the customer gave rather than those in the latest tool result.
PLAN = [
    Step("Customer request: {task}\nLook up the product the customer wants.", "find_product"),
    Step(
        "Customer request: {task}\nReserve exactly the quantity the customer asked for.", "reserve"
    ),
    Step("Tell the customer the reservation id and the total price in one sentence."),
]


async def run(task: str, plan: list[Step] = PLAN) -> list[ConversationResult]:
    results: list[ConversationResult] = []
    async with ResponsesSession() as session:  # the embedded default model
        # A stdio server inherits only a minimal environment: pass on what it needs.
        env = {k: v for k, v in os.environ.items() if k == "WAREHOUSE_DB"}
        tools = await session.add_mcp_server(
            "warehouse", command=sys.executable, args=[str(SERVER)], env=env
        )
        print(f"connected to warehouse: {', '.join(t.name for t in tools)}")
        previous = None
        for number, step in enumerate(plan, 1):
            options = ConversationOptions(
                tool_choice=step.tool or "none",
                max_tool_calls=1,  # one call a step; then the model reads the result and answers
                max_turns=3,
                max_output_tokens=120,
                temperature=0,
            )
            prompt = step.instruction.format(task=task)
            result = await session.run_conversation(prompt, options, previous_response_id=previous)
            previous = result.response.id
            results.append(result)
            for call in result.tool_calls_executed:
                print(
                    f"step {number}: {call.name}({call.arguments}) -> {call.output or call.error}"
                )
            print(f"step {number}: {result.final_message.strip()}")
    return results


def main() -> None:
    task = sys.argv[1] if len(sys.argv) > 1 else "Reserve 3 blue mugs."
    results = asyncio.run(run(task))
    usage = [r.usage for r in results]
    cached = sum(u.input_tokens_details.cached_tokens for u in usage)
    total = sum(u.input_tokens for u in usage)
    print(
        f"done in {sum(r.turns_taken for r in results)} model turns; "
        f"{cached}/{total} prompt tokens from the prefix cache"
    )


if __name__ == "__main__":
    main()
