"""The work queue on its own: events for one key merge, a bounded number of keys run at once, nothing is kept."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

from operator_engine.workqueue import Entry, WorkQueue


class Recorder:
    """A processor that records each call and holds it until released."""

    def __init__(self) -> None:
        self.calls: list[tuple[Hashable, Entry]] = []
        self.running: set[Hashable] = set()
        self.most = 0
        self.release = asyncio.Event()
        self.started = asyncio.Condition()

    async def __call__(self, key: Hashable, entry: Entry) -> None:
        self.running.add(key)
        self.most = max(self.most, len(self.running))
        self.calls.append((key, Entry(entry.body, entry.backstop)))
        async with self.started:
            self.started.notify_all()
        try:
            await self.release.wait()
        finally:
            self.running.discard(key)

    async def wait_calls(self, count: int) -> None:
        async with asyncio.timeout(10):
            async with self.started:
                await self.started.wait_for(lambda: len(self.calls) >= count)


async def drained(queue: WorkQueue) -> None:
    async with asyncio.timeout(10):
        while len(queue):
            await asyncio.sleep(0)


async def test_events_for_a_waiting_key_merge_into_one_reconcile_with_the_newest_body() -> None:
    recorder = Recorder()
    queue = WorkQueue(recorder, workers=1)
    queue.add("busy")
    await recorder.wait_calls(1)  # the only worker is busy: "wf" waits
    for version in range(5):
        queue.add("wf", {"v": version})
    queue.add("wf", None, backstop=True)
    recorder.release.set()
    await drained(queue)
    await queue.close()
    wf = [entry for key, entry in recorder.calls if key == "wf"]
    assert len(wf) == 1
    assert wf[0].body == {"v": 4} and wf[0].backstop


async def test_an_event_during_a_reconcile_runs_it_once_more_after() -> None:
    recorder = Recorder()
    queue = WorkQueue(recorder, workers=4)
    queue.add("wf", {"v": 1})
    await recorder.wait_calls(1)
    queue.add("wf", {"v": 2})
    queue.add("wf", {"v": 3})
    assert recorder.running == {"wf"} and len(recorder.calls) == 1, "never two reconciles of one key at once"
    recorder.release.set()
    await drained(queue)
    await queue.close()
    assert [entry.body for _, entry in recorder.calls] == [{"v": 1}, {"v": 3}]


async def test_at_most_the_given_number_of_reconciles_run_at_once() -> None:
    recorder = Recorder()
    queue = WorkQueue(recorder, workers=3)
    for i in range(10):
        queue.add(f"wf-{i}")
    await recorder.wait_calls(3)
    assert len(recorder.running) == 3
    recorder.release.set()
    await drained(queue)
    await queue.close()
    assert recorder.most == 3 and len(recorder.calls) == 10


async def test_nothing_is_kept_for_a_key_once_it_is_processed() -> None:
    recorder = Recorder()
    recorder.release.set()
    queue = WorkQueue(recorder, workers=2)
    for i in range(100):
        queue.add(f"wf-{i}", {"big": "x" * 100})
    await drained(queue)
    assert len(queue) == 0
    assert not (queue._pending or queue._active or queue._again or queue._order)
    await queue.close()


async def test_a_failing_reconcile_does_not_stop_the_worker() -> None:
    seen: list[Hashable] = []

    async def process(key: Hashable, entry: Entry) -> None:
        seen.append(key)
        if key == "bad":
            raise RuntimeError("boom")

    queue = WorkQueue(process, workers=1)
    queue.add("bad")
    queue.add("good")
    await drained(queue)
    await queue.close()
    assert seen == ["bad", "good"]


async def test_exclusive_holds_a_key_and_its_events_run_after() -> None:
    recorder = Recorder()
    recorder.release.set()
    queue = WorkQueue(recorder, workers=2)
    async with queue.exclusive("wf"):
        queue.add("wf", {"v": 1})
        queue.add("other")
        await recorder.wait_calls(1)
        assert [key for key, _ in recorder.calls] == ["other"]
    await drained(queue)
    await queue.close()
    assert [key for key, _ in recorder.calls] == ["other", "wf"]
