"""`candle-agents serve` as a user runs it: a real process, a real port, a signal to stop."""

from __future__ import annotations

import argparse

import httpx
import openai
import pytest

from candle_agents.cli import build_parser
from candle_agents.engine_args import parse_memory
from tests.support.mcp_servers import free_port
from tests.support.serve_process import serve_process


def test_serve_answers_with_the_key_and_stops_cleanly():
    port = free_port()
    key = "sk-cli-test"
    args = ["--port", str(port), "--api-key", key, "--kv-cache-memory", "8MiB"]
    args += ["--max-model-len", "128", "--served-model-name", "smol"]
    with serve_process(*args) as (proc, lines):
        ready = next(line for line in lines if "serving" in line)
        assert f"http://127.0.0.1:{port}" in ready
        assert httpx.get(f"http://127.0.0.1:{port}/health").json() == {"status": "ok"}
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        r = client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert r.model == "smol"
        assert r.choices[0].message.content
        bad = httpx.get(f"http://127.0.0.1:{port}/v1/models")
        assert bad.status_code == 401
    stderr = proc.stderr.read()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert any("server stopped" in line for line in lines)


def test_serve_flags_parse():
    args = build_parser().parse_args(
        [
            "--log-level",
            "info",
            "serve",
            "--cors-origin",
            "http://a.example",
            "--cors-origin",
            "http://b.example",
            "--kv-cache-memory",
            "0.1",
            "--served-model-name",
            "a",
            "b",
        ]
    )
    assert args.command == "serve"
    assert (args.host, args.port, args.max_waiting) == ("127.0.0.1", 8000, 256)
    assert args.cors_origin == ["http://a.example", "http://b.example"]
    assert args.kv_cache_memory == 0.1
    assert args.served_model_name == ["a", "b"]
    assert args.log_level == "info"  # the top-level flag survives the subcommand
    assert build_parser().parse_args(["serve", "--log-level", "debug"]).log_level == "debug"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1073741824", 2**30),
        ("512MiB", 512 * 2**20),
        ("512 MiB", 512 * 2**20),
        ("2GiB", 2 * 2**30),
        ("2gib", 2 * 2**30),
        ("1.5G", int(1.5 * 2**30)),
        ("64M", 64 * 2**20),
        ("2GB", 2 * 10**9),
        ("100kB", 100_000),
        ("0.1", 0.1),
        ("1.0", 1.0),
        ("25%", 0.25),
    ],
)
def test_parse_memory(text, value):
    assert parse_memory(text) == value
    assert type(parse_memory(text)) is type(value)  # int bytes, float fractions


@pytest.mark.parametrize("text", ["", "lots", "2.5", "0", "0.0", "150%", "5 parsecs", "-1", "Mi"])
def test_parse_memory_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_memory(text)
