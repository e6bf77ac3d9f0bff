"""The GPU benchmark's setup: its options' defaults, the environment, the model and prompts.

Shared by gpu_throughput.py (the command line, the throughput runs, the report) and
gpu_kernel.py (the decode kernel's bandwidth); it imports neither, nor candle_agents:
`configure_triton` must choose compiled or interpreted kernels before candle_agents'
triton kernels are imported.

  configuration  the model shapes (Llama-3.2-1B's, or a tiny one for --smoke; the weights
                 are random), the defaults of a GPU run and of --smoke, the peak memory
                 bandwidth table; `resolve_setup` turns the command line into a `Setup`
  environment    the device, library versions, triton's interpreter; `sync` and
                 `free_memory` between timed parts
  model folder   a random-weight Llama of the setup's shape with a small byte-level BPE
                 tokenizer, saved for both our engine and transformers to load (nothing
                 is downloaded); `random_prompts` of exactly prompt_len non-special ids
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

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


# -- configuration and environment ---------------------------------------------------------


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
