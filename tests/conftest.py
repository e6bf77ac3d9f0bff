from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Triton kernels run in triton's interpreter on CPU; the flag is read when they
# are defined, so before anything imports them. A GPU run sets it to 0.
os.environ.setdefault("TRITON_INTERPRET", "1")
# Servers store responses in the user's data directory by default: keep the tests' apart.
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="candle-agents-test-data-")

from tests.support.tiny_models import ARCHS, build_tiny_model


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
