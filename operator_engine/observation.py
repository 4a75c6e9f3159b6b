"""Observation: a workflow's Jobs and pods, turned into the views `pipeline` decides on.

Reads only (lists of Jobs and pods); the reconciler decides and writes. Jobs
and pods are the API server's JSON objects (dicts, camelCase fields), read
for the few fields a decision or a metric needs. One list of the workflow's
pods serves both questions a stage's end raises: the exit code and
termination message of the stage's last pod, and which stages still have a
pod that may run.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Mapping
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
            meta = job.get("metadata") or {}
            component = (meta.get("labels") or {}).get(LABEL_COMPONENT)
            if component is None:
                continue
            views[component] = job_view(job)
        return views

    async def pods(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The pods of all the workflow's Jobs (their templates carry the children's labels)."""
        return await self.kube.list_workflow_pods(namespace, name)


def job_view(job: Mapping[str, Any]) -> JobView:
    """What a Job object says, as a decision needs it."""
    meta = job.get("metadata") or {}
    status = job.get("status") or {}
    succeeded = bool(status.get("succeeded"))
    # A Job has failed once its Failed condition is there, and only then: since Kubernetes 1.31
    # the Job controller first adds FailureTarget, counts the failed pod (status.failed) and
    # only once every pod is gone adds Failed, with the reason (DeadlineExceeded, ...).
    failed = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Failed" and c.get("status") == "True"), None
    )
    return JobView(
        exists=True,
        succeeded=succeeded,
        failed=bool(failed) and not succeeded,
        reason=failed.get("reason") if failed else None,
        deleting=meta.get("deletionTimestamp") is not None,
        created=parse_time(meta.get("creationTimestamp")),
        ended=job_end(status),
    )


def lingering(pods: list[dict[str, Any]]) -> frozenset[str]:
    """The stages with a pod that may still run: not yet Succeeded or Failed, being deleted or not.

    A pod in a terminal phase has no running container (the kubelet reports
    the phase only once they all stopped); any other pod, even one whose
    Job failed or is being deleted, may still write to the volumes.
    """
    return frozenset(
        ((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_COMPONENT, "")
        for pod in pods
        if (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    )


def with_termination(view: JobView, pods: list[dict[str, Any]], job_name: str) -> JobView:
    """The view with the exit code and termination message of the Job's last pod (docs/contract.md §2.3).

    `pods` are the workflow's; the Job's are those the Job controller labelled with its name.
    """
    own = [p for p in pods if ((p.get("metadata") or {}).get("labels") or {}).get(JOB_NAME_LABEL) == job_name]
    # RFC 3339 timestamps in UTC ("...Z") sort as strings.
    own.sort(key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or "")
    for pod in reversed(own):
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated")
            if terminated is None:
                continue
            message: Any = terminated.get("message")
            if message:
                try:
                    message = json.loads(message)
                except ValueError:
                    pass
            return dataclasses.replace(
                view,
                exit_code=terminated.get("exitCode"),
                message=message,
                ended=parse_time(terminated.get("finishedAt")),
            )
    return view


def job_end(status: Mapping[str, Any]) -> datetime.datetime | None:
    """When the Job's pod ended, as the Job says: its completionTime, else (Kubernetes 1.31+
    writes that only with the final Complete condition) the time of its SuccessCriteriaMet or
    FailureTarget condition, which the Job controller adds as it sees the pod end."""
    if status.get("completionTime"):
        return parse_time(status["completionTime"])
    return next(
        (
            parse_time(c.get("lastTransitionTime"))
            for c in status.get("conditions") or []
            if c.get("type") in ("SuccessCriteriaMet", "FailureTarget") and c.get("status") == "True"
        ),
        None,
    )


def parse_time(value: Any) -> datetime.datetime | None:
    """A Kubernetes timestamp (RFC 3339, e.g. 2026-11-29T04:32:08Z) as an aware datetime; None if absent or not one."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)
