"""Assertions shared by test modules."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest


def assert_all_blocks_free(engine, timeout: float = 10.0) -> None:
    assert engine.wait_idle(timeout), "engine did not become idle"
    assert engine.num_free_blocks == engine.num_blocks


def run_in_isa_build(isa: str, test_file: str, call: str, marker: str) -> None:
    """Run ``call`` (e.g. ``"run_all()"``) from ``test_file`` in a fresh interpreter whose
    C kernels are built for ``isa`` (``CANDLE_AGENTS_CPU_ISA``); it must print ``marker``.

    One process per ISA: a process loads one build of the kernels."""
    if platform.machine() != "x86_64":
        pytest.skip("ISA levels are x86 only")
    root = Path(__file__).parents[2]  # the repository root: tests.support imports from it
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('isa_check', {str(test_file)!r})\n"
        "mod = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(mod)\n"
        f"mod.{call}\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "CANDLE_AGENTS_CPU_ISA": isa},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert marker in done.stdout
