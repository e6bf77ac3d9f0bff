"""candle-vllm's command line on `candle-agents serve`: each flag lands on our settings."""

from __future__ import annotations

import json
import os

import httpx
import pytest

from candle_agents.candle_vllm_args import (
    _REFUSED,
    apply_candle_vllm_args,
    candle_vllm_engine_options,
)
from candle_agents.cli import build_parser, main
from candle_agents.engine_args import engine_options
from candle_agents.errors import ConfigError
from tests.support.mcp_servers import free_port
from tests.support.serve_process import serve_process


def serve_args(*argv: str):
    """`serve ARGV` parsed and folded, as serve.run sees it."""
    return apply_candle_vllm_args(build_parser().parse_args(["serve", *argv]))


def engine_config(*argv: str) -> dict[str, object]:
    args = serve_args(*argv)
    return {**engine_options(args), **candle_vllm_engine_options(args)}


def refused(capsys, *argv: str) -> str:
    """The message of a parse that stops (exit 2)."""
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["serve", *argv])
    assert exc.value.code == 2
    return capsys.readouterr().err


# -- address ------------------------------------------------------------------------------


def test_h_and_p_set_host_and_port():
    args = serve_args("--h", "0.0.0.0", "--p", "2000")
    assert (args.host, args.port) == ("0.0.0.0", 2000)


def test_without_candle_vllm_flags_nothing_changes():
    args = serve_args()
    assert (args.host, args.port, args.model, args.device) == ("127.0.0.1", 8000, None, "auto")
    assert candle_vllm_engine_options(args) == {}


@pytest.mark.parametrize(
    ("value", "host", "port"),
    [
        ("127.0.0.1:9000", "127.0.0.1", 9000),
        ("tcp://0.0.0.0:2001", "0.0.0.0", 2001),
        ("tcp://localhost", "localhost", 8000),
        ("[::1]:8080", "::1", 8080),
        ("[::1]", "::1", 8000),
        ("::1", "::1", 8000),
    ],
)
def test_h_takes_candle_vllms_address_forms(value, host, port):
    args = serve_args("--h", value)
    assert (args.host, args.port) == (host, port)


def test_a_port_in_h_wins_over_p():
    assert serve_args("--h", "127.0.0.1:9000", "--p", "2000").port == 9000


@pytest.mark.parametrize("value", ["unix:///tmp/cv.sock", "file:///tmp/cv.sock"])
def test_unix_sockets_are_refused(value):
    with pytest.raises(ConfigError, match="TCP only"):
        serve_args("--h", value)


def test_help_is_still_help_and_h_is_the_host(capsys):
    for flag in ("-h", "--help"):
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args(["serve", flag])
        assert exc.value.code == 0
        assert "candle-vllm's command line" in capsys.readouterr().out
    assert serve_args("--h", "10.0.0.1").host == "10.0.0.1"


def test_short_flags_are_exact_not_abbreviations():
    # Without them, argparse's prefix matching took --p for --port and found --m and --d
    # ambiguous (--model, --max-model-len, ... and --device, --dtype, --dequantize).
    args = build_parser().parse_args(["serve", "--m", "a/b", "--d", "0", "--p", "1", "--w", "x"])
    assert (args.cvllm_m, args.cvllm_d, args.cvllm_p, args.cvllm_w) == ("a/b", "0", 1, "x")
    assert (args.model, args.device, args.port) == (None, "auto", 8000)  # until folded


def test_host_and_port_conflicts():
    with pytest.raises(ConfigError, match=r"--h .*--host"):
        serve_args("--h", "0.0.0.0", "--host", "127.0.0.2")
    with pytest.raises(ConfigError, match=r"--p .*--port"):
        serve_args("--p", "2000", "--port", "9000")


# -- model ---------------------------------------------------------------------------------


def test_m_is_the_model_name():
    assert serve_args("--m", "Qwen/Qwen3-4B").model == "Qwen/Qwen3-4B"
    assert serve_args("--m", "/data/model.gguf").model == "/data/model.gguf"


def test_w_is_the_model_folder():
    assert serve_args("--w", "/home/Qwen3-4B/").model == "/home/Qwen3-4B/"


def test_f_with_w_is_a_file_in_the_folder():
    assert serve_args("--w", "/data", "--f", "m-Q4_K_M.gguf").model == os.path.join(
        "/data", "m-Q4_K_M.gguf"
    )


def test_f_alone_is_a_path():
    assert serve_args("--f", "/data/m.gguf").model == "/data/m.gguf"


@pytest.mark.parametrize(
    ("file", "model"),
    [
        # a file: that file, by name
        (
            "Qwen3-30B-A3B-Instruct-2507-Q4_K_M.gguf",
            "unsloth/X-GGUF:Qwen3-30B-A3B-Instruct-2507-Q4_K_M.gguf",
        ),
        ("UD-Q4_K_XL/m-UD-Q4_K_XL.gguf", "unsloth/X-GGUF:m-UD-Q4_K_XL.gguf"),
        ("model.gguf", "unsloth/X-GGUF:model.gguf"),
        # candle-vllm: a folder of the repo, named by its quant
        ("Q3_K_S", "unsloth/X-GGUF:Q3_K_S"),
    ],
)
def test_f_with_a_hub_repo_names_the_file(file, model):
    assert serve_args("--m", "unsloth/X-GGUF", "--f", file).model == model


def test_hub_tag_reads_as_a_hub_name():
    from candle_agents.engine.loader.hub import parse_hub_name

    ref = parse_hub_name(serve_args("--m", "org/X-GGUF", "--f", "x-Q4_K_M.gguf").model)
    assert (ref.repo, ref.quant) == ("org/X-GGUF", "x-Q4_K_M.gguf")


def test_f_with_a_local_m_folder_is_a_file_in_it(tmp_path):
    assert serve_args("--m", str(tmp_path), "--f", "a.gguf").model == str(tmp_path / "a.gguf")


def test_model_conflicts():
    with pytest.raises(ConfigError, match=r"--m .*--model"):
        serve_args("--m", "a/b", "--model", "c/d")
    with pytest.raises(ConfigError, match=r"--w .*--model"):
        serve_args("--w", "/x", "--model", "c/d")
    with pytest.raises(ConfigError, match="--m and --w"):
        serve_args("--m", "a/b", "--w", "/x")


# -- device, dtype, quantization ----------------------------------------------------------


@pytest.mark.parametrize(("ids", "device"), [("0", "cuda:0"), ("1", "cuda:1"), ("2,", "cuda:2")])
def test_d_is_one_cuda_device(ids, device):
    assert engine_config("--d", ids)["device"] == device


def test_several_devices_are_refused():
    with pytest.raises(ConfigError, match="tensor parallelism"):
        serve_args("--d", "0,1")


def test_cpu_is_the_cpu_device():
    assert engine_config("--cpu")["device"] == "cpu"


def test_device_conflicts():
    with pytest.raises(ConfigError, match=r"--d .*--device"):
        serve_args("--d", "0", "--device", "cpu")
    with pytest.raises(ConfigError, match="--d and --cpu"):
        serve_args("--d", "0", "--cpu")
    with pytest.raises(ConfigError, match="device id"):
        serve_args("--d", "gpu")


@pytest.mark.parametrize(
    ("value", "dtype"),
    [("bf16", "bfloat16"), ("f16", "float16"), ("f32", "float32"), ("bfloat16", "bfloat16")],
)
def test_dtype_takes_candle_names(value, dtype):
    assert engine_config("--dtype", value)["dtype"] == dtype


@pytest.mark.parametrize(("isq", "quantize"), [("q8_0", "q8_0"), ("q4k", "q4_k"), ("Q4K", "q4_k")])
def test_isq_is_quantize(isq, quantize):
    assert engine_config("--isq", isq)["quantize"] == quantize


def test_isq_types_without_kernels_are_refused():
    with pytest.raises(ConfigError, match="q8_0 or q4k"):
        serve_args("--isq", "q6k")
    with pytest.raises(ConfigError, match=r"--isq .*--quantize"):
        serve_args("--isq", "q4k", "--quantize", "q8_0")
    assert engine_config("--isq", "q8_0", "--quantize", "q8_0")["quantize"] == "q8_0"


# -- KV cache and scheduling ----------------------------------------------------------------


def test_mem_is_mib_of_kv_cache():
    assert engine_config("--mem", "64")["kv_cache_memory"] == 64 * 2**20


@pytest.mark.parametrize(("value", "fraction"), [("0.5", 0.5), ("1", 1.0)])
def test_kv_fraction_is_a_fraction(value, fraction):
    mem = engine_config("--kv-fraction", value)["kv_cache_memory"]
    assert mem == fraction and isinstance(mem, float)  # an int would be a byte count


def test_kv_cache_conflicts_and_bad_values(capsys):
    with pytest.raises(ConfigError, match="--mem and --kv-fraction"):
        serve_args("--mem", "64", "--kv-fraction", "0.5")
    with pytest.raises(ConfigError, match="--kv-cache-memory"):
        serve_args("--mem", "64", "--kv-cache-memory", "1GiB")
    assert "(0, 1]" in refused(capsys, "--kv-fraction", "1.5")
    assert "at least 1" in refused(capsys, "--mem", "0")


def test_kvcache_dtype_auto_only():
    assert "kv_cache_dtype" not in engine_config("--kvcache-dtype", "auto")
    with pytest.raises(ConfigError, match="quantized KV caches"):
        serve_args("--kvcache-dtype", "fp8")


def test_max_num_seqs_is_shared():
    assert engine_config("--max-num-seqs", "8")["max_num_seqs"] == 8


def test_block_size():
    assert engine_config("--block-size", "32")["block_size"] == 32


def test_prefill_chunk_size_raises_the_step_budget_when_needed():
    small = engine_config("--prefill-chunk-size", "1024")
    assert (small["prefill_chunk_size"], small["max_num_batched_tokens"]) == (1024, 2048)
    big = engine_config("--prefill-chunk-size", "8192")
    assert (big["prefill_chunk_size"], big["max_num_batched_tokens"]) == (8192, 8192)
    with pytest.raises(ConfigError, match="chunk"):
        serve_args("--prefill-chunk-size", "0")


def test_disable_prefix_cache():
    assert engine_config("--disable-prefix-cache")["enable_prefix_caching"] is False
    assert "enable_prefix_caching" not in engine_config()


def test_disable_cuda_graph():
    assert "enable_cuda_graph" not in engine_config("--disable-cuda-graph")  # our default
    with pytest.raises(ConfigError, match="contradict"):
        serve_args("--disable-cuda-graph", "--enable-cuda-graph")


def test_the_folded_settings_make_a_valid_engine_config():
    from candle_agents.engine.config import EngineConfig

    config = EngineConfig.from_kwargs(
        **engine_config(
            "--d",
            "0",
            "--dtype",
            "bf16",
            "--isq",
            "q4k",
            "--mem",
            "4096",
            "--max-num-seqs",
            "8",
            "--block-size",
            "64",
            "--prefill-chunk-size",
            "8192",
            "--disable-prefix-cache",
            "--disable-cuda-graph",
        )
    )
    assert (config.device, config.dtype, config.quantize) == ("cuda:0", "bfloat16", "q4_k")
    assert (config.kv_cache_memory, config.block_size, config.max_num_seqs) == (2**32, 64, 8)
    assert (config.prefill_chunk_size, config.max_num_batched_tokens) == (8192, 8192)
    assert config.enable_prefix_caching is False and config.enable_cuda_graph is False


# -- tools, MCP, UI, logging, token -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "parser"),
    [
        ("qwen", "hermes"),
        ("qwen_coder", "qwen3_coder"),
        ("llama", "llama3_json"),
        ("json", "llama3_json"),
        ("deepseek", "deepseek_v3"),
        ("mistral", "mistral"),
        ("pythonic", "pythonic"),
        ("hermes", "hermes"),  # ours too
    ],
)
def test_enforce_parser_is_tool_parser(name, parser):
    from candle_agents.openai.tool_parsers import TOOL_PARSERS

    assert serve_args("--enforce-parser", name).tool_parser == parser
    assert parser in TOOL_PARSERS


def test_enforce_parser_without_a_counterpart_and_conflicts():
    with pytest.raises(ConfigError, match=r"glm47_moe.*no such tool parser"):
        serve_args("--enforce-parser", "glm47_moe")
    with pytest.raises(ConfigError, match=r"--enforce-parser .*--tool-parser"):
        serve_args("--enforce-parser", "qwen", "--tool-parser", "hermes")


def test_candle_vllms_mcp_config_file_loads_here(tmp_path):
    from candle_agents.mcp import load_mcp_config

    path = tmp_path / "mcp.json"  # the example of candle-vllm's docs/mcp_tool_calling.md
    server = {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/w"]}
    path.write_text(json.dumps({"mcpServers": {"filesystem": server}}))
    args = serve_args("--mcp-config", str(path))
    assert args.mcp_config == str(path)
    loaded = load_mcp_config(args.mcp_config)
    assert (loaded["filesystem"].command, loaded["filesystem"].args) == ("npx", server["args"])


def test_mcp_command_is_one_stdio_server():
    from candle_agents.mcp import load_mcp_config

    args = serve_args("--mcp-command", "npx", "--mcp-args=-y,@mcp/server-time")
    assert args.mcp_config == {
        "mcpServers": {"default": {"command": "npx", "args": ["-y", "@mcp/server-time"]}}
    }
    assert load_mcp_config(args.mcp_config)["default"].args == ["-y", "@mcp/server-time"]
    with pytest.raises(ConfigError, match="--mcp-command and --mcp-config"):
        serve_args("--mcp-command", "npx", "--mcp-config", "m.json")
    with pytest.raises(ConfigError, match="needs --mcp-command"):
        serve_args("--mcp-args", "a")


def test_ui_server_is_accepted_and_changes_nothing():
    assert vars(serve_args("--ui-server")) == {**vars(serve_args()), "cvllm_ui_server": True}


def test_folding_twice_changes_nothing():
    args = serve_args("--m", "a/b", "--mem", "64", "--d", "0")
    assert vars(apply_candle_vllm_args(args)) == vars(
        serve_args("--m", "a/b", "--mem", "64", "--d", "0")
    )


def test_verbose_logs_requests():
    assert serve_args("--verbose").log_level == "info"
    assert serve_args("--verbose", "--log-level", "debug").log_level == "debug"


def test_hf_token_flags_set_hf_token(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", "old")
    monkeypatch.setenv("MY_TOKEN", "hf_abc")
    serve_args("--hf-token", "MY_TOKEN")
    assert os.environ["HF_TOKEN"] == "hf_abc"
    token = tmp_path / "token"
    token.write_text("hf_file\n")
    serve_args("--hf-token-path", str(token))
    assert os.environ["HF_TOKEN"] == "hf_file"
    monkeypatch.delenv("MY_TOKEN")
    with pytest.raises(ConfigError, match="MY_TOKEN"):
        serve_args("--hf-token", "MY_TOKEN")


# -- refusals, errors, help -----------------------------------------------------------------


@pytest.mark.parametrize(("flag", "takes_value", "why"), _REFUSED)
def test_flags_without_meaning_here_are_refused(capsys, flag, takes_value, why):
    err = refused(capsys, flag, *(["1"] if takes_value else []))
    assert f"{flag} (candle-vllm) has no meaning here" in err
    assert why in " ".join(err.split())


def test_multi_node_refusal_says_so(capsys):
    assert "multi-node tensor parallelism is not supported" in refused(capsys, "--node-rank", "0")


def test_conflicts_exit_2_with_the_message_from_the_command(capsys):
    assert main(["serve", "--m", "a/b", "--model", "c/d"]) == 2
    assert "--m (candle-vllm) and --model say the same thing" in capsys.readouterr().err


def test_conflicts_are_parser_errors_with_the_parser(capsys):
    parser = build_parser()
    args = parser.parse_args(["serve", "--d", "0,1"])
    with pytest.raises(SystemExit) as exc:
        apply_candle_vllm_args(args, parser)
    assert exc.value.code == 2
    assert "tensor parallelism" in capsys.readouterr().err


def test_help_shows_the_group(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = capsys.readouterr().out
    group = text[text.index("candle-vllm's command line:") :]
    for flag in (
        "--h HOST",
        "--p PORT",
        "--m MODEL_ID",
        "--w WEIGHT_PATH",
        "--f FILE",
        "--d DEVICE_ID",
        "--isq TYPE",
        "--mem MB",
        "--kv-fraction F",
        "--block-size N",
        "--prefill-chunk-size N",
        "--disable-prefix-cache",
        "--disable-cuda-graph",
        "--enforce-parser NAME",
        "--ui-server",
    ):
        assert flag in group
    assert "--num-nodes" in group  # listed as refused
    assert "-h, --help" in text


# -- end to end ---------------------------------------------------------------------------


def test_serve_runs_with_candle_vllms_flags():
    port = free_port()
    argv = ["--p", str(port), "--h", "127.0.0.1", "--mem", "64", "--max-model-len", "128"]
    with serve_process(*argv) as (proc, lines):
        assert f"http://127.0.0.1:{port}" in next(line for line in lines if "serving" in line)
        assert httpx.get(f"http://127.0.0.1:{port}/health").json() == {"status": "ok"}
    assert proc.returncode == 0, proc.stderr.read()
