"""Stage-transition latency and API requests per workflow, on the embedded cluster and on a real control plane.

Runs N workflows through the real operator and prints:
- the delay from a stage pod's end to the creation of the next stage's Job;
- API requests the operator made per workflow.

``--control-plane embedded`` (default): the operator in-process (its own thread
and event loop) against the embedded API server, whose Job controller runs each
pod for a fixed 0.2 s; requests come from the server's request log.

``--control-plane real``: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and the process node (operator_engine/devcluster/realstack.py),
the operator as its ServiceAccount in a process of its own, the real pod
programs; pod ends and Job creations are seen by watches, requests are the
operator's ServiceAccount's lines in the API server's audit log.
``--control-plane both`` runs one after the other.

    .venv/bin/python benchmarks/transitions.py [--workflows 20] [--max-jobs 5] [--control-plane real]

A script that prints numbers, not a test: the numbers vary with the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from operator_engine.devcluster import EmbeddedCluster, Outcome, ScriptedRuntime  # noqa: E402

PUBLISHED = json.dumps({"algologUrl": "a", "configlogUrl": "c", "publishlogUrl": "p", "outputsUrl": ["o"]})


class TimingRuntime(ScriptedRuntime):
    """Records when each Job's pod ended (monotonic clock, as the request log)."""

    def __init__(self) -> None:
        super().__init__(default=Outcome(duration=0.2))
        self.ended: dict[str, float] = {}

    async def run(self, pod, job):  # type: ignore[no-untyped-def]
        result = await super().run(pod, job)
        self.ended[job["metadata"]["name"]] = time.monotonic()
        return result


def workflow(name: str) -> dict:
    body = yaml.safe_load((ROOT / "k8s_install" / "workflow-1.yaml").read_text())
    body["metadata"]["name"] = name
    body["metadata"]["labels"]["workflow"] = name
    return body


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Report:
    """What one run measured."""

    label: str
    count: int
    max_jobs: int
    elapsed: float
    delays: list[float]  # seconds from a stage pod's end to the next stage's Job
    operator_requests: int  # API requests the operator made, Event posts excepted
    event_posts: int
    pod_note: str

    def print(self) -> None:
        print(
            f"[{self.label}] workflows: {self.count}, maxJobs: {self.max_jobs}, wall time: {self.elapsed:.2f} s "
            f"({self.count / self.elapsed:.2f} workflows/s with {self.pod_note})"
        )
        print(
            f"[{self.label}] stage transition (pod end -> next Job created): "
            f"median {statistics.median(self.delays) * 1000:.0f} ms, "
            f"p95 {percentile(self.delays, 0.95) * 1000:.0f} ms, max {max(self.delays) * 1000:.0f} ms "
            f"(the original engine polled every 5000 ms)"
        )
        print(
            f"[{self.label}] API requests per workflow: {self.operator_requests / self.count:.1f} "
            f"(+ {self.event_posts / self.count:.1f} Event posts)"
        )


def transition_delays(names: list[str], created: dict[str, float], ended: dict[str, float]) -> list[float]:
    """For each workflow: configure's pod end -> algorithm's Job, algorithm's pod end -> publish's Job."""
    delays = []
    for name in names:
        for previous, following in (("configure", "algorithm"), ("algorithm", "publish")):
            delays.append(created[f"{name}-{following}-job"] - ended[f"{name}-{previous}-job"])
    return delays


async def embedded(count: int, max_jobs: int) -> Report:
    """The embedded cluster, the operator in-process, pods scripted to last 0.2 s."""
    runtime = TimingRuntime()
    runtime.script("*-publish-job", Outcome(duration=0.2, message=PUBLISHED))
    async with EmbeddedCluster(runtime=runtime) as cluster:
        workdir = Path(tempfile.mkdtemp(prefix="oe-bench-"))
        os.environ.update(
            {
                "KUBECONFIG": str(cluster.write_kubeconfig(workdir / "kubeconfig")),
                "maxJobs": str(max_jobs),
                "LOG_LEVEL": "WARNING",
                "METRICS_PORT": "0",
            }
        )  # no /metrics: 9100 may be taken
        import kopf

        import operator_engine.operator_main  # noqa: F401

        stop, ready = threading.Event(), threading.Event()
        thread = threading.Thread(
            target=lambda: asyncio.run(
                kopf.operator(
                    standalone=True, namespaces=["ocean-compute"], clusterwide=False, stop_flag=stop, ready_flag=ready
                )
            )
        )
        thread.start()
        await asyncio.to_thread(ready.wait, 30)
        await asyncio.sleep(1)
        first = len(cluster.request_log)
        started = time.monotonic()
        names = [f"bench-{i:03d}" for i in range(count)]
        for name in names:
            await cluster.create(workflow(name))
        for name in names:
            await cluster.wait_for(
                "wf", name, lambda o: bool(o and (o.get("status") or {}).get("cleanedUp")), timeout=600
            )
        elapsed = time.monotonic() - started
        log = cluster.request_log[first:]
        stop.set()
        await asyncio.to_thread(thread.join, 30)

    created = {
        r.body["metadata"]["name"]: r.time
        for r in log
        if r.method == "POST" and r.path.endswith("/jobs") and r.status == 201 and isinstance(r.body, dict)
    }
    operator_requests = [r for r in log if not r.path.endswith("/events")]
    return Report(
        "embedded",
        count,
        max_jobs,
        elapsed,
        transition_delays(names, created, runtime.ended),
        len(operator_requests),
        len(log) - len(operator_requests),
        "0.2 s pods",
    )


class Observer:
    """
    Watches Jobs and Pods of the namespace (as admin) and notes, on the monotonic
    clock, when each Job first appeared and when each Job's pod was first seen
    terminated. Both ends of a transition are seen the same way, so the watch
    delay is on both sides.
    """

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        from kubernetes import client, config

        api_client = config.new_client_from_config(config_file=str(kubeconfig))
        self.core, self.batch = client.CoreV1Api(api_client), client.BatchV1Api(api_client)
        self.namespace = namespace
        self.created: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self._follow, args=(call, note), daemon=True)
            for call, note in ((self.batch.list_namespaced_job, self._job), (self.core.list_namespaced_pod, self._pod))
        ]

    def _job(self, kind: str, job: dict) -> None:
        self.created.setdefault(job["metadata"]["name"], time.monotonic())

    def _pod(self, kind: str, pod: dict) -> None:
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
                    note(event["type"], event["raw_object"])
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


def audit_requests(audit_log: Path, offset: int, username: str) -> tuple[int, int]:
    """(requests, Event posts) that ``username`` made, from the audit log past byte ``offset``."""
    requests = events = 0
    with audit_log.open("rb") as lines:
        lines.seek(offset)
        for line in lines:
            entry = json.loads(line)
            if entry["stage"] != "ResponseComplete" or entry["user"]["username"] != username:
                continue
            if (entry.get("objectRef") or {}).get("resource") == "events":
                events += 1
            else:
                requests += 1
    return requests, events


async def real(count: int, max_jobs: int) -> Report:
    """
    The real control plane (scripts/control-plane.sh), the process node, and the
    operator as its ServiceAccount in a process of its own: the real pod programs
    run (the sample Workflow's data from a local HTTP server).
    """
    from operator_engine.demo import load_sample_workflow, serve_demo_data
    from operator_engine.devcluster.controlplane import free_port
    from operator_engine.devcluster.realstack import NAMESPACE, OPERATOR_ACCOUNT, running_real_stack

    workdir = Path(tempfile.mkdtemp(prefix="oe-bench-real-"))
    port = free_port()
    async with (
        serve_demo_data(port),
        running_real_stack(workdir, operator_env={"maxJobs": str(max_jobs), "LOG_LEVEL": "WARNING"}) as stack,
    ):
        audit_log = stack.control_plane.audit_log
        names = [f"bench-{i:03d}" for i in range(count)]
        with Observer(stack.kubeconfig, NAMESPACE) as observer:
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
            deadline = time.monotonic() + 600 + 30 * count
            for name in names:
                while True:
                    done = await asyncio.to_thread(
                        stack.control_plane.kubectl,
                        "get",
                        "wf",
                        name,
                        "-n",
                        NAMESPACE,
                        "-o",
                        "jsonpath={.status.cleanedUp}",
                    )
                    if done.stdout.strip() == "true":
                        break
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{name} was not cleaned up in time; see {workdir}/operator.log")
                    await asyncio.sleep(0.5)
            elapsed = time.monotonic() - started
        requests, events = audit_requests(audit_log, offset, f"system:serviceaccount:{NAMESPACE}:{OPERATOR_ACCOUNT}")
    return Report(
        "real",
        count,
        max_jobs,
        elapsed,
        transition_delays(names, observer.created, observer.ended),
        requests,
        events,
        "the real pod programs",
    )


async def main(count: int, max_jobs: int, control_plane: str) -> None:
    if control_plane in ("embedded", "both"):
        (await embedded(count, max_jobs)).print()
    if control_plane in ("real", "both"):
        (await real(count, max_jobs)).print()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=20)
    parser.add_argument("--max-jobs", type=int, default=5)
    parser.add_argument(
        "--control-plane",
        choices=("embedded", "real", "both"),
        default="embedded",
        help="embedded (default): the project's own API server; real: etcd, kube-apiserver, "
        "kube-controller-manager, kube-scheduler and the process node (binaries from "
        "scripts/control-plane.sh or KUBEBUILDER_ASSETS); both: one after the other",
    )
    arguments = parser.parse_args()
    asyncio.run(main(arguments.workflows, arguments.max_jobs, arguments.control_plane))
