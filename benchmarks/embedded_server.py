"""
The embedded cluster in a process of its own, for ``benchmarks/transitions.py``.

    python benchmarks/embedded_server.py --kubeconfig K --record R [--pod-seconds 0.2]

Serves the embedded API server (operator_engine/devcluster) with a Job
controller whose pods last ``--pod-seconds`` (0: they end at once), so that
the operator under test runs in another process and what the benchmark
measures is the operator's cost, not the test double's. It appends, as JSON
lines flushed every 0.1 s to ``--record``, on the monotonic clock (one clock
for every process of the machine):

* ``{"r": [time, method, path, watch, status, user_agent]}``: every HTTP request the server answered;
* ``{"wf": name, "t": time}``: a Workflow was created (committed);
* ``{"job": name, "t": time}``: a Job was created;
* ``{"pod_end": job name, "t": time}``: a Job's pod ended (the runtime returned);
* ``{"done": name, "t": time}``: a Workflow's status says ``cleanedUp`` (its last step).

It prints ``ready <url>`` once the kubeconfig is written, and stops on SIGTERM/SIGINT after a last flush.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from operator_engine.devcluster import EmbeddedCluster, Outcome, Result, ScriptedRuntime  # noqa: E402
from operator_engine.devcluster.resources import JOBS, WORKFLOWS  # noqa: E402

#: What the publish pod says it uploaded (the operator reads it from the termination message).
PUBLISHED = json.dumps({"algologUrl": "a", "configlogUrl": "c", "publishlogUrl": "p", "outputsUrl": ["o"]})
FLUSH_SECONDS = 0.1


class Recorder:
    """Buffers record lines and appends them to the record file in batches (one write per flush)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.pending: list[dict[str, Any]] = []

    def note(self, line: dict[str, Any]) -> None:
        self.pending.append(line)

    def flush(self, requests: list[Any], since: int) -> int:
        """Write the pending lines and the request-log entries from ``since``; the new request-log position."""
        lines = [
            json.dumps({"r": [r.time, r.method, r.path, r.query.get("watch") in ("true", "1"), r.status, r.user_agent]})
            for r in requests[since:]
        ]
        lines.extend(json.dumps(line) for line in self.pending)
        self.pending.clear()
        if lines:
            self.out.write("\n".join(lines) + "\n")
            self.out.flush()
        return len(requests)


class TimingRuntime(ScriptedRuntime):
    """Pods that last a fixed time; notes when each Job's pod ended."""

    def __init__(self, seconds: float, recorder: Recorder) -> None:
        super().__init__(default=Outcome(duration=seconds))
        self.script("*-publish-job", Outcome(duration=seconds, message=PUBLISHED))
        self.recorder = recorder

    async def run(self, pod: dict[str, Any], job: dict[str, Any]) -> Result:
        result = await super().run(pod, job)
        self.recorder.note({"pod_end": job["metadata"]["name"], "t": time.monotonic()})
        return result


async def follow(cluster: EmbeddedCluster, recorder: Recorder) -> None:
    """Workflow and Job creations and Workflow ends, from the server's change stream."""
    done: set[str] = set()
    async for event in cluster.api.follow(cluster.api.resource_version):
        name = event.object["metadata"]["name"]
        if event.spec.key == JOBS.key and event.type == "ADDED":
            recorder.note({"job": name, "t": time.monotonic()})
        elif event.spec.key == WORKFLOWS.key:
            if event.type == "ADDED":
                recorder.note({"wf": name, "t": time.monotonic()})
            if name not in done and (event.object.get("status") or {}).get("cleanedUp"):
                done.add(name)
                recorder.note({"done": name, "t": time.monotonic()})


async def serve(pod_seconds: float, kubeconfig: Path, record: Path, namespace: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    with record.open("w", encoding="utf-8") as out:
        recorder = Recorder(out)
        async with EmbeddedCluster(namespace=namespace, runtime=TimingRuntime(pod_seconds, recorder)) as cluster:
            cluster.write_kubeconfig(kubeconfig)
            follower = asyncio.create_task(follow(cluster, recorder))
            print(f"ready {cluster.url}", flush=True)
            position = 0
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), FLUSH_SECONDS)
                except TimeoutError:
                    pass
                position = recorder.flush(cluster.request_log, position)
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
            recorder.flush(cluster.request_log, position)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--pod-seconds", type=float, default=0.2, help="how long each pod runs (0: instant)")
    parser.add_argument("--kubeconfig", type=Path, required=True, help="write the cluster's kubeconfig here")
    parser.add_argument("--record", type=Path, required=True, help="append the JSON-lines record here")
    parser.add_argument("--namespace", default="ocean-compute")
    args = parser.parse_args()
    asyncio.run(serve(args.pod_seconds, args.kubeconfig, args.record, args.namespace))


if __name__ == "__main__":
    main()
