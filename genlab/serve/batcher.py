"""Server-side micro-batching: images that arrive together share one forward pass.

    batcher = MicroBatcher(run_batch, window_ms=5, max_batch=32, max_queue=1024)
    results = await batcher.submit([item, item])      # from any request handler

Each request puts its images on an asyncio queue and awaits one future per image. A collector
task takes the first waiting image, then keeps taking images until `max_batch` are gathered or
`window_ms` has passed since the first, and hands the batch to `run_batch(items)` in a single
worker thread (so the event loop keeps accepting requests, and the model, including its
Grad-CAM hooks, is only ever used by one thread). While a batch runs, new requests queue up and
form the next batch: under load batches grow by themselves, when idle a lone request waits at
most `window_ms`.

A full queue is refused at once (`QueueFull`, the app answers 503) instead of letting latency
grow without bound. The collector is bound to the event loop it was started on; `submit` from
another loop (a new test client) starts a fresh collector there.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class QueueFull(Exception):
    """More images are waiting than max_queue."""


class MicroBatcher:
    def __init__(self, run_batch: Callable[[list[Any]], Sequence[Any]], window_ms: float = 5.0,
                 max_batch: int = 32, max_queue: int = 1024):
        if max_batch < 1 or max_queue < 1 or window_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1, window_ms >= 0")
        self.run_batch, self.window = run_batch, window_ms / 1000.0
        self.max_batch, self.max_queue = int(max_batch), int(max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genlab-infer")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._lock = threading.Lock()
        # counters for /v1/health and the tests (read without a lock: monotone ints)
        self.batches = 0
        self.images = 0
        self.max_batch_seen = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._task is not None and not self._task.done():
            return
        with self._lock:
            self._loop, self._queue = loop, asyncio.Queue()
            self._task = loop.create_task(self._collect(self._queue), name="genlab-batcher")

    async def stop(self) -> None:
        """Cancel the collector (waiting requests get CancelledError)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, RuntimeError):  # RuntimeError: another loop's task
                pass

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def pending(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    # -- the work ----------------------------------------------------------------------------
    async def submit(self, items: Sequence[Any]) -> list[Any]:
        """Results of `run_batch` for `items`, in order (each may share a batch with others)."""
        self._ensure_started()
        if self._queue.qsize() + len(items) > self.max_queue:
            raise QueueFull(f"{self._queue.qsize()} images are waiting (limit {self.max_queue})")
        loop = asyncio.get_running_loop()
        futures = []
        for it in items:
            fut = loop.create_future()
            self._queue.put_nowait((it, fut, time.perf_counter()))
            futures.append(fut)
        return list(await asyncio.gather(*futures))

    async def _collect(self, queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self.window
            while len(batch) < self.max_batch:
                try:
                    batch.append(queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), left))
                except asyncio.TimeoutError:
                    break
            batch = [b for b in batch if not b[1].done()]  # drop requests already given up
            if not batch:
                continue
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.run_batch,
                                                      [b[0] for b in batch])
            except asyncio.CancelledError:
                for _, fut, _ in batch:
                    fut.cancel()
                raise
            except Exception as e:  # noqa: BLE001 - hand the error to every waiting request
                for _, fut, _ in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self.batches += 1
            self.images += len(batch)
            self.max_batch_seen = max(self.max_batch_seen, len(batch))
            for (_, fut, queued), res in zip(batch, results):
                if not fut.done():
                    if isinstance(res, dict):
                        res["batch"] = {"size": len(batch),
                                        "queued_ms": round((started - queued) * 1000, 2)}
                    fut.set_result(res)
