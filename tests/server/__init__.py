"""Tests of candle_agents.server (a package, so its conftest does not shadow tests/conftest.py)."""
