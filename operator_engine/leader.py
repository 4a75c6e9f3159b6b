"""Leader election: of the operator's replicas, only the holder of a Lease acts.

The Deployment runs two replicas so that losing a node does not stop the
workflows; only one may act at a time, or two operators would create the same
Jobs and send the same notifications. The replicas compete for the
`coordination.k8s.io/v1` Lease `LEASE_NAME` in the operator's namespace, the
way client-go's leader election does:

* a free or expired Lease is taken with an update that names the Lease's
  resourceVersion (optimistic concurrency: of two replicas writing at once,
  the API server accepts one and answers 409 Conflict to the other);
* "expired" is judged on this replica's own clock: a holder's Lease is free
  once its record has not changed for `leaseDurationSeconds` since this
  replica first saw it, so clock skew between nodes does not matter;
* the leader renews every `RENEW_PERIOD` seconds; one that has not renewed
  for `RENEW_DEADLINE` seconds (shorter than the lease duration, so before
  anyone else may take the Lease) stops acting at once: `on_lost`, by
  default `hard_exit`, ends the process without running anything else, and
  Kubernetes restarts the container as a standby;
* a leader that stops gracefully releases the Lease (empty holder), so the
  standby takes over within a poll instead of a lease duration.

The election runs in threads of its own, so a busy operator event loop
neither delays a renewal nor the deadline check: one thread runs a small
event loop of its own with the operator's asyncio client (`kubernetes_asyncio`,
see operator_engine/kube.py), the other only watches the clock.
kopf's peering was not used: it pauses operators (a priority handshake over
its own cluster-wide or namespaced peering CRDs), rather than guaranteeing a
single active replica with a deadline (see the README, "Two replicas").
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException

log = logging.getLogger(__name__)

LEASE_NAME = "operator-engine-leader"
LEASE_DURATION = 10  # seconds another replica waits after the holder's last renewal
RENEW_DEADLINE = 6.0  # a leader that has not renewed for this long stops acting
RENEW_PERIOD = 2.0  # how often the leader renews
POLL_PERIOD = 1.0  # how often a standby looks at the Lease
REQUEST_TIMEOUT = 2.0  # per Lease request, so that a hung connection cannot outlast the deadline
LOST_EXIT_CODE = 75  # EX_TEMPFAIL: the process ends because it lost the Lease; it is restarted as a standby


def holder_identity() -> str:
    """Who holds the Lease: the pod's name (POD_NAME, from the downward API), else host name and process id."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def hard_exit() -> None:
    """Stop acting at once: no clean-up handler, no pending write may run after the Lease is lost."""
    message = "operator-engine: lost the leader Lease (not renewed in time); exiting so another replica takes over"
    log.critical(message)
    print(message, file=sys.stderr, flush=True)
    os._exit(LOST_EXIT_CODE)


def _now_micro() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class LeaderElector:
    """Competes for the Lease; calls `on_acquired` (from its thread) once it holds it, `on_lost` if it loses it.

    `api_client` makes the elector's API client (for example `kube.new_api_client`):
    it is called in the elector's own thread, on the event loop that client then uses.
    """

    def __init__(
        self,
        api_client: Callable[[], Awaitable[k8s.ApiClient]],
        namespace: str,
        identity: str,
        on_acquired: Callable[[], object],
        on_lost: Callable[[], None] = hard_exit,
        lease_name: str = LEASE_NAME,
    ) -> None:
        self.make_client = api_client
        self.api: k8s.CoordinationV1Api | None = None
        self.namespace = namespace
        self.identity = identity
        self.lease_name = lease_name
        self.on_acquired = on_acquired
        self.on_lost = on_lost
        self._leader = False
        self._renewed_at = 0.0  # time.monotonic() when the last successful renewal was sent
        self._observed: tuple[Any, ...] | None = None  # the other holder's record as last seen
        self._observed_at = 0.0
        self._release = True
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._threads = [
            threading.Thread(target=self._main, name="leader-election", daemon=True),
            threading.Thread(target=self._watchdog, name="leader-deadline", daemon=True),
        ]

    @property
    def is_leader(self) -> bool:
        with self._lock:
            return self._leader and time.monotonic() - self._renewed_at < RENEW_DEADLINE

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, release: bool = True) -> None:
        """Stop competing; a leader gives the Lease up so a standby need not wait for it to expire.

        Blocking (it waits for the elector's thread, which releases the Lease on its way out):
        from a coroutine, `await asyncio.to_thread(elector.stop)`.
        """
        with self._lock:
            self._release = release
            self._stop.set()
            loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # its loop has already ended
                loop.call_soon_threadsafe(wake.set)
        for thread in self._threads:
            if thread.is_alive():
                thread.join(REQUEST_TIMEOUT * 3)
        with self._lock:
            self._leader = False

    # --- the loops

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        wake = asyncio.Event()
        with self._lock:
            self._loop, self._wake = asyncio.get_running_loop(), wake
        if self._stop.is_set():
            return
        try:
            client = await self.make_client()
        except Exception as exc:  # no credentials: this replica never leads, and says why
            log.error(f"leader election cannot start: {type(exc).__name__}: {exc}")
            return
        self.api = k8s.CoordinationV1Api(client)
        try:
            while not self._stop.is_set():
                await self._attempt()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), RENEW_PERIOD if self._leader else POLL_PERIOD)
            with self._lock:
                was_leader, self._leader = self._leader, False
            if self._release and was_leader:
                await self._give_up()
        finally:
            await client.close()

    async def _attempt(self) -> None:
        leader = self._leader
        sent = time.monotonic()
        try:
            ok = await self._try_acquire_or_renew()
        except Exception as exc:  # the API server is unreachable or unwell: the deadline decides
            log.warning(f"leader election: {type(exc).__name__}: {exc}")
            ok = False
        if ok:
            with self._lock:
                if leader and not self._leader:
                    ok = False  # declared lost while this renewal was on its way: it stays lost
                else:
                    self._renewed_at = sent
                    self._leader = True
            if ok and not leader:
                log.info(f"became the leader ({self.identity}); acting from now on")
                self.on_acquired()
        elif leader and not self._stop.is_set():
            self._check_deadline()

    async def _give_up(self) -> None:
        try:
            lease = await self._get()
            if lease is not None and lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = None
                lease.spec.lease_duration_seconds = 1
                await self._replace(lease)
                log.info(f"released the leader Lease {self.lease_name}")
        except (ApiException, aiohttp.ClientError, OSError) as exc:
            log.warning(f"could not release the leader Lease {self.lease_name}: {exc}")

    def _watchdog(self) -> None:
        while not self._stop.wait(0.2):
            self._check_deadline()

    def _check_deadline(self) -> None:
        with self._lock:
            lost = self._leader and time.monotonic() - self._renewed_at >= RENEW_DEADLINE
            if lost:
                self._leader = False
        if lost and not self._stop.is_set():
            self.on_lost()

    # --- one attempt

    async def _try_acquire_or_renew(self) -> bool:
        assert self.api is not None
        lease = await self._get()
        now = _now_micro()
        if lease is None:
            body = k8s.V1Lease(
                metadata=k8s.V1ObjectMeta(name=self.lease_name, namespace=self.namespace),
                spec=self._spec(now, now, 0),
            )
            try:
                await self.api.create_namespaced_lease(self.namespace, body, _request_timeout=REQUEST_TIMEOUT)
            except ApiException as exc:
                if exc.status == 409:
                    return False  # another replica created it first
                raise
            return True
        spec = lease.spec or k8s.V1LeaseSpec()
        holder = spec.holder_identity
        if holder == self.identity:
            lease.spec = self._spec(spec.acquire_time or now, now, spec.lease_transitions or 0)
        else:
            if self._leader:
                # Ours until now, held by another (released by hand, or taken after we missed the
                # deadline): stop at once.
                with self._lock:
                    self._leader = False
                self.on_lost()
                return False
            if holder:
                record = (holder, spec.renew_time, spec.acquire_time, spec.lease_transitions)
                monotonic = time.monotonic()
                if record != self._observed:
                    self._observed, self._observed_at = record, monotonic
                    return False
                if monotonic - self._observed_at < (spec.lease_duration_seconds or LEASE_DURATION):
                    return False
            lease.spec = self._spec(now, now, (spec.lease_transitions or 0) + (1 if holder else 0))
        try:
            await self._replace(lease)  # carries the resourceVersion read above
        except ApiException as exc:
            if exc.status == 409:
                return False  # changed since read: someone renewed or took it
            raise
        return True

    def _spec(self, acquired: datetime.datetime, renewed: datetime.datetime, transitions: int) -> k8s.V1LeaseSpec:
        return k8s.V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=LEASE_DURATION,
            acquire_time=acquired,
            renew_time=renewed,
            lease_transitions=transitions,
        )

    async def _get(self) -> Any:
        assert self.api is not None
        try:
            return await self.api.read_namespaced_lease(
                self.lease_name, self.namespace, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def _replace(self, lease: Any) -> None:
        assert self.api is not None
        await self.api.replace_namespaced_lease(
            self.lease_name, self.namespace, lease, _request_timeout=REQUEST_TIMEOUT
        )
