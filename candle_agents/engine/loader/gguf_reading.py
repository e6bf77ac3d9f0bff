"""Reading GGUF metadata and tensor shapes: helpers shared by the GGUF loader modules."""

from __future__ import annotations

from typing import Any

from gguf import GGUFReader, GGUFValueType
from gguf.gguf_reader import ReaderField, ReaderTensor


def field(reader: GGUFReader, key: str, default: Any = None) -> Any:
    """A metadata value as a Python scalar, str or list; ``default`` when absent."""
    found = reader.fields.get(key)
    if found is None or not found.types:
        return default
    if found.types[0] == GGUFValueType.ARRAY and found.types[-1] == GGUFValueType.STRING:
        return strings(found)
    if found.types[0] == GGUFValueType.STRING:
        return bytes(found.parts[-1]).decode("utf-8", errors="replace")
    return found.contents()


def strings(found: ReaderField) -> list[str]:
    # Not field.contents(): one invalid UTF-8 token would fail the whole vocabulary.
    return [bytes(found.parts[i]).decode("utf-8", errors="replace") for i in found.data]


def hf_shape(tensor: ReaderTensor) -> tuple[int, ...]:
    """GGUF stores GGML's ``ne`` (fastest dimension first); HF/numpy order is reversed."""
    return tuple(int(n) for n in reversed(tensor.shape.tolist()))
