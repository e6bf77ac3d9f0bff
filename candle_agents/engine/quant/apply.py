"""Decide which of a model's layers keep quantized weights, and swap them in.

A GGUF checkpoint's matrices stay in their block formats on CPU where a C
kernel runs the type; types without one (IQ*, TQ*...) are dequantized at
load, with one log line naming the type. ``quantize="q8_0" | "q4_k"``
quantizes a float checkpoint's linear layers and embedding at load, onto the
same kernels. Everything else (CUDA, ``dequantize=True``, no C compiler) loads
float weights, as before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from gguf import GGMLQuantizationType
from torch import nn

from candle_agents.engine import cpu_kernels
from candle_agents.engine.loader import Checkpoint
from candle_agents.engine.quant.layers import QuantEmbedding, QuantLinear, _BlockWeights
from candle_agents.engine.quant.tensor import FLOAT_TYPES
from candle_agents.errors import ConfigError, ModelLoadError

__all__ = ["QUANTIZE_TYPES", "QuantPlan", "finish_quantized", "plan_quantized", "weight_bytes"]

logger = logging.getLogger(__name__)

Q = GGMLQuantizationType
# ``EngineConfig.quantize`` values: the in-situ quantization types.
QUANTIZE_TYPES = {"q8_0": Q.Q8_0, "q4_k": Q.Q4_K}


@dataclass
class QuantPlan:
    """Checkpoint tensors to load as blocks, and what runs the matmuls."""

    keep: frozenset[str] = frozenset()
    int8_activations: bool = False
    modules: list[str] = field(default_factory=list)


def plan_quantized(
    model: nn.Module,
    ckpt: Checkpoint,
    device: torch.device,
    *,
    dequantize: bool,
    quantize: str | None,
    int8_activations: bool,
) -> QuantPlan | None:
    """Swap quantized layers into ``model`` (still on the meta device); None keeps floats."""
    qtype = None
    if quantize is not None:  # a value EngineConfig has checked
        if set(ckpt.quantized.values()) - FLOAT_TYPES:
            raise ConfigError(
                f"quantize={quantize!r} quantizes float checkpoints; {ckpt.path} is already "
                "quantized (GGUF weights run in their own formats)",
                field="quantize",
            )
        qtype = QUANTIZE_TYPES[quantize]
    if dequantize or (not ckpt.quantized and qtype is None):
        return None
    if device.type != "cpu":
        if qtype is not None:
            raise ConfigError(
                f"quantize={quantize!r} runs on CPU kernels; device {device} has none",
                field="quantize",
            )
        logger.info("GGUF weights are dequantized at load on %s (no quantized kernels)", device)
        return None
    if not cpu_kernels.available():
        if qtype is not None:
            raise ConfigError(
                f"quantize={quantize!r} needs the C kernels, which did not build here "
                "(no working C compiler?)",
                field="quantize",
            )
        logger.warning("no C kernels here: GGUF weights are dequantized to float32 at load")
        return None

    names = _map_names(model)
    if qtype is not None:
        paths = {path for path, module in model.named_modules() if _swappable(module)}
        keep: frozenset[str] = frozenset()  # F16/BF16 matrices arrive as floats, to quantize
    else:
        runnable = {name for name, t in ckpt.quantized.items() if cpu_kernels.quant_supported(t)}
        for kind in sorted({Q(t).name for n, t in ckpt.quantized.items() if n not in runnable}):
            logger.warning("GGUF type %s has no CPU kernel: dequantizing its tensors at load", kind)
        keep = frozenset(runnable)
        paths = {names(n) for n in keep}
    if getattr(model, "tie_word_embeddings", False) and "embed_tokens" in paths:
        paths.add("lm_head")  # tied to the quantized embedding by finish_quantized
    swapped = _swap(model, paths, qtype, int8_activations)
    return QuantPlan(keep=keep, int8_activations=int8_activations, modules=swapped)


def finish_quantized(model: nn.Module, plan: QuantPlan) -> None:
    """After loading: every quantized layer is whole; a tied head reads the embedding."""
    for path, module in model.named_modules():
        if isinstance(module, _BlockWeights) and module.parts:
            module.check_complete(path)
            module.merge_parts()
            if isinstance(module, QuantLinear):
                module.prepare()
        elif isinstance(module, _BlockWeights) and not (
            path == "lm_head" and getattr(model, "tie_word_embeddings", False)
        ):
            raise ModelLoadError(f"the checkpoint has no weights for {path}")
    embed = getattr(model, "embed_tokens", None)
    if getattr(model, "tie_word_embeddings", False) and isinstance(embed, QuantEmbedding):
        model.lm_head = QuantLinear.tied_to(embed, plan.int8_activations)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of weights the model holds, each tensor counted once (tied ones share)."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen and t.numel():
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
    return total


def _swappable(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Embedding))


def _map_names(model: nn.Module):
    """HF tensor name -> path of the module that holds it."""

    def module_path(hf_name: str) -> str:
        target, _ = model._map_name(hf_name.removeprefix("model."))
        return target.rsplit(".", 1)[0]

    return module_path


def _swap(
    model: nn.Module, paths: set[str], qtype: int | None, int8_activations: bool
) -> list[str]:
    swapped = []
    for path in sorted(paths):
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        old = getattr(parent, name)
        if isinstance(old, nn.Linear):
            new: nn.Module = QuantLinear(
                old.in_features,
                old.out_features,
                bias=old.bias is not None,
                quantize_to=qtype,
                int8_activations=int8_activations,
            )
        elif isinstance(old, nn.Embedding):
            new = QuantEmbedding(old.num_embeddings, old.embedding_dim, quantize_to=qtype)
        else:
            raise ModelLoadError(f"{path} holds a quantized weight but is a {type(old).__name__}")
        setattr(parent, name, new)
        swapped.append(path)
    return swapped
