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
import re
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType
from gguf.gguf_reader import ReaderField, ReaderTensor
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from candle_agents.engine.loader.base import Checkpoint, TokenizerInfo
from candle_agents.engine.loader.dequant import dequantize
from candle_agents.engine.quant.tensor import QuantTensor
from candle_agents.errors import ModelLoadError

__all__ = ["SUPPORTED_ARCHITECTURES", "build_gguf_tokenizer", "gguf_config", "load_gguf"]

logger = logging.getLogger(__name__)

# GGUF architecture -> (HF architecture class, HF model_type).
_HF_ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", "llama"),
    "mistral": ("MistralForCausalLM", "mistral"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "qwen3": ("Qwen3ForCausalLM", "qwen3"),
}
SUPPORTED_ARCHITECTURES = tuple(_HF_ARCHITECTURES)

# llama.cpp's converter interleaves the rotary halves of Q and K rows for these.
_PERMUTED_QK = {"llama", "mistral"}

_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_LAYER_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
# Tensors llama.cpp writes that HF models compute instead of storing.
_SKIPPED_TENSOR = re.compile(r"rope_freqs\.weight|blk\.\d+\.attn_rot_embd(\.weight)?")

# Token types (gguf.TokenType).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED = 1, 2, 3, 4


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
    permute = _field(reader, "general.architecture") in _PERMUTED_QK
    plan = _weight_plan(reader.tensors, config, permute)
    tokenizer, info, eos_ids = build_gguf_tokenizer(reader)
    quantized = {
        hf_name: int(tensor.tensor_type) for hf_name, tensor, _ in plan if _keeps_blocks(tensor)
    }

    def weights(keep_quantized: Collection[str] = ()) -> Iterator[tuple[str, Any]]:
        with file.open("rb") as fh:
            for hf_name, tensor, heads in plan:
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


def _field(reader: GGUFReader, key: str, default: Any = None) -> Any:
    """A metadata value as a Python scalar, str or list; ``default`` when absent."""
    field = reader.fields.get(key)
    if field is None or not field.types:
        return default
    if field.types[0] == GGUFValueType.ARRAY and field.types[-1] == GGUFValueType.STRING:
        return _strings(field)
    if field.types[0] == GGUFValueType.STRING:
        return bytes(field.parts[-1]).decode("utf-8", errors="replace")
    return field.contents()


def _strings(field: ReaderField) -> list[str]:
    # Not field.contents(): one invalid UTF-8 token would fail the whole vocabulary.
    return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]


def _hf_shape(tensor: ReaderTensor) -> tuple[int, ...]:
    """GGUF stores GGML's ``ne`` (fastest dimension first); HF/numpy order is reversed."""
    return tuple(int(n) for n in reversed(tensor.shape.tolist()))


# -- config -----------------------------------------------------------------------


def gguf_config(reader: GGUFReader) -> dict[str, Any]:
    """The HF ``config.json`` equivalent of a GGUF file's metadata."""
    arch = _field(reader, "general.architecture")
    if arch not in _HF_ARCHITECTURES:
        raise ModelLoadError(
            f"GGUF architecture {arch!r} is not supported; supported GGUF architectures: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    hf_arch, model_type = _HF_ARCHITECTURES[arch]
    # llama.cpp writes Mistral models as "llama"; only the name tells them apart.
    if arch == "llama" and "mistral" in str(_field(reader, "general.name", "")).lower():
        hf_arch, model_type = _HF_ARCHITECTURES["mistral"]
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


def _hf_name(gguf_name: str) -> str | None:
    """The HF parameter name of a GGUF tensor; None for tensors HF does not store."""
    if gguf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[gguf_name]
    if _SKIPPED_TENSOR.fullmatch(gguf_name):
        return None
    match = _LAYER_TENSOR.fullmatch(gguf_name)
    if match and match.group(2) in _LAYER_TENSORS:
        layer, part, kind = match.groups()
        return f"model.layers.{layer}.{_LAYER_TENSORS[part]}.{kind}"
    raise ModelLoadError(
        f"GGUF tensor {gguf_name!r} has no counterpart in the supported architectures "
        f"({', '.join(SUPPORTED_ARCHITECTURES)}): is this a fused or MoE variant?"
    )


def _weight_plan(
    tensors: Sequence[ReaderTensor], config: dict[str, Any], permute: bool
) -> list[tuple[str, ReaderTensor, int]]:
    """(HF name, tensor, heads to un-permute by or 0) for every tensor to yield."""
    plan = []
    for tensor in tensors:
        hf_name = _hf_name(tensor.name)
        if hf_name is None:
            continue
        heads = 0
        if permute and ".attn_q." in tensor.name:
            heads = config["num_attention_heads"]
        elif permute and ".attn_k." in tensor.name:
            heads = config["num_key_value_heads"]
        plan.append((hf_name, tensor, heads))
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


# -- tokenizer --------------------------------------------------------------------

# The GPT-2 split regex, run after digits were cut out one by one (llama.cpp's
# "smollm"/"starcoder" pre-tokenizers; SmolLM2's own tokenizer.json does the same
# with Digits(individual_digits=True) + ByteLevel).
_DIGIT_SPLIT_PRE = {
    "smollm",
    "starcoder",
    "refact",
    "command-r",
    "codeshell",
    "exaone",
    "minerva-7b",
}
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
_LLAMA3_PRE = {
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "dbrx",
    "smaug-bpe",
}
_QWEN2_PRE = {"qwen2", "deepseek-r1-qwen", "megrez"}


def build_gguf_tokenizer(reader: GGUFReader) -> tuple[Tokenizer, TokenizerInfo, list[int]]:
    """The tokenizer described by ``tokenizer.ggml.*``, its metadata and its EOS ids."""
    model = _field(reader, "tokenizer.ggml.model")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    if not tokens:
        raise ModelLoadError("the GGUF file has no tokenizer.ggml.tokens: no vocabulary to use")
    types = _field(reader, "tokenizer.ggml.token_type") or [_NORMAL] * len(tokens)
    pre = _field(reader, "tokenizer.ggml.pre", "default")
    add_bos_default = False
    if model == "gpt2":
        tokenizer = _byte_level_bpe(tokens, _field(reader, "tokenizer.ggml.merges") or [], pre)
        add_bos_default = pre in _LLAMA3_PRE  # llama.cpp's default for these vocabularies
    elif model == "llama":
        scores = _field(reader, "tokenizer.ggml.scores") or [0.0] * len(tokens)
        unk_id = _field(reader, "tokenizer.ggml.unknown_token_id")
        unk = tokens[unk_id] if unk_id is not None and 0 <= unk_id < len(tokens) else None
        prefix = bool(_field(reader, "tokenizer.ggml.add_space_prefix", True))
        tokenizer = _sentencepiece_bpe(tokens, scores, types, unk, prefix)
        add_bos_default = True
    else:
        raise ModelLoadError(
            f"GGUF tokenizer model {model!r} is not supported; supported: 'gpt2' "
            "(byte-level BPE) and 'llama' (SentencePiece BPE)"
        )
    _add_special_tokens(tokenizer, tokens, types)

    def token(key: str) -> str | None:
        token_id = _field(reader, f"tokenizer.ggml.{key}")
        return tokens[token_id] if token_id is not None and 0 <= token_id < len(tokens) else None

    info = TokenizerInfo(
        chat_template=_field(reader, "tokenizer.chat_template"),
        bos_token=token("bos_token_id"),
        eos_token=token("eos_token_id"),
        pad_token=token("padding_token_id"),
        unk_token=token("unknown_token_id"),
        add_bos_token=bool(_field(reader, "tokenizer.ggml.add_bos_token", add_bos_default)),
        add_eos_token=bool(_field(reader, "tokenizer.ggml.add_eos_token", False)),
    )
    eos_ids = [
        int(value)
        for key in ("eos_token_id", "eot_token_id", "eom_token_id")
        if (value := _field(reader, f"tokenizer.ggml.{key}")) is not None
    ]
    return tokenizer, info, list(dict.fromkeys(eos_ids))


def _byte_level_bpe(tokens: list[str], merges: list[str], pre: str) -> Tokenizer:
    """GPT-2 style byte-level BPE; the tokens are already spelled in its byte alphabet."""
    vocab = {token: index for index, token in enumerate(tokens)}
    pairs = [tuple(merge.split(" ", 1)) for merge in merges if " " in merge]
    # Llama 3 vocabularies take a whole-word token even where no merge leads to it.
    tokenizer = Tokenizer(models.BPE(vocab, pairs, ignore_merges=pre in _LLAMA3_PRE))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGIT_SPLIT_PRE:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    elif pre in _LLAMA3_PRE or pre in _QWEN2_PRE:
        split = _LLAMA3_SPLIT if pre in _LLAMA3_PRE else _QWEN2_SPLIT
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:  # "gpt2", "default" and the rest: GPT-2's own split
        tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _sentencepiece_bpe(
    tokens: list[str], scores: list[float], types: list[int], unk: str | None, add_prefix: bool
) -> Tokenizer:
    """SentencePiece BPE (llama.cpp's "llama" model): ``▁`` for spaces, byte fallback.

    Spaces are rewritten by a normalizer, as in Llama's own tokenizer.json: it
    prepends ``▁`` to every text segment between special tokens, as llama.cpp does.
    """
    vocab = {token: index for index, token in enumerate(tokens)}
    merges = _merges_from_scores(tokens, scores, types)
    tokenizer = Tokenizer(
        models.BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
    )
    steps = [normalizers.Replace(" ", "▁")]
    if add_prefix:
        steps.insert(0, normalizers.Prepend("▁"))
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = None
    decode = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix:
        decode.append(decoders.Strip(" ", 1, 0))
    tokenizer.decoder = decoders.Sequence(decode)
    return tokenizer


def _merges_from_scores(
    tokens: list[str], scores: list[float], types: list[int]
) -> list[tuple[str, str]]:
    """BPE merges that reproduce SentencePiece's "best-scoring piece first" rule.

    Every way of splitting a normal piece into two normal pieces becomes a merge,
    ranked by the score of the piece it makes (higher first, then lower id).
    """
    normal = {
        token: index for index, token in enumerate(tokens) if types[index] in (_NORMAL, 0) and token
    }
    ranked = []
    for token, index in normal.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in normal and right in normal:
                ranked.append((-scores[index], index, cut, left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _add_special_tokens(tokenizer: Tokenizer, tokens: list[str], types: list[int]) -> None:
    """Control and unknown tokens become special added tokens, user-defined ones plain
    added tokens: either way the text matches whole, as in llama.cpp."""
    special, user = [], []
    for token, kind in zip(tokens, types):
        if not token:
            continue
        if kind in (_CONTROL, _UNKNOWN):
            special.append(AddedToken(token, special=True, normalized=False))
        elif kind == _USER_DEFINED:
            user.append(AddedToken(token, special=False, normalized=False))
    if special:
        tokenizer.add_special_tokens(special)
    if user:
        tokenizer.add_tokens(user)
