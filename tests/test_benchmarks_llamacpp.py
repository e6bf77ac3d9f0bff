"""benchmarks/llamacpp.py: its --smoke run end to end, and its parsing of llama.cpp's output."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "llamacpp.py"

# llama-batched-bench's output (llama.cpp 0.5.0-dev, commit 0c1e570), trimmed.
BATCHED_BENCH_OUTPUT = """
llama_batched_bench: n_kv_max = 8192, n_batch = 2048, n_ubatch = 512, flash_attn = -1, \
is_pp_shared = 0, is_tg_separate = 0, n_gpu_layers = -1, n_threads = 2, n_threads_batch = 2

|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|
|   128 |    128 |    1 |    256 |    1.812 |    70.64 |    2.617 |    48.91 |    4.429 |    86.7 |
|   128 |    128 |    1 |    256 |    0.387 |   330.98 |    1.300 |    98.46 |    1.687 |   227.6 |
|   128 |    128 |    8 |   2048 |    4.100 |   249.76 |    6.500 |   157.54 |   10.600 |   193.2 |

llama_perf_context_print:        load time =     120.00 ms
"""


def load_module():
    spec = importlib.util.spec_from_file_location("bench_llamacpp", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(SCRIPT.parent))  # it imports its sibling gpu_setup
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return module


def test_parses_llama_batched_bench_table():
    rows, settings = load_module().parse_batched_bench(BATCHED_BENCH_OUTPUT)
    assert [r["npl"] for r in rows] == [1, 1, 8]
    assert rows[1] == {
        "npp": 128,
        "ntg": 128,
        "npl": 1,
        "n_kv": 256,
        "t_pp_s": 0.387,
        "prompt_tok_s": 330.98,
        "t_tg_s": 1.3,
        "gen_tok_s": 98.46,
    }
    assert settings["n_kv_max"] == "8192" and settings["flash_attn"] == "-1"
    assert settings["is_pp_shared"] == "0" and settings["n_threads_batch"] == "2"


def test_llamacpp_command_and_engine_config_match():
    bench = load_module()
    args = bench.parse_args(["--npl", "1,8,32", "--threads", "3", "--engine", "dtype=bfloat16"])
    cmd = bench.llamacpp_command(Path("/bin"), Path("m.gguf"), args)
    flags = dict(zip(cmd[1::2], cmd[2::2]))
    # The first npl twice (its first row is the warm-up); a context for 32 x 256 tokens.
    assert flags["-npl"] == "1,1,8,32" and flags["-c"] == "8192" and flags["-t"] == "3"
    assert "-pps" not in cmd and "-no-kvu" in cmd
    shape = {"num_hidden_layers": 16, "num_key_value_heads": 8, "head_dim": 64}
    config, per_token = bench.engine_config(args, shape)
    assert per_token == 2 * 16 * 8 * 64 * 2  # bfloat16 K and V
    assert config["kv_cache_memory"] == per_token * (8192 + 16)
    assert config["max_num_seqs"] == 32 and config["dtype"] == "bfloat16"


def test_engine_options_are_typed():
    bench = load_module()
    opts = bench.parse_engine_options(
        ["dequantize=True", "kv_cache_dtype=float16", "block_size=32", "x=0.5", "y=none"]
    )
    assert opts == {
        "dequantize": True,
        "kv_cache_dtype": "float16",
        "block_size": 32,
        "x": 0.5,
        "y": None,
    }
    with pytest.raises(SystemExit):
        bench.parse_engine_options(["novalue"])


def test_llamacpp_benchmark_runs_in_smoke_mode(tmp_path):
    # --smoke: ours only (no llama.cpp, no 1B files), npl 1,2, 16-token prompts, 8 new tokens.
    out = tmp_path / "smoke.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "smoke: figures are not meaningful" in done.stdout
    assert "| npl | llama.cpp gen tok/s | ours gen tok/s |" in done.stdout
    figures = json.loads(out.read_text())
    assert figures["settings"]["npl"] == [1, 2] and figures["settings"]["smoke"] is True
    assert figures["machine"]["cpu"] and figures["machine"]["torch"]
    entry = figures["files"]["default"]
    assert entry["llamacpp"] is None
    ours = entry["ours"]
    assert set(ours["npl"]) == {"1", "2"}
    for row in ours["npl"].values():
        assert row["gen_tok_s"] > 0 and row["prompt_tok_s"] > 0
        (run,) = row["all_runs"]
        assert run["preemptions"] == 0
        # The prompt phase plus 7 decode steps, whether the prompts took one step or two.
        assert 8 <= run["steps"] <= 9
    assert ours["peak_rss_mib"] > 50
    # As many KV tokens as llama.cpp's context (2 x 24) plus one block.
    assert ours["kv_cache_tokens"] == 2 * (16 + 8) + 16
    assert entry["ratios"]["npl"]["1"] == {"gen": None, "prompt": None}


def test_child_peak_rss_and_stops_are_the_commands_own():
    # A child forked from a large process would report that process's peak as its own.
    bench = load_module()
    ballast = b"\x01" * (300 * 2**20)  # this process's peak RSS is now > 300 MiB
    script = "(sleep 1; kill -CONT $$) & kill -STOP $$; wait"  # stops itself once
    done = bench.run_child(["bash", "-c", script], dict(os.environ), capture_stderr=True)
    del ballast
    assert done["code"] == 0 and done["times_stopped"] == 1
    assert 0 < done["peak_rss_mib"] < 100
    failed = bench.run_child(["bash", "-c", "echo oops >&2; exit 3"], dict(os.environ), True)
    assert failed["code"] == 3 and failed["output"] == "oops\n"
