"""Stage-transition latency and API requests per workflow, on the embedded cluster.

Runs N workflows through the real operator (in-process, its own thread and
event loop) against the embedded API server, whose Job controller runs each
pod for a fixed time, and prints:
- the delay from a stage pod's end to the creation of the next stage's Job;
- API requests the operator made per workflow (from the server's request log).

    .venv/bin/python benchmarks/transitions.py [--workflows 20] [--max-jobs 5]

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


async def main(count: int, max_jobs: int) -> None:
    runtime = TimingRuntime()
    runtime.script("*-publish-job", Outcome(duration=0.2, message=PUBLISHED))
    async with EmbeddedCluster(runtime=runtime) as cluster:
        workdir = Path(tempfile.mkdtemp(prefix="oe-bench-"))
        os.environ.update({"KUBECONFIG": str(cluster.write_kubeconfig(workdir / "kubeconfig")),
                           "maxJobs": str(max_jobs), "LOG_LEVEL": "WARNING",
                           "METRICS_PORT": "0"})  # no /metrics: 9100 may be taken
        import kopf

        import operator_engine.operator_main  # noqa: F401

        stop, ready = threading.Event(), threading.Event()
        thread = threading.Thread(target=lambda: asyncio.run(kopf.operator(
            standalone=True, namespaces=["ocean-compute"], clusterwide=False, stop_flag=stop, ready_flag=ready)))
        thread.start()
        await asyncio.to_thread(ready.wait, 30)
        await asyncio.sleep(1)
        first = len(cluster.request_log)
        started = time.monotonic()
        names = [f"bench-{i:03d}" for i in range(count)]
        for name in names:
            await cluster.create(workflow(name))
        for name in names:
            await cluster.wait_for("wf", name, lambda o: bool(o and (o.get("status") or {}).get("cleanedUp")),
                                   timeout=600)
        elapsed = time.monotonic() - started
        log = cluster.request_log[first:]
        stop.set()
        await asyncio.to_thread(thread.join, 30)

    created = {r.body["metadata"]["name"]: r.time for r in log
               if r.method == "POST" and r.path.endswith("/jobs") and r.status == 201 and isinstance(r.body, dict)}
    delays = []
    for name in names:
        for previous, following in (("configure", "algorithm"), ("algorithm", "publish")):
            delays.append(created[f"{name}-{following}-job"] - runtime.ended[f"{name}-{previous}-job"])
    operator_requests = [r for r in log if not r.path.endswith("/events")]
    print(f"workflows: {count}, maxJobs: {max_jobs}, wall time: {elapsed:.2f} s "
          f"({count / elapsed:.2f} workflows/s with 0.2 s pods)")
    print(f"stage transition (pod end -> next Job created): median {statistics.median(delays) * 1000:.0f} ms, "
          f"p95 {percentile(delays, 0.95) * 1000:.0f} ms, max {max(delays) * 1000:.0f} ms "
          f"(the original engine polled every 5000 ms)")
    print(f"API requests per workflow: {len(operator_requests) / count:.1f} "
          f"(+ {(len(log) - len(operator_requests)) / count:.1f} Event posts)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=20)
    parser.add_argument("--max-jobs", type=int, default=5)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.workflows, arguments.max_jobs))
