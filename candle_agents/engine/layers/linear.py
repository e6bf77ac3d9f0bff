"""CPU float32 matmuls on pre-packed weights: the fastest kernel for each row count.

Measured on a 2-core AVX-512 machine, SmolLM2-135M's 30 layers of weights
streamed from memory once per step (``benchmarks/RESULTS.md``):

- up to 48 rows (decode batches): the panel kernel in ``cpu_kernels`` takes
  20-30% less time than a pre-packed oneDNN matmul, and at one row it matches
  a plain gemv, because it overlaps the weight stream with the arithmetic;
- more rows (prefill chunks): oneDNN's packed matmul, at 300+ GFLOP/s;
- without the panel kernel (no AVX-512, no C compiler): oneDNN from 4 rows
  (MKL's sgemm takes twice as long at 4-12) and a plain gemv below.

Each form is a copy of the weight; the plain one is dropped once both packed
forms exist, unless another module shares it (a tied embedding).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from candle_agents.engine import cpu_kernels

logger = logging.getLogger(__name__)

PANEL_MAX_ROWS = 48  # at 64 rows oneDNN catches up
ONEDNN_MIN_ROWS = 4


class PackedLinear(nn.Module):
    """Wraps an ``nn.Linear``; forward picks the weight form for the row count."""

    def __init__(
        self, linear: nn.Linear, onednn: torch.Tensor | None, panels: torch.Tensor | None
    ) -> None:
        super().__init__()
        self.linear = linear
        self.onednn = onednn
        self.panels = panels
        self.in_features = linear.in_features
        self.out_features = linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        rows = x2.shape[0]
        if self.panels is not None and rows <= PANEL_MAX_ROWS:
            out = cpu_kernels.gemm_packed(
                x2.contiguous(), self.panels, self.linear.bias, self.out_features
            )
        elif self.onednn is not None and rows >= ONEDNN_MIN_ROWS:
            out = torch.ops.mkldnn._linear_pointwise(
                x2, self.onednn, self.linear.bias, "none", [None], ""
            )
        else:
            out = F.linear(x2, self.linear.weight, self.linear.bias)
        return out.view(*lead, self.out_features)


def _pack_onednn(weight: torch.Tensor) -> torch.Tensor | None:
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, 32)
        probe = torch.randn(ONEDNN_MIN_ROWS, weight.shape[1], dtype=weight.dtype)
        got = torch.ops.mkldnn._linear_pointwise(probe, packed, None, "none", [None], "")
        if not torch.allclose(got, F.linear(probe, weight), rtol=1e-3, atol=1e-3):
            return None
        return packed
    except (RuntimeError, AttributeError):
        return None


def _panel_kernel_works() -> bool:
    if not cpu_kernels.available():
        return False
    w, x = torch.randn(37, 40), torch.randn(5, 40)
    got = cpu_kernels.gemm_packed(x, cpu_kernels.pack_panels(w), None, 37)
    return got is not None and torch.allclose(got, F.linear(x, w), rtol=1e-4, atol=1e-4)


def pack_linears(model: nn.Module) -> int:
    """Swap every CPU float32 ``nn.Linear`` in ``model`` for a PackedLinear; return how many."""
    use_onednn = torch.backends.mkldnn.is_available()
    use_panels = _panel_kernel_works()
    # Parameters held by other modules too (a tied embedding) keep their plain copy.
    shared = {
        id(p)
        for m in model.modules()
        if not isinstance(m, nn.Linear)
        for p in m.parameters(recurse=False)
    }
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            w = child.weight.detach()
            if w.device.type != "cpu" or w.dtype != torch.float32:
                continue
            onednn = _pack_onednn(w) if use_onednn else None
            if use_onednn and onednn is None:
                logger.info("oneDNN weight packing unavailable; using plain matmuls")
                use_onednn = False
            panels = cpu_kernels.pack_panels(w) if use_panels else None
            if onednn is None and panels is None:
                continue
            if onednn is not None and panels is not None and id(child.weight) not in shared:
                child.weight = nn.Parameter(w.new_empty(0), requires_grad=False)
            setattr(parent, name, PackedLinear(child, onednn, panels))
            count += 1
    return count
