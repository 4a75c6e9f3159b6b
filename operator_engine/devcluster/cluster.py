"""
The embedded cluster: API server, garbage collector and job controller, on one local port.

    async with EmbeddedCluster(namespace='ocean-compute') as cluster:
        cluster.runtime.script('wf1-algorithm-job', Outcome(exit_code=1, message='boom'))
        ...  # point kopf / kubernetes / kubectl at cluster.url
        job = await cluster.wait_for('job', 'wf1-algorithm-job', lambda j: j.get('status', {}).get('failed'))

For synchronous callers and subprocess-based operators, run it in a thread:

    with EmbeddedCluster.start_in_thread() as handle:
        handle.write_kubeconfig('/tmp/kubeconfig')
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import pathlib
import threading
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

import kmock
import yaml

from operator_engine.devcluster.apiserver import ApiError, ApiServer, FaultInjector, RequestRecord
from operator_engine.devcluster.controllers import GarbageCollector, JobController
from operator_engine.devcluster.resources import NAMESPACES, ResourceSpec
from operator_engine.devcluster.runtime import Runtime, ScriptedRuntime

__all__ = ["EmbeddedCluster", "ThreadedCluster", "kubeconfig"]

T = TypeVar("T")


def kubeconfig(url: str, namespace: str) -> dict[str, Any]:
    """A kubeconfig for a server without auth, with ``namespace`` as the context's default."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": "devcluster", "cluster": {"server": url}}],
        "users": [{"name": "devcluster", "user": {}}],
        "contexts": [
            {"name": "devcluster", "context": {"cluster": "devcluster", "user": "devcluster", "namespace": namespace}}
        ],
        "current-context": "devcluster",
    }


class EmbeddedCluster:
    """
    An in-process stand-in for a Kubernetes cluster, for tests and ``operator-engine dev``/``demo``.

    The helpers (:meth:`get`, :meth:`list`, :meth:`create`, :meth:`delete`,
    :meth:`wait_for`) act on the store directly: never faulted, never logged.
    """

    def __init__(
        self,
        namespace: str = "ocean-compute",
        *,
        runtime: Runtime | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        clock: Callable[[], datetime.datetime] | None = None,
    ) -> None:
        self.namespace = namespace
        self.runtime: Runtime = runtime if runtime is not None else ScriptedRuntime()
        self.api = ApiServer(clock=clock) if clock is not None else ApiServer()
        self.runtime.attach(self.api)
        self._host = host
        self._port = port
        self._server: kmock.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Self:
        await self._stack.enter_async_context(self.api)
        self._server = await self._stack.enter_async_context(kmock.Server(self.api, host=self._host, port=self._port))
        self._stack.push_async_callback(self._stop_controllers)
        self.api.create(NAMESPACES, {"metadata": {"name": "default"}})
        if self.namespace != "default":
            self.api.create(NAMESPACES, {"metadata": {"name": self.namespace}})
        for name, controller in (
            ("garbage-collector", GarbageCollector(self.api)),
            ("job-controller", JobController(self.api, self.runtime)),
        ):
            self._tasks.append(asyncio.create_task(controller.run(), name=name))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()

    async def _stop_controllers(self) -> None:
        # End the watches first (they would otherwise keep the HTTP server's
        # shutdown waiting), then stop the controllers and surface their crashes.
        self.api.close()
        for task in self._tasks:
            task.cancel()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            raise ExceptionGroup("embedded cluster controllers crashed", errors)

    # ------------------------------------------------------------------ addresses

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        if self._server is None:
            raise RuntimeError("the cluster is not running")
        return str(self._server.url).rstrip("/")

    @property
    def request_log(self) -> list[RequestRecord]:
        return self.api.request_log

    @property
    def faults(self) -> FaultInjector:
        return self.api.faults

    def write_kubeconfig(self, path: str | pathlib.Path) -> pathlib.Path:
        """Write a kubeconfig usable by kubectl, kopf and the kubernetes client."""
        path = pathlib.Path(path)
        path.write_text(yaml.safe_dump(kubeconfig(self.url, self.namespace)))
        return path

    # ------------------------------------------------------------------ store helpers

    def spec(self, kind: str) -> ResourceSpec:
        """A resource by kind/plural/singular/short name: ``'job'``, ``'Pod'``, ``'wf'``."""
        return self.api.spec_for(kind)

    async def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """The object, or None if there is none."""
        try:
            return self.api.get(self.spec(kind), namespace or self.namespace, name)
        except ApiError as e:
            if e.code == 404:
                return None
            raise

    async def list(
        self,
        kind: str,
        labels: str | dict[str, str] | None = None,
        fields: str | None = None,
        namespace: str | None = None,
    ) -> list[dict[str, Any]]:
        """Objects of a kind in the cluster's namespace; ``labels`` as a selector or a dict of equalities."""
        if isinstance(labels, dict):
            labels = ",".join(f"{k}={v}" for k, v in labels.items())
        return self.api.list(self.spec(kind), namespace or self.namespace, labels, fields)

    async def create(self, manifest: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        """Create an object from a manifest; the resource comes from its ``kind``."""
        spec = self.spec(manifest["kind"])
        return self.api.create(spec, manifest, (namespace or self.namespace) if spec.namespaced else None)

    async def delete(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        return self.api.delete(self.spec(kind), namespace or self.namespace, name)

    async def wait_for(
        self,
        kind: str,
        name: str,
        predicate: Callable[[dict[str, Any] | None], Any] = lambda obj: obj is not None,
        timeout: float = 10.0,
        namespace: str | None = None,
    ) -> dict[str, Any] | None:
        """
        Wait until ``predicate(object or None)`` is truthy; returns that object.

        Event-driven: re-checks after each committed change, never polls.
        """
        async with asyncio.timeout(timeout):
            since = self.api.resource_version
            obj = await self.get(kind, name, namespace)
            if predicate(obj):
                return obj
            async for _ in self.api.follow(since):
                obj = await self.get(kind, name, namespace)
                if predicate(obj):
                    return obj
        raise RuntimeError("the cluster was closed while waiting")

    # ------------------------------------------------------------------ threads

    @classmethod
    def start_in_thread(cls, namespace: str = "ocean-compute", **kwargs: Any) -> ThreadedCluster:
        """Run a cluster on its own event loop in a daemon thread; returns once it serves."""
        handle = ThreadedCluster(cls(namespace, **kwargs))
        handle.start()
        return handle


class ThreadedCluster:
    """A handle on an :class:`EmbeddedCluster` running in a background thread."""

    def __init__(self, cluster: EmbeddedCluster) -> None:
        self.cluster = cluster
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="devcluster", daemon=True)

    @property
    def url(self) -> str:
        return self.cluster.url

    def write_kubeconfig(self, path: str | pathlib.Path) -> pathlib.Path:
        return self.cluster.write_kubeconfig(path)

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the embedded cluster did not start")
        if self._error is not None:
            raise RuntimeError("the embedded cluster failed to start") from self._error

    def call(self, fn: Callable[[EmbeddedCluster], Awaitable[T]], timeout: float = 30.0) -> T:
        """Run ``await fn(cluster)`` on the cluster's loop, e.g. ``handle.call(lambda c: c.get('job', 'x'))``."""
        assert self._loop is not None

        async def invoke() -> T:
            return await fn(self.cluster)

        coro: Coroutine[Any, Any, T] = invoke()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        if self._error is not None:
            raise RuntimeError("the embedded cluster failed") from self._error

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # reported to the starting/stopping thread
            self._error = e
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with self.cluster:
            self._ready.set()
            await self._stop.wait()
