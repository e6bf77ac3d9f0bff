"""Open a GGUF file (llama.cpp's format) as a Checkpoint.

The metadata becomes an HF ``config.json``-shaped dict, the tensors are renamed
to HF parameter names and either kept in their block format or dequantized to
float32 one at a time, and the
``tokenizer.ggml.*`` vocabulary is rebuilt as a ``tokenizers.Tokenizer``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.gguf_reader import ReaderTensor

from candle_agents.engine.loader.base import Checkpoint
from candle_agents.engine.loader.dequant import dequantize
from candle_agents.engine.loader.gguf_names import (
    HF_ARCHITECTURES,
    NORM_PLUS_ONE,
    PERMUTED_QK,
    SUPPORTED_ARCHITECTURES,
    arch_config,
    hf_name,
)
from candle_agents.engine.loader.gguf_reading import field as _field
from candle_agents.engine.loader.gguf_reading import hf_shape as _hf_shape
from candle_agents.engine.loader.gguf_tokenizer import build_gguf_tokenizer
from candle_agents.engine.quant.tensor import QuantTensor
from candle_agents.errors import ModelLoadError

__all__ = ["SUPPORTED_ARCHITECTURES", "build_gguf_tokenizer", "gguf_config", "load_gguf"]

logger = logging.getLogger(__name__)


class _Planned(NamedTuple):
    """One tensor to yield: its HF name, the GGUF tensor, heads to un-permute Q/K rows
    by (0: none) and a constant the converter added that comes off again (0: none)."""

    hf_name: str
    tensor: ReaderTensor
    heads: int
    shift: float


def load_gguf(path: str | os.PathLike) -> Checkpoint:
    """Open ``path`` lazily: metadata and tokenizer now, weights when iterated.

    ``checkpoint.quantized`` lists the matrices stored in a block format (or
    F16/BF16); ``weights(keep_quantized=names)`` yields those of ``names`` as
    ``QuantTensor`` blocks read from the file as they are, and dequantizes
    every other tensor to float32.
    """
    file = Path(path)
    reader = _open_reader(file)
    config = gguf_config(reader)
    plan = _weight_plan(reader.tensors, config, _field(reader, "general.architecture"))
    tokenizer, info, eos_ids = build_gguf_tokenizer(reader)
    quantized = {p.hf_name: int(p.tensor.tensor_type) for p in plan if _keeps_blocks(p.tensor)}

    def weights(keep_quantized: Collection[str] = ()) -> Iterator[tuple[str, Any]]:
        with file.open("rb") as fh:
            for hf_name, tensor, heads, shift in plan:
                if hf_name in keep_quantized and hf_name in quantized:
                    yield hf_name, _read_blocks(fh, tensor, heads)
                    continue
                try:
                    weight = dequantize(tensor.data, tensor.tensor_type, _hf_shape(tensor))
                except (ValueError, NotImplementedError) as exc:
                    raise ModelLoadError(
                        f"cannot dequantize GGUF tensor {tensor.name!r} "
                        f"({tensor.tensor_type.name}) in {file.name}: {exc}"
                    ) from exc
                if heads:
                    weight = _unpermute_rotary(weight, heads)
                if shift:
                    weight = weight - shift
                yield hf_name, weight

    return Checkpoint(
        name=str(_field(reader, "general.name") or file.stem),
        path=str(file),
        config=config,
        weights=weights,
        num_weights=len(plan),
        tokenizer=tokenizer,
        tokenizer_info=info,
        eos_token_ids=eos_ids,
        quantized=quantized,
    )


def _keeps_blocks(tensor: ReaderTensor) -> bool:
    """Matrices in a block format (or F16/BF16) stay as stored; F32 ones and vectors
    are small or already float32."""
    return len(tensor.shape) == 2 and tensor.tensor_type != GGMLQuantizationType.F32


def _read_blocks(fh: BinaryIO, tensor: ReaderTensor, heads: int) -> QuantTensor:
    """The tensor's bytes read from the file into memory the model owns.

    Read, not memory-mapped: pages touched through the reader's map would
    count in the process's resident memory beside the copy the model keeps.
    """
    buf = torch.empty(int(tensor.n_bytes), dtype=torch.uint8)
    fh.seek(int(tensor.data_offset))
    if fh.readinto(buf.numpy()) != buf.numel():
        raise ModelLoadError(f"GGUF tensor {tensor.name!r} is cut short: the file is truncated")
    rows, cols = _hf_shape(tensor)
    try:
        weight = QuantTensor.from_bytes(buf, tensor.tensor_type, (rows, cols))
    except ValueError as exc:
        raise ModelLoadError(f"GGUF tensor {tensor.name!r}: {exc}") from exc
    if heads:
        order = _unpermute_rotary(torch.arange(rows).unsqueeze(1), heads).squeeze(1)
        weight = weight.permute_rows(order)
    return weight


# -- reading ----------------------------------------------------------------------


def _open_reader(file: Path) -> GGUFReader:
    if not file.is_file():
        raise ModelLoadError(f"GGUF file not found: {file}")
    with file.open("rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise ModelLoadError(
            f"{file} is not a GGUF file (it does not start with the 'GGUF' magic bytes); "
            "pass a .gguf file from llama.cpp's converter or an HF model folder"
        )
    try:
        return GGUFReader(file, "r")
    except Exception as exc:  # the reader raises bare ValueError/IndexError on bad files
        raise ModelLoadError(f"cannot read GGUF file {file}: {exc}") from exc


# -- config -----------------------------------------------------------------------


def gguf_config(reader: GGUFReader) -> dict[str, Any]:
    """The HF ``config.json`` equivalent of a GGUF file's metadata."""
    arch = _field(reader, "general.architecture")
    if arch not in HF_ARCHITECTURES:
        raise ModelLoadError(
            f"GGUF architecture {arch!r} is not supported; supported GGUF architectures: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    hf_arch, model_type = HF_ARCHITECTURES[arch]
    # llama.cpp writes Mistral models as "llama"; only the name tells them apart.
    if arch == "llama" and "mistral" in str(_field(reader, "general.name", "")).lower():
        hf_arch, model_type = HF_ARCHITECTURES["mistral"]
    tensors = {t.name: t for t in reader.tensors}

    def meta(key: str, default: Any = None) -> Any:
        return _field(reader, f"{arch}.{key}", default)

    def required(key: str) -> Any:
        value = meta(key)
        if value is None:
            raise ModelLoadError(f"GGUF metadata lacks {arch}.{key}: the file is incomplete")
        return value

    hidden = int(required("embedding_length"))
    heads = int(required("attention.head_count"))
    kv_heads = _per_layer_max(meta("attention.head_count_kv", heads))
    head_dim = meta("attention.key_length")
    if head_dim is None and "blk.0.attn_q.weight" in tensors:
        head_dim = _hf_shape(tensors["blk.0.attn_q.weight"])[0] // heads
    config: dict[str, Any] = {
        "architectures": [hf_arch],
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": _per_layer_max(required("feed_forward_length")),
        "num_hidden_layers": int(required("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": int(head_dim or hidden // heads),
        "hidden_act": "silu",
        "rms_norm_eps": float(meta("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(meta("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(meta("context_length", 2048)),
        "vocab_size": _vocab_size(reader, arch, tensors),
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": arch == "qwen2" or "blk.0.attn_q.bias" in tensors,
        "mlp_bias": False,
        "torch_dtype": "float32",
    }
    for key, token_key in (
        ("bos_token_id", "bos_token_id"),
        ("eos_token_id", "eos_token_id"),
        ("pad_token_id", "padding_token_id"),
    ):
        value = _field(reader, f"tokenizer.ggml.{token_key}")
        if value is not None:
            config[key] = int(value)
    sliding_window = meta("attention.sliding_window")
    if sliding_window:
        config["sliding_window"] = int(sliding_window)
    rope_scaling = _rope_scaling(reader, arch) or _llama3_rope_scaling(
        tensors.get("rope_freqs.weight"), config
    )
    if rope_scaling:
        config["rope_scaling"] = rope_scaling
    config.update(arch_config(arch, meta, config, tensors))
    return config


def _per_layer_max(value: Any) -> int:
    # Some files give per-layer lists (e.g. head_count_kv); a uniform model has one value.
    return int(max(value)) if isinstance(value, list) else int(value)


def _vocab_size(reader: GGUFReader, arch: str, tensors: dict[str, ReaderTensor]) -> int:
    size = _field(reader, f"{arch}.vocab_size")
    if size is not None:
        return int(size)
    if "token_embd.weight" in tensors:
        return _hf_shape(tensors["token_embd.weight"])[0]
    field = reader.fields.get("tokenizer.ggml.tokens")
    return len(field.data) if field is not None else 0


def _rope_scaling(reader: GGUFReader, arch: str) -> dict[str, Any] | None:
    """HF ``rope_scaling`` from ``{arch}.rope.scaling.*`` (or the old ``rope.scale_linear``)."""
    prefix = f"{arch}.rope.scaling."
    kind = _field(reader, prefix + "type")
    factor = _field(reader, prefix + "factor")
    if kind is None and _field(reader, f"{arch}.rope.scale_linear") is not None:
        kind, factor = "linear", _field(reader, f"{arch}.rope.scale_linear")
    if kind in (None, "none") or not factor or float(factor) == 1.0:
        return None
    scaling: dict[str, Any] = {"rope_type": kind, "type": kind, "factor": float(factor)}
    optional = {
        "original_context_length": ("original_max_position_embeddings", int),
        "attn_factor": ("attention_factor", float),
        "yarn_beta_fast": ("beta_fast", float),
        "yarn_beta_slow": ("beta_slow", float),
    }
    for gguf_key, (hf_key, cast) in optional.items():
        value = _field(reader, prefix + gguf_key)
        if value is not None:
            scaling[hf_key] = cast(value)
    return scaling


def _llama3_rope_scaling(
    rope_freqs: ReaderTensor | None, config: dict[str, Any]
) -> dict[str, Any] | None:
    """Recognise Llama 3.x rope scaling, which llama.cpp bakes into a ``rope_freqs`` tensor.

    The tensor holds one divisor per rotary frequency; when it equals the Llama 3
    schedule with the published defaults (low 1, high 4, original context 8192)
    the HF ``llama3`` rope_scaling is returned, otherwise None (with a warning).
    """
    if rope_freqs is None:
        return None
    freqs = np.asarray(rope_freqs.data, dtype=np.float64).reshape(-1)
    factor = float(freqs.max())
    if math.isclose(factor, 1.0):
        return None
    candidate = {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    dim = config["head_dim"]
    inv_freq = 1.0 / config["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    if len(inv_freq) == len(freqs) and np.allclose(
        _llama3_divisors(inv_freq, candidate), freqs, rtol=1e-4
    ):
        return candidate
    logger.warning("ignoring a rope_freqs tensor that does not follow the Llama 3 schedule")
    return None


def _llama3_divisors(inv_freq: np.ndarray, s: dict[str, Any]) -> np.ndarray:
    """How much Llama 3 scaling divides each rotary frequency by."""
    old_len, low, high = (
        s["original_max_position_embeddings"],
        s["low_freq_factor"],
        s["high_freq_factor"],
    )
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_len / wavelen - low) / (high - low)
    between = 1.0 / ((1 - smooth) / s["factor"] + smooth)
    return np.where(
        wavelen < old_len / high, 1.0, np.where(wavelen > old_len / low, s["factor"], between)
    )


# -- weights ----------------------------------------------------------------------


def _hf_name(gguf_name: str, arch: str = "llama") -> str | None:
    """The HF parameter name of a GGUF tensor; None for tensors HF does not store."""
    return hf_name(gguf_name, arch)


def _weight_plan(
    tensors: Sequence[ReaderTensor], config: dict[str, Any], arch: str
) -> list[_Planned]:
    """Every tensor to yield, with what to undo of the converter's changes."""
    permute = arch in PERMUTED_QK
    plan = []
    for tensor in tensors:
        name = hf_name(tensor.name, arch)
        if name is None:
            continue
        heads = 0
        if permute and ".attn_q." in tensor.name:
            heads = config["num_attention_heads"]
        elif permute and ".attn_k." in tensor.name:
            heads = config["num_key_value_heads"]
        # transformers takes the 1 off again too (and adds it back in float32 when it
        # computes): doing the same keeps the weights bit-identical to its.
        shift = 1.0 if arch in NORM_PLUS_ONE and name.endswith("norm.weight") else 0.0
        plan.append(_Planned(name, tensor, heads, shift))
    return plan


def _unpermute_rotary(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row permutation.

    The converter regroups each head's rows from HF's rotate-half layout
    ``[x0..x(d/2-1), y0..y(d/2-1)]`` into interleaved pairs ``[x0, y0, x1, y1, ...]``,
    i.e. it views rows as (heads, 2, d/2) and swaps the last two axes; viewing them
    as (heads, d/2, 2) and swapping back restores HF order. Biases are permuted too.
    """
    rows = weight.shape[0]
    pairs = rows // heads // 2
    grouped = weight.reshape(heads, pairs, 2, *weight.shape[1:])
    return grouped.transpose(1, 2).reshape(weight.shape).contiguous()
