"""
The controllers a real cluster runs beside its API server, reduced to what our operator meets.

* :class:`GarbageCollector` — kube-controller-manager's garbage collector:
  deletes dependents (``metadata.ownerReferences``) of removed owners.
* :class:`JobController` — the Job controller plus a kubelet stand-in: one
  Pod per attempt, run by a :class:`~operator_engine.devcluster.runtime.Runtime`,
  Pod and Job status written as Kubernetes 1.31 writes them.

Both are event-driven: they follow the API server's change stream
(:meth:`ApiServer.follow`) and never poll. They write through the in-process
"admin" path, so injected faults hit only the operator under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from operator_engine.devcluster.apiserver import FOREGROUND_FINALIZER, ApiError, ApiServer, now_rfc3339
from operator_engine.devcluster.patches import merge_patch
from operator_engine.devcluster.resources import JOBS, PODS
from operator_engine.devcluster.runtime import Result, Runtime, kubelet_pod_status, terminated_state

__all__ = ["GarbageCollector", "JobController"]

#: Seconds between a Job's SuccessCriteriaMet/FailureTarget update and its Complete/Failed one. The real
#: controller adds the terminal condition in a later sync, once the pods' finalizers are removed; a gap
#: lets an operator see the in-between state, as it does on a real cluster.
TERMINAL_CONDITION_DELAY = 0.5

logger = logging.getLogger(__name__)

#: The embedded cluster's one node: every pod is bound to it, its kubelet is the JobController.
NODE_NAME = "localhost"


class GarbageCollector:
    """
    Cascading deletion, as the real garbage collector does.

    Background: when an owner is removed, each dependent whose owners are now
    all gone is deleted (recursively, through its own removal); a dependent
    that still has a live owner only loses the dangling reference. An object
    created with references only to absent owners is deleted too.

    Foreground: an owner marked with the ``foregroundDeletion`` finalizer has
    its dependents deleted (pods gracefully: they stay until the kubelet has
    stopped their containers); once no dependent with ``blockOwnerDeletion``
    is left, the finalizer is removed and the owner goes.
    """

    def __init__(self, api: ApiServer) -> None:
        self.api = api

    async def run(self) -> None:
        since = self.api.resource_version
        for spec in list(self.api.specs.values()):
            for obj in self.api.list(spec):
                if obj["metadata"].get("ownerReferences"):
                    self._collect(spec, obj)
                if _waiting_for_dependents(obj):
                    self._delete_dependents(obj)
        async for event in self.api.follow(since):
            meta = event.object["metadata"]
            if event.type == "DELETED":
                for spec, dependent in self.api.dependents(meta["uid"]):
                    self._collect(spec, dependent)
                for ref in meta.get("ownerReferences") or []:
                    self._release(ref.get("uid", ""))  # an owner may have waited for this one
                continue
            if event.type == "ADDED" and meta.get("ownerReferences"):
                self._collect(event.spec, event.object)
            if _waiting_for_dependents(event.object):
                self._delete_dependents(event.object)

    def _collect(self, spec: Any, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        refs = meta.get("ownerReferences") or []
        alive = [ref for ref in refs if self.api.find_uid(ref.get("uid", "")) is not None]
        with contextlib.suppress(ApiError):  # already gone: a race with another deleter is fine
            if not alive:
                self.api.delete(spec, meta.get("namespace"), meta["name"])
            elif len(alive) != len(refs):
                self.api.update(
                    spec,
                    meta.get("namespace"),
                    meta["name"],
                    lambda o: merge_patch(o, {"metadata": {"ownerReferences": alive}}),
                )

    def _delete_dependents(self, owner: dict[str, Any]) -> None:
        uid = owner["metadata"]["uid"]
        for spec, dependent in self.api.dependents(uid):
            meta = dependent["metadata"]
            if meta.get("deletionTimestamp"):
                continue
            # A dependent that owns others is deleted in the foreground too, so the chain unwinds bottom-up.
            policy = "Foreground" if self.api.dependents(meta["uid"]) else "Background"
            with contextlib.suppress(ApiError):
                self.api.delete(spec, meta.get("namespace"), meta["name"], propagation=policy)
        self._release(uid)

    def _release(self, owner_uid: str) -> None:
        """Remove the owner's foregroundDeletion finalizer once no dependent blocks it."""
        found = self.api.locate(owner_uid)
        if found is None or not _waiting_for_dependents(found[1]):
            return
        spec, owner = found
        blocking = [
            d
            for _, d in self.api.dependents(owner_uid)
            if any(
                ref.get("uid") == owner_uid and ref.get("blockOwnerDeletion")
                for ref in d["metadata"].get("ownerReferences") or []
            )
        ]
        if blocking:
            return
        remaining = [f for f in owner["metadata"].get("finalizers") or [] if f != FOREGROUND_FINALIZER]
        with contextlib.suppress(ApiError):
            self.api.update(
                spec,
                owner["metadata"].get("namespace"),
                owner["metadata"]["name"],
                lambda o: {**o, "metadata": {**o["metadata"], "finalizers": remaining}},
            )


def _waiting_for_dependents(obj: dict[str, Any]) -> bool:
    meta = obj["metadata"]
    return bool(meta.get("deletionTimestamp")) and FOREGROUND_FINALIZER in (meta.get("finalizers") or [])


class JobController:
    """
    Runs each batch/v1 Job: Pods named ``<job>-<5 chars>``, retries up to
    ``backoffLimit`` (0 if unset here; real Kubernetes defaults to 6, our
    operator always sets 0), ``activeDeadlineSeconds`` enforced from the Job's
    ``startTime``. Real Kubernetes delays retries exponentially (10 s, 20 s, ...);
    here a retry starts at once.
    """

    def __init__(self, api: ApiServer, runtime: Runtime) -> None:
        self.api = api
        self.runtime = runtime
        self._jobs: dict[str, asyncio.Task[None]] = {}  # job uid -> its task
        self._pods: dict[str, asyncio.Task[Result]] = {}  # pod uid -> its runtime task

    async def run(self) -> None:
        since = self.api.resource_version
        try:
            for job in self.api.list(JOBS):
                self._start(job)
            async for event in self.api.follow(since):
                uid = event.object["metadata"]["uid"]
                if event.spec.key == JOBS.key and event.type == "ADDED":
                    self._start(event.object)
                elif event.spec.key == PODS.key and event.type == "DELETED" and uid in self._pods:
                    self._pods[uid].cancel()  # force-deleted: the kubelet kills the containers all the same
                elif (
                    event.spec.key == PODS.key
                    and event.type == "MODIFIED"
                    and event.object["metadata"].get("deletionTimestamp")
                ):
                    self._pod_deleting(event.object)
                # A deleted Job's driver is not cancelled: its pods are deleted (gracefully) by
                # the garbage collector, and the driver ends once its pod has ended.
        finally:
            for task in self._jobs.values():
                task.cancel()
            await asyncio.gather(*self._jobs.values(), return_exceptions=True)

    def _pod_deleting(self, pod: dict[str, Any]) -> None:
        """The kubelet's part of a graceful deletion: stop the containers, then remove the pod."""
        uid = pod["metadata"]["uid"]
        if uid in self._pods:
            self._pods[uid].cancel()  # _run_pod stops it (within the grace period) and removes the pod
        elif (pod.get("spec") or {}).get("nodeName") == NODE_NAME:
            self._remove_pod(pod)  # nothing runs (any more): the deletion completes now

    def _remove_pod(self, pod: dict[str, Any]) -> None:
        # The kubelet's final DELETE with a grace period of 0, once the containers are stopped.
        meta = pod["metadata"]
        with contextlib.suppress(ApiError):
            self.api.delete(PODS, meta["namespace"], meta["name"], grace_period=0)

    def _start(self, job: dict[str, Any]) -> None:
        status = job.get("status") or {}
        finished = any(c.get("type") in ("Complete", "Failed") for c in status.get("conditions") or [])
        if finished or job["metadata"]["uid"] in self._jobs:
            return
        task = asyncio.create_task(self._run_job(job), name=f"job {job['metadata']['name']}")
        self._jobs[job["metadata"]["uid"]] = task
        task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        for uid, known in list(self._jobs.items()):
            if known is task:
                del self._jobs[uid]
        if not task.cancelled() and task.exception() is not None:
            logger.error("job controller failed", exc_info=task.exception())

    async def _run_job(self, job: dict[str, Any]) -> None:
        with contextlib.suppress(ApiError):  # the Job was deleted meanwhile: nothing left to do
            await self._drive(job)

    async def _drive(self, job: dict[str, Any]) -> None:
        meta, spec = job["metadata"], job.get("spec") or {}
        namespace, name = meta["namespace"], meta["name"]
        backoff_limit = spec.get("backoffLimit", 0)
        deadline = spec.get("activeDeadlineSeconds")
        started_at = time.monotonic()
        start_time = (job.get("status") or {}).get("startTime") or self._now()
        failed = 0
        while True:
            current = self.api.get(JOBS, namespace, name)  # ApiError 404 when gone: the driver ends
            if current["metadata"].get("deletionTimestamp"):
                return  # a Job being deleted starts no pod
            pod = self._create_pod(job)
            self._job_status(namespace, name, {"startTime": start_time, "active": 1, "failed": failed or None})
            remaining = None if deadline is None else max(0.0, deadline - (time.monotonic() - started_at))
            result = await self._run_pod(pod, job, remaining)
            current = self.api.get(JOBS, namespace, name)
            if current["metadata"].get("deletionTimestamp"):
                return  # deleted meanwhile: the Job's status no longer matters
            if result == "deadline":
                await self._finish(
                    namespace,
                    name,
                    {"active": None, "failed": failed + 1},
                    "FailureTarget",
                    "Failed",
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                )
                return
            if isinstance(result, Result) and result.exit_code == 0:
                await self._finish(
                    namespace,
                    name,
                    {"active": None, "succeeded": 1},
                    "SuccessCriteriaMet",
                    "Complete",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                )
                return
            failed += 1  # an exit code other than 0, or a pod deleted before it ended
            if failed > backoff_limit:
                await self._finish(
                    namespace,
                    name,
                    {"active": None, "failed": failed},
                    "FailureTarget",
                    "Failed",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                )
                return

    def _create_pod(self, job: dict[str, Any]) -> dict[str, Any]:
        meta = job["metadata"]
        template = (job.get("spec") or {}).get("template") or {}
        labels = dict((template.get("metadata") or {}).get("labels") or {})
        # The labels the real Job controller puts on its pods (legacy and prefixed forms).
        labels.update(
            {
                "job-name": meta["name"],
                "controller-uid": meta["uid"],
                "batch.kubernetes.io/job-name": meta["name"],
                "batch.kubernetes.io/controller-uid": meta["uid"],
            }
        )
        return self.api.create(
            PODS,
            {
                "metadata": {
                    "generateName": f"{meta['name']}-",
                    "namespace": meta["namespace"],
                    "labels": labels,
                    "annotations": dict((template.get("metadata") or {}).get("annotations") or {}),
                    "ownerReferences": [
                        {
                            "apiVersion": "batch/v1",
                            "kind": "Job",
                            "name": meta["name"],
                            "uid": meta["uid"],
                            "controller": True,
                            "blockOwnerDeletion": True,
                        }
                    ],
                },
                # Bound at once to the one node, whose kubelet is this controller (the scheduler's part).
                "spec": {**(template.get("spec") or {}), "nodeName": NODE_NAME},
            },
        )

    async def _run_pod(self, pod: dict[str, Any], job: dict[str, Any], deadline: float | None) -> Result | None | str:
        """The runtime's result; None if the pod was deleted; 'deadline' if killed by it."""
        meta = pod["metadata"]
        containers = (pod.get("spec") or {}).get("containers") or [{"name": "main"}]
        pod_deadline = (pod.get("spec") or {}).get("activeDeadlineSeconds")
        if pod_deadline is not None:
            deadline = pod_deadline if deadline is None else min(deadline, pod_deadline)
        started = self._now()
        self._pod_status(pod, "Running", started, containers, {"running": {"startedAt": started}})
        task = asyncio.create_task(self.runtime.execute(pod, job), name=f"pod {meta['name']}")
        self._pods[meta["uid"]] = task
        try:
            done, _ = await asyncio.wait({task}, timeout=deadline)
            if task.done() and task.cancelled():
                # The pod is being deleted and its containers were stopped (within its
                # grace period): as the kubelet, report how they ended, then remove the pod.
                self._pod_status(
                    pod,
                    "Failed",
                    started,
                    containers,
                    {
                        "terminated": {
                            "exitCode": 137,
                            "reason": "Error",
                            "startedAt": started,
                            "finishedAt": self._now(),
                        }
                    },
                )
                self._remove_pod(pod)
                return None
        finally:
            self._pods.pop(meta["uid"], None)
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if not done:
            # The kubelet kills the containers; the pod fails with reason DeadlineExceeded.
            # (Real Kubernetes then deletes the pods of a Job past its deadline;
            # they are kept here so that tests and operators can inspect them.)
            self._pod_status(
                pod,
                "Failed",
                started,
                containers,
                {
                    "terminated": {
                        "exitCode": 137,
                        "reason": "DeadlineExceeded",
                        "startedAt": started,
                        "finishedAt": self._now(),
                        "message": "Pod was active on the node longer than the specified deadline",
                    }
                },
                reason="DeadlineExceeded",
            )
            return "deadline"
        result = task.result()
        self.api.pod_logs[(meta["namespace"], meta["name"])] = result.logs
        self._pod_status(
            pod,
            "Succeeded" if result.exit_code == 0 else "Failed",
            started,
            containers,
            {"terminated": terminated_state(result, started, self._now())},
        )
        with contextlib.suppress(ApiError):
            if self.api.get(PODS, meta["namespace"], meta["name"])["metadata"].get("deletionTimestamp"):
                self._remove_pod(pod)  # its deletion began as it ended: complete it
        return result

    def _pod_status(
        self,
        pod: dict[str, Any],
        phase: str,
        started: str,
        containers: list[dict[str, Any]],
        state: dict[str, Any],
        reason: str | None = None,
    ) -> None:
        status = kubelet_pod_status(pod, phase, started, self._now(), state, reason)
        meta = pod["metadata"]
        with contextlib.suppress(ApiError):  # deleted pods have no status to write
            self.api.update(
                PODS, meta["namespace"], meta["name"], lambda old: merge_patch(old, {"status": status}), status=True
            )

    def _job_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.api.update(JOBS, namespace, name, lambda old: merge_patch(old, {"status": status}), status=True)

    async def _finish(
        self, namespace: str, name: str, counts: dict[str, Any], interim: str, final: str, reason: str, message: str
    ) -> None:
        """
        End the Job in two status updates, as Kubernetes 1.31+ does: first the
        counts with SuccessCriteriaMet/FailureTarget, later (once its pods are
        gone) Complete/Failed. A client that takes ``status.failed`` or
        ``status.succeeded`` for the end sees a Job that has not ended yet, and
        no reason (seen on the real control plane: tests/realcluster).
        """

        def condition(kind: str) -> dict[str, Any]:
            now = self._now()
            return {
                "type": kind,
                "status": "True",
                "reason": reason,
                "message": message,
                "lastProbeTime": now,
                "lastTransitionTime": now,
            }

        first = condition(interim)
        self._job_status(namespace, name, {**counts, "conditions": [first]})
        await asyncio.sleep(TERMINAL_CONDITION_DELAY)
        ending: dict[str, Any] = {"conditions": [first, condition(final)]}
        if final == "Complete":
            ending["completionTime"] = self._now()
        self._job_status(namespace, name, ending)

    def _now(self) -> str:
        return now_rfc3339(self.api.clock)
