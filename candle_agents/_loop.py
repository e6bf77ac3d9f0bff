"""Sync faces for async code: one background event loop per process.

The OpenAI adapter, the agent loop and the MCP client are async. Their sync
forms (LangChain's ``invoke``, LlamaIndex's ``chat``, scripts) run the
coroutine on a private loop in a daemon thread instead of ``asyncio.run``, so
they also work where the caller's thread already runs a loop (Jupyter, a
FastAPI handler) and so async resources such as MCP sessions, bound to the
loop that opened them, can be used by later sync calls too.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def background_loop() -> asyncio.AbstractEventLoop:
    """The process's background loop, started on first use."""
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(
                target=loop.run_forever, name="candle-agents-loop", daemon=True
            ).start()
            _loop = loop
        return _loop


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the background loop and wait for its result in this thread.

    Interrupting the wait (KeyboardInterrupt) cancels the coroutine.
    """
    loop = background_loop()
    if _running_loop() is loop:
        coro.close()
        raise RuntimeError("run_sync called from the background loop itself: await instead")
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise


def iterate_sync(items: AsyncIterator[T]) -> Iterator[T]:
    """Iterate an async iterator from sync code; leaving early closes it on its loop."""
    loop = background_loop()
    done = False
    try:
        while True:
            future = asyncio.run_coroutine_threadsafe(_next(items), loop)
            try:
                ok, item = future.result()
            except BaseException:
                future.cancel()
                raise
            if not ok:
                done = True
                return
            yield item
    finally:
        aclose = getattr(items, "aclose", None)
        if not done and aclose is not None:
            asyncio.run_coroutine_threadsafe(aclose(), loop).result()


async def _next(items: AsyncIterator[T]) -> tuple[bool, Any]:
    try:
        return True, await items.__anext__()
    except StopAsyncIteration:
        return False, None


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
