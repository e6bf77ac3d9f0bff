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

from tests.support.tiny_models import ARCHS, CORPUS, build_tiny_model  # noqa: E402

# Gemma configs that a GGUF file can state whole (the test models in tiny_models.py
# try settings llama.cpp has no key for): the default layer patterns (Gemma 2
# alternating, Gemma 3 five local to one global), llama.cpp's attention scale
# 1/sqrt(key_length), Gemma 3's local rope base 10000, Gemma 2's soft-caps at
# transformers' defaults (its GGUF loader does not read them), windows of 16 tokens.
_GEMMA = dict(
    head_dim=64, query_pre_attn_scalar=64, sliding_window=16, hidden_activation="gelu_pytorch_tanh"
)
ARCHS["gemma2-gguf"] = (
    "Gemma2Config",
    dict(_GEMMA, attn_logit_softcapping=50.0, final_logit_softcapping=30.0),
)
ARCHS["gemma3-gguf"] = ("Gemma3TextConfig", dict(_GEMMA, final_logit_softcapping=None))

# K-quants need row lengths that are multiples of 256.
H256 = dict(hidden_size=256, intermediate_size=512)
# Thinner blocks for the families that need several layers: 2 heads of 64, 1 KV head.
THIN = dict(
    hidden_size=256,
    intermediate_size=256,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=64,
)
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
    # Phi-4-mini's shape: fused qkv/gate_up, rotary over 3/4 of each head, a GPT-2 BPE
    # vocabulary (tokenizer_class GPT2Tokenizer, which the converter reads).
    (
        "phi3-h256",
        "phi3",
        dict(H256, intermediate_size=256, num_hidden_layers=1),
        ["Q4_K_M", "Q8_0"],
    ),
    # llama.cpp stores nothing about SmolLM3's no-rope layers: it hard-codes every fourth
    # layer, so the model needs four layers (and HF's default no_rope_layers) to show one.
    (
        "smollm3-h256",
        "smollm3",
        dict(THIN, num_hidden_layers=4, no_rope_layers=None, tie_word_embeddings=True),
        ["Q4_K_M"],
    ),
    # Gemma: SentencePiece vocabulary with byte fallback (tokenizer.model), tied embeddings.
    # Gemma 2 alternates sliding and global layers; Gemma 3 has 5 sliding to 1 global, so
    # six layers (hidden 64, Q8_0) show a global one, two (hidden 256) the K-quants.
    ("gemma2-h256", "gemma2-gguf", dict(THIN, num_hidden_layers=2), ["Q4_K_M", "Q8_0"]),
    ("gemma3-h256", "gemma3-gguf", dict(THIN, num_hidden_layers=2), ["Q4_K_M"]),
    (
        "gemma3-h64",
        "gemma3-gguf",
        dict(num_hidden_layers=6, num_attention_heads=2, num_key_value_heads=1),
        ["Q8_0"],
    ),
]
SENTENCEPIECE_ARCHS = {"gemma2-gguf", "gemma3-gguf"}

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


def sentencepiece_model(vocab_size: int = 400) -> bytes:
    """A Gemma-style SentencePiece BPE model (byte fallback, no dummy prefix, digits split,
    whitespace-only pieces) trained on the test corpus: 256 byte pieces and 138 others."""
    import io

    import sentencepiece as spm

    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 4),
        model_writer=out,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        split_digits=True,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    return out.getvalue()


def randomize_norms(src: Path) -> None:
    """Gemma's norm weights w (used as 1 + w) drawn wide: HF initialises them to 0, and
    1 + w outside [0.5, 2] is where taking llama.cpp's folded 1 off again can round."""
    import torch
    from safetensors.torch import load_file, save_file

    path = src / "model.safetensors"
    tensors = load_file(path)
    gen = torch.Generator().manual_seed(1)
    for name, tensor in tensors.items():
        if name.endswith("norm.weight"):
            tensors[name] = torch.randn(tensor.shape, generator=gen) * 1.5
        elif name.endswith("embed_tokens.weight"):
            # Tied and times sqrt(hidden): at the usual 0.25 the embedding swamps the
            # stream and the model repeats its input. The byte pieces' rows (ids 6-261)
            # small, so that greedy output is seldom a stray byte, which the engine's
            # incremental detokenizer rejects as invalid UTF-8.
            tensor = torch.randn(tensor.shape, generator=gen) * 0.08
            tensor[6:262] *= 0.1
            tensors[name] = tensor
    save_file(tensors, path, metadata={"format": "pt"})


def build_model(arch: str, work: Path, name: str, overrides: dict) -> Path:
    """A tiny HF folder the converter takes for ``arch`` (tokenizer files as it expects)."""
    import json

    overrides = dict(overrides)
    spm_model = sentencepiece_model() if arch in SENTENCEPIECE_ARCHS else None
    if spm_model is not None:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_proto=spm_model)
        overrides.update(vocab_size=sp.vocab_size(), bos_token_id=2, eos_token_id=1, pad_token_id=0)
    src = build_tiny_model(arch, work, name=name, **overrides)
    config_path = src / "tokenizer_config.json"
    if spm_model is not None:
        randomize_norms(src)
        (src / "tokenizer.json").unlink()
        (src / "tokenizer.model").write_bytes(spm_model)
        config_path.write_text(
            json.dumps({"bos_token": "<bos>", "eos_token": "<eos>", "add_bos_token": True})
        )
    elif arch == "phi3":
        # The converter reads tokenizer_class to tell Phi-4 (GPT-2 BPE) from Phi-3 (SentencePiece).
        config = json.loads(config_path.read_text())
        config_path.write_text(json.dumps(dict(config, tokenizer_class="GPT2Tokenizer")))
    return src


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


def readme_row(path: Path) -> str:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    layers = int(reader.fields[f"{arch}.block_count"].parts[-1][0])
    types = tensor_types(path)
    cells = "; ".join(f"**{t}**: {describe(n)}" for t, n in sorted(types.items()))
    return f"| {path.name} | {layers} | {path.stat().st_size / 1e6:.2f} MB | {cells} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep-work", type=Path, help="build the HF and F32 files here")
    parser.add_argument(
        "--only", nargs="+", metavar="PREFIX", help="rebuild only these file prefixes"
    )
    args = parser.parse_args()
    bin_dir = llamacpp_bin()
    llamacpp = bin_dir.parent.parent
    OUT.mkdir(exist_ok=True)
    work_ctx = tempfile.TemporaryDirectory() if args.keep_work is None else None
    work = args.keep_work or Path(work_ctx.name)
    work.mkdir(parents=True, exist_ok=True)
    names = []
    for prefix, arch, overrides, qtypes in FILES:
        names += [f"{prefix}-{qtype}.gguf" for qtype in qtypes]
        if args.only and prefix not in args.only:
            continue
        work_name = f"{prefix}-L{overrides['num_hidden_layers']}"
        src = build_model(arch, work, work_name, overrides)
        f32 = work / f"{work_name}-F32.gguf"
        convert(src, llamacpp, f32, f"tiny {prefix}")
        for qtype in qtypes:
            out = OUT / f"{prefix}-{qtype}.gguf"
            quantize(bin_dir, f32, out, qtype)
            print(f"{out.name}: {out.stat().st_size} bytes, {sorted(tensor_types(out))}")
    rows = [readme_row(OUT / name) for name in names if (OUT / name).is_file()]
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
