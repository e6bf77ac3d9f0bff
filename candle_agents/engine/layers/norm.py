"""RMSNorm weights; the arithmetic lives in ``ops`` (torch reference or fused kernel)."""

from __future__ import annotations

import torch
from torch import nn

from candle_agents.engine.layers.ops import TorchOps

_REFERENCE = TorchOps()


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor, ops: TorchOps = _REFERENCE) -> torch.Tensor:
        return ops.rms_norm(x, self.weight, self.eps)
