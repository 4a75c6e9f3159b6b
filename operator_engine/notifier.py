"""When to send a workflow's start and stop notifications, and their record in its status (docs/contract.md §4).

A notification is sent once as the receiver sees it. The operator cannot
make a POST and a status patch one atomic act, so it narrows the gap and
labels what falls in it:

- every POST of one notification carries the same idempotency key, derived
  from the Workflow's uid and the kind (`notify.idempotency_key`), so it is
  the same in every operator process;
- the intent is recorded just before the first POST, in a status patch of
  its own (`status.notifying.<kind>` = the key); that patch also answers with
  the Workflow as it is now, so a notification whose result another task
  recorded meanwhile (a reconcile that read the Workflow before the record)
  is not sent again;
- the result is recorded right after the last POST, in a status patch of its
  own (`status.notifications.<kind>` = "delivered", "refused: ..." or
  "gave up after ..."), which also clears the intent;
- one notification at a time is between a POST and its record (`WINDOW`):
  each POST attempt waits for the one before to be answered and, if that
  answer was final, recorded.

A process killed between the receiver's answer and that record leaves the
intent without a result: its successor sends the notification again, with
the same key, and a receiver that keeps the keys it has seen drops it. A
crash cuts off at most `WINDOW` records, however many workflows run; and
while the API server takes no record, no further notification goes out.

The only memory kept is the deliveries on their way (one task each), which
end with their record; the status is the memory of everything else, so
nothing grows with the number of workflows seen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from operator_engine import logs, notify
from operator_engine.config import Config
from operator_engine.kube import Kube, PermanentError, TransientError
from operator_engine.model import Workflow

log = logs.get()

RECORD_RETRY_SECONDS = (1.0, 30.0)  # first and longest pause between attempts to record a result
# Notifications at once between a POST and the record of its result. One keeps what a crash can cut off
# to one copy; it costs throughput only (a POST and a status patch per notification, one after another),
# and only a deleted Workflow waits for a notification (its stop one).
WINDOW = 1


def recorded(body: dict[str, Any] | None, kind: str) -> str | None:
    """The recorded result of the workflow's `kind` notification, if any."""
    return ((((body or {}).get("status") or {}).get("notifications")) or {}).get(kind)


def intended(body: dict[str, Any] | None, kind: str) -> str | None:
    """The key of a `kind` notification some process set out to send and has not recorded the result of."""
    return ((((body or {}).get("status") or {}).get("notifying")) or {}).get(kind)


class Notifier:
    """Sends each workflow's start and stop notification once, recording intent and result in its status."""

    def __init__(
        self,
        config: Config,
        kube: Kube,
        deadline: float = 300.0,
        on_write: Callable[[dict[str, Any], dict[str, Any]], object] | None = None,
    ) -> None:
        self.config = config
        self.kube = kube
        # Told of each status write (the Workflow as it was, the API server's answer): the reconciler
        # then knows the watch's echo of it for one of this process's own writes (engine.Known).
        self.on_write = on_write or (lambda body, stored: None)
        self.deadline = deadline  # seconds one notification is retried before it is given up
        self._in_flight: dict[tuple[str, str], asyncio.Task[str]] = {}
        self._window = asyncio.Semaphore(WINDOW)

    @property
    def in_flight(self) -> int:
        """How many deliveries are on their way: all the memory a Notifier keeps."""
        return len(self._in_flight)

    def url(self, kind: str) -> str | None:
        return self.config.NOTIFY_START_URL if kind == "start" else self.config.NOTIFY_STOP_URL

    def pending(self, status: dict[str, Any]) -> bool:
        """Whether a started workflow still has a notification to send (the backstop keeps it unsettled)."""
        if not status.get("dateStarted"):
            return False
        notified = status.get("notifications") or {}
        return any(self.url(kind) and kind not in notified for kind in notify.KINDS)

    def ensure(self, body: dict[str, Any], workflow: Workflow, kind: str) -> asyncio.Task[str] | None:
        """Start delivering `kind` unless its result is recorded in `body` or a delivery is on its way.

        The stop notification waits for a start one on its way: it never
        overtakes it. Returns the delivery's task (None when there is nothing to do).
        """
        url = self.url(kind)
        if not url or recorded(body, kind):
            return None
        uid = _uid(body)
        task = self._in_flight.get((uid, kind))
        if task is not None:
            return task
        after = self._in_flight.get((uid, "start")) if kind == "stop" else None
        task = asyncio.create_task(self._run(body, workflow, kind, url, after), name=f"notify-{kind}-{uid}")
        self._in_flight[(uid, kind)] = task
        task.add_done_callback(lambda done: _log_failure(kind, body["metadata"]["name"], done))
        return task

    async def before_delete(self, body: dict[str, Any], workflow: Workflow) -> None:
        """The Workflow is being deleted: once the start notification is settled, send the stop one if it was delivered.

        `body` may predate the record of a start delivery that ended a moment
        ago; the Workflow is read again then, rather than kept in memory.
        """
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        start = self._in_flight.get((_uid(body), "start"))
        if start is not None:
            result: str | None = await asyncio.shield(start)
        else:
            result = recorded(body, "start") or recorded(await self.kube.get_workflow(namespace, name), "start")
        if result == "delivered":
            task = self.ensure(body, workflow, "stop")
            if task is not None:
                await asyncio.shield(task)

    async def close(self) -> None:
        """Stop the deliveries on their way (a successor sends them again, with the same keys)."""
        tasks = list(self._in_flight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(
        self, body: dict[str, Any], workflow: Workflow, kind: str, url: str, after: asyncio.Task[str] | None
    ) -> str:
        """One delivery; it is forgotten as it ends (its record, if any, is in the status by then)."""
        try:
            return await self._send(body, workflow, kind, url, after)
        finally:
            key = (_uid(body), kind)
            if self._in_flight.get(key) is asyncio.current_task():
                del self._in_flight[key]

    async def _send(
        self, body: dict[str, Any], workflow: Workflow, kind: str, url: str, after: asyncio.Task[str] | None
    ) -> str:
        name = body["metadata"]["name"]
        key = notify.idempotency_key(_uid(body), kind)
        with logs.bound(workflow=name):
            if after is not None:
                await asyncio.shield(after)  # the stop notification never overtakes the start one
            # The intent, in a patch of its own; the answer is the Workflow as it is now.
            current = await self._patch(body, {"notifying": {kind: key}})
            if current is None or _uid(current) != _uid(body):
                log.info(f"{kind} notification for {name} not sent: the Workflow is gone", workflow=name)
                return "gone"
            if done := recorded(current, kind):
                # Recorded since `body` was read (a delivery that ended meanwhile): nothing to send.
                await self._patch(body, {"notifying": {kind: None}})
                return done
            if intended(body, kind) == key:
                log.info(
                    f"{kind} notification for {name}: a previous attempt may have reached the receiver; "
                    f"sending again with the same {notify.IDEMPOTENCY_HEADER}",
                    workflow=name,
                )
            payload = notify.payload(workflow, self.config.OPERATOR_PRIVATE_KEY, key)
            result = await notify.deliver(url, payload, kind=kind, deadline=self.deadline, gate=self._window)
            try:
                # The result, in a patch of its own, at once: the gap a crash can fall in is this call.
                await self._record(body, kind, result)
            finally:
                self._window.release()
            if result == "delivered":
                log.info(f"{kind} notification for {name} delivered", workflow=name)
            else:
                log.warning(f"{kind} notification for {name} not delivered: {result}", workflow=name)
            return result

    async def _patch(self, body: dict[str, Any], status: dict[str, Any]) -> dict[str, Any] | None:
        """A status patch of the Workflow of `body`: its answer (None if it is gone), told to `on_write`."""
        stored = await self.kube.patch_workflow_status(body["metadata"]["namespace"], body["metadata"]["name"], status)
        if stored is not None and _uid(stored) == _uid(body):
            self.on_write(body, stored)
        return stored

    async def _record(self, body: dict[str, Any], kind: str, result: str) -> None:
        """Record a result, patiently (an unrecorded delivery is sent again), until recorded or the Workflow is gone."""
        name = body["metadata"]["name"]
        pause, longest = RECORD_RETRY_SECONDS
        while True:
            try:
                await self._patch(body, {"notifications": {kind: result}, "notifying": {kind: None}})
                return
            except TransientError as exc:
                log.warning(f"{kind} notification for {name}: its result not recorded yet ({exc}); retrying")
            except PermanentError as exc:
                log.error(f"{kind} notification for {name}: the API server refused its record: {exc}", workflow=name)
                return
            await asyncio.sleep(pause)
            pause = min(pause * 2, longest)


def _log_failure(kind: str, name: str, task: asyncio.Task[str]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        # The engine's next pass sets out again (with the same key), once the API server takes the intent.
        log.warning(f"{kind} notification for {name} not sent: {type(exc).__name__}: {exc}", workflow=name)


def _uid(body: dict[str, Any]) -> str:
    """The Workflow's uid (an API server always sets one); its namespace/name where none is set."""
    meta = body["metadata"]
    return str(meta.get("uid") or f"{meta.get('namespace')}/{meta['name']}")
