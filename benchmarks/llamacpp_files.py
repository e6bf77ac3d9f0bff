"""The GGUF files benchmarks/llamacpp.py runs: the embedded default model and a random-weight
Llama-3.2-1B-shaped model quantized by llama.cpp, built on first use and cached."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

FILES = ("default", "1b-q4_k_m", "1b-q8_0")
QUANTS = {"1b-q4_k_m": "Q4_K_M", "1b-q8_0": "Q8_0"}
CACHE = Path(
    os.environ.get("CANDLE_AGENTS_BENCH_CACHE", "~/.cache/candle-agents/bench")
).expanduser()
SEED = 1234


def model_file(name: str, bin_dir: Path | None, threads: int) -> Path:
    """The GGUF file called ``name`` (one of FILES), built first if it is a missing 1B file."""
    if name == "default":
        from candle_agents.engine.loader import default_gguf_path

        return default_gguf_path()
    target = CACHE / f"llama-3.2-1b-random.{QUANTS[name]}.gguf"
    if not target.is_file():
        if bin_dir is None:
            raise SystemExit(f"building {target.name} needs llama.cpp: pass --llamacpp-bin")
        build_1b_files(bin_dir, threads)
    return target


def build_1b_files(bin_dir: Path, threads: int) -> None:
    """Random Llama-3.2-1B-shaped weights -> BF16 GGUF -> every file of QUANTS, cached."""
    import transformers
    from gguf import GGUFReader
    from gpu_setup import LLAMA_3_2_1B, ROPE_SCALING, WEIGHT_STD, quiet_transformers

    from candle_agents.engine.loader import default_gguf_path
    from candle_agents.engine.loader.gguf import build_gguf_tokenizer

    CACHE.mkdir(parents=True, exist_ok=True)
    need = 2 * 2.5e9  # the safetensors folder and the BF16 GGUF, both alive at one moment
    if shutil.disk_usage(CACHE).free < need + 2.5e9:
        raise SystemExit(f"building the 1B files needs ~7.5 GB free under {CACHE}")
    quiet_transformers()
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="build-") as tmp:
        folder, bf16 = Path(tmp) / "hf", Path(tmp) / "model.BF16.gguf"
        print(f"building the random 1B model under {tmp} ...", file=sys.stderr)
        # No tokenizer can be downloaded: the default model's, rebuilt from its GGUF; the
        # converter pads its 49152 tokens to the config's 128256 with unused [PADi] tokens.
        tok, info, _ = build_gguf_tokenizer(GGUFReader(default_gguf_path()))
        fast = transformers.PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token=info.bos_token,
            eos_token=info.eos_token,
            unk_token=info.unk_token,
            pad_token=info.pad_token,
        )
        config = transformers.LlamaConfig(
            **LLAMA_3_2_1B,
            rms_norm_eps=1e-5,
            rope_theta=500000.0,
            rope_scaling=dict(ROPE_SCALING),
            tie_word_embeddings=True,
            initializer_range=WEIGHT_STD,
            bos_token_id=fast.bos_token_id,
            eos_token_id=fast.eos_token_id,
        )
        torch.manual_seed(SEED)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(folder, safe_serialization=True)
        del model
        fast.save_pretrained(folder)
        src = bin_dir.parent.parent
        env = {**os.environ, "PYTHONPATH": str(src / "gguf-py")}
        convert = [sys.executable, str(src / "convert_hf_to_gguf.py"), str(folder)]
        run_checked([*convert, "--outfile", str(bf16), "--outtype", "bf16"], env=env)
        shutil.rmtree(folder)  # before quantizing: disk is limited
        for quant in QUANTS.values():
            if (CACHE / f"llama-3.2-1b-random.{quant}.gguf").is_file():
                continue  # from an earlier, interrupted build
            part = Path(tmp) / f"model.{quant}.gguf"
            run_checked(
                [str(bin_dir / "llama-quantize"), str(bf16), str(part), quant, str(threads)]
            )
            part.replace(CACHE / f"llama-3.2-1b-random.{quant}.gguf")


def run_checked(cmd: list[str], env: dict[str, str] | None = None) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")


def model_shape(path: Path) -> dict[str, int]:
    """What sizes the KV cache and the random prompts, from the file's metadata."""
    from gguf import GGUFReader

    from candle_agents.engine.loader.gguf import gguf_config

    c = gguf_config(GGUFReader(path))
    return {
        k: int(c[k]) for k in ("num_hidden_layers", "num_key_value_heads", "head_dim", "vocab_size")
    }
