"""In-situ quantizers (engine.quant.quantize): float weights -> GGUF blocks.

References: gguf-py's own Q8_0 quantizer and dequantizers, and the blocks that
llama.cpp's llama-quantize wrote into the committed test files
(tests/data/gguf/, made by tests/data/make_gguf_files.py from the tiny models that
tests/support/tiny_models.py rebuilds here, weight for weight).
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGUFReader
from gguf import GGMLQuantizationType as Q
from safetensors import safe_open

from candle_agents.engine.loader.gguf import _hf_name
from candle_agents.engine.quant.quantize import SUPPORTED, quantize
from tests.engine.test_gguf_files import DATA
from tests.support.tiny_models import build_tiny_model


def dequantized(blocks: torch.Tensor, qtype: Q) -> np.ndarray:
    return gguf.quants.dequantize(blocks.numpy(), qtype)


def rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(a, dtype=np.float64))))


# -- layout and arguments ------------------------------------------------------------


@pytest.mark.parametrize("qtype", SUPPORTED, ids=lambda q: q.name)
def test_layout(qtype: Q) -> None:
    block, size = GGML_QUANT_SIZES[qtype]
    w = torch.randn(3, 512)
    out = quantize(w, qtype)
    assert out.dtype == torch.uint8 and out.is_contiguous()
    assert out.shape == (3, 512 // block * size)
    assert torch.equal(quantize(w, int(qtype)), out)  # the type's int works too
    # Rows are independent: a row quantizes the same alone.
    assert torch.equal(quantize(w[1:2], qtype), out[1:2])
    # Other float dtypes and layouts are read as their float32 values.
    half = w.to(torch.bfloat16)
    assert torch.equal(quantize(half, qtype), quantize(half.float(), qtype))
    t = torch.randn(512, 3).t()
    assert torch.equal(quantize(t, qtype), quantize(t.contiguous(), qtype))


@pytest.mark.parametrize(
    ("qtype", "block", "cols"), [(Q.Q8_0, 32, 48), (Q.Q4_K, 256, 320), (Q.Q4_K, 256, 64)]
)
def test_row_length_must_fit_blocks(qtype: Q, block: int, cols: int) -> None:
    message = f"{qtype.name} needs rows whose length is a multiple of {block}.* {cols} values"
    with pytest.raises(ValueError, match=message):
        quantize(torch.randn(4, cols), qtype)
    quantize(torch.randn(1, 2 * block), qtype)


def test_rejects_other_types_and_shapes() -> None:
    for qtype in (Q.Q4_0, Q.Q6_K, Q.F16, Q.F32):
        with pytest.raises(ValueError, match=f"cannot quantize to {qtype.name}.*Q8_0, Q4_K"):
            quantize(torch.randn(2, 256), qtype)
    with pytest.raises(ValueError, match="unknown GGML quantization type 999"):
        quantize(torch.randn(2, 256), 999)
    with pytest.raises(ValueError, match="2-D"):
        quantize(torch.randn(256), Q.Q8_0)


# -- Q8_0 ------------------------------------------------------------------------------


def test_q8_0_equals_gguf_py() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 1024)).astype(np.float32)
    w[0] = 0  # a zero block: d = 0, no division
    w[1, :32] = 1e-30  # subnormal-sized scale
    w[2, :64] *= 1e4
    # Exact halves after scaling by 127 / amax = 1: C's roundf takes them away from
    # zero (2.5 -> 3, -3.5 -> -4), and 0.49999997 stays 0 (floor(a + 0.5) would not).
    w[3, :32] = np.array([127, 2.5, -3.5, 0.5, -0.5, 0.49999997] + [1.0] * 26, np.float32)
    ours = quantize(torch.from_numpy(w), Q.Q8_0).numpy()
    assert np.array_equal(ours, gguf.quants.quantize(w, Q.Q8_0))
    assert list(ours[3, 2:8].view(np.int8)) == [127, 3, -4, 1, -1, 0]


# -- against llama-quantize's own blocks ---------------------------------------------------


def hf_weights(tmp_path_factory, layers: int) -> dict[str, torch.Tensor]:
    """The float weights of the tiny llama that the committed llama-h256 files were
    made from (make_gguf_files.py builds it the same way)."""
    root = tmp_path_factory.mktemp(f"llama-h256-L{layers}")
    path = build_tiny_model(
        "llama", root, hidden_size=256, intermediate_size=512, num_hidden_layers=layers
    )
    with safe_open(path / "model.safetensors", framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)


def llama_quantized(file: str, qtype: Q, weights: dict[str, torch.Tensor]):
    """(GGUF name, float weight, llama-quantize's blocks) for each ``qtype`` tensor of
    ``file`` that the converter stored as HF has it (not the permuted Q and K)."""
    found = []
    for t in GGUFReader(DATA / file).tensors:
        if t.tensor_type == qtype and not t.name.endswith(("attn_q.weight", "attn_k.weight")):
            w = weights[_hf_name(t.name)]
            found.append((t.name, w, np.array(t.data).reshape(w.shape[0], -1)))
    return found


def test_q8_0_equals_llama_quantize(tmp_path_factory) -> None:
    weights = hf_weights(tmp_path_factory, layers=1)
    tensors = llama_quantized("llama-h256-Q8_0.gguf", Q.Q8_0, weights)
    assert len(tensors) == 7  # embeddings, output, v, o, gate, up, down
    for name, w, ref in tensors:
        assert np.array_equal(quantize(w, Q.Q8_0).numpy(), ref), name


def test_q4_k_matches_llama_quantize(tmp_path_factory) -> None:
    weights = hf_weights(tmp_path_factory, layers=2)
    tensors = llama_quantized("llama-h256-Q4_K_M.gguf", Q.Q4_K, weights)
    # Q4_K_M keeps Q4_K for these (Q6_K for attn_v / ffn_down of layer 1 and output).
    assert sorted(n for n, _, _ in tensors) == [
        "blk.0.attn_output.weight",
        "blk.0.attn_v.weight",
        "blk.0.ffn_down.weight",
        "blk.0.ffn_gate.weight",
        "blk.0.ffn_up.weight",
        "blk.1.attn_output.weight",
        "blk.1.ffn_gate.weight",
        "blk.1.ffn_up.weight",
        "token_embd.weight",
    ]
    same_blocks = total_blocks = 0
    err_ours = err_ref = 0.0
    for name, w, ref in tensors:
        ours = quantize(w, Q.Q4_K).numpy()
        assert ours.shape == ref.shape, name
        values = w.numpy()
        err_ref_t = rms(dequantized(torch.from_numpy(ref), Q.Q4_K) - values)
        # These are the weights llama-quantize saw: its error is Q4_K-sized (the
        # weights are N(0, 0.25)), not that of unrelated tensors.
        assert err_ref_t < 0.1 * values.std(), f"{name}: regenerate the files?"
        err_ours_t = rms(dequantized(torch.from_numpy(ours), Q.Q4_K) - values)
        assert err_ours_t <= 1.02 * err_ref_t, name
        err_ours += err_ours_t**2
        err_ref += err_ref_t**2
        blocks_ref, blocks_ours = ref.reshape(-1, 144), ours.reshape(-1, 144)
        same_blocks += int((blocks_ref == blocks_ours).all(axis=1).sum())
        total_blocks += len(blocks_ref)
    # The same algorithm: most blocks are byte-identical; the rest are near-ties that
    # the float summation order tips either way (about 3% of blocks here).
    assert same_blocks >= 0.9 * total_blocks
    assert np.sqrt(err_ours / err_ref) <= 1.01


# -- Q4_K on its own -------------------------------------------------------------------


@pytest.mark.parametrize("std", [1e-3, 1.0, 100.0])
def test_q4_k_error_on_random_normal(std: float) -> None:
    w = torch.randn(64, 1024, generator=torch.Generator().manual_seed(1)) * std
    err = rms(dequantized(quantize(w, Q.Q4_K), Q.Q4_K) - w.numpy())
    # 4 bits over each 32 values' range with a fitted min: about 7% of the std.
    assert 0.05 * std < err < 0.08 * std


def test_q4_k_special_blocks() -> None:
    w = torch.randn(6, 256)
    w[0] = 0
    w[1] = -0.75  # constant below zero: the min carries it
    w[2] = 2.0  # constant above zero: the min is clipped to 0, the scale carries it
    w[3, :32] *= 1e4  # one loud sub-block: the quiet ones' 6-bit scales round to 0
    w[4] = w[4].abs()  # no negative values
    w[5, ::2] = 0  # half zeros
    back = torch.from_numpy(dequantized(quantize(w, Q.Q4_K), Q.Q4_K))
    assert torch.isfinite(back).all()
    assert torch.equal(back[0], torch.zeros(256))
    assert torch.allclose(back[1], w[1], rtol=2e-3) and torch.allclose(back[2], w[2], rtol=2e-3)
    loud, quiet = w[3, :32], w[3, 32:]
    assert rms((back[3, :32] - loud).numpy()) < 0.08 * loud.std()
    assert (back[3, 32:] - quiet).abs().max() < 0.05 * loud.abs().max()
    for row in (4, 5):
        assert rms((back[row] - w[row]).numpy()) < 0.08 * w[row].std()
