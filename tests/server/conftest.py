"""Real servers for the server tests: uvicorn on loopback ports, in background threads.

Engines are session-scoped (each load takes seconds on a CPU); apps are cheap
and several may share one engine, as a gateway would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import uvicorn

from candle_agents import Engine
from candle_agents.server import create_app

API_KEY = "sk-candle-test"
# The main engine: room for 16 requests running at once with short outputs.
MAIN_ENGINE = dict(kv_cache_memory=64 * 2**20, max_model_len=2048, max_num_seqs=16)
# A cheap engine for the fuzzer: whatever max_tokens it sends, no sequence gets long
# (a short chat prompt leaves room for about 30 new tokens; longer ones are refused).
SMALL_ENGINE = dict(kv_cache_memory=16 * 2**20, max_model_len=64, max_num_seqs=16)


class LiveServer:
    """One app on uvicorn, on a free loopback port, in a daemon thread."""

    def __init__(self, app: Any) -> None:
        self.app = app
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.api_url = f"{self.url}/v1"

    def client(self, api_key: str = "unused", **kw: Any) -> openai.OpenAI:
        # max_retries=0: the client would otherwise retry 5xx answers and hide them.
        return openai.OpenAI(base_url=self.api_url, api_key=api_key, max_retries=0, **kw)

    def async_client(self, api_key: str = "unused", **kw: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.api_url, api_key=api_key, max_retries=0, **kw)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)


@pytest.fixture(scope="session")
def api_key() -> str:
    return API_KEY


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    eng = Engine.from_pretrained(**MAIN_ENGINE)
    yield eng
    eng.shutdown()


@pytest.fixture(scope="session")
def small_engine() -> Iterator[Engine]:
    eng = Engine.from_pretrained(**SMALL_ENGINE)
    yield eng
    eng.shutdown()


@pytest.fixture(scope="session")
def live_server() -> Iterator[Any]:
    """A factory: live_server(app) -> LiveServer, all stopped at the end of the session."""
    servers: list[LiveServer] = []

    def start(app: Any) -> LiveServer:
        servers.append(LiveServer(app))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def server(engine, live_server) -> LiveServer:
    """The plain app: no API key, no queue bound."""
    return live_server(create_app(engine))


@pytest.fixture(scope="session")
def client(server) -> openai.OpenAI:
    return server.client()


@pytest.fixture(scope="session")
def http(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture()
def idle(engine) -> Iterator[Engine]:
    """The main engine, checked to be idle with every KV block free after the test."""
    yield engine
    assert engine.wait_idle(15), "requests are still running after the test"
    assert engine.num_free_blocks == engine.num_blocks


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed with apt-get when missing (we are root in CI)."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0:
        pytest.skip("chromium is not installed and installing it needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
    ):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
        if done.returncode != 0:
            pytest.skip(f"could not install chromium ({' '.join(cmd)}): {done.stderr[-500:]}")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("apt-get installed chromium but it is not on PATH")
    return found
