"""How ChatCandle and CandleLLM reach an engine: the default model's name, the check of
their engine arguments, and the one OpenAIAdapter per live engine that both share."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from typing import Any

from candle_agents.engine import Engine, EngineConfig
from candle_agents.engine.loader import DEFAULT_MODEL
from candle_agents.errors import ConfigError
from candle_agents.openai import OpenAIAdapter

__all__ = ["DEFAULT_MODEL", "aadapter_for", "adapter_for", "resolve_model"]


def resolve_model(
    owner: str, model: str | None, engine: Engine | None, engine_config: Mapping[str, Any] | None
) -> str:
    """The model ``owner`` serves, once its engine arguments agree; else ConfigError.

    Cheap checks only: constructing a ChatCandle or CandleLLM loads nothing.
    """
    if engine is not None:
        if engine_config:
            raise ConfigError(
                f"pass either engine or engine_config, not both: engine_config only "
                f"configures the engine {owner} loads itself",
                field="engine_config",
            )
        if not isinstance(engine, Engine):
            raise ConfigError(
                f"engine must be a candle_agents Engine, got {type(engine).__name__}",
                field="engine",
            )
        if model is not None and model != engine.model_name:
            raise ConfigError(
                f"model={model!r} but the engine given serves {engine.model_name!r}: "
                "leave model out or make them agree",
                field="model",
            )
        return engine.model_name
    if engine_config:
        if "model" in engine_config:
            raise ConfigError(
                f"give the model as {owner}(model=...), not inside engine_config",
                field="engine_config",
            )
        # Unknown or invalid fields fail here rather than at the first request.
        EngineConfig.from_kwargs(model=model, **engine_config)
    return DEFAULT_MODEL if model is None else model


# id(engine) -> its adapter. An entry holds the adapter and so the engine: the id cannot be
# reused while the entry exists. Engines have no shutdown hook, so every lookup drops the
# entries of shut-down engines, letting them (weights and all) be collected.
_adapters: dict[int, OpenAIAdapter] = {}
_adapters_lock = threading.Lock()


def adapter_for(engine: Engine) -> OpenAIAdapter:
    """The OpenAIAdapter of ``engine``: one per live engine, shared by every ChatCandle
    and CandleLLM on it."""
    with _adapters_lock:
        for key in [k for k, a in _adapters.items() if not a.engine.is_alive]:
            del _adapters[key]
        adapter = _adapters.get(id(engine))
        if adapter is None:
            adapter = OpenAIAdapter(engine)
            if engine.is_alive:  # a shut-down engine's adapter only reports its errors
                _adapters[id(engine)] = adapter
        return adapter


async def aadapter_for(engine: Engine | None, load: Callable[[], Engine]) -> OpenAIAdapter:
    """The adapter of ``engine``, or of ``load()`` when that is None.

    Loading takes seconds, so it runs in a worker thread: the caller's event loop keeps
    serving other tasks meanwhile.
    """
    if engine is None:
        engine = await asyncio.to_thread(load)
    return adapter_for(engine)
