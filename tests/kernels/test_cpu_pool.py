"""The C kernels' own thread pool (cpu_kernels/pool.c) and the kernels on it."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from candle_agents.engine import cpu_kernels
from candle_agents.engine.attention import TorchAttentionBackend
from candle_agents.engine.attention.base import AttentionMetadata
from candle_agents.engine.layers.ops import TorchOps

pytestmark = pytest.mark.skipif(not cpu_kernels.available(), reason="no C compiler here")

CPUS = len(os.sched_getaffinity(0))
KERNEL_DIR = Path(cpu_kernels.__file__).parent


@pytest.fixture
def use_threads(monkeypatch):
    """Set the thread count the kernel wrappers pass to C (torch's, by default)."""

    def use(n: int) -> None:
        monkeypatch.setattr(cpu_kernels.ops, "num_threads", lambda: n)

    return use


def attention_case(lens, heads=9, kv_heads=3, d=64, bs=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    nblocks = sum(-(-n // bs) for n in lens) + 1
    kc = torch.randn(nblocks, kv_heads, bs, d, generator=g)
    vc = torch.randn(nblocks, kv_heads, bs, d, generator=g)
    perm = (torch.randperm(nblocks - 1, generator=g) + 1).tolist()
    width = max(-(-n // bs) for n in lens)
    tables = torch.zeros(len(lens), width, dtype=torch.long)
    for i, n in enumerate(lens):
        for j in range(-(-n // bs)):
            tables[i, j] = perm.pop()
    q = torch.randn(len(lens), heads, d, generator=g)
    return q, kc, vc, tables, torch.tensor(lens, dtype=torch.long)


def attention_reference(q, kc, vc, tables, seq_lens, scale):
    n, bs = len(seq_lens), kc.shape[2]
    meta = AttentionMetadata(
        num_decodes=n,
        num_decode_tokens=n,
        slot_mapping=torch.zeros(n, dtype=torch.long),
        seq_lens=seq_lens,
        block_tables=tables,
        seq_lens_cpu=seq_lens.tolist(),
        query_lens_cpu=[1] * n,
        query_start_cpu=list(range(n + 1)),
        max_decode_seq_len=int(seq_lens.max()),
        block_size=bs,
    )
    ref = TorchAttentionBackend()
    ref.prepare(meta, kc.shape[1], q.shape[-1])
    return ref._decode(q, kc, vc, meta, scale, None)


def make_inputs(seed: int) -> dict:
    """Inputs past PAR_MIN_ELEMS (2^18) so the row-wise ops split, with odd row counts."""
    g = torch.Generator().manual_seed(seed)
    rows, dim = 517, 576
    heads, d = 9, 64
    table = torch.randn(600, d, generator=g)
    return {
        "x": torch.randn(rows, dim, generator=g),
        "res": torch.randn(rows, dim, generator=g),
        "w": torch.randn(dim, generator=g),
        "gate_up": torch.randn(rows, 2 * 768, generator=g) * 4,
        "qkv": torch.randn(rows, heads * d + 96, generator=g),
        "heads": heads,
        "cos": table.cos(),
        "sin": table.sin(),
        "positions": torch.randint(0, 600, (rows,), generator=g),
        "a": torch.randn(33, 96, generator=g),
        "weight": torch.randn(1000, 96, generator=g),  # 32 panels, the last one partial
        "bias": torch.randn(1000, generator=g),
        "attention": attention_case([1, 15, 16, 17, 200, 90, 33], seed=seed),
    }


def run_kernels(inp: dict) -> dict[str, torch.Tensor]:
    got = {"rms_norm": cpu_kernels.rms_norm(inp["x"], inp["w"], 1e-5)}
    h, res = cpu_kernels.add_rms_norm(inp["x"].clone(), inp["res"].clone(), inp["w"], 1e-5)
    got["add_rms_norm"], got["residual"] = h, res
    got["silu_and_mul"] = cpu_kernels.silu_and_mul(inp["gate_up"])
    qkv = inp["qkv"].clone()
    cpu_kernels.rotary_(qkv, inp["heads"], inp["cos"], inp["sin"], inp["positions"])
    got["rotary"] = qkv
    panels = cpu_kernels.pack_panels(inp["weight"])
    gemm = cpu_kernels.gemm_packed(inp["a"], panels, inp["bias"], inp["weight"].shape[0])
    if gemm is not None:  # None: no AVX-512 on this CPU
        got["gemm_packed"] = gemm
    got["attention"] = cpu_kernels.paged_decode_attention(*inp["attention"], 0.125)
    return got


def check_against_torch(inp: dict, got: dict) -> None:
    ref = TorchOps()
    torch.testing.assert_close(got["rms_norm"], ref.rms_norm(inp["x"], inp["w"], 1e-5))
    torch.testing.assert_close(got["residual"], inp["x"] + inp["res"], rtol=0, atol=0)
    torch.testing.assert_close(got["silu_and_mul"], ref.silu_and_mul(inp["gate_up"]))
    if "gemm_packed" in got:
        want = torch.nn.functional.linear(inp["a"], inp["weight"], inp["bias"])
        torch.testing.assert_close(got["gemm_packed"], want, rtol=1e-5, atol=1e-4)
    want = attention_reference(*inp["attention"], 0.125)
    torch.testing.assert_close(got["attention"], want, rtol=1e-5, atol=1e-5)


def test_kernels_give_identical_results_on_1_2_and_4_threads(use_threads):
    inp = make_inputs(0)
    results = {}
    for n in (1, 2, 4):
        use_threads(n)
        results[n] = run_kernels(inp)
    check_against_torch(inp, results[1])
    for n in (2, 4):
        for name, tensor in results[1].items():
            assert torch.equal(results[n][name], tensor), f"{name} on {n} threads"
    # Workers grow to the most threads asked for, capped at the usable CPUs.
    assert 1 < cpu_kernels.pool_threads() <= min(4, CPUS) or CPUS == 1


def test_concurrent_callers_get_their_own_results(use_threads):
    use_threads(2)
    inputs = [make_inputs(seed) for seed in range(4)]
    expected = [run_kernels(inp) for inp in inputs]

    def hammer(i: int) -> int:
        checked = 0
        for _ in range(6):
            got = run_kernels(inputs[i])
            for name, tensor in expected[i].items():
                assert torch.equal(got[name], tensor), f"caller {i}: {name}"
                checked += 1
        return checked

    # ctypes releases the GIL around each kernel call, so the callers overlap in C.
    with ThreadPoolExecutor(len(inputs)) as ex:
        assert sum(ex.map(hammer, range(len(inputs)))) == 6 * sum(map(len, expected))


def test_shutdown_then_reuse(use_threads):
    use_threads(2)
    inp = make_inputs(1)
    before = run_kernels(inp)
    assert cpu_kernels.pool_threads() == min(2, CPUS)
    cpu_kernels.pool_shutdown()
    assert cpu_kernels.pool_threads() == 1
    cpu_kernels.pool_shutdown()  # twice is fine
    after = run_kernels(inp)
    assert cpu_kernels.pool_threads() == min(2, CPUS)
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name


def test_empty_inputs_return(use_threads):
    use_threads(2)
    q, kc, vc, tables, lens = attention_case([5])
    out = cpu_kernels.paged_decode_attention(q[:0], kc, vc, tables[:0], lens[:0], 0.125)
    assert out.shape == (0, 9, 64)
    assert cpu_kernels.silu_and_mul(torch.randn(0, 8)).shape == (0, 4)
    w = torch.randn(0, 16)
    got = cpu_kernels.gemm_packed(torch.randn(3, 16), cpu_kernels.pack_panels(w), None, 0)
    assert got is None or got.shape == (3, 0)


TASK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)


def pool_run(fn, ntasks: int, threads: int) -> None:
    run = cpu_kernels.require().pool_run
    run.restype, run.argtypes = None, [TASK, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
    run(fn, None, ntasks, threads)


def test_pool_runs_every_task_once_and_uses_the_workers():
    seen: list[tuple[int, int]] = []

    @TASK
    def task(_ctx, t):
        time.sleep(0.005)  # releases the GIL: a worker can take the next task meanwhile
        seen.append((t, threading.get_ident()))

    pool_run(task, 0, 2)
    assert seen == []
    pool_run(task, 16, 2)
    assert sorted(t for t, _ in seen) == list(range(16))
    if CPUS > 1:
        assert len({ident for _, ident in seen}) == 2
    seen.clear()
    pool_run(task, 5, 1)  # one thread: all on the caller
    assert seen == [(t, threading.get_ident()) for t in range(5)]


STRESS_C = r"""
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include "pool.h"

#define MAXN 40
typedef struct { _Atomic int hits[MAXN]; int64_t n; } job;
static atomic_int errors, stop_shutdowns;

static void count(void *p, int64_t t) { atomic_fetch_add(&((job *)p)->hits[t], 1); }

/* A task that runs a pool job of its own: runs inline, must not deadlock. */
static void nested(void *p, int64_t t) {
    job inner = {.n = 3};
    pool_run(count, &inner, 3, 2);
    for (int i = 0; i < 3; i++) if (inner.hits[i] != 1) atomic_fetch_add(&errors, 1);
    count(p, t);
}

static void *caller(void *arg) {
    int id = (int)(intptr_t)arg;
    for (int round = 0; round < ROUNDS; round++) {
        job j = {.n = (round * 7 + id) % MAXN};  /* includes 0 and 1 tasks */
        pool_run(round % 5 == 0 ? nested : count, &j, j.n, 1 + (round + id) % 4);
        for (int64_t i = 0; i < MAXN; i++)
            if (j.hits[i] != (i < j.n)) atomic_fetch_add(&errors, 1);
    }
    return NULL;
}

static void *shutdowns(void *arg) {
    (void)arg;
    while (!atomic_load(&stop_shutdowns)) pool_shutdown();
    return NULL;
}

int main(void) {
    pthread_t t[CALLERS], s;
    pthread_create(&s, NULL, shutdowns, NULL);
    for (int i = 0; i < CALLERS; i++) pthread_create(&t[i], NULL, caller, (void *)(intptr_t)i);
    for (int i = 0; i < CALLERS; i++) pthread_join(t[i], NULL);
    atomic_store(&stop_shutdowns, 1);
    pthread_join(s, NULL);
    job j = {.n = MAXN};
    pool_run(count, &j, MAXN, 2);
    int grown = pool_threads();
    pool_shutdown();
    printf("errors=%d grown=%d after_shutdown=%d\n", atomic_load(&errors), grown,
           pool_threads());
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("cc") is None, reason="no cc")
@pytest.mark.parametrize("openmp", [[], ["-fopenmp"]])
def test_pool_stress_from_c(tmp_path, openmp):
    """Many callers at once, tiny tasks, nesting and shutdowns racing the jobs."""
    src = tmp_path / "stress.c"
    src.write_text(STRESS_C)
    exe = tmp_path / "stress"
    cmd = ["cc", "-O2", "-std=c11", *openmp, f"-I{KERNEL_DIR}", "-DROUNDS=3000", "-DCALLERS=3"]
    cmd += [str(src), str(KERNEL_DIR / "pool.c"), "-o", str(exe), "-lpthread"]
    subprocess.run(cmd, check=True, timeout=120)
    done = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    fields = dict(item.split("=") for item in done.stdout.split())
    assert fields["errors"] == "0"
    # The last shutdown may come before a 4-thread job: 2 to 4 threads, CPUs permitting.
    assert min(2, CPUS) <= int(fields["grown"]) <= min(4, CPUS)
    assert fields["after_shutdown"] == "1"
