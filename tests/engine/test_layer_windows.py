"""Which layers have a sliding window, read from HF configs as transformers reads them."""

from __future__ import annotations

import pytest
import transformers

from candle_agents.engine.models.llama import layer_windows


@pytest.mark.parametrize(
    "cls, fields",
    [
        ("Qwen2Config", dict(use_sliding_window=True, sliding_window=8, max_window_layers=2)),
        ("Qwen2Config", dict(use_sliding_window=False, sliding_window=8)),
        ("MistralConfig", dict(sliding_window=8)),
        ("MistralConfig", dict(sliding_window=None)),
    ],
)
def test_windows_follow_transformers_layer_types(cls, fields):
    config = getattr(transformers, cls)(num_hidden_layers=4, **fields).to_dict()
    types = getattr(getattr(transformers, cls)(num_hidden_layers=4, **fields), "layer_types", None)
    if types is None:  # Mistral: the window, when set, is on every layer
        types = ["sliding_attention" if fields["sliding_window"] else "full_attention"] * 4
    expected = [8 if t == "sliding_attention" else None for t in types]
    # With transformers' layer_types, and as an older config without them.
    for c in (config, {k: v for k, v in config.items() if k != "layer_types"}):
        got = layer_windows(c)
        assert list(got or [None] * 4) == expected
