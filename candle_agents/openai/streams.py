"""The engine's request streams as the adapter consumes them.

Collected to the end, merged as their deltas come, or wrapped so that closing
the chunks built from them aborts them. An engine error met while reading is
reported as an :class:`OpenAIError`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TypeVar

from pydantic import BaseModel

from candle_agents.engine import StreamDelta
from candle_agents.engine.requests import RequestStream
from candle_agents.errors import CandleError
from candle_agents.openai.errors import OpenAIError

R = TypeVar("R", bound=BaseModel)


class Chunks(AsyncIterator[R]):
    """The chunks of submitted requests; closing it aborts them even before the first
    chunk (an async generator that never started would skip its ``finally``)."""

    def __init__(self, chunks: AsyncIterator[R], streams: list[RequestStream]) -> None:
        self._chunks = chunks
        self._streams = streams

    def __aiter__(self) -> Chunks[R]:
        return self

    async def __anext__(self) -> R:
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        for s in self._streams:
            s.close()
        await self._chunks.aclose()


async def collect_all(streams: list[RequestStream]) -> list[list[StreamDelta]]:
    """Every delta of each stream, read concurrently; the streams are closed after."""

    async def collect(stream: RequestStream) -> list[StreamDelta]:
        return [d async for d in stream]

    try:
        return list(await asyncio.gather(*(collect(s) for s in streams)))
    except CandleError as exc:
        raise OpenAIError.from_exception(exc) from exc
    finally:
        for s in streams:
            s.close()


async def merge(streams: list[RequestStream]) -> AsyncIterator[tuple[int, StreamDelta]]:
    """Deltas of several streams as they come, tagged with the stream's index."""
    if len(streams) == 1:
        try:
            async for d in streams[0]:
                yield 0, d
        except CandleError as exc:
            raise OpenAIError.from_exception(exc) from exc
        return
    queue: asyncio.Queue[tuple[int, StreamDelta | BaseException | None]] = asyncio.Queue()

    async def pump(i: int, stream: RequestStream) -> None:
        try:
            async for d in stream:
                await queue.put((i, d))
        except BaseException as exc:  # reported to the consumer, who decides
            await queue.put((i, exc))
            return
        await queue.put((i, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        live = len(streams)
        while live:
            i, item = await queue.get()
            if item is None:
                live -= 1
            elif isinstance(item, BaseException):
                if isinstance(item, CandleError):
                    raise OpenAIError.from_exception(item) from item
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, return_exceptions=True)
