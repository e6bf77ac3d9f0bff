"""The C CPU kernels against the torch reference backend, and backend selection."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from candle_agents.engine import cpu_kernels
from candle_agents.engine.attention import (
    CpuAttentionBackend,
    TorchAttentionBackend,
    get_backend,
)
from candle_agents.engine.attention.base import AttentionMetadata
from candle_agents.engine.layers.ops import CpuKernelOps, TorchOps
from candle_agents.errors import ConfigError

pytestmark = pytest.mark.skipif(not cpu_kernels.available(), reason="no C compiler here")


def decode_meta(block_tables, seq_lens, block_size) -> AttentionMetadata:
    n = len(seq_lens)
    return AttentionMetadata(
        num_decodes=n,
        num_decode_tokens=n,
        slot_mapping=torch.zeros(n, dtype=torch.long),
        seq_lens=seq_lens,
        block_tables=block_tables,
        seq_lens_cpu=seq_lens.tolist(),
        query_lens_cpu=[1] * n,
        query_start_cpu=list(range(n + 1)),
        max_decode_seq_len=int(seq_lens.max()),
        block_size=block_size,
    )


def random_case(batch, heads, kv_heads, head_dim, block_size, lens, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    num_blocks = sum(-(-n // block_size) for n in lens) + 3
    shape = (num_blocks, kv_heads, block_size, head_dim)
    k_cache = torch.randn(shape, generator=g).to(dtype)
    v_cache = torch.randn(shape, generator=g).to(dtype)
    # Each sequence gets its own blocks, in shuffled order, none of them block 0.
    perm = (torch.randperm(num_blocks - 1, generator=g) + 1).tolist()
    width = max(-(-n // block_size) for n in lens)
    tables = torch.zeros(batch, width, dtype=torch.long)
    for i, n in enumerate(lens):
        for j in range(-(-n // block_size)):
            tables[i, j] = perm.pop()
    q = torch.randn(batch, heads, head_dim, generator=g).to(dtype)
    return q, k_cache, v_cache, tables, torch.tensor(lens, dtype=torch.long)


@pytest.mark.parametrize(
    "heads,kv_heads,head_dim,block_size,lens",
    [
        (9, 3, 64, 16, [1, 15, 16, 17, 200]),  # SmolLM2's GQA ratio 3, block edges
        (8, 1, 128, 32, [33, 5, 64]),  # ratio 8, head_dim 128
        (4, 4, 32, 8, [7, 8, 9, 100]),  # no GQA
        (6, 2, 64, 16, [1]),  # a single token of history
        (10, 2, 64, 16, [50, 3]),  # ratio 5: query heads in chunks of 4 and 1
        (2, 1, 80, 16, [40]),  # head_dim 5 x 16: the vector path with a run-time width
        (2, 1, 72, 16, [40]),  # head_dim not a multiple of 16: the portable path
        (4, 2, 256, 16, [20, 33]),  # Gemma's head_dim: one query head a pass
    ],
)
def test_decode_kernel_matches_reference(heads, kv_heads, head_dim, block_size, lens):
    q, kc, vc, tables, seq_lens = random_case(
        len(lens), heads, kv_heads, head_dim, block_size, lens, torch.float32
    )
    meta = decode_meta(tables, seq_lens, block_size)
    reference = TorchAttentionBackend()
    reference.prepare(meta, kv_heads, head_dim)
    expected = reference._decode(q, kc, vc, meta, head_dim**-0.5, None)
    got = cpu_kernels.paged_decode_attention(q, kc, vc, tables, seq_lens, head_dim**-0.5)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 72])  # the vector path and the portable one
def test_decode_kernel_16_bit_cache(dtype, head_dim):
    lens = [3, 40, 129]
    q, kc, vc, tables, seq_lens = random_case(3, 9, 3, head_dim, 16, lens, dtype)
    kc[1, 0, 0, :4] = torch.tensor([6e-8, -1e-6, 65504.0, 0.0]).to(dtype)  # subnormals, max
    # Reference in float32 on the same (bf16-rounded) values: the kernel accumulates in fp32.
    meta = decode_meta(tables, seq_lens, 16)
    reference = TorchAttentionBackend()
    reference.prepare(meta, 3, head_dim)
    scale = head_dim**-0.5
    expected = reference._decode(q.float(), kc.float(), vc.float(), meta, scale, None)
    got = cpu_kernels.paged_decode_attention(q, kc, vc, tables, seq_lens, scale)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_decode_kernel_ignores_padding_blocks():
    # Blocks past a sequence's length (table padding, other sequences' data) never count.
    q, kc, vc, tables, seq_lens = random_case(2, 4, 2, 64, 16, [20, 20], torch.float32)
    before = cpu_kernels.paged_decode_attention(q, kc, vc, tables, seq_lens, 0.125)
    kc[0].fill_(float("nan"))
    vc[0].fill_(float("nan"))
    padded = torch.cat([tables, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    after = cpu_kernels.paged_decode_attention(q, kc, vc, padded, seq_lens, 0.125)
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_decode_kernel_rejects_bad_shapes():
    q, kc, vc, tables, seq_lens = random_case(1, 6, 4, 64, 16, [5], torch.float32)
    with pytest.raises(ValueError, match="kv_heads=4"):
        cpu_kernels.paged_decode_attention(q, kc, vc, tables, seq_lens, 0.125)
    with pytest.raises(ValueError, match="dtype"):
        cpu_kernels.paged_decode_attention(q, kc.double(), vc.double(), tables, seq_lens, 0.125)


def test_auto_picks_the_kernel_backend_on_cpu(monkeypatch):
    cpu = torch.device("cpu")
    assert isinstance(get_backend("auto", cpu, torch.float32, 64), CpuAttentionBackend)
    assert type(get_backend("torch", cpu, torch.float32, 64)) is TorchAttentionBackend
    # A float16 KV cache has a kernel; head_dim 512 has none: auto falls back,
    # an explicit "cpu" says why it cannot.
    assert isinstance(get_backend("auto", cpu, torch.float16, 64), CpuAttentionBackend)
    assert type(get_backend("auto", cpu, torch.float32, 512)) is TorchAttentionBackend
    with pytest.raises(ConfigError, match="attention_backend='cpu' needs") as err:
        get_backend("cpu", cpu, torch.float32, 512)
    assert err.value.field == "attention_backend"
    monkeypatch.setattr(cpu_kernels.library, "_lib", None)  # as if the build had failed
    assert type(get_backend("auto", cpu, torch.float32, 64)) is TorchAttentionBackend


def test_unknown_backend_is_a_config_error():
    from candle_agents.engine.config import EngineConfig

    with pytest.raises(ConfigError, match="attention_backend='flash'") as err:
        EngineConfig(attention_backend="flash")
    assert err.value.field == "attention_backend"


# -- fused elementwise ops against the torch reference ------------------------------

REFERENCE, FUSED = TorchOps(), CpuKernelOps()


@pytest.mark.parametrize("rows", [1, 3, 300])
def test_rms_norm_and_fused_residual_add(rows):
    g = torch.Generator().manual_seed(rows)
    x, res = (torch.randn(rows, 576, generator=g) for _ in range(2))
    w = torch.randn(576, generator=g)
    torch.testing.assert_close(FUSED.rms_norm(x, w, 1e-5), REFERENCE.rms_norm(x, w, 1e-5))
    want_h, want_res = REFERENCE.add_rms_norm(x, res, w, 1e-5)
    got_h, got_res = FUSED.add_rms_norm(x.clone(), res.clone(), w, 1e-5)
    torch.testing.assert_close(got_res, want_res, rtol=0, atol=0)  # the same one addition
    torch.testing.assert_close(got_h, want_h)


def test_silu_and_mul():
    gate_up = torch.randn(70, 2 * 1536, generator=torch.Generator().manual_seed(0)) * 4
    torch.testing.assert_close(FUSED.silu_and_mul(gate_up), REFERENCE.silu_and_mul(gate_up))


@pytest.mark.parametrize("heads,kv_heads,head_dim", [(9, 3, 64), (8, 2, 128), (4, 4, 32)])
def test_rotary_in_place_on_fused_qkv(heads, kv_heads, head_dim):
    g = torch.Generator().manual_seed(heads)
    tokens, q_size, kv_size = 37, heads * head_dim, kv_heads * head_dim
    qkv = torch.randn(tokens, q_size + 2 * kv_size, generator=g)
    table = torch.randn(512, head_dim, generator=g)
    cos, sin = table.cos(), table.sin()
    positions = torch.randint(0, 512, (tokens,), generator=g)

    def split(t):
        q, k, v = t.split([q_size, kv_size, kv_size], dim=-1)
        return q.view(tokens, heads, head_dim), k.view(tokens, kv_heads, head_dim), v

    q, k, _ = split(qkv.clone())
    want_q, want_k = REFERENCE.rotary(q, k, cos, sin, positions)
    fused = qkv.clone()
    q, k, v = split(fused)
    got_q, got_k = FUSED.rotary(q, k, cos, sin, positions)
    assert got_q.data_ptr() == q.data_ptr()  # rotated where it lies, no copy
    torch.testing.assert_close(got_q, want_q, rtol=0, atol=0)
    torch.testing.assert_close(got_k, want_k, rtol=0, atol=0)
    assert torch.equal(v, qkv[:, q_size + kv_size :])  # V untouched


def test_fused_ops_defer_to_torch_for_other_dtypes():
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    w = torch.randn(64, dtype=torch.bfloat16)
    torch.testing.assert_close(FUSED.rms_norm(x, w, 1e-6), REFERENCE.rms_norm(x, w, 1e-6))


# -- matmuls on packed weights ------------------------------------------------------------


@pytest.mark.parametrize("rows", [1, 3, 4, 11, 12, 13, 32, 48, 49, 100])
@pytest.mark.parametrize("out_features,bias", [(37, True), (64, False)])
def test_packed_linear_matches_f_linear(rows, out_features, bias):
    from candle_agents.engine.layers.linear import PackedLinear, pack_linears

    torch.manual_seed(rows)
    model = torch.nn.Sequential(torch.nn.Linear(72, out_features, bias=bias))
    weight, b = model[0].weight.detach().clone(), model[0].bias
    assert pack_linears(model) == 1 and isinstance(model[0], PackedLinear)
    x = torch.randn(rows, 72)
    expected = torch.nn.functional.linear(x, weight, b)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model(x.view(1, rows, 72)), expected[None], rtol=1e-5, atol=1e-5)


def test_packing_keeps_a_weight_shared_with_another_module():
    from candle_agents.engine.layers.linear import pack_linears

    embed = torch.nn.Embedding(50, 16)
    head = torch.nn.Linear(16, 50, bias=False)
    head.weight = embed.weight  # tied, as in SmolLM2
    alone = torch.nn.Linear(16, 8)
    model = torch.nn.ModuleDict({"embed": embed, "head": head, "alone": alone})
    pack_linears(model)
    assert embed.weight.shape == (50, 16)  # still there for the embedding lookup
    ids = torch.tensor([3, 7])
    torch.testing.assert_close(model["head"](embed(ids)), embed(ids) @ embed.weight.T)


@pytest.mark.parametrize(
    "env,expected",
    [
        ({"CANDLE_AGENTS_CPU_KERNELS": "0"}, "False torch"),
        ({"CC": "/nonexistent/cc"}, "False torch"),
        ({"CANDLE_AGENTS_CACHE": "/proc/no-such-dir"}, "True cpu"),  # unwritable: tmp dir
    ],
)
def test_kernel_build_falls_back_cleanly(env, expected):
    code = (
        "import torch\n"
        "from candle_agents.engine import cpu_kernels\n"
        "from candle_agents.engine.attention import get_backend\n"
        "ok = cpu_kernels.available()\n"
        "print(ok, get_backend('auto', torch.device('cpu'), torch.float32, 64).name)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == expected.split()
