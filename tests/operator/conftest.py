"""
Fixtures of the operator's acceptance tests.

* ``cluster``: an :class:`EmbeddedCluster` on the test's event loop, with a
  :class:`TimedRuntime` (a ScriptedRuntime that also notes when each pod ended).
* ``history``: a follower of the cluster's change stream recording every
  Workflow status and every object creation/deletion, with timestamps.
* ``receiver``: an HTTP server on 127.0.0.1 (its own thread) that records the
  notifications with their headers; ``receiver.fail_first = K`` answers 503 to
  the first K, ``receiver.answers = [429, 400]`` answers those statuses in turn first.
* ``operator``: ``async with operator(**env) as op:`` runs the real operator
  (``operator_engine.operator_main`` through kopf) in a background thread of
  this process, configured by variables as a process would be (given in
  kopf's memo: this process's environment stays as it is), until the block ends.
* ``operator_process``: ``proc = await operator_process(**env)`` runs it as a
  ``kopf run`` subprocess (``proc.kill()`` is a hard SIGKILL;
  ``await proc.restart()``); all are killed at teardown.

Env values of ``None`` unset a variable. Every operator variable of docs/contract.md §3
is cleared first, so the process environment cannot leak into a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.server
import json
import os
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import rbac
from helpers import NS, ROOT, TEST_KEY, is_terminal, status, watch_started_since

from operator_engine import config as config_module
from operator_engine.devcluster import EmbeddedCluster, ScriptedRuntime, realstack
from operator_engine.render import load_checked_config

EXTRA_VARIABLES = ("OPERATOR_BACKSTOP_SECONDS",)
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0


# ---------------------------------------------------------------- the cluster


class TimedRuntime(ScriptedRuntime):
    """A ScriptedRuntime that also records when each Job's latest pod started and ended (time.monotonic())."""

    def __init__(self) -> None:
        super().__init__()
        self.start_times: dict[str, float] = {}
        self.finish_times: dict[str, float] = {}
        self.runs: dict[str, int] = {}  # job name -> how many pods ran

    async def execute(self, pod: dict[str, Any], job: dict[str, Any]) -> Any:
        name = job["metadata"]["name"]
        self.start_times[name] = time.monotonic()
        self.runs[name] = self.runs.get(name, 0) + 1
        try:
            return await super().execute(pod, job)
        finally:
            self.finish_times[name] = time.monotonic()


@pytest.fixture
async def cluster() -> AsyncIterator[EmbeddedCluster]:
    async with EmbeddedCluster(namespace=NS, runtime=TimedRuntime()) as running:
        yield running


@pytest.fixture(scope="session")
def rbac_usage() -> rbac.Usage:
    """What the operator requested from the API server over every test of the session."""
    return rbac.Usage()


@pytest.fixture(autouse=True)
def operator_stays_within_its_role(request: pytest.FixtureRequest, rbac_usage: rbac.Usage) -> Iterator[None]:
    """After each test that ran a cluster: every request the operator made is granted by its Role.

    The operator is the only HTTP client of the cluster here (the tests use the
    store directly), so the request log is what the operator would need on a
    real cluster; a verb missing from kubernetes/binding.yml fails the test
    that used it. tests/operator/test_least_privilege.py checks the converse.
    """
    if "cluster" not in request.fixturenames:
        yield
        return
    cluster: EmbeddedCluster = request.getfixturevalue("cluster")
    yield
    used = rbac.requested(list(cluster.request_log), lambda kind: cluster.spec(kind).plural)
    rbac_usage.add(request.node.nodeid, used)
    missing = rbac.refused(used, rbac.granted())
    assert not missing, f"the operator used what its Role does not grant: {rbac.describe(missing)}"


@pytest.fixture
def runtime(cluster: EmbeddedCluster) -> TimedRuntime:
    assert isinstance(cluster.runtime, TimedRuntime)
    return cluster.runtime


# ---------------------------------------------------------------- the history of changes


@dataclasses.dataclass(frozen=True)
class Change:
    rv: int
    time: float
    type: str  # ADDED | MODIFIED | DELETED
    plural: str
    name: str
    object: dict[str, Any]


class History:
    """Every change committed to the cluster since the fixture started, in commit order."""

    def __init__(self, cluster: EmbeddedCluster) -> None:
        self.cluster = cluster
        self.changes: list[Change] = []
        self._since = cluster.api.resource_version
        self._seen_rv = self._since
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="history")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _follow(self) -> None:
        async for event in self.cluster.api.follow(self._since):
            meta = event.object.get("metadata") or {}
            self.changes.append(
                Change(event.rv, time.monotonic(), event.type, event.spec.plural, meta.get("name", ""), event.object)
            )
            self._seen_rv = event.rv

    async def sync(self, timeout: float = 10.0) -> None:
        """Wait until every change committed so far has been recorded."""
        target = self.cluster.api.resource_version
        deadline = time.monotonic() + timeout
        while self._seen_rv < target:
            if self._task is not None and self._task.done():
                self._task.result()
                raise RuntimeError("the history follower ended")
            if time.monotonic() > deadline:
                raise TimeoutError("the history follower is behind")
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------ workflows

    def workflow_states(self, name: str | None = None) -> list[Change]:
        return [c for c in self.changes if c.plural == "workflows" and (name is None or c.name == name)]

    def codes(self, name: str) -> list[int]:
        """The distinct successive statusCode values the Workflow had (changes only)."""
        out: list[int] = []
        for change in self.workflow_states(name):
            if change.type == "DELETED":
                continue
            code = status(change.object).get("statusCode")
            if code is not None and (not out or out[-1] != code):
                out.append(code)
        return out

    def phases(self, name: str) -> list[str]:
        out: list[str] = []
        for change in self.workflow_states(name):
            phase = status(change.object).get("phase")
            if phase is not None and (not out or out[-1] != phase):
                out.append(phase)
        return out

    @staticmethod
    def admitted(obj: dict[str, Any]) -> bool:
        """Past admission and not terminal: what maxJobs limits."""
        st = status(obj)
        if is_terminal(obj):
            return False
        return st.get("phase") == "Running" or (st.get("statusCode") or 0) >= 10

    def max_admitted(self) -> tuple[int, list[str]]:
        """The largest number of simultaneously admitted workflows, and one moment's set of them."""
        current: dict[str, bool] = {}
        best: tuple[int, list[str]] = (0, [])
        for change in self.workflow_states():
            current[change.name] = change.type != "DELETED" and self.admitted(change.object)
            running = sorted(n for n, on in current.items() if on)
            if len(running) > best[0]:
                best = (len(running), running)
        return best

    def admission_order(self) -> list[str]:
        """Workflows in the order they first had a statusCode >= 10."""
        order: list[str] = []
        for change in self.workflow_states():
            if change.name not in order and (status(change.object).get("statusCode") or 0) >= 10:
                order.append(change.name)
        return order

    # ------------------------------------------------------------ other objects

    def added(self, plural: str) -> list[Change]:
        return [c for c in self.changes if c.plural == plural and c.type == "ADDED"]

    def states(self, plural: str, name: str) -> list[Change]:
        return [c for c in self.changes if c.plural == plural and c.name == name]


@pytest.fixture
async def history(cluster: EmbeddedCluster) -> AsyncIterator[History]:
    recorder = History(cluster)
    recorder.start()
    yield recorder
    await recorder.stop()


# ---------------------------------------------------------------- the notification receiver


@dataclasses.dataclass(frozen=True)
class Notification:
    path: str
    body: Any
    time: float
    status: int
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def key(self) -> str | None:
        """The Idempotency-Key header (docs/contract.md §4)."""
        return self.headers.get("idempotency-key")


class _ReceiverServer(http.server.ThreadingHTTPServer):
    """Counts its open connections: a request a killed client had sent is answered (or dropped) once none is left."""

    daemon_threads = True
    connections = 0
    _count_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._count_lock:
            self.connections += 1
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        try:
            super().shutdown_request(request)
        finally:
            with self._count_lock:
                self.connections -= 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a client killed mid-connection (the restart tests do that): nothing to report
        super().handle_error(request, client_address)


class Receiver:
    """Records POSTs on 127.0.0.1; answers ``answers`` in turn, then 503 to the first ``fail_first`` of them."""

    def __init__(self) -> None:
        self.records: list[Notification] = []
        self.fail_first = 0
        self.answers: list[int] = []
        self.hold: threading.Event | None = None  # when set: each request is recorded, then answered once it is set
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if len(raw) < length:
                    return  # the client went away mid-request (a killed operator): nothing was delivered
                try:
                    body: Any = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver._lock:
                    if receiver.answers:
                        code = receiver.answers.pop(0)
                    else:
                        code = 503 if len(receiver.records) < receiver.fail_first else 200
                    receiver.records.append(Notification(self.path, body, time.monotonic(), code, headers))
                    hold = receiver.hold
                if hold is not None:
                    hold.wait(60)
                answer = json.dumps({"ok": code == 200}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming; Receiver.idle's barrier)
                self.send_response(204)
                self.send_header("Connection", "close")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = _ReceiverServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="notify-receiver", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def start_url(self) -> str:
        return self.url + "/start"

    @property
    def stop_url(self) -> str:
        return self.url + "/stop"

    def accepted(self, path: str, job_id: str | None = None) -> list[Any]:
        """Bodies answered 200 on ``path`` ('/start' or '/stop'), optionally for one jobId."""
        with self._lock:
            records = list(self.records)
        return [
            r.body
            for r in records
            if r.path == path
            and r.status == 200
            and (job_id is None or (isinstance(r.body, dict) and r.body.get("jobId") == job_id))
        ]

    def all(self, path: str | None = None) -> list[Notification]:
        with self._lock:
            return [r for r in self.records if path is None or r.path == path]

    async def wait(self, path: str, job_id: str | None = None, count: int = 1, timeout: float = 60.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while len(found := self.accepted(path, job_id)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{count} notification(s) on {path} for {job_id or 'any job'} not received "
                    f"within {timeout:.0f} s; received: {self.all()}"
                )
            await asyncio.sleep(0.05)
        return found

    async def idle(self, timeout: float = 30.0) -> None:
        """Wait until no connection is open: what a killed client had sent is then recorded, or was dropped.

        A GET of our own first: connections are accepted in the order they came,
        so once it is answered every earlier one is accepted, and counted.
        """
        await asyncio.to_thread(lambda: urllib.request.urlopen(self.url + "/idle", timeout=timeout).close())
        deadline = time.monotonic() + timeout
        while self._server.connections:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the receiver still has {self._server.connections} connection(s) after {timeout} s"
                )
            await asyncio.sleep(0.02)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    server.start()
    yield server
    server.stop()


# ---------------------------------------------------------------- configuration


def operator_environment(
    cluster: EmbeddedCluster, receiver: Receiver, kubeconfig: Path, overrides: dict[str, Any]
) -> dict[str, str | None]:
    """The operator's variables: every docs/contract.md §3 variable unset, then our defaults, then ``overrides``."""
    env: dict[str, str | None] = {name: None for name in config_module.VARIABLE_NAMES}
    env.update(
        {
            "KUBECONFIG": str(kubeconfig),
            "OPERATOR_NAMESPACE": NS,
            "OPERATOR_PRIVATE_KEY": TEST_KEY,
            "NOTIFY_START_URL": receiver.start_url,
            "NOTIFY_STOP_URL": receiver.stop_url,
            "OPERATOR_BACKSTOP_SECONDS": "30",
            "LOG_LEVEL": "INFO",
            "METRICS_PORT": "0",  # off unless a test asks (9100 would clash between tests running at once)
        }
    )
    for key, value in overrides.items():
        env[key] = None if value is None else str(value)
    return env


# ---------------------------------------------------------------- the operator, in process


class InProcessOperator:
    """kopf running ``operator_engine.operator_main``'s handlers on its own event loop in a thread."""

    def __init__(self, cluster: EmbeddedCluster, memo: Any) -> None:
        self.cluster = cluster
        self.memo = memo
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="operator", daemon=True)

    def _main(self) -> None:
        import kopf

        try:
            asyncio.run(
                kopf.operator(
                    registry=kopf.get_default_registry(),
                    standalone=True,
                    namespaces=[NS],
                    clusterwide=False,
                    stop_flag=self._stop,
                    ready_flag=self._ready,
                    memo=self.memo,
                )
            )
        except BaseException as e:  # reported to the test
            self._error = e

    async def start(self) -> None:
        since = len(self.cluster.request_log)
        self._thread.start()
        deadline = time.monotonic() + READY_TIMEOUT
        while not (self._ready.is_set() and watch_started_since(self.cluster, since)):
            if not self._thread.is_alive():
                raise AssertionError(f"the operator ended at start: {self._error!r}") from self._error
            if time.monotonic() > deadline:
                raise AssertionError(f"the operator did not start watching workflows within {READY_TIMEOUT:.0f} s")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.to_thread(self._thread.join, STOP_TIMEOUT)
        if self._thread.is_alive():
            raise AssertionError(f"the operator did not stop within {STOP_TIMEOUT:.0f} s")

    @property
    def error(self) -> BaseException | None:
        return self._error

    def alive(self) -> bool:
        return self._thread.is_alive()

    def log(self) -> str:
        return ""  # kopf logs go to pytest's captured logging


OperatorFactory = Callable[..., contextlib.AbstractAsyncContextManager[InProcessOperator]]


@pytest.fixture
def operator(cluster: EmbeddedCluster, receiver: Receiver, tmp_path: Path) -> OperatorFactory:
    """``async with operator(maxJobs=2, ...) as op:`` — the real operator, in this process."""
    from operator_engine.operator_main import launch_memo  # registers the handlers, once

    kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig")

    @contextlib.asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[InProcessOperator]:
        env = operator_environment(cluster, receiver, kubeconfig, overrides)
        config = load_checked_config({k: v for k, v in env.items() if v is not None})
        runner = InProcessOperator(cluster, launch_memo(config, kubeconfig=str(kubeconfig)))
        await runner.start()
        try:
            yield runner
        finally:
            await runner.stop()
        if runner.error is not None:
            raise AssertionError(f"the operator crashed: {runner.error!r}") from runner.error

    return run


# ---------------------------------------------------------------- the operator, as a process


class OperatorProcess:
    """
    ``kopf run --standalone -m operator_engine.operator_main`` as a subprocess (realstack's
    :class:`~operator_engine.devcluster.realstack.OperatorProcess`): :meth:`start` returns once
    it watches the embedded cluster's workflows.
    """

    def __init__(self, cluster: EmbeddedCluster, env: dict[str, str], log_path: Path) -> None:
        self.cluster = cluster
        command = [sys.executable, "-m", "kopf", "run", "--standalone", f"--namespace={NS}"]
        self.process = realstack.OperatorProcess(env, log_path, [*command, "-m", "operator_engine.operator_main"], ROOT)

    async def start(self) -> None:
        since = len(self.cluster.request_log)
        self.process.start()
        deadline = time.monotonic() + READY_TIMEOUT
        while not watch_started_since(self.cluster, since):
            if not self.alive():
                code = self.process.proc.returncode if self.process.proc else None
                raise AssertionError(f"the operator process exited at start with {code}:\n{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the operator process did not start watching workflows within "
                    f"{READY_TIMEOUT:.0f} s:\n{self.log()[-4000:]}"
                )
            await asyncio.sleep(0.05)

    def kill(self) -> None:
        """A hard kill (SIGKILL): no clean-up, no finalizer, nothing flushed."""
        self.process.kill()

    async def restart(self) -> None:
        self.kill()
        await self.start()

    async def stop(self) -> None:
        """A graceful stop (SIGTERM), then SIGKILL if it hangs."""
        await asyncio.to_thread(self.process.stop)

    def alive(self) -> bool:
        return self.process.alive()

    def log(self) -> str:
        return self.process.log()


ProcessFactory = Callable[..., Awaitable[OperatorProcess]]


@pytest.fixture
async def operator_process(
    cluster: EmbeddedCluster, receiver: Receiver, tmp_path: Path
) -> AsyncIterator[ProcessFactory]:
    """``proc = await operator_process(maxJobs=2)`` — a started subprocess operator."""
    kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig")
    started: list[OperatorProcess] = []

    async def start(**overrides: Any) -> OperatorProcess:
        env = {
            k: v for k, v in os.environ.items() if k not in config_module.VARIABLE_NAMES and k not in EXTRA_VARIABLES
        }
        for key, value in operator_environment(cluster, receiver, kubeconfig, overrides).items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        env["PYTHONUNBUFFERED"] = "1"
        proc = OperatorProcess(cluster, env, tmp_path / f"operator-{len(started)}.log")
        started.append(proc)
        await proc.start()
        return proc

    yield start
    for proc in started:
        proc.kill()
