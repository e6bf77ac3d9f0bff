"""Model registry: HF ``architectures`` / GGUF ``general.architecture`` -> class."""

from __future__ import annotations

from typing import Any

from torch import nn

from candle_agents.engine.models.gemma import Gemma2ForCausalLM, Gemma3ForCausalLM
from candle_agents.engine.models.llama import LlamaForCausalLM
from candle_agents.engine.models.mistral import MistralForCausalLM
from candle_agents.engine.models.phi3 import Phi3ForCausalLM
from candle_agents.engine.models.qwen2 import Qwen2ForCausalLM
from candle_agents.engine.models.qwen3 import Qwen3ForCausalLM
from candle_agents.engine.models.smollm3 import SmolLM3ForCausalLM
from candle_agents.errors import ModelLoadError

MODEL_REGISTRY: dict[str, type[nn.Module]] = {
    "Gemma2ForCausalLM": Gemma2ForCausalLM,
    "Gemma3ForCausalLM": Gemma3ForCausalLM,
    # the text part of the multimodal checkpoints (vision tensors are skipped)
    "Gemma3ForConditionalGeneration": Gemma3ForCausalLM,
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": MistralForCausalLM,
    "Phi3ForCausalLM": Phi3ForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
    "SmolLM3ForCausalLM": SmolLM3ForCausalLM,
    "gemma3_text": Gemma3ForCausalLM,  # HF model_type (configs without architectures)
    # GGUF general.architecture names
    "gemma2": Gemma2ForCausalLM,
    "gemma3": Gemma3ForCausalLM,
    "llama": LlamaForCausalLM,
    "mistral": MistralForCausalLM,
    "phi3": Phi3ForCausalLM,
    "qwen2": Qwen2ForCausalLM,
    "qwen3": Qwen3ForCausalLM,
    "smollm3": SmolLM3ForCausalLM,
}


def model_class(config: dict[str, Any]) -> type[nn.Module]:
    names = [*list(config.get("architectures") or []), config.get("model_type", "")]
    for name in names:
        if name in MODEL_REGISTRY:
            return MODEL_REGISTRY[name]
    raise ModelLoadError(
        f"architecture {names[0] if names else '?'!r} is not supported; supported: "
        + ", ".join(k for k in MODEL_REGISTRY if k[0].isupper())
    )
