"""candle-vllm's command line on ``candle-agents serve``, folded onto our own options.

Users of candle-vllm (the Rust server this project grew from) keep their flags:
``add_candle_vllm_args`` puts them on the serve parser in a group of their own,
and ``apply_candle_vllm_args`` folds what was given onto serve's own settings
(``--m`` onto ``--model``, ``--mem`` onto ``--kv-cache-memory``, ...) before
``serve.run`` reads them; ``candle_vllm_engine_options`` gives the engine settings
serve has no flag of its own for (``--block-size``, ``--prefill-chunk-size``,
``--disable-prefix-cache``). Flags with no meaning here (multi-node ranks,
several GPUs, server-wide sampling defaults, ...) stop the parse with a message
that says why. Our own defaults stay in force: candle-vllm listened on
0.0.0.0:2000, serve listens on 127.0.0.1:8000 unless ``--h``/``--p`` say otherwise.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from candle_agents.errors import ConfigError

# dest of every flag of the group starts with this, so none can clash with serve's own.
_PREFIX = "cvllm_"

# candle-vllm's --dtype values (candle's names) onto ours.
_DTYPES = {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}

# candle-vllm's --isq types onto --quantize; the others it lists have no kernels here.
_ISQ = {"q8_0": "q8_0", "q4k": "q4_k", "q4_k": "q4_k"}
_ISQ_REFUSED = ("q4_0", "q4_1", "q5_0", "q5_1", "q2k", "q3k", "q5k", "q6k")

# candle-vllm's --enforce-parser names (the `tool-parser` crate's registry) onto our tool
# parsers, where the format is the same; our own names are accepted as they are.
_PARSERS = {
    "qwen": "hermes",  # <tool_call>{"name": ..., "arguments": ...}</tool_call>
    "qwen_coder": "qwen3_coder",  # <tool_call><function=...><parameter=...>
    "mistral": "mistral",  # [TOOL_CALLS][...]
    "llama": "llama3_json",  # <|python_tag|>{"name": ..., "parameters": ...}
    "json": "llama3_json",  # a bare {"name": ..., "arguments": ...} object
    "pythonic": "pythonic",  # [f(a=1)]
    "deepseek": "deepseek_v3",  # <｜tool▁calls▁begin｜>...
}

# A GGUF file's quant tag, at the end of its name (model-Q4_K_M.gguf), and a shard suffix.
_QUANT_TAG = re.compile(
    r"(?:^|(?<=[-_.]))((?:UD-)?(?:I?Q\d[A-Z0-9_]*|TQ\d_\d|BF16|F16|F32|MXFP4[A-Z0-9_]*))$",
    re.IGNORECASE,
)
_SHARD = re.compile(r"-\d{5}-of-\d{5}$", re.IGNORECASE)

# KV-cache element types: candle-vllm's "auto" is ours; its quantized caches are not.
_KV_CACHE_DTYPES_REFUSED = ("fp8", "turbo8", "turbo4", "turbo3")

# Flags of candle-vllm's that have no meaning here: (flag, takes a value, why).
_REFUSED: tuple[tuple[str, bool, str], ...] = (
    (
        "--num-nodes",
        True,
        "multi-node tensor parallelism is not supported: serve runs one model on one device",
    ),
    (
        "--node-rank",
        True,
        "multi-node tensor parallelism is not supported: serve runs one model on one device",
    ),
    (
        "--master-addr",
        True,
        "multi-node tensor parallelism is not supported: serve runs one model on one device",
    ),
    (
        "--master-port",
        True,
        "multi-node tensor parallelism is not supported: serve runs one model on one device",
    ),
    (
        "--multithread",
        False,
        "there are no per-GPU ranks to run as threads or processes: serve runs one model "
        "on one device",
    ),
    (
        "--holding-time",
        True,
        "the scheduler admits new requests at every step (continuous batching), it never "
        "holds them back to batch them",
    ),
    (
        "--record-conversation",
        False,
        "the server keeps no chat history: clients send it, or chain /v1/responses "
        "with previous_response_id",
    ),
    (
        "--kvcache-mem-cpu",
        True,
        "KV blocks are never swapped to CPU memory here (preempted requests recompute)",
    ),
    (
        "--prefix-cache-max-tokens",
        True,
        "the prefix cache has no separate cap: it keeps what free KV blocks hold "
        "(--disable-prefix-cache turns it off)",
    ),
    (
        "--mamba-fraction",
        True,
        "there are no hybrid Mamba/GDN models here, so no state cache to size",
    ),
    (
        "--yarn-scaling-factor",
        True,
        "RoPE scaling comes from the model's config; there is no override",
    ),
    (
        "--log",
        False,
        "logs go to stderr: redirect them to a file (2>candle-agents.log), "
        "--log-level sets how much",
    ),
    *(
        (
            flag,
            True,
            "there are no server-wide sampling defaults: send it in each request "
            f"({flag[2:].replace('-', '_')})",
        )
        for flag in (
            "--temperature",
            "--top-p",
            "--top-k",
            "--min-p",
            "--frequency-penalty",
            "--presence-penalty",
        )
    ),
)


class _Refuse(argparse.Action):
    """A candle-vllm flag with no meaning here: the parse stops with the reason."""

    def __init__(self, option_strings, dest, why: str, **kwargs) -> None:
        self.why = why
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.error(f"{option_string} (candle-vllm) has no meaning here: {self.why}")


def _int_from(minimum: int, rule: str) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum`` (``rule`` says so otherwise)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} {rule}")
        return value

    return parse


_positive_int = _int_from(1, "must be at least 1")
_count = _int_from(0, "must not be negative")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} must be in (0, 1]")
    return value


def add_candle_vllm_args(parser: argparse.ArgumentParser) -> None:
    """Add candle-vllm's flags to the serve parser, in a help group of their own."""
    refused = ", ".join(flag for flag, _, _ in _REFUSED)
    g = parser.add_argument_group(
        "candle-vllm's command line",
        "candle-vllm's flags, mapped onto the options above (give one or the other, not "
        "both). --dtype also takes bf16, f16 and f32; --max-num-seqs and --mcp-config are "
        "the same as candle-vllm's (MCP servers are offered to /v1/responses by label). "
        "Defaults stay serve's (127.0.0.1:8000). Refused, as they have no meaning here: "
        f"{refused}, and --d with several devices.",
    )

    def add(flag: str, help: str, **kwargs: Any) -> None:
        g.add_argument(flag, dest=_PREFIX + flag[2:].replace("-", "_"), help=help, **kwargs)

    add(
        "--h",
        metavar="HOST",
        help="--host; also HOST:PORT, [IPv6]:PORT or tcp://HOST[:PORT] "
        "(a port here wins over --p); no Unix sockets",
    )
    add("--p", metavar="PORT", type=int, help="--port")
    add("--m", metavar="MODEL_ID", help="--model: a Hub name, a folder or a .gguf file")
    add("--w", metavar="WEIGHT_PATH", help="--model: a local folder")
    add(
        "--f",
        metavar="FILE",
        help="a GGUF file: in --w's folder (--model W/FILE), in --m's Hub repo "
        "(--model M:FILE.gguf; a folder name picks by quant, M:QUANT), or a path on its own",
    )
    add("--d", metavar="DEVICE_ID", help="--device cuda:ID (one device: no tensor parallelism)")
    add("--cpu", action="store_true", help="--device cpu")
    add(
        "--isq",
        metavar="TYPE",
        help="--quantize: q8_0 or q4k (q4_k) ("
        + ", ".join(_ISQ_REFUSED)
        + " are refused: no kernels here)",
    )
    add(
        "--mem",
        metavar="MB",
        type=_positive_int,
        help="a KV cache of MB MiB (--kv-cache-memory MBMiB)",
    )
    add("--kv-fraction", metavar="F", type=_fraction, help="--kv-cache-memory F (0 < F <= 1)")
    add(
        "--kvcache-dtype",
        metavar="TYPE",
        help="auto only (the default); fp8 and turbo* are refused (--kv-cache-dtype "
        "float16 or bfloat16 halves the cache)",
    )
    add("--block-size", metavar="N", type=_positive_int, help="KV-cache block size in tokens")
    add(
        "--prefill-chunk-size",
        metavar="N",
        type=_count,
        help="prompt tokens one step prefills (a step's token budget is raised to N if "
        "smaller); 0 (no chunking) is refused",
    )
    add("--disable-prefix-cache", action="store_true", help="turn the prefix cache off")
    add(
        "--disable-cuda-graph",
        action="store_true",
        help="no CUDA graphs (the default here; --enable-cuda-graph turns them on)",
    )
    add(
        "--mcp-command",
        metavar="CMD",
        help="--mcp-config with one stdio server, labelled 'default'",
    )
    add(
        "--mcp-args",
        metavar="A,B,...",
        help="that server's arguments, comma-separated (--mcp-args=-y,... when the first "
        "starts with -)",
    )
    add("--enforce-parser", metavar="NAME", help="--tool-parser (candle-vllm's names or ours)")
    add("--ui-server", action="store_true", help="accepted: the chat page is always served at /")
    add("--verbose", action="store_true", help="log every request (--log-level info)")
    add("--hf-token", metavar="ENV_VAR", help="HF_TOKEN from this environment variable")
    add("--hf-token-path", metavar="FILE", help="HF_TOKEN from this file")
    for flag, takes_value, why in _REFUSED:
        g.add_argument(
            flag,
            dest=_PREFIX + flag[2:].replace("-", "_"),
            action=_Refuse,
            why=why,
            nargs=None if takes_value else 0,
            default=None,
            help=argparse.SUPPRESS,
        )


def apply_candle_vllm_args(
    args: argparse.Namespace, parser: argparse.ArgumentParser | None = None
) -> argparse.Namespace:
    """Fold the candle-vllm flags in ``args`` onto serve's own options, in place.

    A conflict (``--m`` with ``--model``, ``--mem`` with ``--kv-fraction``, ...) or a
    value with no meaning here raises ConfigError, or ``parser.error`` (exit 2) when
    ``parser`` is given. Returns ``args``; a second call leaves them as they are.
    """
    if getattr(args, _PREFIX + "folded", False):
        return args
    try:
        _apply(args, parser)
        setattr(args, _PREFIX + "folded", True)
    except ConfigError as exc:
        if parser is None:
            raise
        parser.error(str(exc))
    return args


def candle_vllm_engine_options(args: argparse.Namespace) -> dict[str, object]:
    """EngineConfig fields set by candle-vllm flags that serve has no flag of its own for."""
    options: dict[str, object] = {}
    if _get(args, "block_size") is not None:
        options["block_size"] = _get(args, "block_size")
    chunk = _get(args, "prefill_chunk_size")
    if chunk:
        from candle_agents.engine.config import EngineConfig

        options["prefill_chunk_size"] = chunk
        options["max_num_batched_tokens"] = max(chunk, EngineConfig.max_num_batched_tokens)
    if _get(args, "disable_prefix_cache"):
        options["enable_prefix_caching"] = False
    return options


def _get(args: argparse.Namespace, name: str) -> Any:
    return getattr(args, _PREFIX + name, None)


def _default(parser: argparse.ArgumentParser | None, name: str, fallback: Any) -> Any:
    """serve's default for ``name``: the parser's, when it is serve's, else ``fallback``."""
    default = parser.get_default(name) if parser is not None else None
    return fallback if default is None else default


def _conflict(ours: str, theirs: str) -> ConfigError:
    return ConfigError(f"{theirs} (candle-vllm) and {ours} say the same thing: give one of them")


def _apply(args: argparse.Namespace, parser: argparse.ArgumentParser | None) -> None:
    _apply_address(args, parser)
    _apply_model(args)
    _apply_device(args, parser)
    _apply_cache(args)
    _apply_tools(args)
    _apply_misc(args)


def _split_host(text: str) -> tuple[str, int | None]:
    """candle-vllm's --h: host, host:port, [ipv6]:port or tcp://host[:port]."""
    value = text.strip()
    if value.split("://", 1)[0].lower() in ("unix", "file", "socket") and "://" in value:
        raise ConfigError(
            f"--h {text}: serve listens on TCP only, not on a Unix socket; give a host "
            "(and --p PORT)"
        )
    if value.lower().startswith("tcp://"):
        value = value[len("tcp://") :].rstrip("/")
    port_text = None
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ConfigError(f"--h {text}: expected [IPv6] or [IPv6]:PORT")
        port_text = rest[1:] or None
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    else:
        host = value  # a name, an IPv4 address or a bare IPv6 one
    if not host:
        raise ConfigError(f"--h {text}: no host given")
    if port_text is None:
        return host, None
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"--h {text}: {port_text!r} is not a port number")
    return host, int(port_text)


def _apply_address(args: argparse.Namespace, parser: argparse.ArgumentParser | None) -> None:
    host_text, port = _get(args, "h"), _get(args, "p")
    if host_text is not None:
        if args.host != _default(parser, "host", "127.0.0.1"):
            raise _conflict("--host", "--h")
        host, host_port = _split_host(host_text)
        args.host = host
        if host_port is not None:
            port = host_port  # candle-vllm: --p applies when --h has no port
    if port is not None:
        if args.port != _default(parser, "port", 8000):
            raise _conflict("--port", "--p")
        if not 0 <= port <= 65535:
            raise ConfigError(f"--p {port}: not a port number")
        args.port = port


def _apply_model(args: argparse.Namespace) -> None:
    model_id, weight_path, weight_file = _get(args, "m"), _get(args, "w"), _get(args, "f")
    if model_id is None and weight_path is None and weight_file is None:
        return
    if args.model is not None:
        given = "--m" if model_id is not None else "--w" if weight_path is not None else "--f"
        raise _conflict("--model", given)
    if model_id is not None and weight_path is not None:
        raise ConfigError(
            "--m and --w both name the model: give --m (a Hub name, folder or .gguf) or "
            "--w (a local folder), as candle-vllm does"
        )
    if weight_file is None:
        args.model = model_id if model_id is not None else weight_path
    elif weight_path is not None:
        args.model = str(Path(weight_path) / weight_file)
    elif model_id is not None:
        if Path(model_id).expanduser().is_dir():
            args.model = str(Path(model_id) / weight_file)
        elif weight_file.lower().endswith(".gguf"):
            # The file itself, by name: the Hub resolver takes REPO:FILE.gguf exactly.
            args.model = f"{model_id}:{weight_file.strip().rsplit('/', 1)[-1]}"
        else:
            args.model = f"{model_id}:{_hub_quant(model_id, weight_file)}"
    else:
        args.model = weight_file


def _hub_quant(repo: str, weight_file: str) -> str:
    """The tag for ``--m REPO --f FOLDER``: a folder of GGUFs (candle-vllm downloads them
    all) picks by quant, as unsloth's Q3_K_S/ and the like are named by it (REPO:QUANT).
    """
    name = weight_file.strip().strip("/").rsplit("/", 1)[-1]
    if name.lower().endswith(".gguf"):
        name = name[: -len(".gguf")]
    name = _SHARD.sub("", name)
    found = _QUANT_TAG.search(name)
    tag = found.group(1) if found is not None else name
    if not re.fullmatch(r"[\w.-]+", tag):
        raise ConfigError(
            f"--m {repo} --f {weight_file}: a GGUF in a Hub repo is chosen here by its quant "
            f"tag ({repo}:Q4_K_M), and {weight_file!r} gives none; download the file and "
            "give --f PATH (or --m PATH)"
        )
    return tag


def _apply_device(args: argparse.Namespace, parser: argparse.ArgumentParser | None) -> None:
    device_ids, cpu = _get(args, "d"), _get(args, "cpu")
    if device_ids is not None or cpu:
        given = "--cpu" if cpu else "--d"
        if device_ids is not None and cpu:
            raise ConfigError("--d and --cpu name different devices: give one of them")
        if args.device != _default(parser, "device", "auto"):
            raise _conflict("--device", given)
        if cpu:
            args.device = "cpu"
        else:
            ids = [part.strip() for part in device_ids.split(",") if part.strip()]
            if len(ids) > 1:
                raise ConfigError(
                    f"--d {device_ids}: several devices mean tensor parallelism, which is not "
                    "supported here: serve runs one model on one device (give one id)"
                )
            if not ids or not ids[0].isdigit():
                raise ConfigError(f"--d {device_ids}: expected a device id such as 0")
            args.device = f"cuda:{int(ids[0])}"
    if args.dtype in _DTYPES:
        args.dtype = _DTYPES[args.dtype]
    isq = _get(args, "isq")
    if isq is not None:
        key = isq.strip().lower()
        if key not in _ISQ:
            raise ConfigError(
                f"--isq {isq}: in-situ quantization here makes q8_0 or q4k (q4_k) only; "
                f"{', '.join(_ISQ_REFUSED)} have no kernels here"
            )
        if args.quantize is not None and args.quantize != _ISQ[key]:
            raise _conflict("--quantize", "--isq")
        args.quantize = _ISQ[key]


def _apply_cache(args: argparse.Namespace) -> None:
    mem, fraction = _get(args, "mem"), _get(args, "kv_fraction")
    if mem is not None and fraction is not None:
        raise ConfigError(
            "--mem and --kv-fraction both size the KV cache: give one of them (candle-vllm "
            "took --mem only where it could not size the cache from free GPU memory; both "
            "work on every device here)"
        )
    if mem is not None or fraction is not None:
        if args.kv_cache_memory is not None:
            raise _conflict("--kv-cache-memory", "--mem" if mem is not None else "--kv-fraction")
        args.kv_cache_memory = mem * 2**20 if mem is not None else float(fraction)
    kv_dtype = _get(args, "kvcache_dtype")
    if kv_dtype is not None:
        key = kv_dtype.strip().lower()
        if key in _KV_CACHE_DTYPES_REFUSED:
            raise ConfigError(
                f"--kvcache-dtype {kv_dtype}: quantized KV caches are not supported here; "
                "--kv-cache-dtype float16 or bfloat16 halves the cache"
            )
        if key != "auto":
            raise ConfigError(
                f"--kvcache-dtype {kv_dtype}: candle-vllm's values are auto, fp8, turbo8, "
                "turbo4 and turbo3 (only auto is supported here)"
            )
    if _get(args, "prefill_chunk_size") == 0:
        raise ConfigError(
            "--prefill-chunk-size 0 (no chunked prefill) is not supported by serve: prompts "
            "are prefilled in chunks; give a chunk size"
        )
    if _get(args, "disable_cuda_graph") and args.enable_cuda_graph:
        raise ConfigError("--disable-cuda-graph and --enable-cuda-graph contradict each other")


def _apply_tools(args: argparse.Namespace) -> None:
    command, mcp_args = _get(args, "mcp_command"), _get(args, "mcp_args")
    if mcp_args is not None and command is None:
        raise ConfigError("--mcp-args needs --mcp-command (the server they are passed to)")
    if command is not None:
        if args.mcp_config is not None:
            raise ConfigError(
                "--mcp-command and --mcp-config both name MCP servers: give one of them "
                "(add the command to the config file)"
            )
        server: dict[str, Any] = {"command": command}
        if mcp_args is not None:
            server["args"] = [part for part in mcp_args.split(",") if part]
        args.mcp_config = {"mcpServers": {"default": server}}
    parser_name = _get(args, "enforce_parser")
    if parser_name is not None:
        if args.tool_parser is not None:
            raise _conflict("--tool-parser", "--enforce-parser")
        from candle_agents.openai.tool_parsers import TOOL_PARSERS

        key = parser_name.strip().lower().replace("-", "_")
        if key in _PARSERS:
            args.tool_parser = _PARSERS[key]
        elif key in TOOL_PARSERS:
            args.tool_parser = key
        else:
            raise ConfigError(
                f"--enforce-parser {parser_name}: no such tool parser here; candle-vllm's "
                f"names with a counterpart: {', '.join(sorted(_PARSERS))}; ours: "
                f"{', '.join(sorted(TOOL_PARSERS))}"
            )


def _apply_misc(args: argparse.Namespace) -> None:
    if _get(args, "verbose"):
        level = logging.getLevelName(str(getattr(args, "log_level", "warning")).upper())
        if not isinstance(level, int) or level > logging.INFO:
            args.log_level = "info"
    token_var, token_path = _get(args, "hf_token"), _get(args, "hf_token_path")
    token = None
    if token_path is not None:  # candle-vllm: the file wins when both are given
        try:
            token = Path(token_path).expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"--hf-token-path {token_path}: {exc.strerror or exc}") from None
    elif token_var is not None:
        token = os.environ.get(token_var, "").strip()
        if not token:
            raise ConfigError(f"--hf-token {token_var}: that environment variable is not set")
    if token:
        os.environ["HF_TOKEN"] = token
