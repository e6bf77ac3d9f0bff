"""``candle-agents serve``: the app on uvicorn, with a clear line once it listens."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading

import uvicorn

from candle_agents.candle_vllm_args import apply_candle_vllm_args, candle_vllm_engine_options
from candle_agents.engine_args import engine_options
from candle_agents.server.app import create_app

logger = logging.getLogger(__name__)

API_KEY_ENV = "CANDLE_AGENTS_API_KEY"


class _Server(uvicorn.Server):
    """uvicorn's server, announcing the URL once the socket is bound (port 0 included)."""

    def __init__(self, config: uvicorn.Config, model_name: str, has_key: bool) -> None:
        super().__init__(config)
        self._model_name = model_name
        self._has_key = has_key

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.started:
            return
        host, port = self.config.host, self.config.port
        bound = [s.getsockname() for srv in self.servers for s in srv.sockets or ()]
        if bound:
            port = bound[0][1]
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{port}"
        auth = "API key required" if self._has_key else "no API key"
        print(
            f"candle-agents: serving {self._model_name} at {url} "
            f"(chat UI {url}/, OpenAI API {url}/v1, docs {url}/docs; {auth}). Ctrl+C stops.",
            flush=True,
        )


def run(args: argparse.Namespace) -> int:
    """Load the engine, serve until SIGINT/SIGTERM, shut down cleanly; the exit code."""
    apply_candle_vllm_args(args)  # candle-vllm's flags onto ours (ConfigError: exit 2)
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    engine_config = {**engine_options(args), **candle_vllm_engine_options(args)}
    app = create_app(
        model=args.model,
        served_model_name=args.served_model_name,
        api_key=api_key,
        cors_origins=args.cors_origin or (),
        max_waiting=args.max_waiting,
        tool_parser=args.tool_parser,
        reasoning_parser=args.reasoning_parser,
        mcp_config=args.mcp_config,
        mcp_allow_urls=args.mcp_allow_url or (),
        mcp_call_timeout=args.mcp_timeout,
        responses_db=args.responses_db,
        max_turns=args.max_turns,
        **engine_config,
    )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level.lower(),
        # Open streams get this long to finish on shutdown; then they are cut.
        timeout_graceful_shutdown=5,
    )
    server = _Server(config, app.state.adapter.model_names[0], api_key is not None)
    # uvicorn re-raises the signal it handled once its graceful shutdown is done:
    # SIGINT as KeyboardInterrupt, SIGTERM to this handler (the default one would
    # kill the process before it can say it stopped).
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: None) if main else None
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    if not server.started:
        return 1  # uvicorn has logged why (e.g. the port is taken)
    print("candle-agents: server stopped", flush=True)
    return 0
