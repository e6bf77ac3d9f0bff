"""Fixtures for the example tests: load an example by path, serve an app on loopback."""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import uvicorn

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load(name: str) -> ModuleType:
    """examples/<name>/app.py as a module (examples are scripts, not an installed package)."""
    module_name = f"example_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / name / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pydantic look their module up here
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_example():
    """load_example("ai_gateway") -> the module of examples/ai_gateway/app.py."""
    return _load


@pytest.fixture(scope="session")
def serve():
    """``with serve(app) as url:`` runs the app for real, as a user would reach it."""
    return _serve


@contextmanager
def _serve(app: Any) -> Iterator[str]:
    """Run ``app`` on uvicorn on a free loopback port in a thread; yields its base URL."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the example server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
