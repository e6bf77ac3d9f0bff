"""SmolLM3: Llama's blocks, with no rotary embedding in some layers (every fourth by default)."""

from __future__ import annotations

from typing import Any

from candle_agents.engine.layers.decoder import DecoderSpec
from candle_agents.engine.models.llama import LlamaForCausalLM
from candle_agents.errors import ModelLoadError


class SmolLM3ForCausalLM(LlamaForCausalLM):
    @classmethod
    def spec_from_config(cls, c: dict[str, Any]) -> DecoderSpec:
        if c.get("use_sliding_window"):
            raise ModelLoadError("SmolLM3 with use_sliding_window is not supported yet")
        spec = super().spec_from_config(c)
        layers = int(c["num_hidden_layers"])
        flags = c.get("no_rope_layers")  # 1: the layer uses rope (the name says the opposite)
        if flags is None:
            every = int(c.get("no_rope_layer_interval", 4))
            flags = [int((i + 1) % every != 0) for i in range(layers)]
        if len(flags) != layers:
            raise ModelLoadError(f"no_rope_layers has {len(flags)} entries for {layers} layers")
        spec.rope_layers = tuple(bool(f) for f in flags)
        return spec
