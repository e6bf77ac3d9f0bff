"""The `candle-agents` command: generate, chat, models, pull, serve."""

from __future__ import annotations

import argparse
import logging
import sys

from candle_agents.candle_vllm_args import add_candle_vllm_args
from candle_agents.engine_args import add_engine_args, engine_options, parse_memory
from candle_agents.errors import CandleError


def _sampling_args(p: argparse.ArgumentParser, max_tokens: int) -> None:
    p.add_argument("--max-tokens", type=int, default=max_tokens)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="candle-agents", description=__doc__)
    parser.add_argument("--log-level", default="warning")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="complete one prompt and print it as it streams")
    gen.add_argument("prompt")
    gen.add_argument("--raw", action="store_true", help="no chat template: plain completion")
    add_engine_args(gen)
    _sampling_args(gen, 256)
    chat = sub.add_parser("chat", help="an interactive chat that keeps history (/exit to quit)")
    chat.add_argument("--system", default=None, help="system prompt")
    add_engine_args(chat)
    _sampling_args(chat, 512)
    sub.add_parser("models", help="list the models usable by name")
    pull = sub.add_parser("pull", help="download a Hugging Face model into the local cache")
    pull.add_argument("name", help="org/name, org/name-GGUF:Q4_K_M, hf.co/...; @revision")
    _serve_args(sub)
    return parser


def _serve_args(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve",
        help="an OpenAI-compatible HTTP server with a chat UI (needs the [server] extra)",
        description="Serve /v1/chat/completions, /v1/completions, /v1/responses (with MCP "
        "servers as tools) and /v1/models (OpenAI's API, streaming over SSE), /health, "
        "/metrics, API docs at /docs and a chat UI at /.",
    )
    add_engine_args(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port (0: any free one)")
    serve.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on /v1/* (default: $CANDLE_AGENTS_API_KEY)",
    )
    serve.add_argument(
        "--served-model-name",
        nargs="+",
        default=None,
        metavar="NAME",
        help="name(s) clients use for the model; the first is reported in responses",
    )
    serve.add_argument("--max-num-seqs", type=int, default=None, help="requests run at once")
    serve.add_argument(
        "--kv-cache-memory",
        type=parse_memory,
        default=None,
        help="KV-cache size: bytes (1073741824), a size (512MiB, 2GiB, 1.5G) "
        "or a fraction of free memory (0.1 or 10%%)",
    )
    serve.add_argument(
        "--max-waiting",
        type=int,
        default=256,
        help="queued requests beyond which new ones get 503 (default 256)",
    )
    serve.add_argument(
        "--cors-origin",
        action="append",
        default=None,
        metavar="ORIGIN",
        help="allow browser calls from this origin (repeatable; '*' for any)",
    )
    serve.add_argument(
        "--tool-parser", default=None, help="tool-call format (default: from the chat template)"
    )
    serve.add_argument(
        "--reasoning-parser",
        default=None,
        help="reasoning convention: think (Qwen3, DeepSeek-R1, SmolLM3), gpt_oss or none "
        "(default: from the chat template)",
    )
    serve.add_argument(
        "--mcp-config",
        default=None,
        metavar="FILE",
        help='MCP servers /v1/responses may use by label: {"mcpServers": {name: {command, '
        "args, env} | {url, headers}}}; the only source of stdio servers",
    )
    serve.add_argument(
        "--mcp-allow-url",
        action="append",
        default=None,
        metavar="PREFIX",
        help="let requests name MCP servers whose server_url starts with PREFIX (repeatable; "
        "by default requests may only use --mcp-config servers)",
    )
    serve.add_argument(
        "--mcp-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="time limit of one MCP tool call (default 60)",
    )
    serve.add_argument(
        "--responses-db",
        default=None,
        metavar="PATH",
        help="SQLite file of stored responses (default: responses.db in the user's data "
        "directory; ':memory:' keeps them until the server stops)",
    )
    serve.add_argument(
        "--max-turns",
        type=int,
        default=10,
        help="model turns one /v1/responses request may take with MCP tools (default 10)",
    )
    # SUPPRESS: when absent, the top-level --log-level stays in force.
    serve.add_argument("--log-level", default=argparse.SUPPRESS, help="debug, info, warning...")
    add_candle_vllm_args(serve)  # --m, --w, --h, --p, --mem... (users of candle-vllm)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "models":
            return _models()
        if args.command == "pull":
            return _pull(args.name)
        if args.command == "serve":
            return _serve(args)
        engine = _load(args)
        with engine:
            return _generate(engine, args) if args.command == "generate" else _chat(engine, args)
    except CandleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _serve(args: argparse.Namespace) -> int:
    try:
        from candle_agents.server.serve import run
    except ImportError as exc:
        print(
            f"error: `serve` needs the server extra ({exc}): pip install 'candle-agents[server]'",
            file=sys.stderr,
        )
        return 2
    return run(args)


def _load(args: argparse.Namespace):
    from candle_agents import Engine

    return Engine.from_pretrained(args.model, **engine_options(args))


def _params(args: argparse.Namespace):
    from candle_agents import GenerationParams

    return GenerationParams(
        max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed
    )


def _models() -> int:
    from candle_agents.engine.loader import known_models

    for name, where in known_models().items():
        print(f"{name}\t{where}")
    return 0


def _pull(name: str) -> int:
    from candle_agents.engine.loader.hub import pull

    print(pull(name))
    return 0


def _stream(engine, prompt, params) -> str:
    parts = []
    for delta in engine.stream_sync(prompt, params):
        print(delta.text, end="", flush=True)
        parts.append(delta.text)
    print()
    return "".join(parts)


def _generate(engine, args: argparse.Namespace) -> int:
    if args.raw:
        prompt = args.prompt
    else:
        prompt = engine.apply_chat_template([{"role": "user", "content": args.prompt}])
    _stream(engine, prompt, _params(args))
    return 0


def _chat(engine, args: argparse.Namespace) -> int:
    history = [{"role": "system", "content": args.system}] if args.system else []
    params = _params(args)
    print(f"chatting with {engine.model_name} (/exit to quit, /reset to clear history)")
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            return 0
        if line.strip() in ("/exit", "/quit"):
            return 0
        if line.strip() == "/reset":
            history = history[:1] if args.system else []
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        reply = _stream(engine, engine.apply_chat_template(history), params)
        history.append({"role": "assistant", "content": reply})


if __name__ == "__main__":
    sys.exit(main())
