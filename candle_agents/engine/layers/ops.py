"""The model's elementwise ops, in two interchangeable sets.

``TorchOps`` is the reference: plain torch, any device and dtype, the HF
models' order of operations. ``CpuKernelOps`` runs float32 CPU tensors
through the fused C kernels (one pass over memory instead of three to six)
and defers to ``TorchOps`` for anything else. The attention backend says
which set a model uses (``AttentionBackend.ops``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from candle_agents.engine import cpu_kernels


class TorchOps:
    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        # In float32 whatever the model dtype, as the HF models do.
        dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        return weight * xf.to(dtype)

    def add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Add ``x`` to the residual stream, then normalise it: (normed, new residual)."""
        residual = residual + x
        return self.rms_norm(residual, weight, eps), residual

    def silu_and_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up

    def gelu_tanh_and_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """GeGLU (Gemma): tanh-approximated GELU of the gate half, times the up half."""
        gate, up = gate_up.chunk(2, dim=-1)
        return F.gelu(gate, approximate="tanh") * up

    def rotary(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        positions: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate q [T, H, D] and k [T, Hkv, D] by position; ``cos``/``sin`` are tables.

        Tables narrower than D turn only the first part of each head (partial rotary).
        """
        c = cos[positions].to(q.dtype)[:, None, :]
        s = sin[positions].to(q.dtype)[:, None, :]
        return _rotate(q, c, s), _rotate(k, c, s)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    d = cos.shape[-1]
    if d < x.shape[-1]:
        return torch.cat((_rotate(x[..., :d], cos, sin), x[..., d:]), dim=-1)
    half = d // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _fits(t: torch.Tensor) -> bool:
    return t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous()


class CpuKernelOps(TorchOps):
    def rms_norm(self, x, weight, eps):
        # Heads sliced out of a QKV row (QK-norm) are copied: the C kernel, not
        # torch's reduction order, is what the C decode step computes too.
        rows_contiguous = x.stride(-1) == 1 and x.device.type == "cpu"
        if rows_contiguous and x.dtype == torch.float32 and _fits(weight):
            return cpu_kernels.rms_norm(x.contiguous(), weight, eps)
        return super().rms_norm(x, weight, eps)

    def add_rms_norm(self, x, residual, weight, eps):
        if _fits(x) and _fits(residual) and _fits(weight):
            return cpu_kernels.add_rms_norm(x, residual, weight, eps)
        return super().add_rms_norm(x, residual, weight, eps)

    def silu_and_mul(self, gate_up):
        if _fits(gate_up) and gate_up.dim() == 2:
            return cpu_kernels.silu_and_mul(gate_up)
        return super().silu_and_mul(gate_up)

    def rotary(self, q, k, cos, sin, positions):
        # q and k are column slices of one QKV row each: rotated in place there.
        if (
            q.dtype == k.dtype == cos.dtype == torch.float32
            and q.device.type == "cpu"
            and rows_of_heads(q)
            and rows_of_heads(k)
            and cos.is_contiguous()
            and sin.is_contiguous()
            and positions.dtype == torch.int64
            and positions.is_contiguous()
        ):
            d = q.shape[2]
            cpu_kernels.rotary_(q.view(q.shape[0], -1), q.shape[1], cos, sin, positions, d)
            cpu_kernels.rotary_(k.view(k.shape[0], -1), k.shape[1], cos, sin, positions, d)
            return q, k
        return super().rotary(q, k, cos, sin, positions)


def rows_of_heads(x: torch.Tensor) -> bool:
    """[T, H, D] whose heads are contiguous within a row (rows may be strided)."""
    return x.stride(2) == 1 and x.stride(1) == x.shape[2]
