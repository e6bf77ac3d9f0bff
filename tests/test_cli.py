"""The `candle-agents` command, run as a user would run it."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run_cli(
    *args: str, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "candle_agents.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return str(tiny_model_dir("qwen2"))


def test_generate_prints_the_completion(model):
    out = run_cli(
        "generate",
        "The quick brown fox",
        "--model",
        model,
        "--raw",
        "--max-tokens",
        "12",
        "--temperature",
        "0",
    )
    assert out.returncode == 0, out.stderr
    from candle_agents import Engine, GenerationParams

    with Engine.from_pretrained(model, kv_cache_memory=2**22) as engine:
        expected = engine.generate(
            "The quick brown fox", GenerationParams(max_tokens=12, temperature=0)
        ).text
    assert out.stdout == expected + "\n"


def test_chat_answers_each_turn_and_exits(model):
    out = run_cli("chat", "--model", model, "--max-tokens", "6", stdin="hello\nagain\n/exit\n")
    assert out.returncode == 0, out.stderr
    # Three prompts shown (two turns, then /exit), each at the start of a line: the random
    # model's own text may contain "> " too.
    prompts = [line for line in out.stdout.splitlines() if line.startswith("> ")]
    assert len(prompts) == 3, out.stdout


def test_models_lists_the_default():
    out = run_cli("models")
    assert out.returncode == 0
    assert out.stdout.startswith("smollm2-135m-instruct\t")


def test_errors_are_one_clear_line(tmp_path):
    out = run_cli("generate", "hi", "--model", str(tmp_path / "missing"))
    assert out.returncode == 2
    assert out.stderr.startswith("error: model") and "not found" in out.stderr
    out = run_cli("generate", "hi", "--dtype", "int3")
    assert out.returncode == 2 and "dtype" in out.stderr
