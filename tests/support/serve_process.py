"""`candle-agents serve` in a child process, as a user runs it: started, awaited, stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def serve_process(*args: str) -> Iterator[tuple[subprocess.Popen, list[str]]]:
    """Run ``candle-agents serve ARGS``; yields (process, its stdout lines so far) once it
    says it is serving, and stops it with SIGINT (as Ctrl-C does) on leaving."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("CANDLE_AGENTS_API_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "candle_agents.cli", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any("serving" in line for line in lines):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "serve did not announce itself"
            time.sleep(0.1)
        yield proc, lines
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        reader.join(timeout=5)
