"""How outputs travel from the engine thread to callers in any thread or event loop."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Callable, Iterator
from typing import Any

from candle_agents.engine.outputs import StreamDelta
from candle_agents.errors import CandleError

Item = StreamDelta | CandleError


class SyncSink:
    """Deliveries for a caller blocking in a thread."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[Item] = queue.SimpleQueue()

    def put(self, item: Item) -> bool:
        self.queue.put(item)
        return True

    def get(self, timeout: float | None = None) -> Item:
        return self.queue.get(timeout=timeout)


class AsyncSink:
    """Deliveries for a coroutine; safe to fill from the engine thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Item] = asyncio.Queue()

    def put(self, item: Item) -> bool:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the caller's loop is closed: nobody is listening
            return False
        return True

    async def get(self) -> Item:
        return await self.queue.get()


class RequestStream:
    """Async iterator over one request's deltas.

    Leaving the ``async for`` early (break, exception, cancellation, or just
    dropping the object) aborts the request, so its KV blocks are freed.
    """

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sink: AsyncSink,
        abort: Callable[[str], Any],
    ) -> None:
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self._sink = sink
        self._abort = abort
        self._done = False

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> StreamDelta:
        if self._done:
            raise StopAsyncIteration
        try:
            item = await self._sink.get()
        except BaseException:
            self.close()
            raise
        if isinstance(item, CandleError):
            self._done = True
            raise item
        if item.finished:
            self._done = True
        return item

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._abort(self.request_id)

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> RequestStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_done", True):
            self._abort(self.request_id)


def iterate_sync(
    request_id: str, sink: SyncSink, abort: Callable[[str], Any]
) -> Iterator[StreamDelta]:
    """Blocking iterator over one request's deltas; closing it early aborts the request."""
    done = False
    try:
        while True:
            item = sink.get()
            if isinstance(item, CandleError):
                done = True
                raise item
            yield item
            if item.finished:
                done = True
                return
    finally:
        if not done:
            abort(request_id)
