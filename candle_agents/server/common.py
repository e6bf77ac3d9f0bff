"""HTTP plumbing the route modules share: closing streams, disconnects, error mapping."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import anyio
from fastapi import Request

from candle_agents.errors import CandleError
from candle_agents.openai.errors import OpenAIError

logger = logging.getLogger(__name__)

T = TypeVar("T")


async def close_stream(stream: AsyncIterator[Any]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is None:
        return
    # Shielded: this runs while a disconnect is cancelling the response's task group.
    with anyio.CancelScope(shield=True):
        try:
            await aclose()
        except RuntimeError:
            pass  # still running in the other path; that path closes it
        except Exception:
            logger.exception("closing a response stream failed")


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Await ``work``, cancelling it if the client hangs up first.

    Cancelling the adapter's coroutine aborts its engine requests, so a client
    that gives up on a long non-streamed completion frees its KV blocks at once.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if not task.done() or task.cancelled():
        await asyncio.wait({task})  # let its cleanup (the aborts) run before answering
        return None
    return task.result()


async def _disconnected(request: Request) -> None:
    # The body has been read, so the next message is the disconnect, whenever it comes.
    while (await request.receive())["type"] != "http.disconnect":
        pass


def as_openai_error(exc: BaseException) -> OpenAIError:
    if isinstance(exc, CandleError):
        return OpenAIError.from_exception(exc)
    logger.error("unexpected error while serving a request", exc_info=exc)
    return OpenAIError(
        f"internal server error ({type(exc).__name__}); see the server log",
        500,
        type="server_error",
    )
