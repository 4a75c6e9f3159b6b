"""Stage transitions are event-driven: the next Job within 1 s of the previous one's end.

The operator's backstop timer stays at its 30 s default here, so only a
reaction to the Job's watch event can pass; the bound catches polling, it is
not a benchmark.
"""

from __future__ import annotations

import json
import time

from conftest import OperatorFactory, TimedRuntime
from helpers import PUBLISH_RESULT, creation_time, make_workflow, status, wait_terminal

from operator_engine.devcluster import EmbeddedCluster, Outcome

BOUND = 1.0


async def test_next_job_is_created_within_a_second_of_the_previous_jobs_end(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime
) -> None:
    name = "wf-latency"
    runtime.script(f"{name}-configure-job", Outcome(duration=0.5))
    runtime.script(f"{name}-algorithm-job", Outcome(duration=0.5))
    runtime.script(f"{name}-publish-job", Outcome(duration=0.5, message=json.dumps(PUBLISH_RESULT)))
    async with operator(OPERATOR_BACKSTOP_SECONDS=None):
        await cluster.create(make_workflow(name))
        final = status(await wait_terminal(cluster, name))
    assert final["phase"] == "Succeeded", final
    delays = {}
    for previous, following in (("configure", "algorithm"), ("algorithm", "publish")):
        ended = runtime.finish_times[f"{name}-{previous}-job"]
        created_at = creation_time(cluster, "jobs", f"{name}-{following}-job")
        assert created_at is not None, f"{following} Job never created"
        delays[f"{previous}->{following}"] = created_at - ended
    assert all(0 <= d < BOUND for d in delays.values()), f"stage transitions took {delays} (bound {BOUND} s)"


async def test_terminal_status_within_a_second_of_the_publish_jobs_end(
    operator: OperatorFactory, cluster: EmbeddedCluster, runtime: TimedRuntime
) -> None:
    name = "wf-latency-end"
    runtime.script(f"{name}-publish-job", Outcome(duration=0.5, message=json.dumps(PUBLISH_RESULT)))
    async with operator(OPERATOR_BACKSTOP_SECONDS=None):
        await cluster.create(make_workflow(name))
        await wait_terminal(cluster, name)
        seen = time.monotonic()
    delay = seen - runtime.finish_times[f"{name}-publish-job"]
    assert delay < BOUND, f"the Workflow became terminal {delay:.2f} s after the publish pod ended"
