"""GPU throughput of our engine against transformers `generate`, and the decode kernel's bandwidth.

What it measures, in one run on one GPU:
  throughput  a Llama-3.2-1B-shaped model with random weights (built here, nothing is
              downloaded), 256 concurrent requests of 512 random prompt tokens and 256
              output tokens, greedy, EOS ignored: our engine (bfloat16, triton attention,
              CUDA graphs unless --no-cuda-graph) against transformers `generate` on the
              same folder, prompts and dtype; output tokens/s of each and the ratio
  bandwidth   the paged decode kernel (`paged_decode`: 32 sequences, 32 query heads,
              8 KV heads, head_dim 64, block size 16, bfloat16, shuffled blocks) at
              contexts 1k, 4k and 16k: K/V bytes read per second, as a share of the GPU's
              peak memory bandwidth, next to SDPA on a dense copy of the same K/V

Targets: ours >= 5x transformers' output tokens/s; the decode kernel >= 70% of peak
bandwidth at 4k and above.

    python benchmarks/gpu_throughput.py                       # on a CUDA GPU (H100, H200, ...)
    python benchmarks/gpu_throughput.py --json gpu.json       # also save every figure
    python benchmarks/gpu_throughput.py --peak-gbps 3350      # a GPU missing from the table
    python benchmarks/gpu_throughput.py --parts kernel        # only the kernel bandwidth
    python benchmarks/gpu_throughput.py --smoke               # CPU: tiny shapes, every path

--smoke runs the whole pipeline on CPU in float32 with a tiny model, the triton kernels in
triton's interpreter (TRITON_INTERPRET=1, set here) and wall-clock timers: it checks that
the script works; its figures mean nothing and no target is judged. The exit status is 0
whether or not a target is met (the verdicts are printed and saved); it is not 0 when a
part fails to run.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

THROUGHPUT_TARGET = 5.0  # ours / transformers, output tokens/s
BANDWIDTH_TARGET = 0.70  # share of peak memory bandwidth
BANDWIDTH_TARGET_FROM = 4096  # judged at contexts of at least this many tokens

# Peak memory bandwidth (bytes/s) by device name (torch.cuda.get_device_name, lower-cased):
# the first row whose substrings all occur wins. Vendor datasheet figures.
PEAK_BANDWIDTH: list[tuple[tuple[str, ...], float | None]] = [
    (("gh200",), None),  # 96 GB and 144 GB parts differ: pass --peak-gbps
    (("h200",), 4.8e12),
    (("h100", "nvl"), 3.9e12),
    (("h100", "pcie"), 2.0e12),
    (("h100",), 3.35e12),  # SXM5, "NVIDIA H100 80GB HBM3"
    (("a100", "80gb"), 2.0e12),
    (("a100",), 1.555e12),  # 40 GB
]

# Llama-3.2-1B's shape; the weights are random.
LLAMA_3_2_1B = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
}
SMOKE_MODEL = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "vocab_size": 512,
    "max_position_embeddings": 16384,
}
ROPE_SCALING = {
    "rope_type": "llama3",
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
WEIGHT_STD = 0.02

# Defaults of the options that differ between a GPU run and --smoke.
DEFAULTS = {
    "requests": 256,
    "prompt_len": 512,
    "output_len": 256,
    "hf_batch": None,  # all requests in one batch
    "max_batched_tokens": 8192,
    "contexts": "1024,4096,16384",
    "kernel_batch": 32,
    "kernel_iters": 100,
}
SMOKE_DEFAULTS = {
    "requests": 4,
    "prompt_len": 16,
    "output_len": 8,
    "hf_batch": None,
    "max_batched_tokens": 64,
    "contexts": "128,512",
    "kernel_batch": 2,
    "kernel_iters": 2,
}
# The interpreter has no SMs; with this many the 512-token smoke context takes 2 splits,
# so that the merge kernel runs too.
SMOKE_NUM_SMS = 8
PARTS = ("engine", "transformers", "kernel")

SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>"]
TOKENIZER_CORPUS = [
    "Paged attention keeps keys and values in fixed-size blocks of the cache.",
    "Continuous batching lets requests join and leave the batch at every step.",
    "def decode(q, k, v):\n    return softmax(q @ k.T) @ v\n",
    "An agent calls tools, reads their results and answers the user.",
]


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything a run depends on, resolved from the command line."""

    smoke: bool
    device: torch.device
    dtype: torch.dtype
    model: dict[str, int]
    requests: int
    prompt_len: int
    output_len: int
    warmup_tokens: int
    hf_batch: int
    max_batched_tokens: int
    cuda_graph: bool
    contexts: list[int]
    kernel_batch: int
    kernel_iters: int
    block_size: int
    num_sms: int
    peak_bytes_s: float | None
    parts: tuple[str, ...]
    seed: int

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


# -- setup ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (interpreter)")
    parser.add_argument("--requests", type=int, help="concurrent requests (256)")
    parser.add_argument("--prompt-len", type=int, help="prompt tokens per request (512)")
    parser.add_argument("--output-len", type=int, help="output tokens per request (256)")
    parser.add_argument(
        "--warmup-tokens",
        type=int,
        help="output tokens of the warm-up runs (default: enough for every request to be "
        "decoding at once, so the warm-up meets every batch shape of the timed run)",
    )
    parser.add_argument("--hf-batch", type=int, help="transformers batch size (all requests)")
    parser.add_argument("--max-batched-tokens", type=int, help="engine token budget (8192)")
    parser.add_argument(
        "--cuda-graph",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the engine's enable_cuda_graph (default: on, except with --smoke)",
    )
    parser.add_argument("--contexts", help="decode kernel contexts (1024,4096,16384)")
    parser.add_argument("--kernel-batch", type=int, help="decode kernel sequences (32)")
    parser.add_argument("--kernel-iters", type=int, help="timed decode calls per replay (100)")
    parser.add_argument(
        "--peak-gbps", type=float, help="the GPU's peak memory bandwidth, GB/s (1e9 bytes/s)"
    )
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"what to run, of {','.join(PARTS)}"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write every figure to this file")
    return parser.parse_args(argv)


def configure_triton(smoke: bool) -> None:
    """Choose compiled or interpreted kernels; must run before candle_agents is imported."""
    if "candle_agents.engine.attention.triton_kernels" in sys.modules:
        raise RuntimeError("set TRITON_INTERPRET before the triton kernels are imported")
    if smoke:
        os.environ["TRITON_INTERPRET"] = "1"
    elif os.environ.get("TRITON_INTERPRET", "0") != "0":
        print("note: TRITON_INTERPRET ignored: a GPU run times the compiled kernels")
        os.environ["TRITON_INTERPRET"] = "0"


def resolve_setup(args: argparse.Namespace) -> Setup:
    defaults = SMOKE_DEFAULTS if args.smoke else DEFAULTS

    def pick(name: str):
        value = getattr(args, name)
        return defaults[name] if value is None else value

    if args.smoke:
        device, dtype = torch.device("cpu"), torch.float32
    else:
        if not torch.cuda.is_available():
            raise SystemExit(
                f"no CUDA device (torch {torch.__version__}): this benchmark needs a GPU; "
                "run with --smoke to check the script on CPU"
            )
        device, dtype = torch.device("cuda"), torch.bfloat16
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"--parts: unknown {', '.join(unknown)} (choose from {', '.join(PARTS)})")
    requests, prompt_len = pick("requests"), pick("prompt_len")
    max_batched = pick("max_batched_tokens")
    # The timed run reaches every request decoding at once after about
    # requests * prompt_len / max_batched steps of prefill; a warm-up longer than
    # that meets the same batch shapes (kernel variants, graph sizes) first.
    warmup = args.warmup_tokens or (math.ceil(requests * prompt_len / max_batched) + 8)
    if args.smoke:
        num_sms = SMOKE_NUM_SMS
    else:
        num_sms = torch.cuda.get_device_properties(device).multi_processor_count
    cuda_graph = args.cuda_graph if args.cuda_graph is not None else not args.smoke
    return Setup(
        smoke=args.smoke,
        device=device,
        dtype=dtype,
        model=SMOKE_MODEL if args.smoke else LLAMA_3_2_1B,
        requests=requests,
        prompt_len=prompt_len,
        output_len=pick("output_len"),
        warmup_tokens=warmup,
        hf_batch=pick("hf_batch") or requests,
        max_batched_tokens=max_batched,
        cuda_graph=cuda_graph,
        contexts=[int(c) for c in pick("contexts").split(",")],
        kernel_batch=pick("kernel_batch"),
        kernel_iters=pick("kernel_iters"),
        block_size=16,
        num_sms=num_sms,
        peak_bytes_s=args.peak_gbps * 1e9 if args.peak_gbps else peak_bandwidth(device),
        parts=parts,
        seed=args.seed,
    )


def peak_bandwidth(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).lower()
    for needles, peak in PEAK_BANDWIDTH:
        if all(n in name for n in needles):
            return peak
    return None


def environment(setup: Setup) -> dict[str, Any]:
    import transformers
    import triton

    env = {
        "device": "cpu (smoke)" if setup.smoke else torch.cuda.get_device_name(setup.device),
        "num_sms": setup.num_sms,
        "peak_gbps": setup.peak_bytes_s / 1e9 if setup.peak_bytes_s else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0"),
    }
    if setup.device.type == "cuda":
        props = torch.cuda.get_device_properties(setup.device)
        env["memory_gib"] = round(props.total_memory / 2**30, 1)
    return env


def quiet_transformers() -> None:
    """No progress bars or advice in the benchmark's output."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# -- the model folder ----------------------------------------------------------------------


def build_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer; smaller than the model's vocabulary, which is fine:
    prompts are token ids, and ids it lacks decode to nothing."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TOKENIZER_CORPUS * 4, trainer)
    return tok


def build_model_folder(setup: Setup, root: Path) -> Path:
    """Save a random-weight Llama of the setup's shape, with a tokenizer, to ``root``."""
    import transformers

    quiet_transformers()
    tok = build_tokenizer(min(512, setup.model["vocab_size"]))
    bos, eos = (tok.token_to_id(t) for t in SPECIAL_TOKENS)
    config = transformers.LlamaConfig(
        **setup.model,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling=dict(ROPE_SCALING),
        tie_word_embeddings=True,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    with torch.device(setup.device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=setup.dtype)
    gen = torch.Generator(setup.device).manual_seed(setup.seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:  # norms keep their ones
                p.normal_(0.0, WEIGHT_STD, generator=gen)
    root.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(root, safe_serialization=True)
    tok.save(str(root / "tokenizer.json"))
    (root / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": SPECIAL_TOKENS[0],
                "eos_token": SPECIAL_TOKENS[1],
                "add_bos_token": False,
            }
        )
    )
    del model
    free_memory(setup.device)
    return root


def random_prompts(setup: Setup, count: int, seed: int) -> list[list[int]]:
    """``count`` prompts of exactly ``prompt_len`` random ids, none of them special."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(
        len(SPECIAL_TOKENS), setup.model["vocab_size"], (count, setup.prompt_len), generator=gen
    )
    return ids.tolist()


# -- ours ----------------------------------------------------------------------------------


def engine_kwargs(setup: Setup) -> dict[str, Any]:
    m = setup.model
    max_len = setup.prompt_len + max(setup.output_len, setup.warmup_tokens)
    # Every request's blocks at full length, one spare each: no preemption.
    blocks = setup.requests * (math.ceil(max_len / setup.block_size) + 1) + 1
    per_block = (
        2
        * m["num_hidden_layers"]
        * setup.block_size
        * m["num_key_value_heads"]
        * m["head_dim"]
        * setup.dtype.itemsize
    )
    kwargs: dict[str, Any] = {
        "device": setup.device.type,
        "dtype": setup.dtype_name,
        "attention_backend": "triton",
        "max_num_seqs": setup.requests,
        "max_num_batched_tokens": setup.max_batched_tokens,
        "max_model_len": max_len,
        "kv_cache_memory": blocks * per_block,
        "block_size": setup.block_size,
        "seed": setup.seed,
    }
    kwargs["enable_cuda_graph"] = bool(setup.cuda_graph)
    return kwargs


def generate_ours(engine, setup: Setup, prompts: list[list[int]], max_tokens: int) -> float:
    from candle_agents import GenerationParams

    params = GenerationParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    # Distinct random prompts share no block, but the warm-up's blocks would still
    # sit in the prefix cache: every timed prompt is computed.
    engine.block_manager.reset_prefix_cache()
    sync(setup.device)
    start = time.perf_counter()
    results = engine.generate(prompts, params)
    sync(setup.device)
    elapsed = time.perf_counter() - start
    got = [len(r.token_ids) for r in results]
    if got != [max_tokens] * len(prompts):
        raise RuntimeError(f"the engine returned {sorted(set(got))} tokens, not {max_tokens}")
    return elapsed


def run_engine(setup: Setup, folder: Path) -> dict[str, Any]:
    from candle_agents import Engine

    kwargs = engine_kwargs(setup)
    engine = Engine.from_pretrained(str(folder), **kwargs)
    try:
        warm = random_prompts(setup, setup.requests, setup.seed + 1)
        generate_ours(engine, setup, warm, setup.warmup_tokens)
        prompts = random_prompts(setup, setup.requests, setup.seed)
        stats, preempted = engine.stats, engine.scheduler.num_preemptions
        steps0, fwd0 = stats.steps, stats.forward_time
        elapsed = generate_ours(engine, setup, prompts, setup.output_len)
        steps, fwd = stats.steps - steps0, stats.forward_time - fwd0
        preempted = engine.scheduler.num_preemptions - preempted
        backend = engine.runner.backend.name
        # Capture failures only log a warning and decode eagerly: say what ran.
        graphs = engine.runner.graphs
        graph_batch = graphs.max_batch if graphs is not None else None
        del graphs  # it holds the model and the cache, which must go before transformers
    finally:
        engine.shutdown()
        del engine
        free_memory(setup.device)
    output = setup.requests * setup.output_len
    return {
        "seconds": elapsed,
        "output_tok_s": output / elapsed,
        "total_tok_s": setup.requests * (setup.prompt_len + setup.output_len) / elapsed,
        "steps": steps,
        "forward_share": fwd / elapsed,
        "preemptions": preempted,
        "attention_backend": backend,
        "cuda_graph_max_batch": graph_batch,
        "engine_config": {k: v for k, v in kwargs.items() if k != "seed"},
    }


# -- transformers --------------------------------------------------------------------------


def generate_transformers(model, setup: Setup, prompts: list[list[int]], new: int) -> float:
    pad = model.config.pad_token_id
    sync(setup.device)
    start = time.perf_counter()
    for i in range(0, len(prompts), setup.hf_batch):
        ids = torch.tensor(prompts[i : i + setup.hf_batch], device=setup.device)
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=pad,
            )
        if tuple(out.shape) != (ids.shape[0], setup.prompt_len + new):
            raise RuntimeError(f"transformers returned shape {tuple(out.shape)}")
    sync(setup.device)
    return time.perf_counter() - start


def run_transformers(setup: Setup, folder: Path) -> dict[str, Any]:
    import transformers

    quiet_transformers()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=setup.dtype)
    model = model.to(setup.device).eval()
    try:
        warm = random_prompts(setup, min(setup.hf_batch, setup.requests), setup.seed + 1)
        generate_transformers(model, setup, warm, setup.warmup_tokens)
        prompts = random_prompts(setup, setup.requests, setup.seed)
        elapsed = generate_transformers(model, setup, prompts, setup.output_len)
        attn = model.config._attn_implementation
    finally:
        del model
        free_memory(setup.device)
    return {
        "seconds": elapsed,
        "output_tok_s": setup.requests * setup.output_len / elapsed,
        "total_tok_s": setup.requests * (setup.prompt_len + setup.output_len) / elapsed,
        "batch": setup.hf_batch,
        "attn_implementation": attn,
    }


# -- decode kernel bandwidth ---------------------------------------------------------------


def time_per_call(fn: Callable[[int], object], setup: Setup, graph: bool) -> float:
    """Seconds per ``fn(i)`` call: median of 5 rounds (2 on CPU) of ``kernel_iters`` calls.

    On CUDA with ``graph`` the calls are captured once and replayed, which times
    the GPU alone (a Python launch can take longer than a 1k-context decode).
    """
    iters = setup.kernel_iters
    for i in range(3):  # compile, allocate
        fn(i)
    sync(setup.device)
    if setup.device.type != "cuda":
        rounds = []
        for _ in range(2):
            start = time.perf_counter()
            for i in range(iters):
                fn(i)
            rounds.append((time.perf_counter() - start) / iters)
        return statistics.median(rounds)
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for i in range(iters):
                fn(i)
        g.replay()
        run = g.replay
    else:

        def run() -> None:
            for i in range(iters):
                fn(i)

    torch.cuda.synchronize(setup.device)
    rounds = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        rounds.append(start.elapsed_time(end) / 1e3 / iters)
    return statistics.median(rounds)


def timed(fn: Callable[[int], object], setup: Setup) -> tuple[float, str, float | None]:
    """(seconds per call, how it was timed, eager seconds per call on CUDA)."""
    if setup.device.type != "cuda":
        return time_per_call(fn, setup, graph=False), "perf_counter", None
    eager = time_per_call(fn, setup, graph=False)
    try:
        return time_per_call(fn, setup, graph=True), "cuda graph", eager
    except RuntimeError as exc:  # capture refused: eager launches are what is left
        print(f"  (CUDA graph capture failed, timing eager launches: {exc})")
        return eager, "eager", eager


def num_copies(setup: Setup, kv_bytes: int) -> int:
    """How many disjoint K/V sets to cycle through so that L2 never holds the next one."""
    if setup.device.type != "cuda":
        return 2  # exercises the rotation; there is no L2 to beat
    props = torch.cuda.get_device_properties(setup.device)
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    return max(1, math.ceil(4 * l2 / kv_bytes))


def kernel_case(setup: Setup, context: int) -> dict[str, Any]:
    from candle_agents.engine.attention import triton_kernels as tk

    m = setup.model  # the kernel runs at the model's attention shape
    heads, kv, d = m["num_attention_heads"], m["num_key_value_heads"], m["head_dim"]
    b, bs = setup.kernel_batch, setup.block_size
    dev, dtype, item = setup.device, setup.dtype, setup.dtype.itemsize
    if context % bs:
        raise SystemExit(f"--contexts: {context} is not a multiple of the block size {bs}")
    per_seq = context // bs
    kv_bytes = 2 * b * context * kv * d * item
    copies = num_copies(setup, kv_bytes)
    gen = torch.Generator(dev).manual_seed(setup.seed + context)
    num_blocks = copies * b * per_seq
    k_cache = torch.randn((num_blocks, kv, bs, d), generator=gen, device=dev, dtype=dtype)
    v_cache = torch.randn((num_blocks, kv, bs, d), generator=gen, device=dev, dtype=dtype)
    # Shuffled blocks, as a long-running engine hands them out; disjoint between copies.
    perm = torch.randperm(num_blocks, generator=gen, device=dev)
    tables = perm.view(copies, b, per_seq).long()
    seq_lens = torch.full((b,), context, dtype=torch.long, device=dev)
    q = torch.randn((b, heads, d), generator=gen, device=dev, dtype=dtype)
    out = torch.empty_like(q)
    scale = d**-0.5
    splits = tk.decode_splits(b, kv, context, setup.num_sms)

    def ours(i: int) -> torch.Tensor:
        return tk.paged_decode(
            q, k_cache, v_cache, tables[i % copies], seq_lens, scale, splits, out
        )

    # The reference: SDPA on dense copies. A decode query has no causal mask, so the
    # query heads of one KV head can ride as that head's query rows (GQA, no repeat).
    dense = [(gather_dense(k_cache, t), gather_dense(v_cache, t)) for t in tables]
    qg = q.view(b, kv, heads // kv, d)

    def reference(i: int) -> torch.Tensor:
        k, v = dense[i % copies]
        return torch.nn.functional.scaled_dot_product_attention(qg, k, v, scale=scale)

    error = (ours(0).float() - reference(0).reshape(b, heads, d).float()).abs().max().item()
    tolerance = 2e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-4
    t_ours, method, t_eager = timed(ours, setup)
    t_ref, _, _ = timed(reference, setup)
    moved = kv_bytes + 2 * b * heads * d * item  # K and V read, q read, out written
    result = {
        "context": context,
        "batch": b,
        "heads": heads,
        "kv_heads": kv,
        "head_dim": d,
        "num_splits": splits,
        "copies": copies,
        "bytes_per_call": moved,
        "timing": method,
        "us": t_ours * 1e6,
        "gbps": moved / t_ours / 1e9,
        "eager_us": t_eager * 1e6 if t_eager is not None else None,
        "sdpa_us": t_ref * 1e6,
        "sdpa_gbps": moved / t_ref / 1e9,
        "max_abs_err": error,
        "correct": error <= tolerance,
    }
    if setup.peak_bytes_s:
        result["share_of_peak"] = moved / t_ours / setup.peak_bytes_s
        result["sdpa_share_of_peak"] = moved / t_ref / setup.peak_bytes_s
    return result


def gather_dense(cache: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """[num_blocks, kv, bs, d] paged through [batch, blocks] -> [batch, kv, ctx, d]."""
    b, n = tables.shape
    _, kv, bs, d = cache.shape
    return cache[tables].permute(0, 2, 1, 3, 4).reshape(b, kv, n * bs, d).contiguous()


def run_kernel(setup: Setup) -> list[dict[str, Any]]:
    cases = []
    for context in setup.contexts:
        cases.append(kernel_case(setup, context))
        free_memory(setup.device)  # the case's caches, before the next one's
    return cases


# -- verdicts and output -------------------------------------------------------------------


def verdicts(setup: Setup, figures: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    if setup.smoke:
        return {"throughput": "not judged (smoke)", "bandwidth": "not judged (smoke)"}
    if "ratio" in figures:
        out["throughput"] = "PASS" if figures["ratio"] >= THROUGHPUT_TARGET else "FAIL"
    judged = [k for k in figures.get("kernel", []) if k["context"] >= BANDWIDTH_TARGET_FROM]
    if judged and any(not k["correct"] for k in judged):
        out["bandwidth"] = "FAIL (kernel output differs from SDPA)"
    elif judged and setup.peak_bytes_s is None:
        out["bandwidth"] = "unknown (peak bandwidth unknown: pass --peak-gbps)"
    elif judged:
        ok = all(k["share_of_peak"] >= BANDWIDTH_TARGET for k in judged)
        out["bandwidth"] = "PASS" if ok else "FAIL"
    return out


def print_header(command: str, setup: Setup, env: dict[str, Any]) -> None:
    print(f"$ {command}")
    peak = f"{env['peak_gbps']:.0f} GB/s" if env["peak_gbps"] else "unknown"
    sms = f"{setup.num_sms} SMs assumed" if setup.smoke else f"{setup.num_sms} SMs"
    print(
        f"device {env['device']} ({sms}, peak bandwidth {peak}), "
        f"torch {env['torch']} (cuda {env['cuda']}), triton {env['triton']}, "
        f"transformers {env['transformers']}, python {env['python']}"
    )
    m = setup.model
    print(
        f"model: random Llama, hidden {m['hidden_size']}, {m['num_hidden_layers']} layers, "
        f"{m['num_attention_heads']}/{m['num_key_value_heads']} heads, head_dim "
        f"{m['head_dim']}, vocab {m['vocab_size']}, {setup.dtype_name}"
    )
    print(
        f"load: {setup.requests} requests x ({setup.prompt_len} prompt + {setup.output_len} "
        f"output) tokens, greedy, EOS ignored; warm-up {setup.warmup_tokens} output tokens"
    )
    if setup.smoke:
        print("smoke: figures are not meaningful")


def print_throughput(setup: Setup, figures: dict[str, Any]) -> None:
    rows = [(name, figures[key]) for name, key in (("ours", "engine"), ("transformers", "hf"))]
    rows = [(n, f) for n, f in rows if f is not None]
    if not rows:
        return
    print()
    print(f"{'':13} {'seconds':>8} {'output tok/s':>13} {'total tok/s':>12}  notes")
    for name, f in rows:
        if name == "ours":
            if f["cuda_graph_max_batch"]:
                graph = f"decode batches <= {f['cuda_graph_max_batch']}"
            elif f["engine_config"].get("enable_cuda_graph"):
                graph = "requested but not captured (see the log)"
            else:
                graph = "off"
            notes = (
                f"{f['attention_backend']} attention, cuda graphs {graph}, {f['steps']} steps, "
                f"forward {f['forward_share']:.0%} of wall, {f['preemptions']} preemptions"
            )
        else:
            notes = f"batch {f['batch']}, attention {f['attn_implementation']}"
        print(
            f"{name:13} {f['seconds']:>8.2f} {f['output_tok_s']:>13.1f} "
            f"{f['total_tok_s']:>12.1f}  {notes}"
        )
    if "ratio" in figures:
        verdict = figures["verdicts"].get("throughput", "")
        print(
            f"ours / transformers: {figures['ratio']:.2f}x (target >= {THROUGHPUT_TARGET:.0f}x) "
            f"{verdict}"
        )


def print_kernel(setup: Setup, cases: list[dict[str, Any]], verdict: str | None) -> None:
    if not cases:
        return
    k = cases[0]
    print()
    print(
        f"decode kernel: {k['batch']} sequences, {k['heads']}/{k['kv_heads']} heads, head_dim "
        f"{k['head_dim']}, block {setup.block_size}, {setup.dtype_name}, shuffled blocks; "
        f"timed by {k['timing']}"
    )
    print(
        f"{'context':>8} {'splits':>6} {'MB/call':>8} {'us':>9} {'GB/s':>8} {'of peak':>8} "
        f"{'eager us':>9} {'sdpa us':>9} {'sdpa GB/s':>10} {'max err':>8}"
    )
    for k in cases:
        share = f"{k['share_of_peak']:.0%}" if "share_of_peak" in k else "?"
        eager = f"{k['eager_us']:.1f}" if k["eager_us"] is not None else "-"
        err = f"{k['max_abs_err']:.1e}" + ("" if k["correct"] else " BAD")
        print(
            f"{k['context']:>8} {k['num_splits']:>6} {k['bytes_per_call'] / 1e6:>8.1f} "
            f"{k['us']:>9.1f} {k['gbps']:>8.1f} {share:>8} {eager:>9} {k['sdpa_us']:>9.1f} "
            f"{k['sdpa_gbps']:>10.1f} {err:>8}"
        )
    if setup.peak_bytes_s is None and not setup.smoke:
        print("peak bandwidth unknown for this device: pass --peak-gbps to get shares")
    if verdict:
        print(
            f"bandwidth >= {BANDWIDTH_TARGET:.0%} of peak at >= {BANDWIDTH_TARGET_FROM} "
            f"tokens: {verdict}"
        )


def command_line(argv: list[str] | None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return shlex.join([sys.executable, sys.argv[0], *args])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_triton(args.smoke)
    setup = resolve_setup(args)
    env = environment(setup)
    command = command_line(argv)
    print_header(command, setup, env)
    torch.manual_seed(setup.seed)
    started = time.perf_counter()
    figures: dict[str, Any] = {"engine": None, "hf": None, "kernel": []}
    if "engine" in setup.parts or "transformers" in setup.parts:
        with tempfile.TemporaryDirectory(prefix="gpu-throughput-") as tmp:
            folder = build_model_folder(setup, Path(tmp) / "llama-3.2-1b-random")
            if "engine" in setup.parts:
                figures["engine"] = run_engine(setup, folder)
            if "transformers" in setup.parts:
                figures["hf"] = run_transformers(setup, folder)
    if figures["engine"] and figures["hf"]:
        figures["ratio"] = figures["engine"]["output_tok_s"] / figures["hf"]["output_tok_s"]
    if "kernel" in setup.parts:
        figures["kernel"] = run_kernel(setup)
    figures["verdicts"] = verdicts(setup, figures)
    print_throughput(setup, figures)
    print_kernel(setup, figures["kernel"], figures["verdicts"].get("bandwidth"))
    seconds = time.perf_counter() - started
    print(f"\n{seconds:.1f} s")
    if args.json:
        report = {
            "command": command,
            "smoke": setup.smoke,
            "environment": env,
            "setup": {
                "model": setup.model,
                "rope_scaling": ROPE_SCALING,
                "weight_std": WEIGHT_STD,
                "dtype": setup.dtype_name,
                "requests": setup.requests,
                "prompt_len": setup.prompt_len,
                "output_len": setup.output_len,
                "warmup_tokens": setup.warmup_tokens,
                "cuda_graph": setup.cuda_graph,
                "contexts": setup.contexts,
                "kernel_iters": setup.kernel_iters,
            },
            "targets": {
                "throughput_ratio": THROUGHPUT_TARGET,
                "bandwidth_share": BANDWIDTH_TARGET,
                "bandwidth_from_context": BANDWIDTH_TARGET_FROM,
            },
            "ours": figures["engine"],
            "transformers": figures["hf"],
            "ratio": figures.get("ratio"),
            "kernel": figures["kernel"],
            "verdicts": figures["verdicts"],
            "seconds": seconds,
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
