"""Write the real-format quantized GGUF test files in tests/data/gguf/ (run by hand, never in CI).

    python tests/data/make_gguf_files.py [--keep-work DIR]

Builds tiny random HF models with tests/support/tiny_models.py, converts each to an F32 GGUF
with llama.cpp's own converter (convert_hf_to_gguf.py), then quantizes it with
llama.cpp's own llama-quantize, so the files have exactly the layout, tensor-type
mixtures and metadata that real llama.cpp files have. It also rewrites
tests/data/gguf/README.md with the tensor types each file holds.

llama.cpp comes from /work/shared/tools/llamacpp.sh (the llama.cpp vendored by
llama-cpp-python 0.3.36), or set LLAMACPP_BIN to a folder holding llama-quantize.
The converter needs `pip install sentencepiece` (it imports it even for BPE vocabularies).
The output is deterministic for a given llama.cpp, torch and tokenizers version.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "gguf"
sys.path.insert(0, str(HERE.parents[1]))  # the repository root, for tests.support

from tests.support.tiny_models import build_tiny_model  # noqa: E402

# K-quants need row lengths that are multiples of 256.
H256 = dict(hidden_size=256, intermediate_size=512)
# (file prefix, arch, build_tiny_model overrides, llama-quantize types). One layer keeps
# the files small (about 10 MB in all); two where llama-quantize's mixtures pick types
# per layer (Q4_K_M, Q5_K_M: Q6_K for attn_v and ffn_down on some layers only).
FILES = [
    ("llama-h256", "llama", dict(H256, num_hidden_layers=2), ["Q4_K_M", "Q5_K_M"]),
    (
        "llama-h256",
        "llama",
        dict(H256, num_hidden_layers=1),
        ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_M", "Q6_K"],
    ),
    ("mistral-h256", "mistral", dict(H256, num_hidden_layers=1), ["Q4_K_M", "Q8_0"]),
    ("qwen2-h256", "qwen2", dict(H256, num_hidden_layers=1), ["Q4_K_M", "Q8_0"]),
    # head_dim 128 because transformers' qwen3 GGUF loader ignores attention.key_length
    # and takes Qwen3Config's default head_dim (128): any other value would not load
    # there, and transformers is the reference the tests compare against.
    (
        "qwen3-h256",
        "qwen3",
        dict(H256, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=128),
        ["Q4_K_M", "Q8_0"],
    ),
    # Widths 64 and 128 are not multiples of 256: llama-quantize falls back per tensor.
    ("llama-h64", "llama", dict(num_hidden_layers=2), ["Q4_K_M"]),
]

# Runs llama.cpp's converter in a child process (so it imports its own gguf-py), after
# one patch: the converter names a BPE pre-tokenizer by hashing how the tokenizer splits a
# probe text, knows only published models' hashes and raises NotImplementedError for our
# freshly trained test tokenizers. They split text with GPT-2's byte-level regex
# (tokenizers' ByteLevel pre-tokenizer with use_regex=True), which is llama.cpp's "gpt2".
CONVERT = """
import sys
sys.path.insert(0, sys.argv.pop(1))
import convert_hf_to_gguf
from conversion.base import TextModel
TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt2"
convert_hf_to_gguf.main()
"""


def llamacpp_bin() -> Path:
    """The folder with llama.cpp's binaries (built by the shared script if needed)."""
    if os.environ.get("LLAMACPP_BIN"):
        return Path(os.environ["LLAMACPP_BIN"])
    script = Path("/work/shared/tools/llamacpp.sh")
    out = subprocess.run(["bash", str(script)], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def convert(src: Path, llamacpp: Path, out: Path, name: str) -> None:
    """HF folder -> F32 GGUF with llama.cpp's converter."""
    cmd = [sys.executable, "-c", CONVERT, str(llamacpp), str(src)]
    cmd += ["--outtype", "f32", "--outfile", str(out), "--model-name", name]
    run(cmd)


def run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")


def quantize(bin_dir: Path, src: Path, out: Path, qtype: str) -> None:
    run([str(bin_dir / "llama-quantize"), str(src), str(out), qtype, "2"])


def tensor_types(path: Path) -> dict[str, list[str]]:
    """GGML type name -> the tensors of that type in the file (GGUF names)."""
    from gguf import GGUFReader

    found: dict[str, list[str]] = {}
    for tensor in GGUFReader(path).tensors:
        found.setdefault(tensor.tensor_type.name, []).append(tensor.name)
    return found


def describe(names: list[str]) -> str:
    """Compact tensor list: 'blk.N.' prefixes folded into the layers they occur in."""
    by_kind: dict[str, list[str]] = {}
    for name in names:
        parts = name.removesuffix(".weight").split(".")
        if parts[0] == "blk":
            by_kind.setdefault(".".join(parts[2:]), []).append(parts[1])
        else:
            by_kind.setdefault(".".join(parts), [])
    out = []
    for kind, layers in by_kind.items():
        out.append(f"{kind}[{','.join(layers)}]" if layers else kind)
    return ", ".join(out)


README_HEAD = """# Real-format quantized GGUF test files

Written by llama.cpp's own tools from tiny random models (tests/support/tiny_models.py, a
384-token byte-level BPE vocabulary): `convert_hf_to_gguf.py --outtype f32`, then
`llama-quantize <f32.gguf> <out.gguf> <TYPE> 2`. Regenerate (by hand, never in CI) with

    python tests/data/make_gguf_files.py

llama.cpp: the copy vendored by llama-cpp-python {pyver} (llama.cpp commit {commit}),
built by /work/shared/tools/llamacpp.sh. The converter was told the pre-tokenizer is
"gpt2" (it recognises only published tokenizers by hash; ours split text with GPT-2's
byte-level regex).

Models: `-h256` are hidden 256, intermediate 512 (rows fit K-quants' 256-value blocks),
heads 4 / KV heads 2, head_dim 64 (qwen3: 2 / 1 heads of 128, the only head_dim
transformers' qwen3 GGUF loader takes); one layer, or two for the mixtures that pick
types per layer. `llama-h64` is hidden 64, intermediate 128, 2 layers: no row fits a
256-value block, so llama-quantize falls back per tensor (Q4_K -> Q5_0, Q6_K -> Q8_0).
Tests: tests/engine/test_gguf_files.py compares our loader, tokenizer and greedy output with
transformers loading the same file.

| file | layers | size | tensor types (GGUF names; [layers]) |
| --- | --- | --- | --- |
"""


def llamacpp_python_version(bin_dir: Path) -> str:
    """The llama-cpp-python release whose vendored llama.cpp built ``bin_dir``."""
    for part in bin_dir.parts:
        if part.startswith("llama_cpp_python-"):
            return part.removeprefix("llama_cpp_python-")
    return "unknown"


def llamacpp_commit(bin_dir: Path) -> str:
    info = bin_dir.parent / "common" / "build-info.cpp"
    for line in info.read_text().splitlines() if info.is_file() else []:
        if "LLAMA_COMMIT" in line and '"' in line:
            return line.split('"')[1]
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-work", type=Path, help="build the HF and F32 files here")
    args = parser.parse_args()
    bin_dir = llamacpp_bin()
    llamacpp = bin_dir.parent.parent
    OUT.mkdir(exist_ok=True)
    work_ctx = tempfile.TemporaryDirectory() if args.keep_work is None else None
    work = args.keep_work or Path(work_ctx.name)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for prefix, arch, overrides, qtypes in FILES:
        layers = overrides["num_hidden_layers"]
        work_name = f"{prefix}-L{layers}"
        src = build_tiny_model(arch, work, name=work_name, **overrides)
        f32 = work / f"{work_name}-F32.gguf"
        convert(src, llamacpp, f32, f"tiny {prefix}")
        for qtype in qtypes:
            out = OUT / f"{prefix}-{qtype}.gguf"
            quantize(bin_dir, f32, out, qtype)
            types = tensor_types(out)
            cells = "; ".join(f"**{t}**: {describe(n)}" for t, n in sorted(types.items()))
            size = out.stat().st_size
            rows.append(f"| {out.name} | {layers} | {size / 1e6:.2f} MB | {cells} |")
            print(f"{out.name}: {size} bytes, {sorted(types)}")
    total = sum(p.stat().st_size for p in OUT.glob("*.gguf"))
    readme = README_HEAD.format(
        pyver=llamacpp_python_version(bin_dir), commit=llamacpp_commit(bin_dir)
    )
    readme += "\n".join(rows) + f"\n\nTotal: {total / 1e6:.2f} MB.\n"
    (OUT / "README.md").write_text(readme)
    print(f"total {total} bytes")
    if work_ctx is not None:
        work_ctx.cleanup()


if __name__ == "__main__":
    main()
