"""What every checkpoint loader hands to the engine."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tokenizers import Tokenizer


@dataclass
class TokenizerInfo:
    """Tokenizer metadata that `tokenizer.json` does not carry."""

    chat_template: str | None = None
    bos_token: str | None = None
    eos_token: str | None = None
    pad_token: str | None = None
    unk_token: str | None = None
    add_bos_token: bool = False
    add_eos_token: bool = False


@dataclass
class Checkpoint:
    """A model on disk, opened but not yet materialised.

    ``config`` is a dict in the shape of an HF ``config.json`` (``architectures``,
    ``hidden_size``, ``num_attention_heads``...). ``weights`` yields
    ``(hf_parameter_name, tensor)`` pairs lazily so that only one tensor at a
    time needs converting; ``num_weights`` sizes the progress bar.
    """

    name: str
    path: str
    config: dict[str, Any]
    weights: Callable[..., Iterator[tuple[str, Any]]]
    num_weights: int
    tokenizer: Tokenizer
    tokenizer_info: TokenizerInfo
    eos_token_ids: list[int] = field(default_factory=list)
    quantized: dict[str, int] = field(default_factory=dict)
