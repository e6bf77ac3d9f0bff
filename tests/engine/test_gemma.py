"""Gemma 2/3 details the scheduling scenarios do not show: config defaults, rope
tables, the folded ``+ 1`` of the norms, multimodal checkpoints, and one
prefill's logits against transformers' in float32."""

from __future__ import annotations

import json

import pytest
import torch

from candle_agents.engine import cpu_kernels
from candle_agents.engine.attention import AttentionMetadata
from candle_agents.engine.attention.torch_ref import TorchAttentionBackend
from candle_agents.engine.layers.decoder import ForwardContext
from candle_agents.engine.layers.ops import CpuKernelOps, TorchOps
from candle_agents.engine.loader.hf import load_hf_folder
from candle_agents.engine.models import model_class
from candle_agents.engine.models.gemma import (
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    gemma2_layer_types,
    gemma3_layer_types,
)
from candle_agents.errors import ModelLoadError

L, G = "sliding_attention", "full_attention"

BASE = {
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "max_position_embeddings": 256,
}


def _gemma3(**fields):
    return {"architectures": ["Gemma3ForCausalLM"], **BASE, **fields}


def test_default_layer_types_follow_transformers():
    import transformers

    for layers, pattern in [(6, None), (13, None), (7, 3), (4, 1)]:
        extra = {} if pattern is None else {"sliding_window_pattern": pattern}
        hf = transformers.Gemma3TextConfig(num_hidden_layers=layers, **extra)
        ours = Gemma3ForCausalLM.resolve_layer_types({"num_hidden_layers": layers, **extra})
        assert ours == hf.layer_types == gemma3_layer_types(layers, pattern or 6)
    for layers in (1, 4, 5):
        hf = transformers.Gemma2Config(num_hidden_layers=layers)
        assert Gemma2ForCausalLM.resolve_layer_types({"num_hidden_layers": layers}) == (
            hf.layer_types
        )
        assert gemma2_layer_types(layers) == hf.layer_types
    spec = Gemma3ForCausalLM.spec_from_config(_gemma3(num_hidden_layers=7, sliding_window=16))
    assert spec.layer_windows == (16, 16, 16, 16, 16, None, 16)
    assert spec.qk_norm and spec.head_dim == 16
    spec = Gemma2ForCausalLM.spec_from_config({**BASE, "num_hidden_layers": 3})
    assert spec.layer_windows == (4096, None, 4096)  # transformers' default window
    assert not spec.qk_norm


def test_bad_layer_types_are_refused():
    with pytest.raises(ModelLoadError, match="layer_types"):
        Gemma3ForCausalLM.spec_from_config(_gemma3(num_hidden_layers=2, layer_types=[L]))
    with pytest.raises(ModelLoadError, match="hidden_activation"):
        Gemma2ForCausalLM({**BASE, "num_hidden_layers": 1, "hidden_activation": "silu"})


def _tables(config):
    model = model_class(config)(config)
    model.init_rotary(64, torch.device("cpu"))
    return model


def test_nested_rope_parameters_equal_old_style_keys():
    old = _gemma3(
        num_hidden_layers=2,
        rope_theta=50000.0,
        rope_local_base_freq=500.0,
        rope_scaling={"rope_type": "linear", "factor": 4.0},
    )
    nested = _gemma3(
        num_hidden_layers=2,
        rope_parameters={
            G: {"rope_type": "linear", "factor": 4.0, "rope_theta": 50000.0},
            L: {"rope_type": "default", "rope_theta": 500.0},
        },
    )
    a, b = _tables(old), _tables(nested)
    for name in ("rotary", "local_rotary"):
        assert torch.equal(getattr(a, name).cos, getattr(b, name).cos)
        assert torch.equal(getattr(a, name).sin, getattr(b, name).sin)
    # the scaling is the global layers' only; the bases differ
    assert not torch.equal(a.rotary.cos, a.local_rotary.cos)
    unscaled = _tables(_gemma3(num_hidden_layers=2, rope_theta=50000.0))
    assert torch.equal(unscaled.rotary.cos[4], a.rotary.cos[16])  # linear x4: position / 4
    # defaults: 1M global, 10k local (as transformers' Gemma3TextConfig)
    d = _tables(_gemma3(num_hidden_layers=2))
    e = _tables(_gemma3(num_hidden_layers=2, rope_theta=1e6, rope_local_base_freq=1e4))
    assert torch.equal(d.rotary.cos, e.rotary.cos)
    assert torch.equal(d.local_rotary.cos, e.local_rotary.cos)
    # Gemma 2: one table for both kinds of layer
    g2 = _tables({"architectures": ["Gemma2ForCausalLM"], **BASE, "num_hidden_layers": 2})
    assert g2.local_rotary is g2.rotary


def test_rope_tables_equal_transformers():
    import transformers
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RotaryEmbedding

    fields = dict(BASE, num_hidden_layers=3, rope_theta=50000.0, rope_local_base_freq=500.0)
    fields["layer_types"] = [L, L, G]
    fields["rope_scaling"] = {"rope_type": "linear", "factor": 8.0}
    hf = Gemma3RotaryEmbedding(transformers.Gemma3TextConfig(**fields))
    ours = _tables(_gemma3(**fields))
    pos = torch.arange(64)[None]
    x = torch.zeros(1, dtype=torch.float32)
    for kind, table in [(G, ours.rotary), (L, ours.local_rotary)]:
        cos, sin = hf(x, pos, kind)
        assert torch.equal(cos[0], table.cos[:64]) and torch.equal(sin[0], table.sin[:64])


def test_norm_plus_one_is_folded_at_load():
    import transformers

    torch.manual_seed(0)
    hf = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(num_hidden_layers=1, **BASE))
    with torch.no_grad():
        hf.model.norm.weight.uniform_(-0.5, 0.5)
    model = Gemma3ForCausalLM(_gemma3(num_hidden_layers=1))
    model.load_weights(hf.state_dict().items())
    assert torch.equal(model.norm.weight, 1.0 + hf.model.norm.weight)


@pytest.mark.parametrize("ops", [TorchOps(), CpuKernelOps()], ids=["torch", "cpu"])
def test_folded_norm_is_bit_identical_to_transformers(ops):
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm

    if isinstance(ops, CpuKernelOps) and not cpu_kernels.available():
        pytest.skip("no C kernels here")

    torch.manual_seed(0)
    hf = Gemma3RMSNorm(256, eps=1e-6)
    with torch.no_grad():
        hf.weight.uniform_(-1, 1)
    x = torch.randn(7, 256) * 3
    ours = ops.rms_norm(x, 1.0 + hf.weight.detach().float(), 1e-6)
    if isinstance(ops, CpuKernelOps):  # the C kernel sums in another order
        torch.testing.assert_close(ours, hf(x), rtol=1e-6, atol=1e-6)
    else:
        assert torch.equal(ours, hf(x))


def test_gelu_tanh_and_mul_matches_transformers():
    from transformers.activations import ACT2FN

    gate_up = torch.randn(5, 2 * 96)
    gate, up = gate_up[:, :96].contiguous(), gate_up[:, 96:].contiguous()
    want = ACT2FN["gelu_pytorch_tanh"](gate) * up
    cpu_kernels.available()  # CpuKernelOps falls back to torch here either way
    for ops in (TorchOps(), CpuKernelOps()):
        assert torch.equal(ops.gelu_tanh_and_mul(gate_up), want)


def _load(path):
    ckpt = load_hf_folder(path)
    model = model_class(ckpt.config)(ckpt.config)
    with torch.no_grad():
        model.load_weights(ckpt.weights())
    model.tie_weights()
    return model.eval()


def _prefill_logits(model, ids: list[int], block_size: int = 16) -> torch.Tensor:
    """One sequence's prefill through the torch backend: logits of every position."""
    spec, n = model.spec, len(ids)
    model.init_rotary(n + 1, torch.device("cpu"))
    backend = TorchAttentionBackend()
    blocks = -(-n // block_size)
    shape = backend.kv_cache_shape(blocks, block_size, spec.num_kv_heads, spec.head_dim)
    caches = [(torch.zeros(shape), torch.zeros(shape)) for _ in range(model.num_layers)]
    metas = {}
    for window in set(spec.layer_windows or (None,)):
        meta = AttentionMetadata(
            num_decodes=0,
            num_decode_tokens=0,
            slot_mapping=torch.arange(n),
            seq_lens=torch.tensor([n]),
            block_tables=torch.arange(blocks)[None],
            seq_lens_cpu=[n],
            query_lens_cpu=[n],
            query_start_cpu=[0, n],
            max_decode_seq_len=0,
            block_size=block_size,
            window=window,
        )
        backend.prepare(meta, spec.num_kv_heads, spec.head_dim)
        metas[window] = meta
    windows = spec.layer_windows or (None,) * model.num_layers
    ctx = ForwardContext(
        metas[windows[0]],
        backend,
        caches,
        torch.arange(n),
        model.rotary,
        TorchOps(),
        layer_metas=[metas[w] for w in windows],
        local_rotary=model.local_rotary,
    )
    with torch.no_grad():
        return model(torch.tensor(ids), ctx, torch.arange(n))


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_prefill_logits_match_transformers(arch, tiny_model_dir):
    import transformers

    path = tiny_model_dir(arch)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids = torch.randint(3, hf.config.vocab_size, (40,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = hf(ids[None]).logits[0]
    got = _prefill_logits(_load(path), ids.tolist())
    # Bit for bit: the same float operations in the same order (the fused QKV and
    # gate/up matmuls compute each output column as the separate ones do).
    assert torch.equal(got, want), (got - want).abs().max()


def test_multimodal_checkpoint_loads_its_text_model(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file, save_file

    src = tiny_model_dir("gemma3")
    text = json.loads((src / "config.json").read_text())
    tensors = load_file(src / "model.safetensors")
    # transformers 4's layout: language_model.model.*, a vision tower beside it
    renamed = {k.replace("model.", "language_model.model.", 1): v for k, v in tensors.items()}
    renamed["vision_tower.vision_model.embeddings.patch_embedding.weight"] = torch.zeros(2, 2)
    renamed["multi_modal_projector.mm_input_projection_weight"] = torch.zeros(2, 2)
    save_file(renamed, tmp_path / "model.safetensors")
    config = {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "text_config": {k: v for k, v in text.items() if k != "architectures"},
        "vision_config": {"model_type": "siglip_vision_model"},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / f).write_text((src / f).read_text())
    ids = list(range(3, 33))
    want = _prefill_logits(_load(src), ids)
    got = _prefill_logits(_load(tmp_path), ids)
    assert torch.equal(got, want)
