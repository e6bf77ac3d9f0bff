"""Assertions shared by test modules (conftest.py files are not importable by name:
several directories have one)."""

from __future__ import annotations


def assert_all_blocks_free(engine, timeout: float = 10.0) -> None:
    assert engine.wait_idle(timeout), "engine did not become idle"
    assert engine.num_free_blocks == engine.num_blocks
