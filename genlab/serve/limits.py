"""Admission control for the server: a bounded FIFO queue in front of a counted resource.

    slots = Gate(capacity=64, max_waiting=512, timeout_s=30, what="request slots")
    async with slots.hold():            # one request slot; Busy when the queue is full
        ...
    budget = Gate(capacity=512 << 20, max_waiting=10_000, timeout_s=30, what="decode bytes")
    async with budget.hold(n_bytes):    # n_bytes of the decode budget
        ...

A holder takes `n` units of `capacity`; when they are not free it waits in line (first come,
first served: a large request is not starved by a stream of small ones). `Busy` (the app
answers 503 with Retry-After) is raised at once when `max_waiting` are already in line, and
after `timeout_s` in line. A request for more than the whole capacity is a caller's error
(ValueError): callers refuse such requests first, with their own 413.

One event loop at a time: the state is only touched from the loop's thread (uvicorn runs one
loop per worker process).
"""
from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class Busy(Exception):
    """The server is at one of its limits right now: answered 503 with Retry-After."""


class Gate:
    def __init__(self, capacity: int, max_waiting: int, timeout_s: float, what: str):
        if capacity < 1 or max_waiting < 0 or timeout_s <= 0:
            raise ValueError("capacity must be >= 1, max_waiting >= 0, timeout_s > 0")
        self.capacity, self.max_waiting = int(capacity), int(max_waiting)
        self.timeout_s, self.what = float(timeout_s), what
        self.used = 0
        self._line: deque[tuple[int, asyncio.Future]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._line)

    async def acquire(self, n: int = 1) -> None:
        if n > self.capacity:
            raise ValueError(f"{n} {self.what} asked for; the capacity is {self.capacity}")
        if not self._line and self.used + n <= self.capacity:
            self.used += n
            return
        if len(self._line) >= self.max_waiting:
            raise Busy(f"{self.used:,} of {self.capacity:,} {self.what} in use and "
                       f"{len(self._line)} requests waiting for them (the most that may wait)")
        entry = (n, asyncio.get_running_loop().create_future())
        self._line.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(entry[1]), self.timeout_s)
        except BaseException as e:  # a timeout, or the request was cancelled (client gone)
            if entry[1].done() and not entry[1].cancelled():
                self.release(n)  # granted just as we gave up: hand the units back
            else:
                entry[1].cancel()
                with contextlib.suppress(ValueError):
                    self._line.remove(entry)
                self._wake()  # the head may have changed
            if isinstance(e, asyncio.TimeoutError):
                raise Busy(f"waited {self.timeout_s:g} s for {self.what}") from None
            raise

    def release(self, n: int = 1) -> None:
        self.used -= n
        self._wake()

    def _wake(self) -> None:
        while self._line and self.used + self._line[0][0] <= self.capacity:
            n, fut = self._line.popleft()
            if fut.done():  # cancelled by a waiter that gave up
                continue
            self.used += n
            fut.set_result(None)

    @contextlib.asynccontextmanager
    async def hold(self, n: int = 1):
        await self.acquire(n)
        try:
            yield
        finally:
            self.release(n)


def return_large_frees_to_the_os(threshold: int = 1 << 20) -> bool:
    """Make glibc serve every allocation of `threshold` bytes or more with its own mmap, so that
    a decoded image's memory goes back to the OS when it is freed. By default glibc raises that
    threshold after the first large free (up to 32 MiB), so Pillow's 16 MiB blocks then come from
    per-thread arenas that keep them: a few large decodes on different worker threads left the
    server hundreds of MiB larger, though only one or two decoded at a time. Process-wide, so
    `genlab serve` calls it, not create_app. False where there is no glibc (nothing changes)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, int(threshold)))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False
