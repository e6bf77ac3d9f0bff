"""The engine on quantized weights (CPU): memory held, and exactness in every scenario.

The exact path dequantizes weights in registers and sums in float32, so its
greedy output equals transformers' on the same dequantized weights, token for
token. In-situ quantization (``quantize="q8_0"``) is checked that way on every
architecture: transformers runs a copy of the HF folder whose matrices went
through the same quantize -> dequantize round trip.
"""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from gguf import GGUFReader
from safetensors.torch import load_file, save_file

from candle_agents import Engine
from candle_agents.engine import cpu_kernels
from candle_agents.engine.loader import default_gguf_path
from candle_agents.engine.quant.apply import QUANTIZE_TYPES
from candle_agents.engine.quant.layers import QuantEmbedding, QuantLinear
from candle_agents.engine.quant.quantize import quantize_matrix
from candle_agents.errors import ConfigError
from tests.support.checks import assert_all_blocks_free
from tests.support.exactness import GREEDY, Reference, check, engine_for, make_prompts
from tests.support.tiny_models import build_tiny_model

pytestmark = pytest.mark.skipif(not cpu_kernels.available(), reason="no C compiler here")


def tensor_bytes(path) -> int:
    return sum(int(t.n_bytes) for t in GGUFReader(path).tensors)


def test_default_model_holds_its_file_size_of_weights():
    path = default_gguf_path()
    with Engine.from_pretrained(kv_cache_memory=16 * 2**20) as engine:
        model = engine.runner.model
        linears = [m for m in model.modules() if isinstance(m, QuantLinear)]
        assert len(linears) == 30 * 4 + 1  # qkv, o, gate_up, down per layer + the head
        assert isinstance(model.embed_tokens, QuantEmbedding)
        assert model.lm_head.parts is model.embed_tokens.parts  # tied: one copy
        held = engine.runner.weight_bytes
        assert held <= 1.05 * tensor_bytes(path), (held, tensor_bytes(path))


def fake_quantized(src, dst, qtype):
    """A copy of the HF folder whose matrices went through quantize -> dequantize."""
    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        tensors = load_file(f)
        for name, t in tensors.items():
            if t.dim() == 2:
                tensors[name] = quantize_matrix(t.float(), qtype).dequantize()
        save_file(tensors, f, metadata={"format": "pt"})
    return dst


_refs: dict[tuple[str, str], Reference] = {}


@pytest.fixture
def qref(arch, tiny_model_dir, tmp_path_factory):
    key = (arch, "q8_0")
    if key not in _refs:
        dst = tmp_path_factory.mktemp("fakequant") / arch
        _refs[key] = Reference(fake_quantized(tiny_model_dir(arch), dst, QUANTIZE_TYPES["q8_0"]))
    return _refs[key]


def quantized_engine(path, **overrides) -> Engine:
    engine = engine_for(path, quantize="q8_0", **{"quantized_matmul": "exact", **overrides})
    assert isinstance(engine.runner.model.layers[0].mlp.down_proj, QuantLinear)
    return engine


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_in_situ_q8_0_sixteen_requests_together(arch, tiny_model_dir, qref, backend):
    with quantized_engine(tiny_model_dir(arch), attention_backend=backend) as engine:
        prompts = make_prompts(16, engine.runner.model.vocab_size, seed=1)
        check(engine, qref, prompts, engine.generate(prompts, GREEDY))


def test_in_situ_q8_0_chunked_prefill_and_prefix_hit(arch, tiny_model_dir, qref):
    # Prompts past the prefill threshold take the dequantized-slab path; chunks
    # of 8 and the decodes beside them take the direct kernels.
    with quantized_engine(
        tiny_model_dir(arch), max_num_batched_tokens=96, prefill_chunk_size=80
    ) as engine:
        vocab = engine.runner.model.vocab_size
        shared = make_prompts(1, vocab, seed=4, lengths=[50])[0]
        prompts = [shared + t for t in make_prompts(3, vocab, seed=5, lengths=[7, 1, 90])]
        first = engine.generate(prompts[0], GREEDY)
        later = engine.generate(prompts[1:], GREEDY)
        assert all(r.usage.cached_tokens == 48 for r in later)
        check(engine, qref, prompts, [first, *later])


def test_in_situ_q8_0_forced_preemption(arch, tiny_model_dir, qref):
    path = tiny_model_dir(arch)
    with quantized_engine(path, block_size=8) as probe:
        per_block = probe.runner.kv_caches[0][0][0].numel() * 4 * 2 * len(probe.runner.kv_caches)
    with quantized_engine(path, block_size=8, kv_cache_memory=24 * per_block) as engine:
        prompts = make_prompts(12, engine.runner.model.vocab_size, seed=6, lengths=[40, 55] * 6)
        results = engine.generate(prompts, GREEDY)
        assert engine.scheduler.num_preemptions > 0
        check(engine, qref, prompts, results)


@pytest.mark.parametrize("arch", ["qwen2"])  # attention biases: the bias slices of QKV
def test_in_situ_q8_0_on_the_triton_backend(arch, tiny_model_dir, qref):
    pytest.importorskip("triton")
    with quantized_engine(tiny_model_dir(arch), attention_backend="triton") as engine:
        prompts = make_prompts(4, engine.runner.model.vocab_size, seed=8)
        check(engine, qref, prompts, engine.generate(prompts, GREEDY))


def test_int8_activations_run_every_scenario_and_free_their_blocks(tiny_model_dir):
    # Not exact (activations are rounded to int8 per block): the kernels'
    # tolerance is tested in test_quant_kernels.py; here the engine runs on it.
    with quantized_engine(
        tiny_model_dir("llama"), quantized_matmul="int8", max_num_batched_tokens=64
    ) as engine:
        assert engine.runner.model.layers[0].mlp.down_proj.int8_activations
        assert engine.runner.kv_dtype == torch.float16  # "auto" on the int8 path
        prompts = make_prompts(8, engine.runner.model.vocab_size, seed=9)
        results = engine.generate(prompts, GREEDY)
        assert all(len(r.token_ids) == GREEDY.max_tokens for r in results)
        assert_all_blocks_free(engine)


def test_exact_is_the_default_and_int8_takes_a_float16_cache():
    with Engine.from_pretrained(kv_cache_memory=16 * 2**20) as engine:
        assert not engine.runner.model.lm_head.int8_activations
        assert engine.runner.kv_dtype == torch.float32
    with Engine.from_pretrained(kv_cache_memory=16 * 2**20, quantized_matmul="int8") as engine:
        assert engine.runner.model.lm_head.int8_activations
        assert engine.runner.kv_dtype == torch.float16  # as llama.cpp's default


@pytest.mark.parametrize("parts", [1, 2])
def test_int8_path_prefills_in_bfloat16(parts):
    # Prompt-sized matmuls on the int8 path: the dequantized weights and the rows
    # rounded to bfloat16, one GEMM (one per part where parts are not merged, as
    # parts of two types), float32 out, bias added after.
    torch.manual_seed(0)
    w = torch.randn(96, 64)
    layer = QuantLinear(64, 96, bias=True, int8_activations=True)
    for start in range(0, 96, 96 // parts):
        layer.load_rows(start, quantize_matrix(w[start : start + 96 // parts], 8))  # Q8_0
    layer.bias.copy_(torch.randn(96))
    layer.prepare()
    layer.prefill_dtype = torch.bfloat16
    x = torch.randn(100, 64)
    deq = layer.dequantized()
    want = F.linear(x.bfloat16(), deq.bfloat16()).float() + layer.bias
    assert torch.equal(layer(x), want)
    # and within bfloat16's rounding of the float32 result
    exact = F.linear(x, deq, layer.bias)
    assert (layer(x) - exact).norm() / exact.norm() < 1e-2


def test_dequantize_keeps_float_weights():
    with Engine.from_pretrained(dequantize=True, kv_cache_memory=16 * 2**20) as engine:
        assert not any(isinstance(m, QuantLinear) for m in engine.runner.model.modules())


def test_bad_quantize_options_are_named(tiny_model_dir):
    with pytest.raises(ConfigError, match="quantize='q3'"):
        Engine.from_pretrained(str(tiny_model_dir("llama")), quantize="q3")
    with pytest.raises(ConfigError, match="already quantized"):
        Engine.from_pretrained(quantize="q8_0")  # the default model is a GGUF
    with pytest.raises(ConfigError, match="quantized_matmul"):
        Engine.from_pretrained(quantized_matmul="fast")


@pytest.mark.parametrize("kv_dtype", ["float16", "bfloat16"])
def test_16_bit_kv_cache(tiny_model_dir, kv_dtype):
    # The C kernel and the torch reference read the same rounded K/V and sum in
    # float32: the same greedy tokens, through chunked prefill (which reads the
    # rounded history back) and decoding. How far rounding moves the outputs from
    # a float32 cache is measured on the default model (benchmarks/quant_paths.py).
    path = tiny_model_dir("llama")
    options = dict(max_num_batched_tokens=48, prefill_chunk_size=16)
    engines = {
        "full": engine_for(path, attention_backend="cpu", **options),
        "cpu": engine_for(path, attention_backend="cpu", kv_cache_dtype=kv_dtype, **options),
        "torch": engine_for(path, attention_backend="torch", kv_cache_dtype=kv_dtype, **options),
    }
    try:
        assert str(engines["cpu"].runner.kv_dtype) == f"torch.{kv_dtype}"
        assert engines["cpu"].num_blocks == 2 * engines["full"].num_blocks  # same bytes
        prompts = make_prompts(8, engines["full"].runner.model.vocab_size, seed=10)
        out = {
            k: [r.token_ids for r in engines[k].generate(prompts, GREEDY)] for k in ("cpu", "torch")
        }
        assert out["cpu"] == out["torch"]
        for engine in engines.values():
            assert_all_blocks_free(engine)
    finally:
        for engine in engines.values():
            engine.shutdown()


def test_in_situ_q4_k_on_rows_of_whole_super_blocks(tmp_path):
    # Hidden 256: Q4_K holds every matrix (none falls back to Q8_0).
    src = build_tiny_model("llama", tmp_path, name="h256", hidden_size=256, intermediate_size=512)
    ref = Reference(fake_quantized(src, tmp_path / "fake", QUANTIZE_TYPES["q4_k"]))
    with engine_for(
        src, quantize="q4_k", quantized_matmul="exact", max_num_batched_tokens=96
    ) as engine:
        types = {
            w.type_name for m in engine.runner.model.modules() for _, w in getattr(m, "parts", [])
        }
        assert types == {"Q4_K"}
        prompts = make_prompts(
            6, engine.runner.model.vocab_size, seed=11, lengths=[3, 70, 9, 120, 1, 30]
        )
        check(engine, ref, prompts, engine.generate(prompts, GREEDY))
