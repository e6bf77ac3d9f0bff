"""The sliding-window KV bound on Gemma 3 1B's layout, through its benchmark script."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from candle_agents.engine.kv_cache import window_blocks_per_seq

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "sliding_window_memory.py"


def test_local_layers_hold_only_their_window():
    # 1100 prompt tokens + 8: the 4 global layers hold every block, the 22 local
    # ones at most the 512-token window plus one 512-token prefill chunk.
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--tokens", "1100", "--new-tokens", "8"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=SCRIPT.parents[1],
    )
    assert run.returncode == 0, run.stderr[-2000:]
    held = dict(re.findall(r"(global|window 512) layers: at most (\d+) blocks", run.stdout))
    assert int(held["global"]) == -(-1108 // 16)
    assert int(held["window 512"]) <= window_blocks_per_seq(512, 512, 16)
    ratio = float(re.search(r"ratio ours / uniform: ([\d.]+)", run.stdout).group(1))
    assert ratio < 1.0
