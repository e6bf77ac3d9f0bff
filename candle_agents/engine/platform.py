"""What this machine offers the engine: devices, dtypes, memory and triton.

A leaf module: it imports torch and nothing of the engine, so every other
module (the engine's early device check, the runner, the triton kernels and
their backend) can ask it without importing each other.
"""

from __future__ import annotations

import os

import torch

from candle_agents.errors import DeviceError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(name: str) -> torch.device:
    """The device ``name`` means ("auto": CUDA, then MPS, then CPU); DeviceError if absent."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(
            f"device={name!r} was asked for but CUDA is not available in this torch build "
            f"({torch.__version__}); use device='cpu' or install a CUDA build of torch"
        )
    if name == "mps" and not _mps_available():
        raise DeviceError("device='mps' was asked for but MPS is not available; use 'cpu'")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The activation dtype ``name`` means on ``device`` ("auto" picks per device)."""
    if name != "auto":
        return _DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    # float32 on CPU: exact against references, and the fastest where the CPU lacks bf16 units.
    return torch.float32


def available_memory(device: torch.device) -> int:
    """Bytes free for the KV cache and packed copies: the GPU's free memory, else RAM's."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def triton_available() -> bool:
    """Whether triton can be imported (CPU-only installs may lack it)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    """Whether triton kernels run in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
