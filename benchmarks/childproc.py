"""Child processes measured on a shared machine: their own peak RSS, whether someone stopped
them, and how much CPU contention they ran under."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def cpu_pressure() -> tuple[float, int] | None:
    """Linux PSI: the share of the last 10 s in which some task waited for a CPU (%), and
    the running total of such waiting in microseconds; None where the kernel lacks PSI."""
    try:
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    fields = dict(f.split("=") for f in some[1:])
    return float(fields["avg10"]), int(fields["total"])


def wait_for_quiet(limit_s: float, threshold: float = 20.0) -> None:
    """Wait up to ``limit_s`` for the CPU pressure of others' work to fall below threshold."""
    deadline = time.monotonic() + limit_s
    while (now := cpu_pressure()) is not None and now[0] >= threshold:
        if time.monotonic() >= deadline:
            print(f"  still busy (CPU pressure {now[0]:.0f}%): running anyway", file=sys.stderr)
            return
        time.sleep(5)


# Runs the measured command and reports its wait4 figures. A child's ru_maxrss starts at the
# peak RSS of the process it was forked (or vforked) from, as exec keeps the larger: forked
# from this benchmark (torch imported, ~390 MiB) llama.cpp's 330 MiB read as 390. Started
# from this small process (python -S, ~10 MiB), the command's own peak is what is measured.
LAUNCHER = """
import json, os, sys
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
stopped = 0
while True:  # WUNTRACED: also told when someone stops the command (SIGSTOP)
    _, status, usage = os.wait4(pid, os.WUNTRACED)
    if not os.WIFSTOPPED(status):
        break
    stopped += 1
code = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as f:
    json.dump({"code": code, "maxrss_kib": usage.ru_maxrss, "stopped": stopped}, f)
"""


def run_child(cmd: list[str], env: dict[str, str], capture_stderr: bool) -> dict[str, Any]:
    """Run ``cmd``: its exit code, peak RSS in MiB (wait4's ru_maxrss), output, how often
    someone stopped it, and the CPU pressure during the run (% of its wall time in which
    some task waited for a CPU: the run's own threads when they outnumber the cores, else
    other people's work)."""
    before, start = cpu_pressure(), time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-child-") as tmp:
        report = Path(tmp) / "wait4.json"
        with open(Path(tmp) / "output", "w+") as out:
            err = out if capture_stderr else None  # else the child's progress goes to ours
            launcher = [sys.executable, "-S", "-c", LAUNCHER, str(report)]
            subprocess.run([*launcher, *cmd], stdout=out, stderr=err, env=env, check=False)
            out.seek(0)
            output = out.read()
        if not report.is_file():
            raise RuntimeError(f"could not run {cmd[0]}:\n{output[-3000:]}")
        waited = json.loads(report.read_text())
    after, wall = cpu_pressure(), time.monotonic() - start
    pressure = (after[1] - before[1]) / 1e6 / wall * 100 if before and after else None
    return {
        "code": waited["code"],
        "peak_rss_mib": round(waited["maxrss_kib"] / 1024, 1),
        "output": output,
        "cpu_pressure_pct": None if pressure is None else round(pressure, 1),
        "times_stopped": waited["stopped"],
    }
