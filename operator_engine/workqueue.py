"""A work queue in the manner of controller-runtime's: one pending entry per key, a bounded pool of workers.

Watch events only say "look at this key again". A key is queued at most
once: more events for a key that waits merge into its entry (the newest body
the watch delivered wins, a backstop request sticks). A key is processed by
one worker at a time; an event that comes while it is processed queues it
once more, to run after. So a burst of events for one workflow costs one or
two reconciles, not one per event, and at most `workers` reconciles run at
once. Nothing is kept for a key once it is processed and not queued again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any

from operator_engine import logs

log = logs.get()


@dataclasses.dataclass
class Entry:
    """What is pending for one key: the freshest body a watch delivered (or None), and who asked.

    `backstop`: the backstop asked. `nudged`: something other than the key's
    own watch asked (a Job's end, admission), so the key must be looked at
    even if its body is one the processor has seen.
    """

    body: dict[str, Any] | None = None
    backstop: bool = False
    nudged: bool = False

    def merge(self, body: dict[str, Any] | None, backstop: bool, nudged: bool = False) -> None:
        if body is not None:
            self.body = body
        self.backstop = self.backstop or backstop
        self.nudged = self.nudged or nudged or body is None


Processor = Callable[[Hashable, Entry], Awaitable[None]]


class WorkQueue:
    def __init__(self, process: Processor, workers: int) -> None:
        if workers < 1:
            raise ValueError("a work queue needs at least one worker")
        self._process = process
        self._workers = workers
        self._pending: dict[Hashable, Entry] = {}  # queued, not being processed
        self._order: collections.deque[Hashable] = collections.deque()
        self._active: set[Hashable] = set()  # being processed now
        self._again: dict[Hashable, Entry] = {}  # came in while being processed: queued once it is done
        self._ready = asyncio.Event()
        self._released = asyncio.Condition()  # a key left `_active`
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    def add(
        self, key: Hashable, body: dict[str, Any] | None = None, *, backstop: bool = False, nudged: bool = False
    ) -> None:
        """Ask for `key` to be processed; merges with what is already pending for it.

        A request without a body, or `nudged`, marks the entry nudged (see `Entry`).
        """
        if self._closed:
            return
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._work(), name=f"reconcile-{i}") for i in range(self._workers)]
        if key in self._active:
            self._again.setdefault(key, Entry()).merge(body, backstop, nudged)
        elif key in self._pending:
            self._pending[key].merge(body, backstop, nudged)
        else:
            entry = Entry()
            entry.merge(body, backstop, nudged)
            self._pending[key] = entry
            self._order.append(key)
            self._ready.set()

    def __len__(self) -> int:
        """Keys waiting or being processed."""
        return len(self._pending.keys() | self._active | self._again.keys())

    async def _work(self) -> None:
        while True:
            while not self._order:
                self._ready.clear()
                await self._ready.wait()
            key = self._order.popleft()
            entry = self._pending.pop(key)
            if key in self._active:  # held by `exclusive`: it runs once that is done
                self._again.setdefault(key, Entry()).merge(entry.body, entry.backstop, entry.nudged)
                continue
            self._active.add(key)
            try:
                await self._process(key, entry)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one key's failure never stops the worker; the backstop comes back to it
                log.warning(f"reconcile of {key} failed, the backstop retries: {type(exc).__name__}: {exc}")
            finally:
                await self._release(key)

    async def _release(self, key: Hashable) -> None:
        self._active.discard(key)
        again = self._again.pop(key, None)
        if again is not None and not self._closed:
            self.add(key, again.body, backstop=again.backstop, nudged=again.nudged)
        async with self._released:
            self._released.notify_all()

    @contextlib.asynccontextmanager
    async def exclusive(self, key: Hashable) -> AsyncIterator[None]:
        """Hold `key` as a worker would: wait until it is not processed, and keep it from being processed meanwhile.

        For work on a key that must happen now, in the caller's order
        (admission admits in creation order); events meanwhile queue it once
        more, to be processed after.
        """
        async with self._released:
            await self._released.wait_for(lambda: key not in self._active)
            self._active.add(key)
        try:
            yield
        finally:
            await self._release(key)

    async def close(self) -> None:
        """Stop the workers (a reconcile in progress is cancelled: any step may be re-run after a crash)."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
