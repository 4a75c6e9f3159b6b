"""Prometheus metrics, scraped over HTTP from the operator process while workflows run (README.md, Metrics).

The operator runs as a `kopf run` process with METRICS_PORT on a free port;
the test reads `/metrics` the way Prometheus does and parses it with
prometheus_client's own text parser. Every expected value is derived from
what the cluster and the notification receiver saw, not from the operator.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.request
from collections.abc import Callable

from conftest import ProcessFactory, Receiver, TimedRuntime
from helpers import (
    PUBLISH_RESULT,
    created,
    make_workflow,
    patch_spec,
    status,
    wait_code,
    wait_terminal,
    wait_until_clean,
)
from prometheus_client.parser import text_string_to_metric_families

from operator_engine.devcluster import EmbeddedCluster, Outcome

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
HANGS, SUCCEEDS, FAILS = "wf-m-0", "wf-m-1", "wf-m-2"
NAMES = [HANGS, SUCCEEDS, FAILS]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (loopback, a test)
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


class Scraper:
    """Reads `/metrics` like Prometheus; keeps every scrape."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.scrapes: list[Samples] = []

    async def scrape(self) -> Samples:
        text = await asyncio.to_thread(_get, self.url)
        samples: Samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        self.scrapes.append(samples)
        return samples

    async def until(self, predicate: Callable[[Samples], bool], what: str, timeout: float = 60.0) -> Samples:
        deadline = time.monotonic() + timeout
        while True:
            samples = await self.scrape()
            if predicate(samples):
                return samples
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no scrape showed {what} within {timeout:.0f} s; the last: "
                    f"{ {k: v for k, v in samples.items() if 'operator_engine' in k[0]} }"
                )
            await asyncio.sleep(0.05)


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when the series is absent (nothing counted yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def stage_counts(cluster: EmbeddedCluster) -> dict[str, int]:
    """How many Jobs of each stage the cluster created (each is one stage run)."""
    counts: dict[str, int] = {}
    for job in created(cluster, "jobs"):
        stage = job.rsplit("-", 2)[-2]  # <workflow>-<stage>-job
        counts[stage] = counts.get(stage, 0) + 1
    return counts


async def test_metrics_follow_workflows_through_the_queue_to_their_ends(
    operator_process: ProcessFactory, cluster: EmbeddedCluster, runtime: TimedRuntime, receiver: Receiver
) -> None:
    runtime.script(f"{HANGS}-algorithm-job", Outcome(hang=True))  # runs until it is stopped
    runtime.script(f"{FAILS}-algorithm-job", Outcome(exit_code=1))
    runtime.script("*-publish-job", Outcome(message=json.dumps(PUBLISH_RESULT)))
    receiver.fail_first = 1  # one notification needs a second attempt: still one delivered
    port = free_port()
    await operator_process(maxJobs="1", METRICS_PORT=str(port))
    metrics = Scraper(port)

    before = await metrics.until(lambda s: value(s, "operator_engine_max_jobs") == 1, "max_jobs 1")
    assert value(before, "operator_engine_queue_length") == 0
    assert value(before, "operator_engine_running_jobs") == 0

    # Status patches answered 503 now and then: each is an API error, retried.
    cluster.faults.inject(rate=0.15, statuses=(503,), methods=("PATCH",), seed=10, path_contains="/status")
    try:
        for name in NAMES:  # in name order, which is creation order
            await cluster.create(make_workflow(name))

        # maxJobs=1: the first runs (its algorithm hangs), the other two wait Queued.
        queued = await metrics.until(
            lambda s: (
                value(s, "operator_engine_queue_length") == 2
                and value(s, "operator_engine_workflows_in_flight", status_code="1") == 2
            ),
            "two workflows queued",
        )
        assert value(queued, "operator_engine_running_jobs") == 1
        await wait_code(cluster, HANGS, 40)
        await metrics.until(
            lambda s: (
                value(s, "operator_engine_workflows_in_flight", status_code="40") == 1
                and value(s, "operator_engine_workflows_in_flight", status_code="1") == 2
            ),
            "the running algorithm in flight at code 40",
        )

        await patch_spec(cluster, HANGS, {"stopRequested": True})
        finals = {name: status(await wait_terminal(cluster, name, timeout=120)) for name in NAMES}
    finally:
        cluster.faults.clear()
    assert [finals[n]["phase"] for n in NAMES] == ["Stopped", "Succeeded", "Failed"], finals
    for name in NAMES:
        await receiver.wait("/start", name)
        await receiver.wait("/stop", name)
        await wait_until_clean(cluster, name)

    after = await metrics.until(
        lambda s: (
            value(s, "operator_engine_notifications_total", kind="stop", result="delivered") == 3
            and value(s, "operator_engine_queue_length") == 0
            and value(s, "operator_engine_running_jobs") == 0
        ),
        "the end of every workflow",
    )

    # Some scrape saw the queue at 2 (above); it drained to 0 and never grew past 2.
    lengths = [value(s, "operator_engine_queue_length") for s in metrics.scrapes]
    assert 2 in lengths and lengths[-1] == 0 and max(lengths) == 2, lengths

    for phase, count in (("Stopped", 1), ("Succeeded", 1), ("Failed", 1), ("TimedOut", 0)):
        assert value(after, "operator_engine_workflows_finished_total", phase=phase) == count, phase
    for code in ("1", "10", "20", "40", "60"):
        assert value(after, "operator_engine_workflows_in_flight", status_code=code) == 0, code

    # One stage_duration observation per stage run (per Job the cluster created), by stage.
    runs = stage_counts(cluster)
    assert runs.get("configure") == 3 and runs.get("algorithm") == 3 and runs.get("publish", 0) >= 2, runs
    for stage, count in runs.items():
        assert value(after, "operator_engine_stage_duration_seconds_count", stage=stage) == count, stage
        assert value(after, "operator_engine_stage_duration_seconds_bucket", stage=stage, le="+Inf") == count
        assert value(after, "operator_engine_stage_duration_seconds_sum", stage=stage) >= 0

    # Transition latency: one observation per Job created after a stage ended: every algorithm and
    # publish Job but the stopped workflow's publish (its algorithm was killed: it did not end by itself).
    transitions = value(after, "operator_engine_transition_latency_seconds_count")
    assert transitions == runs["algorithm"] + runs["publish"] - 1, (transitions, runs)
    assert 0 <= value(after, "operator_engine_transition_latency_seconds_sum") <= 60 * transitions
    assert value(after, "operator_engine_transition_latency_seconds_bucket", le="+Inf") == transitions

    # Notifications: each counted once by its result, however many attempts it took.
    assert len([r for r in receiver.all() if r.status != 200]) == 1
    for kind in ("start", "stop"):
        assert value(after, "operator_engine_notifications_total", kind=kind, result="delivered") == 3, kind
        assert value(after, "operator_engine_notifications_total", kind=kind, result="refused") == 0
        assert value(after, "operator_engine_notifications_total", kind=kind, result="gave_up") == 0

    # Every status patch the API server refused with 503 is one API error.
    refused = [r for r in cluster.request_log if r.faulted and r.method == "PATCH"]
    assert refused, "the fault window faulted nothing"
    assert value(after, "operator_engine_api_errors_total", reason="ServiceUnavailable") == len(refused)


async def test_metrics_port_in_use_stops_the_operator_naming_the_variable(
    operator_process: ProcessFactory, cluster: EmbeddedCluster
) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        try:
            proc = await operator_process(METRICS_PORT=str(port))
        except AssertionError as exc:  # it exited while starting: what we want
            message = str(exc)
        else:
            deadline = time.monotonic() + 60
            while proc.alive():
                assert time.monotonic() < deadline, "the operator kept running without its metrics port"
                await asyncio.sleep(0.1)
            message = proc.log()
    assert f"METRICS_PORT={port}" in message, message[-3000:]


async def test_gauges_describe_the_cluster_right_after_a_restart(
    operator_process: ProcessFactory, cluster: EmbeddedCluster, runtime: TimedRuntime
) -> None:
    runtime.script("*-algorithm-job", Outcome(hang=True))
    port = free_port()
    proc = await operator_process(maxJobs="1", METRICS_PORT=str(port))
    for name in NAMES:
        await cluster.create(make_workflow(name))
    await wait_code(cluster, HANGS, 40)
    await wait_code(cluster, FAILS, 1)
    proc.kill()  # SIGKILL: the new process knows nothing but what it reads from the cluster
    await proc.restart()
    after = await Scraper(port).until(
        lambda s: value(s, "operator_engine_queue_length") == 2, "the queue read from the cluster"
    )
    assert value(after, "operator_engine_running_jobs") == 1
    assert value(after, "operator_engine_max_jobs") == 1
    assert value(after, "operator_engine_workflows_in_flight", status_code="1") == 2
    assert value(after, "operator_engine_workflows_in_flight", status_code="40") == 1
    assert value(after, "operator_engine_workflows_finished_total", phase="Succeeded") == 0  # per process
