"""Admission and stage-transition latency, throughput, API requests and memory of the operator under load.

Runs N workflows at once through the real operator (``operator-engine run``,
a process of its own) and prints:

- admission latency: a Workflow's creation -> its configure Job's creation;
- stage-transition latency: a stage pod's end -> the next stage's Job's creation
  (configure -> algorithm, algorithm -> publish), p50/p95/p99;
- workflows completed per second (first creation -> last ``cleanedUp``);
- API requests per workflow by verb and resource, Events and watch streams apart;
- the operator's peak RSS (``VmHWM`` of its process) and CPU time.

``--control-plane embedded`` (default): the embedded API server in a process
of its own (benchmarks/embedded_server.py), whose Job controller runs each pod
for ``--pod-seconds`` (0: instant); times and requests come from that
server's record (request log, change stream), on the machine's monotonic clock.

``--control-plane real``: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and the process node (operator_engine/devcluster/realstack.py;
binaries from scripts/control-plane.sh or KUBEBUILDER_ASSETS), the operator as
its ServiceAccount, the real pod programs (``--pod-seconds`` does not apply);
times come from watches, requests from the API server's audit log.
``--control-plane both`` runs one after the other.

    .venv/bin/python benchmarks/transitions.py --workflows 200 --pod-seconds 0.2 [--json]

A script that prints numbers, not a test: the numbers vary with the machine.
See docs/BENCHMARKS.md for the figures and the exact commands behind them.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NAMESPACE = "ocean-compute"
#: The benchmark's own requests carry this User-Agent; every other request to the embedded server is the operator's.
BENCH_AGENT = "operator-engine-benchmark"
WORKFLOWS_PATH = f"/apis/oceanprotocol.com/v1alpha/namespaces/{NAMESPACE}/workflows"
STAGES = ("configure", "algorithm", "publish")
START_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0


def job_name(workflow: str, stage: str) -> str:
    """The operator's name for a stage's Job (docs/contract.md)."""
    return f"{workflow}-{stage}-job"


def workflow(name: str) -> dict[str, Any]:
    """The sample Workflow (k8s_install/workflow-1.yaml) under another name."""
    body = yaml.safe_load((ROOT / "k8s_install" / "workflow-1.yaml").read_text())
    body["metadata"]["name"] = name
    body["metadata"]["labels"]["workflow"] = name
    return body


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (the smallest value with at least q of the values at or below it)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


@dataclass
class Result:
    """What one run measured (``--json`` prints it as one object)."""

    control_plane: str
    workflows: int
    max_jobs: int
    pod_seconds: float | None
    completed: int = 0
    timed_out: bool = False
    elapsed_s: float = 0.0
    workflows_per_second: float = 0.0
    admission: list[float] = field(default_factory=list)  # seconds
    transitions: list[float] = field(default_factory=list)  # seconds
    requests: collections.Counter[str] = field(default_factory=collections.Counter)  # "verb resource" -> count
    peak_rss_mb: float | None = None
    operator_cpu_s: float | None = None
    server_cpu_s: float | None = None
    watch_streams: int | None = None  # opened since the operator's start; None: counted with the requests
    # --notify: the POSTs a loopback receiver got, their distinct idempotency keys, and when the last came
    # (seconds from the first creation); None without --notify.
    notification_posts: int | None = None
    notification_keys: int | None = None
    notifications_done_s: float | None = None
    workdir: str = ""

    def summary(self) -> dict[str, Any]:
        per = max(self.completed, 1)
        watches = sum(n for key, n in self.requests.items() if key.startswith("watch "))
        streams = watches if self.watch_streams is None else self.watch_streams
        events = sum(n for key, n in self.requests.items() if key.split(" ")[1].startswith("events"))
        other = sum(self.requests.values()) - watches - events
        return {
            "control_plane": self.control_plane,
            "workflows": self.workflows,
            "max_jobs": self.max_jobs,
            "pod_seconds": self.pod_seconds,
            "completed": self.completed,
            "timed_out": self.timed_out,
            "elapsed_s": round(self.elapsed_s, 2),
            "workflows_per_second": round(self.workflows_per_second, 2),
            "admission_p50_ms": ms(percentile(self.admission, 0.50)),
            "admission_p95_ms": ms(percentile(self.admission, 0.95)),
            "admission_p99_ms": ms(percentile(self.admission, 0.99)),
            "transition_p50_ms": ms(percentile(self.transitions, 0.50)),
            "transition_p95_ms": ms(percentile(self.transitions, 0.95)),
            "transition_p99_ms": ms(percentile(self.transitions, 0.99)),
            "transition_max_ms": ms(max(self.transitions, default=None)),
            "api_requests_per_workflow": round(other / per, 1),
            "event_requests_per_workflow": round(events / per, 1),
            "watch_streams": streams,
            "requests_by_verb_and_resource": dict(sorted(self.requests.items())),
            "peak_rss_mb": self.peak_rss_mb,
            "operator_cpu_s": self.operator_cpu_s,
            "server_cpu_s": self.server_cpu_s,
            "notification_posts": self.notification_posts,
            "notification_keys": self.notification_keys,
            "notifications_done_s": self.notifications_done_s,
            "workdir": self.workdir,
        }

    def print(self) -> None:
        s = self.summary()
        pods = "the real pod programs" if s["pod_seconds"] is None else f"{s['pod_seconds']} s pods"
        print(
            f"[{self.control_plane}] {s['completed']}/{s['workflows']} workflows completed"
            f"{' (TIMED OUT)' if s['timed_out'] else ''}, maxJobs {s['max_jobs']}, {pods}, "
            f"{s['elapsed_s']} s: {s['workflows_per_second']} workflows/s"
        )
        print(
            f"[{self.control_plane}] admission (created -> configure Job): p50 {s['admission_p50_ms']} ms, "
            f"p95 {s['admission_p95_ms']} ms, p99 {s['admission_p99_ms']} ms"
        )
        print(
            f"[{self.control_plane}] stage transition (pod end -> next Job): p50 {s['transition_p50_ms']} ms, "
            f"p95 {s['transition_p95_ms']} ms, p99 {s['transition_p99_ms']} ms, max {s['transition_max_ms']} ms "
            "(the original engine polled every 5000 ms)"
        )
        print(
            f"[{self.control_plane}] API requests per workflow: {s['api_requests_per_workflow']} "
            f"(+ {s['event_requests_per_workflow']} Event writes; {s['watch_streams']} watch streams in all)"
        )
        for key, count in s["requests_by_verb_and_resource"].items():
            print(f"[{self.control_plane}]   {key}: {count / max(self.completed, 1):.2f} per workflow ({count})")
        print(
            f"[{self.control_plane}] operator: peak RSS {s['peak_rss_mb']} MB, CPU {s['operator_cpu_s']} s"
            + (f"; API server CPU {s['server_cpu_s']} s" if s["server_cpu_s"] is not None else "")
        )
        if s["notification_posts"] is not None:
            print(
                f"[{self.control_plane}] notifications: {s['notification_posts']} POSTs, "
                f"{s['notification_keys']} distinct keys, "
                f"the last {s['notifications_done_s']} s after the first creation"
            )


# ---------------------------------------------------------------- measuring a process


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident set (VmHWM), while it runs."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time the process has used so far."""
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)
    return None


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it does not end in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)


def start_profiler(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling ``pid`` until it ends, writing collapsed stacks (one "frame;frame;... count" a line)."""
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid), "--rate", "50"]
        + ["--format", "raw", "--output", str(output), "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def top_functions(collapsed: Path, count: int = 12) -> tuple[list[tuple[float, str]], list[tuple[float, str]]]:
    """
    From py-spy's collapsed stacks: the functions most often running (self) and
    most often on the stack (inclusive, the event loop's and the interpreter's own frames left out),
    each as (percent of samples, function).
    """
    total, running, present = 0, collections.Counter[str](), collections.Counter[str]()
    for line in collapsed.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not samples.isdigit():
            continue  # a frame's text may hold a line break
        frames = stack.split(";")
        total += int(samples)
        running[frames[-1]] += int(samples)
        for frame in set(frames):
            if not any(plumbing in frame for plumbing in ("asyncio/", "<frozen", "threading.py", "runpy")):
                present[frame] += int(samples)

    def shares(counter: collections.Counter[str]) -> list[tuple[float, str]]:
        return [(round(100 * n / max(total, 1), 1), frame) for frame, n in counter.most_common(count)]

    return shares(running), shares(present)


# ---------------------------------------------------------------- the embedded API server's record


def classify(method: str, path: str, watch: bool) -> str:
    """``"verb resource"`` of a request, as RBAC and the audit log name them (``get pods/log``)."""
    from operator_engine.devcluster import request_attributes

    attributes = request_attributes(method, path, watch)
    if attributes is None:
        return f"{method.lower()} discovery"
    _, resource, verb, _ = attributes
    return f"{verb or method.lower()} {resource}"


class Record:
    """The embedded server's record file (see benchmarks/embedded_server.py), read as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.requests: list[list[Any]] = []
        self.created: dict[str, float] = {}  # workflow -> created
        self.jobs: dict[str, float] = {}  # job -> created
        self.pod_ends: dict[str, float] = {}  # job -> its pod ended
        self.done: dict[str, float] = {}  # workflow -> cleaned up

    def read(self) -> None:
        with self.path.open("rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        self._offset += len(chunk)
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        for raw in lines:
            line = json.loads(raw)
            if "r" in line:
                self.requests.append(line["r"])
            elif "wf" in line:
                self.created.setdefault(line["wf"], line["t"])
            elif "job" in line:
                self.jobs.setdefault(line["job"], line["t"])
            elif "pod_end" in line:
                self.pod_ends[line["pod_end"]] = line["t"]
            elif "done" in line:
                self.done.setdefault(line["done"], line["t"])

    def operator_watching(self) -> bool:
        """The operator has opened its watch of Workflows."""
        return any(
            watch and agent != BENCH_AGENT and path.endswith("/workflows")
            for _, _, path, watch, _, agent in self.requests
        )


def latencies(names: list[str], created: dict[str, float], jobs: dict[str, float], ended: dict[str, float]):  # type: ignore[no-untyped-def]
    """(admission delays, transition delays) in seconds, for the workflows where both ends were seen."""
    admission = [
        jobs[job_name(n, "configure")] - created[n] for n in names if n in created and job_name(n, "configure") in jobs
    ]
    transitions = []
    for name in names:
        for previous, following in zip(STAGES, STAGES[1:], strict=False):
            end, start = ended.get(job_name(name, previous)), jobs.get(job_name(name, following))
            if end is not None and start is not None:
                transitions.append(start - end)
    return admission, transitions


class Receiver:
    """A loopback notification receiver (--notify): what operator-service's start and stop endpoints get."""

    def __init__(self) -> None:
        self.posts: list[tuple[float, str]] = []  # (monotonic time, idempotency key)
        self.url = ""
        self._runner: Any = None

    async def start(self) -> None:
        import aiohttp.web

        async def receive(request: aiohttp.web.Request) -> aiohttp.web.Response:
            body = await request.json()
            self.posts.append((time.monotonic(), str(body.get("idempotencyKey"))))
            return aiohttp.web.json_response({})

        app = aiohttp.web.Application()
        app.router.add_post("/{kind}", receive)
        self._runner = aiohttp.web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = aiohttp.web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    def environment(self) -> dict[str, str]:
        return {
            "NOTIFY_START_URL": f"{self.url}/start",
            "NOTIFY_STOP_URL": f"{self.url}/stop",
            "OPERATOR_PRIVATE_KEY": "0x" + "11" * 32,  # a throwaway key: the receiver does not check signatures
        }

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def operator_environment(kubeconfig: Path, max_jobs: int) -> dict[str, str]:
    """This process's environment without any operator variable, then what the benchmark sets."""
    from operator_engine import config

    env = {k: v for k, v in os.environ.items() if k not in config.VARIABLE_NAMES}
    env.update(
        {
            "KUBECONFIG": str(kubeconfig),
            "OPERATOR_NAMESPACE": NAMESPACE,
            "maxJobs": str(max_jobs),
            "LOG_LEVEL": "WARNING",
            "METRICS_PORT": "0",  # no /metrics: 9100 may be taken
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


async def embedded(
    count: int,
    max_jobs: int,
    pod_seconds: float,
    timeout: float,
    workdir: Path,
    profile: bool = False,
    notify: bool = False,
) -> Result:
    """The embedded API server and the operator, each a process of its own; ``profile``: py-spy on both.

    ``notify``: the operator sends its start and stop notifications to a
    loopback receiver, and the run waits for them too.
    """
    import aiohttp

    result = Result("embedded", count, max_jobs, pod_seconds, workdir=str(workdir))
    receiver = Receiver() if notify else None
    if receiver is not None:
        await receiver.start()
    kubeconfig, record_path = workdir / "kubeconfig", workdir / "record.jsonl"
    with contextlib.ExitStack() as stack:
        server_log = stack.enter_context((workdir / "server.log").open("wb"))
        server = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "benchmarks" / "embedded_server.py"),
                f"--pod-seconds={pod_seconds}",
                f"--kubeconfig={kubeconfig}",
                f"--record={record_path}",
                f"--namespace={NAMESPACE}",
            ],
            stdout=subprocess.PIPE,
            stderr=server_log,
            stdin=subprocess.DEVNULL,
        )
        stack.callback(stop_process, server)
        assert server.stdout is not None
        line = (await asyncio.wait_for(asyncio.to_thread(server.stdout.readline), START_TIMEOUT)).decode()
        if not line.startswith("ready "):
            raise SystemExit(f"the embedded API server did not start; see {workdir}/server.log")
        url = line.split()[1]
        record = Record(record_path)

        operator_log = stack.enter_context((workdir / "operator.log").open("wb"))
        operator = subprocess.Popen(
            [sys.executable, "-m", "operator_engine", "run"],
            env={**operator_environment(kubeconfig, max_jobs), **(receiver.environment() if receiver else {})},
            stdout=operator_log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        stack.callback(stop_process, operator)
        deadline = time.monotonic() + START_TIMEOUT
        while not record.operator_watching():
            if operator.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the operator did not start watching Workflows; see {workdir}/operator.log")
            await asyncio.sleep(0.1)
            record.read()

        # From here: `operator-engine run` has exec'd kopf by now (py-spy does not follow an exec).
        if profile:
            profiled = [
                (p, start_profiler(p.pid, workdir / f"{n}.pyspy.txt"))
                for n, p in (("operator", operator), ("server", server))
            ]

            def stop_profiled() -> None:  # each process, then its profiler (which writes once its process ends)
                for process, profiler in profiled:
                    stop_process(process)
                    profiler.wait(STOP_TIMEOUT)

            stack.callback(stop_profiled)
        names = [f"bench-{i:04d}" for i in range(count)]
        started = time.monotonic()
        async with aiohttp.ClientSession(headers={"User-Agent": BENCH_AGENT}) as session:
            for name in names:
                async with session.post(url + WORKFLOWS_PATH, json=workflow(name)) as response:
                    if response.status != 201:
                        raise SystemExit(f"creating {name}: HTTP {response.status}: {await response.text()}")
        deadline = started + timeout

        def waiting() -> bool:
            notified = receiver is None or len({key for _, key in receiver.posts}) >= 2 * count
            return (len(record.done) < count or not notified) and time.monotonic() < deadline

        while waiting() and operator.poll() is None:
            await asyncio.sleep(0.2)
            record.read()
        result.timed_out = len(record.done) < count
        result.peak_rss_mb = peak_rss_mb(operator.pid)
        result.operator_cpu_s = cpu_seconds(operator.pid)
        result.server_cpu_s = cpu_seconds(server.pid)
        # The context's exit stops the operator, then the server (which flushes its record last).
    record.read()
    if receiver is not None:
        await receiver.stop()
        result.notification_posts = len(receiver.posts)
        result.notification_keys = len({key for _, key in receiver.posts})
        if receiver.posts:
            result.notifications_done_s = round(max(t for t, _ in receiver.posts) - started, 2)

    finished = [record.done[n] for n in names if n in record.done]
    result.completed = len(finished)
    result.elapsed_s = (max(finished) if finished else time.monotonic()) - started
    result.workflows_per_second = result.completed / result.elapsed_s if finished else 0.0
    result.admission, result.transitions = latencies(names, record.created, record.jobs, record.pod_ends)
    operator_requests = [r for r in record.requests if r[5] != BENCH_AGENT]
    result.requests = collections.Counter(
        classify(method, path, watch) for at, method, path, watch, _, _ in operator_requests if at >= started
    )
    # Watch streams are counted from the operator's start: it opens most of them before the first workflow.
    result.watch_streams = sum(1 for r in operator_requests if r[3])
    return result


# ---------------------------------------------------------------- the real control plane


class Observer:
    """
    Watches Workflows, Jobs and Pods of the namespace (as admin) and notes, on
    the monotonic clock, when each Workflow and Job first appeared, when each
    Job's pod was first seen terminated and when each Workflow was cleaned up.
    Both ends of a latency are seen the same way, so the watch delay is on both sides.
    """

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        from kubernetes import client, config

        api_client = config.new_client_from_config(config_file=str(kubeconfig))
        self.core, self.batch = client.CoreV1Api(api_client), client.BatchV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.namespace = namespace
        self.created: dict[str, float] = {}
        self.jobs: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.done: dict[str, float] = {}
        self.stopping = threading.Event()

        def workflows(namespace: str, **kwargs: Any) -> Any:
            return self.custom.list_namespaced_custom_object(
                "oceanprotocol.com", "v1alpha", namespace, "workflows", **kwargs
            )

        # The generic watch needs the call's docstring to know it streams objects.
        workflows.__doc__ = self.custom.list_namespaced_custom_object.__doc__
        self.threads = [
            threading.Thread(target=self._follow, args=(call, note), daemon=True)
            for call, note in (
                (self.batch.list_namespaced_job, self._job),
                (self.core.list_namespaced_pod, self._pod),
                (workflows, self._workflow),
            )
        ]

    def _job(self, job: dict[str, Any]) -> None:
        self.jobs.setdefault(job["metadata"]["name"], time.monotonic())

    def _workflow(self, wf: dict[str, Any]) -> None:
        now = time.monotonic()
        self.created.setdefault(wf["metadata"]["name"], now)
        if (wf.get("status") or {}).get("cleanedUp"):
            self.done.setdefault(wf["metadata"]["name"], now)

    def _pod(self, pod: dict[str, Any]) -> None:
        job = (pod["metadata"].get("labels") or {}).get("job-name")
        states = [s.get("state") or {} for s in (pod.get("status") or {}).get("containerStatuses") or []]
        if job and states and all("terminated" in s for s in states):
            self.ended.setdefault(job, time.monotonic())

    def _follow(self, call, note) -> None:  # type: ignore[no-untyped-def]
        from kubernetes import watch

        while not self.stopping.is_set():
            stream = watch.Watch()
            try:
                for event in stream.stream(call, self.namespace, timeout_seconds=5, _request_timeout=10):
                    note(event["raw_object"])
            except Exception:  # noqa: BLE001 - a dropped watch is re-opened; the benchmark's deadline bounds it
                time.sleep(0.2)

    def __enter__(self) -> Observer:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(15)


def audit_requests(audit_log: Path, offset: int, username: str) -> collections.Counter[str]:
    """``"verb resource"`` -> how many requests ``username`` made, from the audit log past byte ``offset``."""
    counts: collections.Counter[str] = collections.Counter()
    with audit_log.open("rb") as lines:
        lines.seek(offset)
        for line in lines:
            entry = json.loads(line)
            if entry["user"]["username"] != username:
                continue
            # A watch is logged when its response starts (and again when it ends): counted once, at its start.
            if entry["stage"] != ("ResponseStarted" if entry["verb"] == "watch" else "ResponseComplete"):
                continue
            ref = entry.get("objectRef") or {}
            resource = "/".join(filter(None, [ref.get("resource"), ref.get("subresource")])) or "discovery"
            counts[f"{entry['verb']} {resource}"] += 1
    return counts


async def real(count: int, max_jobs: int, timeout: float, workdir: Path) -> Result:
    """
    The real control plane (scripts/control-plane.sh), the process node, and the
    operator as its ServiceAccount in a process of its own: the real pod programs
    run (the sample Workflow's data from a local HTTP server).
    """
    from operator_engine.demo import load_sample_workflow, serve_demo_data
    from operator_engine.devcluster.controlplane import free_port
    from operator_engine.devcluster.realstack import NAMESPACE as REAL_NAMESPACE
    from operator_engine.devcluster.realstack import OPERATOR_ACCOUNT, running_real_stack

    result = Result("real", count, max_jobs, None, workdir=str(workdir))
    port = free_port()
    names = [f"bench-{i:04d}" for i in range(count)]
    async with (
        serve_demo_data(port),
        running_real_stack(workdir, operator_env={"maxJobs": str(max_jobs), "LOG_LEVEL": "WARNING"}) as stack,
    ):
        assert stack.operator is not None and stack.operator.proc is not None
        audit_log = stack.control_plane.audit_log
        with Observer(stack.kubeconfig, REAL_NAMESPACE) as observer:
            offset = audit_log.stat().st_size
            started = time.monotonic()
            for name in names:
                body = load_sample_workflow(port)
                body["metadata"]["name"] = name
                body["metadata"].setdefault("labels", {})["workflow"] = name
                manifest = workdir / f"{name}.yaml"
                manifest.write_text(yaml.safe_dump(body))
                done = await asyncio.to_thread(stack.control_plane.kubectl, "apply", "-f", str(manifest))
                if done.returncode != 0:
                    raise SystemExit(f"kubectl apply {name}: {done.stderr.strip()}")
            deadline = started + timeout
            while len(observer.done) < count and time.monotonic() < deadline and stack.operator.alive():
                await asyncio.sleep(0.5)
            result.peak_rss_mb = peak_rss_mb(stack.operator.proc.pid)
            result.operator_cpu_s = cpu_seconds(stack.operator.proc.pid)
        account = f"system:serviceaccount:{REAL_NAMESPACE}:{OPERATOR_ACCOUNT}"
        result.requests = audit_requests(audit_log, offset, account)
        # Watch streams are counted from the operator's start: it opens most of them before the first workflow.
        result.watch_streams = sum(
            n for key, n in audit_requests(audit_log, 0, account).items() if key.startswith("watch ")
        )
    finished = [observer.done[n] for n in names if n in observer.done]
    result.completed = len(finished)
    result.timed_out = result.completed < count
    result.elapsed_s = (max(finished) if finished else time.monotonic()) - started
    result.workflows_per_second = result.completed / result.elapsed_s if finished else 0.0
    result.admission, result.transitions = latencies(names, observer.created, observer.jobs, observer.ended)
    return result


# ---------------------------------------------------------------- the command line


async def main(arguments: argparse.Namespace) -> list[Result]:
    max_jobs = arguments.max_jobs or arguments.workflows
    results = []
    if arguments.control_plane in ("embedded", "both"):
        workdir = Path(tempfile.mkdtemp(prefix="oe-bench-"))
        results.append(
            await embedded(
                arguments.workflows,
                max_jobs,
                arguments.pod_seconds,
                arguments.timeout,
                workdir,
                arguments.profile,
                arguments.notify,
            )
        )
        if arguments.profile:
            for process in ("operator", "server"):
                for title, rows in zip(
                    ("running", "on the stack"), top_functions(workdir / f"{process}.pyspy.txt"), strict=True
                ):
                    print(f"py-spy, {process}, share of samples {title}:", file=sys.stderr)
                    for share, frame in rows:
                        print(f"  {share:5.1f}%  {frame}", file=sys.stderr)
    if arguments.control_plane in ("real", "both"):
        workdir = Path(tempfile.mkdtemp(prefix="oe-bench-real-"))
        results.append(await real(arguments.workflows, max_jobs, arguments.timeout, workdir))
    return results


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=20, help="workflows in flight (all created at once)")
    parser.add_argument("--max-jobs", type=int, default=None, help="the operator's maxJobs (default: --workflows)")
    parser.add_argument(
        "--pod-seconds", type=float, default=0.2, help="how long each embedded pod runs; 0: instant (default 0.2)"
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds to wait for the workflows; then report what completed"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per control plane")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="embedded: sample the operator and the API server with py-spy (collapsed stacks in the run's "
        "directory) and print the functions most on the stack to stderr",
    )
    parser.add_argument(
        "--notify",
        action="store_true",
        help="embedded: the operator sends its start and stop notifications to a loopback receiver; the run "
        "also waits for them and reports when the last one came",
    )
    parser.add_argument(
        "--control-plane",
        choices=("embedded", "real", "both"),
        default="embedded",
        help="embedded (default): the project's own API server, in a process of its own; real: etcd, "
        "kube-apiserver, kube-controller-manager, kube-scheduler and the process node (binaries from "
        "scripts/control-plane.sh or KUBEBUILDER_ASSETS); both: one after the other",
    )
    return parser


if __name__ == "__main__":
    args = parser().parse_args()
    for run in asyncio.run(main(args)):
        if args.json:
            print(json.dumps(run.summary()))
        else:
            run.print()
