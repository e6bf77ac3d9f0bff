"""The `candle-agents` command: generate, chat, models."""

from __future__ import annotations

import argparse
import logging
import sys

from candle_agents.errors import CandleError


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model name, folder or .gguf (default: embedded)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    p.add_argument("--max-model-len", type=int, default=None)


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
    _engine_args(gen)
    _sampling_args(gen, 256)
    chat = sub.add_parser("chat", help="an interactive chat that keeps history (/exit to quit)")
    chat.add_argument("--system", default=None, help="system prompt")
    _engine_args(chat)
    _sampling_args(chat, 512)
    sub.add_parser("models", help="list the models usable by name")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "models":
            return _models()
        engine = _load(args)
        with engine:
            return _generate(engine, args) if args.command == "generate" else _chat(engine, args)
    except CandleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _load(args: argparse.Namespace):
    from candle_agents import Engine

    return Engine.from_pretrained(
        args.model, device=args.device, dtype=args.dtype, max_model_len=args.max_model_len
    )


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
