"""Our engine against llama.cpp's `llama-batched-bench`, on the same GGUF files, same machine.

For each file and each number of parallel sequences (npl), both sides process npl distinct
random prompts of npp tokens and generate ntg tokens for each, greedy, EOS ignored:

  llama.cpp  llama-batched-bench -m FILE -npp NPP -ntg NTG -npl N0,N0,N1,.. -t THREADS
             -c NPL_MAX*(NPP+NTG) -no-kvu   (no -pps: every sequence has its own prompt;
             -no-kvu: one KV stream per sequence, as our paged cache attends per sequence;
             the first npl is run twice and its first row dropped: that is the warm-up)
             S_PP = npl*npp / T_PP, T_PP = one llama_decode over all prompts (logits of the
             last prompt token of each); S_TG = npl*ntg / T_TG, T_TG = ntg decode steps of
             npl tokens each (random input tokens, no sampling). Its defaults otherwise:
             KV cache in float16, flash attention "auto" (on, on CPU), n_batch 2048.
  ours       Engine.from_pretrained(FILE, max_num_seqs=32, kv_cache_memory=<the same number
             of tokens as llama.cpp's context>, --engine overrides, defaults otherwise: GGUF
             blocks kept, exact kernels, float32 KV on CPU (float16 with --engine
             quantized_matmul=int8), 2048 tokens a step); one warm-up
             request (npp prompt, ntg new tokens, untimed), then per npl all prompts submitted
             at once with `engine.stream` and timed as they stream back:
             prompt tok/s = npl*npp / (submit -> the last request's first token), which covers
             the prompt forward passes plus sampling the first token;
             gen tok/s = npl*(ntg-1) / (that moment -> the last request's last token), i.e.
             ntg-1 decode steps, as the first token came from the prompt phase (where the
             prompts take several steps, the first ones already decode during the last).
  Peak RSS   each side runs in its own child process, started from a small launcher (not
             from this process, whose own peak a forked child's ru_maxrss would inherit);
             ru_maxrss from os.wait4 (includes the resident pages of the memory-mapped GGUF
             on both sides).

Files: `default` (the embedded SmolLM2-135M Q4_1), `1b-q4_k_m` and `1b-q8_0`: a random-weight
Llama-3.2-1B-shaped model, built on first use under ~/.cache/candle-agents/bench/ (transformers
-> safetensors -> llama.cpp's convert_hf_to_gguf.py (BF16) -> llama-quantize).

    python benchmarks/llamacpp.py                                  # all three files
    python benchmarks/llamacpp.py --files default --repeat 3       # best of 3 runs per side
    python benchmarks/llamacpp.py --engine dequantize=True --json out.json
    python benchmarks/llamacpp.py --smoke                          # ours only, tiny, for tests

llama.cpp's binaries: --llamacpp-bin, else $LLAMACPP_BIN, else the folder printed by
/work/shared/tools/llamacpp.sh (builds llama.cpp), else llama-batched-bench on PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from childproc import run_child, wait_for_quiet
from llamacpp_files import FILES, model_file, model_shape

# The engine measured is the one beside this script (a worktree's), not an installed one:
# a script's sys.path starts at its own folder, not at the current directory.
ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "candle_agents").is_dir() and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LLAMACPP_SH = Path("/work/shared/tools/llamacpp.sh")
SMOKE = {"files": "default", "npl": "1,2", "npp": 16, "ntg": 8}
SEED = 1234
# What each side's figures mean: the docstring's paragraphs before "Files:".
DEFINITIONS = __doc__.split("\n\nFiles:")[0].split("\n\n", 1)[1]


# -- command line ---------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """An --engine value as int, float, bool or None where it reads as one, else a string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_engine_options(items: list[str]) -> dict[str, Any]:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--engine takes KEY=VALUE, got {item!r}")
        options[key.strip()] = parse_value(value)
    return options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", default=",".join(FILES), help=f"from {', '.join(FILES)}")
    parser.add_argument("--npl", default="1,8,32", help="parallel sequences, comma-separated")
    parser.add_argument("--npp", type=int, default=128, help="prompt tokens per sequence")
    parser.add_argument("--ntg", type=int, default=128, help="generated tokens per sequence")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--engine", action="append", default=[], metavar="KEY=VALUE", help="engine config"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per side; best is reported")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each run, wait up to this long for others' CPU load to drop",
    )
    parser.add_argument("--json", default=None, help="write every figure to this file")
    parser.add_argument("--skip-llamacpp", action="store_true")
    parser.add_argument("--llamacpp-bin", default=None, help="folder of llama.cpp's binaries")
    parser.add_argument("--smoke", action="store_true", help="ours only, npl 1,2, npp 16, ntg 8")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal
    args = parser.parse_args(argv)
    if args.smoke:
        args.files, args.npl, args.npp, args.ntg = (
            SMOKE[k] for k in ("files", "npl", "npp", "ntg")
        )
        args.skip_llamacpp = True
    args.files = [f.strip() for f in args.files.split(",") if f.strip()]
    bad = [f for f in args.files if f not in FILES]
    if bad:
        parser.error(f"unknown file(s) {', '.join(bad)}: use {', '.join(FILES)}")
    args.npl = [int(n) for n in str(args.npl).split(",")]
    if min(args.npl) < 1 or args.npp < 1 or args.ntg < 2 or args.repeat < 1:
        parser.error("npl and npp must be >= 1, ntg >= 2, repeat >= 1")
    args.engine = parse_engine_options(args.engine)
    return args


# -- the machine ----------------------------------------------------------------------------


def machine_info(threads: int, bin_dir: Path | None) -> dict[str, Any]:
    llamacpp = llamacpp_version(bin_dir) if bin_dir else None
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("", platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    avx512 = sorted(f.removeprefix("avx512") for f in flags if f.startswith("avx512"))
    summary = [
        "AVX2" if "avx2" in flags else "no AVX2",
        f"AVX-512 ({' '.join(s.strip('_') for s in avx512)})" if avx512 else "no AVX-512",
        "VNNI" if {"avx512_vnni", "avx_vnni"} & flags else "no VNNI",
        "AMX listed (not used)" if "amx_tile" in flags else "no AMX",
    ]
    import candle_agents

    git = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True
    )
    return {
        "engine": f"{Path(candle_agents.__file__).parent} ({git.stdout.strip() or 'no git'})",
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": threads,
        "flags": ", ".join(summary),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "llamacpp": llamacpp,
        "llamacpp_bin": str(bin_dir) if bin_dir else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def find_llamacpp(option: str | None) -> Path | None:
    """The folder holding llama-batched-bench and llama-quantize, or None."""
    for candidate in (option, os.environ.get("LLAMACPP_BIN")):
        if candidate:
            return Path(candidate).expanduser()
    if LLAMACPP_SH.is_file():
        done = subprocess.run(["bash", str(LLAMACPP_SH)], capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip():
            return Path(done.stdout.strip().splitlines()[-1])
        print(f"{LLAMACPP_SH} failed: {done.stderr[-2000:]}", file=sys.stderr)
    found = shutil.which("llama-batched-bench")
    return Path(found).parent if found else None


def llamacpp_version(bin_dir: Path) -> str:
    done = subprocess.run(
        [str(bin_dir / "llama-batched-bench"), "--version"], capture_output=True, text=True
    )
    lines = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.startswith("version")]
    return lines[0].removeprefix("version:").strip() if lines else "unknown"


# -- child processes ------------------------------------------------------------------------


def child_env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def llamacpp_command(bin_dir: Path, path: Path, args: argparse.Namespace) -> list[str]:
    npl = [args.npl[0], *args.npl]  # the first row is the warm-up, dropped
    return [
        str(bin_dir / "llama-batched-bench"),
        *("-m", str(path), "-npp", str(args.npp), "-ntg", str(args.ntg)),
        *("-npl", ",".join(map(str, npl)), "-t", str(args.threads)),
        *("-c", str(max(args.npl) * (args.npp + args.ntg)), "-no-kvu"),
    ]


# llama-batched-bench's columns PP, TG, B, N_KV, T_PP s, S_PP t/s, T_TG s, S_TG t/s, by our names.
TABLE_KEYS = ("npp", "ntg", "npl", "n_kv", "t_pp_s", "prompt_tok_s", "t_tg_s", "gen_tok_s")


def parse_batched_bench(text: str) -> tuple[list[dict[str, float]], dict[str, str]]:
    """The result rows of llama-batched-bench's markdown table and its settings line."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and cells[0].isdigit():
            values = [*map(int, cells[:4]), *map(float, cells[4:8])]
            rows.append(dict(zip(TABLE_KEYS, values)))
    settings = {}
    match = re.search(r"llama_batched_bench: (n_kv_max = .*)", text)
    if match:
        settings = dict(kv.split(" = ") for kv in match.group(1).split(", ") if " = " in kv)
    return rows, settings


def run_llamacpp(bin_dir: Path, path: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = llamacpp_command(bin_dir, path, args)
    done = run_child(cmd, child_env(args.threads), capture_stderr=True)
    code, out = done["code"], done["output"]
    rows, settings = parse_batched_bench(out)
    if code != 0 or len(rows) != len(args.npl) + 1:
        raise RuntimeError(f"{' '.join(cmd)} failed ({code}):\n{out[-3000:]}")
    return {
        "command": " ".join(cmd),
        "settings": settings,
        "npl": {str(r["npl"]): r for r in rows[1:]},
        "peak_rss_mib": done["peak_rss_mib"],
        "cpu_pressure_pct": done["cpu_pressure_pct"],
        "times_stopped": done["times_stopped"],
    }


def engine_config(args: argparse.Namespace, shape: dict[str, int]) -> tuple[dict, int]:
    """Our engine's config: as much KV cache, in tokens, as llama.cpp's context."""
    opts = args.engine
    # The engine's CPU default: float16 on the int8 path, else float32 (ModelRunner._kv_dtype).
    int8 = opts.get("quantized_matmul") == "int8" and not opts.get("dequantize")
    kv_dtype = next(
        (opts[k] for k in ("kv_cache_dtype", "dtype") if opts.get(k) not in (None, "auto")),
        "float16" if int8 else "float32",
    )
    per_token = (
        2
        * shape["num_hidden_layers"]
        * shape["num_key_value_heads"]
        * shape["head_dim"]
        * getattr(torch, str(kv_dtype)).itemsize
    )
    block = int(opts.get("block_size", 16))
    tokens = max(args.npl) * (args.npp + args.ntg) + block  # one block of slack
    config = {"max_num_seqs": max(32, *args.npl), "kv_cache_memory": per_token * tokens}
    return {**config, **opts}, per_token


def run_ours(path: Path, args: argparse.Namespace, shape: dict[str, int]) -> dict[str, Any]:
    config, per_token = engine_config(args, shape)
    with tempfile.TemporaryDirectory(prefix="bench-ours-") as tmp:
        spec = {
            "model": str(path),
            "engine": config,
            "npl": args.npl,
            "npp": args.npp,
            "ntg": args.ntg,
            "threads": args.threads,
            "vocab_size": shape["vocab_size"],
            "out": str(Path(tmp) / "ours.json"),
        }
        cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
        done = run_child(cmd, child_env(args.threads), capture_stderr=False)
        if done["code"] != 0:
            raise RuntimeError(
                f"our engine's run failed ({done['code']}), see above:\n{done['output'][-3000:]}"
            )
        result = json.loads(Path(spec["out"]).read_text())
    result.update(
        engine_config=config,
        kv_bytes_per_token=per_token,
        peak_rss_mib=done["peak_rss_mib"],
        cpu_pressure_pct=done["cpu_pressure_pct"],
        times_stopped=done["times_stopped"],
    )
    return result


# -- ours, inside the child -----------------------------------------------------------------


def random_prompts(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(length)] for _ in range(count)]


def _weights_kind(engine: Any) -> str:
    """ "Q4_1+Q8_0 (exact)" for quantized layers, else the float dtype."""
    parts = [w for m in engine.runner.model.modules() for _, w in getattr(m, "parts", [])]
    if not parts:
        return str(engine.runner.dtype).removeprefix("torch.")
    kinds = "+".join(sorted({w.type_name for w in parts}))
    return f"{kinds} ({engine.config.quantized_matmul})"


async def timed_batch(engine, prompts: list[list[int]], ntg: int) -> dict[str, Any]:
    """Submit ``prompts`` together, stream them back, and time the two phases."""
    from candle_agents import GenerationParams

    params = GenerationParams(max_tokens=ntg, temperature=0.0, ignore_eos=True)
    stats = engine.stats
    steps0, preempt0 = stats.steps, engine.scheduler.num_preemptions
    # Each stream() call wakes the engine thread; a long GIL switch interval keeps it
    # from taking its first step before the last prompt is in, as one batch.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1.0)
    try:
        start = time.perf_counter()
        streams = [engine.stream(p, params) for p in prompts]
    finally:
        sys.setswitchinterval(interval)

    async def consume(stream) -> tuple[float, float, int]:
        first, count = None, 0
        async for delta in stream:
            count += len(delta.token_ids)
            if first is None and delta.token_ids:
                first = time.perf_counter()
        return first, time.perf_counter(), count

    done = await asyncio.gather(*(consume(s) for s in streams))
    counts = {n for _, _, n in done}
    if counts != {ntg}:
        raise RuntimeError(f"requests returned {sorted(counts)} tokens, not {ntg}")
    first, end = max(f for f, _, _ in done), max(e for _, e, _ in done)
    npl = len(prompts)
    return {
        "prompt_s": first - start,
        "gen_s": end - first,
        "prompt_tok_s": npl * len(prompts[0]) / (first - start),
        "gen_tok_s": npl * (ntg - 1) / (end - first),
        "mean_ttft_s": sum(f - start for f, _, _ in done) / npl,
        "steps": stats.steps - steps0,
        "preemptions": engine.scheduler.num_preemptions - preempt0,
    }


def child_main(spec: dict[str, Any]) -> None:
    torch.set_num_threads(spec["threads"])
    from candle_agents import Engine
    from candle_agents.engine import cpu_kernels

    t0 = time.perf_counter()
    engine = Engine.from_pretrained(spec["model"], **spec["engine"])
    load_s = time.perf_counter() - t0
    npp, ntg, vocab = spec["npp"], spec["ntg"], spec["vocab_size"]
    runner = engine.runner
    result: dict[str, Any] = {
        "load_s": round(load_s, 2),
        "dtype": str(runner.dtype).removeprefix("torch."),
        "weights": _weights_kind(engine),
        "weight_mib": round(runner.weight_bytes / 2**20, 1),
        "kv_cache_tokens": engine.num_blocks * engine.config.block_size,
        "kv_cache_dtype": str(runner.kv_dtype).split(".")[-1],
        "attention_backend": runner.backend.name,
        "cpu_kernels": cpu_kernels.available(),
        "npl": {},
    }
    try:
        asyncio.run(timed_batch(engine, random_prompts(1, npp, vocab, SEED), ntg))  # warm-up
        for npl in spec["npl"]:
            # Fresh random prompts never share a block; the cache is emptied all the same.
            engine.block_manager.reset_prefix_cache()
            prompts = random_prompts(npl, npp, vocab, SEED + 1000 * npl)
            figures = asyncio.run(timed_batch(engine, prompts, ntg))
            result["npl"][str(npl)] = figures
            progress("ours", {str(npl): figures})
            cpu_kernels.release_thread_pool()
    finally:
        engine.shutdown()
    status = Path("/proc/self/status")
    hwm = re.search(r"VmHWM:\s+(\d+)", status.read_text()) if status.exists() else None
    result["vm_hwm_mib"] = round(int(hwm.group(1)) / 1024, 1) if hwm else None
    Path(spec["out"]).write_text(json.dumps(result))


def progress(side: str, figures: dict[str, dict[str, float]]) -> None:
    for npl, row in figures.items():
        print(
            f"  {side} npl {npl}: gen {row['gen_tok_s']:.1f} tok/s, "
            f"prompt {row['prompt_tok_s']:.1f} tok/s",
            file=sys.stderr,
            flush=True,
        )


# -- the report -----------------------------------------------------------------------------


def best_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per npl, the best throughput of the runs; the highest peak RSS of the runs."""
    best = {**runs[-1], "npl": {}, "runs": len(runs)}
    best["peak_rss_mib"] = max(r["peak_rss_mib"] for r in runs)
    best["cpu_pressure_pct"] = [r.get("cpu_pressure_pct") for r in runs]
    best["times_stopped"] = [r.get("times_stopped") for r in runs]
    for npl in runs[0]["npl"]:
        rows = [r["npl"][npl] for r in runs]
        best["npl"][npl] = {
            "gen_tok_s": round(max(r["gen_tok_s"] for r in rows), 2),
            "prompt_tok_s": round(max(r["prompt_tok_s"] for r in rows), 2),
            "all_runs": rows,
        }
    return best


def ratio(ours: float | None, theirs: float | None) -> float | None:
    return round(ours / theirs, 2) if ours and theirs else None


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report(name: str, entry: dict[str, Any]) -> str:
    ours, theirs = entry["ours"], entry.get("llamacpp")
    lines = [
        f"### {name}: {Path(entry['path']).name} ({entry['size_mib']:.0f} MiB)",
        "",
        "| npl | llama.cpp gen tok/s | ours gen tok/s | ratio | llama.cpp prompt tok/s "
        "| ours prompt tok/s | ratio |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for npl, mine in ours["npl"].items():
        other = theirs["npl"][npl] if theirs else {}
        r = entry["ratios"]["npl"][npl]
        lines.append(
            f"| {npl} | {fmt(other.get('gen_tok_s'))} | {fmt(mine['gen_tok_s'])} "
            f"| {fmt(r['gen'], 2)} | {fmt(other.get('prompt_tok_s'))} "
            f"| {fmt(mine['prompt_tok_s'])} | {fmt(r['prompt'], 2)} |"
        )
    rss_theirs = theirs["peak_rss_mib"] if theirs else None
    lines += [
        "",
        f"Peak RSS: llama.cpp {fmt(rss_theirs, 0)} MiB, ours {fmt(ours['peak_rss_mib'], 0)} MiB, "
        f"ratio {fmt(entry['ratios']['peak_rss'], 2)}. Ours: {ours['weights']} weights "
        f"({ours['weight_mib']} MiB), "
        f"{ours['kv_cache_tokens']} KV tokens in {ours['kv_cache_dtype']}, "
        f"{ours['attention_backend']} attention, engine config {ours['engine_config']}.",
    ]
    pressure = [f"ours {ours['cpu_pressure_pct']}"]
    if theirs:
        pressure.insert(0, f"llama.cpp {theirs['cpu_pressure_pct']}")
        lines.append(f"llama.cpp: `{theirs['command']}`")
    lines.append(
        "CPU pressure per run (% of its time some task waited for a CPU; high means the "
        f"figures are slowed by contention): {', '.join(pressure)}"
    )
    stops = sum(ours["times_stopped"]) + (sum(theirs["times_stopped"]) if theirs else 0)
    if stops:
        lines.append(f"**{stops} run(s) were stopped (SIGSTOP) by someone: figures are off.**")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return
    bin_dir = None
    if not args.skip_llamacpp or any(f != "default" for f in args.files):
        bin_dir = find_llamacpp(args.llamacpp_bin)
        if bin_dir is None or not (bin_dir / "llama-batched-bench").exists():
            raise SystemExit("llama.cpp not found: pass --llamacpp-bin or --skip-llamacpp")
    machine = machine_info(args.threads, bin_dir)
    figures: dict[str, Any] = {
        "machine": machine,
        "settings": {
            "npl": args.npl,
            "npp": args.npp,
            "ntg": args.ntg,
            "threads": args.threads,
            "repeat": args.repeat,
            "engine": args.engine,
            "smoke": args.smoke,
        },
        "definitions": DEFINITIONS,
        "files": {},
    }
    print(
        f"{machine['cpu']}, {machine['cores']} cores ({machine['flags']}); {args.threads} threads; "
        f"torch {machine['torch']}; llama.cpp {machine['llamacpp'] or 'not run'}; {machine['date']}"
        f"\nengine: {machine['engine']}"
    )
    print(DEFINITIONS + "\n")
    print("Timings are noisy when others share the machine: best of --repeat runs per side.")
    if args.smoke:
        print("smoke: figures are not meaningful (tiny prompts, ours only)")
    for name in args.files:
        path = model_file(name, bin_dir, args.threads)
        shape = model_shape(path)
        ours_runs, their_runs = [], []
        for i in range(args.repeat):
            print(f"{name}: run {i + 1}/{args.repeat}", file=sys.stderr)
            if not args.skip_llamacpp:
                wait_for_quiet(args.quiet_wait)
                their_runs.append(run_llamacpp(bin_dir, path, args))
                progress("llama.cpp", their_runs[-1]["npl"])
            wait_for_quiet(args.quiet_wait)
            ours_runs.append(run_ours(path, args, shape))
        ours = best_of(ours_runs)
        theirs = best_of(their_runs) if their_runs else None
        entry = {
            "path": str(path),
            "size_mib": path.stat().st_size / 2**20,
            "shape": shape,
            "ours": ours,
            "llamacpp": theirs,
        }
        entry["ratios"] = {
            "npl": {
                n: {
                    k: ratio(
                        ours["npl"][n][f"{k}_tok_s"], theirs and theirs["npl"][n][f"{k}_tok_s"]
                    )
                    for k in ("gen", "prompt")
                }
                for n in ours["npl"]
            },
            "peak_rss": ratio(ours["peak_rss_mib"], theirs and theirs["peak_rss_mib"]),
        }
        figures["files"][name] = entry
        print("\n" + report(name, entry) + "\n", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
