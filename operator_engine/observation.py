"""Observation: a workflow's Jobs and pods, turned into the views `pipeline` decides on.

Reads only (lists of Jobs and pods); the reconciler decides and writes. The
Job and pod objects are the Kubernetes client's models (attribute access).
One list of the workflow's pods serves both questions a stage's end raises:
the exit code and termination message of the stage's last pod, and which
stages still have a pod that may run.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from typing import Any

from operator_engine.facts import LABEL_COMPONENT
from operator_engine.kube import Kube
from operator_engine.pipeline import JobView

# The label the Job controller puts on each pod of a Job, with the Job's name.
JOB_NAME_LABEL = "job-name"


class Observer:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    async def jobs(self, namespace: str, name: str) -> dict[str, JobView]:
        """The workflow's Jobs, by component; the exit code and message come from the pods (`with_termination`)."""
        views: dict[str, JobView] = {}
        for job in await self.kube.list_children("Job", namespace, name):
            component = (job.metadata.labels or {}).get(LABEL_COMPONENT)
            if component is None:
                continue
            job_status = job.status
            succeeded = bool(job_status and job_status.succeeded)
            # A Job has failed once its Failed condition is there, and only then: since Kubernetes 1.31
            # the Job controller first adds FailureTarget, counts the failed pod (status.failed) and
            # only once every pod is gone adds Failed, with the reason (DeadlineExceeded, ...).
            failed_condition = (
                next((c for c in (job_status.conditions or []) if c.type == "Failed" and c.status == "True"), None)
                if job_status
                else None
            )
            failed = bool(failed_condition)
            view = JobView(
                exists=True,
                succeeded=succeeded,
                failed=failed and not succeeded,
                reason=failed_condition.reason if failed_condition else None,
                deleting=job.metadata.deletion_timestamp is not None,
                created=job.metadata.creation_timestamp,
                ended=job_end(job_status),
            )
            views[component] = view
        return views

    async def pods(self, namespace: str, name: str) -> list[Any]:
        """The pods of all the workflow's Jobs (their templates carry the children's labels)."""
        return await self.kube.list_workflow_pods(namespace, name)


def lingering(pods: list[Any]) -> frozenset[str]:
    """The stages with a pod that may still run: not yet Succeeded or Failed, being deleted or not.

    A pod in a terminal phase has no running container (the kubelet reports
    the phase only once they all stopped); any other pod, even one whose
    Job failed or is being deleted, may still write to the volumes.
    """
    return frozenset(
        (pod.metadata.labels or {}).get(LABEL_COMPONENT, "")
        for pod in pods
        if not (pod.status and pod.status.phase in ("Succeeded", "Failed"))
    )


def with_termination(view: JobView, pods: list[Any], job_name: str) -> JobView:
    """The view with the exit code and termination message of the Job's last pod (docs/contract.md §2.3).

    `pods` are the workflow's; the Job's are those the Job controller labelled with its name.
    """
    own = [p for p in pods if (p.metadata.labels or {}).get(JOB_NAME_LABEL) == job_name]
    own.sort(key=lambda p: p.metadata.creation_timestamp or datetime.datetime.min)
    for pod in reversed(own):
        for container in (pod.status.container_statuses or []) if pod.status else []:
            terminated = container.state.terminated if container.state else None
            if terminated is None:
                continue
            message: Any = terminated.message
            if message:
                try:
                    message = json.loads(message)
                except ValueError:
                    pass
            return dataclasses.replace(
                view, exit_code=terminated.exit_code, message=message, ended=terminated.finished_at
            )
    return view


def job_end(job_status: Any) -> datetime.datetime | None:
    """When the Job's pod ended, as the Job says: its completionTime, else (Kubernetes 1.31+
    writes that only with the final Complete condition) the time of its SuccessCriteriaMet or
    FailureTarget condition, which the Job controller adds as it sees the pod end."""
    if job_status is None:
        return None
    if job_status.completion_time:
        return job_status.completion_time
    return next(
        (
            c.last_transition_time
            for c in job_status.conditions or []
            if c.type in ("SuccessCriteriaMet", "FailureTarget") and c.status == "True"
        ),
        None,
    )
