"""Dynamic batching inside one service process: requests queue on the event loop, and each model call takes all
that are waiting (up to ``max_batch``, waiting at most ``max_wait_ms`` for more), on one inference thread.

While one batch runs, the next requests queue up, so under load batches fill by themselves; an idle service answers
a single request after ``max_wait_ms``.

Examples:
    >>> batcher = Batcher(engine.run, max_batch=8, max_wait_ms=5)  # doctest: +SKIP
    >>> result = await batcher.submit(item)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence


class Batcher:
    """Collect submitted items into batches for ``fn(items) -> results`` (a result may be an exception).

    Args:
        fn: The batch function (runs on one worker thread, off the event loop).
        max_batch: Most items per call.
        max_wait_ms: How long to wait for more items once one is queued.

    Examples:
        >>> b = Batcher(lambda xs: [x * 2 for x in xs])
        >>> asyncio.run(b.run_one(21))
        42
    """

    def __init__(self, fn: Callable[[Sequence[Any]], list[Any]], max_batch: int = 8, max_wait_ms: float = 5.0):
        """Set up; the loop task starts on the first ``submit``."""
        self.fn, self.max_batch, self.max_wait = fn, max(1, int(max_batch)), max(0.0, float(max_wait_ms)) / 1000
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="yw-serve-infer")
        self.sizes: list[int] = []

    async def submit(self, item: Any) -> Any:
        """Queue ``item``; return its result (or raise its exception) when its batch is done."""
        if self.task is None or self.task.done():
            self.queue = asyncio.Queue()
            self.task = asyncio.get_running_loop().create_task(self._loop())
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((item, fut))
        return await fut

    async def run_one(self, item: Any) -> Any:
        """``submit`` then ``close`` (for a one-off call and the doctest)."""
        try:
            return await self.submit(item)
        finally:
            await self.close()

    async def _collect(self) -> list[tuple[Any, asyncio.Future]]:
        batch = [await self.queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                batch.append(self.queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            timeout = deadline - loop.time()
            if timeout <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), timeout))
            except asyncio.TimeoutError:
                break
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            self.sizes.append(len(batch))
            try:
                results = await loop.run_in_executor(self.executor, self.fn, [b[0] for b in batch])
            except Exception as e:  # the whole call failed: every request of the batch gets the error
                results = [e] * len(batch)
            for (_, fut), r in zip(batch, results):
                if fut.done():  # the client went away
                    continue
                if isinstance(r, BaseException):
                    fut.set_exception(r)
                else:
                    fut.set_result(r)

    async def close(self) -> None:
        """Stop the loop task and the inference thread."""
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
            self.task = None
        self.executor.shutdown(wait=False)


__all__ = ["Batcher"]
