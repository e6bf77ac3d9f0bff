from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Triton kernels run in triton's interpreter on CPU; the flag is read when they
# are defined, so before anything imports them. A GPU run sets it to 0.
os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import ARCHS, build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A function arch -> folder of a saved tiny random model (built once per session)."""
    root = tmp_path_factory.mktemp("tiny_models")
    built: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in built:
            built[arch] = build_tiny_model(arch, root)
        return built[arch]

    return get


@pytest.fixture(params=sorted(ARCHS))
def arch(request):
    return request.param


def assert_all_blocks_free(engine, timeout: float = 10.0) -> None:
    assert engine.wait_idle(timeout), "engine did not become idle"
    assert engine.num_free_blocks == engine.num_blocks
