"""The triton backend inside the engine, token for token against transformers.

On CPU the kernels run in triton's interpreter (conftest sets TRITON_INTERPRET),
about 10-20 ms a program, so the scenarios are small: they cover prefill with
and without history, chunked prefill beside decodes, prefix-cache hits,
padding rows in CUDA-graph buckets and poisoned cache memory. On a GPU machine,
``TRITON_INTERPRET=0 pytest tests/engine/test_triton_backend.py`` runs the same
scenarios on CUDA (float32, to stay token-exact), plus real CUDA graphs.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import pytest
import torch

from candle_agents import GenerationParams
from candle_agents.engine.attention import get_backend
from candle_agents.engine.cuda_graph import batch_buckets
from candle_agents.engine.platform import interpreting
from candle_agents.errors import ConfigError
from tests.support.checks import assert_all_blocks_free
from tests.support.exactness import GREEDY, MAX_NEW, Reference, check, engine_for, make_prompts

_refs: dict[str, Reference] = {}
# The interpreter runs on CPU tensors; without it the kernels need CUDA.
DEVICE = "cpu" if interpreting() else "cuda"
ON_GPU = pytest.mark.skipif(
    interpreting() or not torch.cuda.is_available(), reason="needs CUDA with TRITON_INTERPRET=0"
)


def triton_engine(path, **overrides):
    """An engine on the triton backend, float32 so that it stays token-exact."""
    return engine_for(path, attention_backend="triton", device=DEVICE, dtype="float32", **overrides)


def reference(arch, tiny_model_dir) -> Reference:
    if arch not in _refs:
        _refs[arch] = Reference(tiny_model_dir(arch))
    return _refs[arch]


# head_dim 16 and 32, QK-norm; gemma2: sliding windows (12) and soft-capped scores;
# gemma3: a global and a window block pool, a local rope table; phi3: partial
# rotary; smollm3: layers without rotary
@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma2", "gemma3", "phi3", "smollm3"])
def test_engine_matches_transformers_with_chunked_prefill(arch, tiny_model_dir):
    ref = reference(arch, tiny_model_dir)
    # 8-token chunks under a 24-token budget: long prompts are prefilled over
    # several steps (queries over their cached history) while short ones decode.
    with triton_engine(
        tiny_model_dir(arch),
        block_size=8,
        max_num_batched_tokens=24,
        prefill_chunk_size=8,
    ) as engine:
        assert engine.runner.backend.name == "triton"
        # Unused cache memory is NaN: masked loads must never let it into a result.
        for group in engine.runner.kv_groups:  # one block pool per window group
            group.buffer[:, :, 1:] = float("nan")
        prompts = make_prompts(
            5, engine.runner.model.vocab_size, seed=11, lengths=[3, 29, 1, 17, 40]
        )
        check(engine, ref, prompts, engine.generate(prompts, GREEDY))


def test_prefix_cache_hit(tiny_model_dir):
    ref = reference("llama", tiny_model_dir)
    with triton_engine(tiny_model_dir("llama")) as engine:
        vocab = engine.runner.model.vocab_size
        shared = make_prompts(1, vocab, seed=4, lengths=[35])[0]
        tails = make_prompts(2, vocab, seed=5, lengths=[6, 1])
        first = engine.generate(shared + tails[0], GREEDY)
        second = engine.generate(shared + tails[1], GREEDY)
        assert second.usage.cached_tokens == 32  # two full 16-token blocks
        check(engine, ref, [shared + t for t in tails], [first, second])


class RerunGraph:
    """A CPU stand-in for a CUDA graph: replay re-runs the captured step.

    What it checks is everything around the graph: static buffers, bucket
    choice, and padding rows, which must not write to the cache: after each
    replay, only the slots of rows with a non-zero length may have changed.
    """

    runner = None
    replays: ClassVar[list[int]] = []

    def __init__(self, pool) -> None:
        self.fn = None
        self.out = None

    def capture(self, fn):
        self.fn = fn
        self.out = fn()
        return self.out

    def replay(self) -> None:
        # Graphs are only captured for models with one (global) block pool.
        graphs, cache = self.runner.graphs, self.runner.kv_groups[0].buffer
        before = cache.clone()
        for captured, fresh in zip(self.out, self.fn()):
            captured.copy_(fresh)
        rows = self.out[0].shape[0]
        RerunGraph.replays.append(rows)
        live = graphs.seq_lens[:rows] > 0
        allowed = set(graphs.slots[:rows][live].tolist())
        changed = (before != cache) & ~(before.isnan() & cache.isnan())
        # [2, layers, blocks, kv_heads, block_size, head_dim] -> slot numbers
        blocks, offsets = changed.any(dim=(0, 1, 3, 5)).nonzero(as_tuple=True)
        written = set((blocks * cache.shape[4] + offsets).tolist())
        assert written <= allowed, f"padding rows wrote slots {sorted(written - allowed)}"


def test_decode_graphs_pad_batches_and_match_transformers(tiny_model_dir):
    ref = reference("llama", tiny_model_dir)
    with triton_engine(tiny_model_dir("llama"), max_num_seqs=6) as engine:
        RerunGraph.runner = engine.runner
        engine.runner.enable_decode_graphs(graph_cls=RerunGraph)
        assert engine.runner.graphs.buckets == [1, 2, 4, 6]
        RerunGraph.replays.clear()
        vocab = engine.runner.model.vocab_size
        prompts = make_prompts(5, vocab, seed=12, lengths=[9, 20, 2, 33, 14])
        # Different lengths make the batch shrink 5 -> 1, through padded buckets.
        lengths = [MAX_NEW, 5, 9, 12, 3]
        results = engine.generate(
            prompts,
            [GenerationParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in lengths],
        )
        for prompt, n, result in zip(prompts, lengths, results):
            assert result.token_ids == ref(prompt)[:n]
        assert {6, 4, 2, 1} <= set(RerunGraph.replays)  # 5 and 3 rows ran padded
        assert_all_blocks_free(engine)


@ON_GPU
def test_real_cuda_graphs_match_eager_decoding(tiny_model_dir):
    path = tiny_model_dir("llama")
    prompts = make_prompts(7, 300, seed=13, lengths=[5, 17, 40, 2, 33, 9, 21])
    with triton_engine(path) as eager:
        expected = [r.token_ids for r in eager.generate(prompts, GREEDY)]
    with triton_engine(path, enable_cuda_graph=True, cuda_graph_max_batch=8) as graphed:
        assert graphed.runner.graphs is not None
        assert graphed.runner.graphs.buckets == [1, 2, 4, 8]
        assert [r.token_ids for r in graphed.generate(prompts, GREEDY)] == expected
        assert_all_blocks_free(graphed)


def test_cuda_graphs_are_ignored_without_cuda(tiny_model_dir, caplog):
    with caplog.at_level(logging.WARNING):
        engine = engine_for(tiny_model_dir("llama"), device="cpu", enable_cuda_graph=True)
    with engine:
        assert engine.runner.graphs is None
        assert "enable_cuda_graph is ignored" in caplog.text
        with pytest.raises(ConfigError, match="triton attention backend"):
            engine.runner.enable_decode_graphs()


def test_decode_graphs_refuse_sliding_window_models():
    from types import SimpleNamespace

    from candle_agents.engine.cuda_graph import DecodeGraphs

    model = SimpleNamespace(spec=SimpleNamespace(layer_windows=(12, None)))
    with pytest.raises(ConfigError, match="sliding-window") as err:
        DecodeGraphs(
            model, None, [], max_batch=2, max_model_len=64, block_size=8, device=torch.device("cpu")
        )
    assert err.value.field == "enable_cuda_graph"


def test_triton_backend_refused_on_cpu_without_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ConfigError, match="TRITON_INTERPRET=1"):
        get_backend("triton", torch.device("cpu"), torch.float32, 64)


@pytest.mark.parametrize(
    ("max_batch", "buckets"),
    [
        (1, [1]),
        (6, [1, 2, 4, 6]),
        (16, [1, 2, 4, 8, 16]),
        (40, [1, 2, 4, 8, 16, 32, 40]),
    ],
)
def test_batch_buckets(max_batch, buckets):
    assert batch_buckets(max_batch) == buckets


def test_cuda_defaults_are_bfloat16_and_triton(monkeypatch):
    # No GPU here: stand in for the two facts the choice reads from the device.
    from types import SimpleNamespace

    from candle_agents.engine.platform import resolve_dtype

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda _: SimpleNamespace(multi_processor_count=132)
    )
    cuda = torch.device("cuda")
    assert resolve_dtype("auto", cuda) == torch.bfloat16
    assert get_backend("auto", cuda, torch.bfloat16, 64).name == "triton"
    assert get_backend("torch", cuda, torch.bfloat16, 64).name == "torch"


def test_kernels_compile_for_nvidia_gpus_without_one():
    # ptxas (shipped in the triton wheel) enforces what the interpreter does not:
    # tl.dot tile shapes, register and shared-memory limits, types per target.
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "support" / "triton_compile_check.py"
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    done = subprocess.run(
        [sys.executable, str(script), "80", "90"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    for capability in ("sm_80", "sm_90"):
        kernels = {line.split()[1] for line in lines if line.startswith(capability)}
        assert kernels == {
            "_decode_split_kernel",
            "_decode_merge_kernel",
            "_prefill_kernel",
            "_store_kv_kernel",
            "_rms_norm_kernel",
            "_silu_and_mul_kernel",
            "_rotary_kernel",
        }


def test_gpu_benchmark_runs_in_smoke_mode(tmp_path):
    # The GPU benchmark can only be timed on a GPU; on CPU its --smoke mode runs
    # every part (engine, transformers, kernel bandwidth) on tiny shapes.
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[2] / "benchmarks" / "gpu_throughput.py"
    out = tmp_path / "smoke.json"
    done = subprocess.run(
        [sys.executable, str(script), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert "smoke: figures are not meaningful" in done.stdout
    assert figures["ours"]["output_tok_s"] > 0 and figures["transformers"]["output_tok_s"] > 0
    assert [case["context"] for case in figures["kernel"]] == [128, 512]
    assert all(case["correct"] for case in figures["kernel"])
    assert max(case["num_splits"] for case in figures["kernel"]) > 1  # the merge kernel ran
