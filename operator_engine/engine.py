"""The operator's actions: observe a workflow, ask `pipeline.decide`, apply the answer.

Everything the engine knows it reads from the cluster on each call: the
Workflow's status says where the workflow is, its Jobs say what happened
since. The only memory kept between calls is the notifications on their way
(`notifier.Notifier`) and locks; after a restart both are rebuilt from the
status.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import functools
import json
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from operator_engine import logs, metrics
from operator_engine.config import Config
from operator_engine.kube import Kube, PermanentError, TransientError
from operator_engine.model import InvalidWorkflow, Workflow, parse_workflow
from operator_engine.notifier import Notifier
from operator_engine.pipeline import (
    TERMINAL_PHASES,
    JobView,
    Step,
    admission,
    code_status,
    decide,
    is_terminal,
)
from operator_engine.render import Child, Renderer, child_names

ENVIRONMENT_CONFIGMAP = "operator-engine-environment"
DEADLINE_GRACE_SECONDS = 30  # the backstop waits this long past activeDeadlineSeconds before acting
# What cleanup deletes, by kind, as keys of render.child_names, in this order
# (Jobs first, so nothing runs on a volume that goes). By name, not by a label
# list: the Role then needs no `list` on Secrets, ConfigMaps or PVCs.
CLEANUP_CHILDREN = (
    ("Job", ("configure", "algorithm", "filter", "publish")),
    ("PersistentVolumeClaim", ("data", "adminlogs")),
    ("ConfigMap", ("configmap",)),
    ("Secret", ("algorithm_secret", "publish_secret")),
)
# The stage whose Job's outcome decides the next step, by status code (looked up with
# whatever statusCode a status holds, None included: hence `object` keys).
STAGE_OF_CODE: dict[object, str] = {20: "configure", 40: "algorithm", 50: "filter", 60: "publish"}
# Held on every valid Workflow so that deleting one waits until the operator has
# stopped its Jobs, cleaned up and sent the stop notification.
FINALIZER = "oceanprotocol.com/operator-engine"
# The `stage` field of a workflow's log lines, by its status code (terminal: "finished").
LOG_STAGE_OF_CODE = {
    None: "queue",
    1: "queue",
    10: "configure",
    20: "configure",
    30: "algorithm",
    40: "algorithm",
    50: "filter",
    60: "publish",
}

log = logs.get()


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


EventPoster = Callable[[dict[str, Any], str, str, str], None]


def _about_workflow(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Every line logged while `method(self, namespace, name, ...)` runs carries `workflow=name` (logs.bound)."""

    @functools.wraps(method)
    async def wrapper(self: Any, namespace: str, name: str, *args: Any, **kwargs: Any) -> Any:
        with logs.bound(workflow=name):
            return await method(self, namespace, name, *args, **kwargs)

    return wrapper


def _about_the_queue(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Lines logged while admitting are about the queue, not the workflow whose handling called `admit`."""

    @functools.wraps(method)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with logs.bound(stage="admission"):
            return await method(self, *args, **kwargs)

    return wrapper


def _log_stage(status: dict[str, Any]) -> str:
    if status.get("dateFinished") and status.get("phase") in TERMINAL_PHASES:
        return "finished"
    return LOG_STAGE_OF_CODE.get(status.get("statusCode"), "unknown")


class Engine:
    def __init__(
        self, config: Config, kube: Kube, post_event: EventPoster | None = None, notify_deadline: float = 300.0
    ) -> None:
        self.config = config
        self.kube = kube
        self.renderer = Renderer(config)
        self.post_event = post_event or (lambda body, type_, reason, message: None)
        self.notifier = Notifier(config, kube, deadline=notify_deadline)
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._admission_lock = asyncio.Lock()
        self._current_jobs: int | None = None
        self._backstop: asyncio.Task[None] | None = None
        # Workflows (by uid) whose handling raised unexpectedly: the traceback is logged
        # once. Those that could not even be ended Failed are left out of admission, so
        # that an older workflow nobody can check never holds the queue.
        self._crashed: set[str] = set()
        self._unadmittable: set[str] = set()

    def _lock(self, namespace: str, name: str) -> asyncio.Lock:
        return self._locks.setdefault((namespace, name), asyncio.Lock())

    # --- the main entry: bring one workflow one step further

    @_about_workflow
    async def reconcile(self, namespace: str, name: str, *, backstop: bool = False) -> None:
        queue_changed = finalizing = False
        async with self._lock(namespace, name):
            body = await self.kube.get_workflow(namespace, name)
            if body is None:
                return
            logs.bind(
                stage="delete" if body["metadata"].get("deletionTimestamp") else _log_stage(body.get("status") or {})
            )
            if body["metadata"].get("deletionTimestamp"):
                finalizing = FINALIZER in (body["metadata"].get("finalizers") or [])
            else:
                try:
                    queue_changed = await self._step(body, backstop)
                    # Handled normally (the API server accepts its writes again): it queues as usual.
                    self._unadmittable.discard(body["metadata"].get("uid") or name)
                except TransientError:
                    raise  # the API server is unwell for every workflow; the backstop tries again
                except Exception as exc:
                    queue_changed = await self._internal_error(body, exc)
        if finalizing:
            await self.finalize(body)
        elif queue_changed:
            await self.admit(namespace)

    async def _step(self, body: dict[str, Any], backstop: bool) -> bool:
        """One step for a workflow that is not being deleted. True if the queue may have changed."""
        status = body.get("status") or {}
        if is_terminal(status):
            await self._after_terminal(body)
            return False
        try:
            workflow = parse_workflow(body)
        except InvalidWorkflow as exc:
            await self._reject(body, exc)
            return True  # it no longer holds its place in the queue
        code = status.get("statusCode")
        try:
            if code is None:
                await self.kube.add_finalizer(body, FINALIZER)
                await self._queue(body, workflow)
                return True
            if code == 1:
                if workflow.stop_requested:
                    await self._finish_unstarted(body, "stop requested while queued")
                return True
            self.notifier.ensure(body, workflow, "start")
            await self._advance(body, workflow, backstop=backstop)
        except PermanentError as exc:
            await self._fail_permanently(body, str(exc))
        return False

    async def _advance(self, body: dict[str, Any], workflow: Workflow, backstop: bool) -> None:
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        status = body.get("status") or {}
        jobs = await self._observe(namespace, name, STAGE_OF_CODE.get(status.get("statusCode")))
        overdue = False
        if backstop and status.get("statusCode") == 40:
            started = _parse_time(status.get("algorithmStarted"))
            deadline = self.renderer.limits(workflow).algorithm_deadline
            overdue = (
                started is not None
                and (datetime.datetime.now(datetime.UTC) - started).total_seconds() > deadline + DEADLINE_GRACE_SECONDS
            )
        code = status.get("statusCode")
        current = jobs.get(STAGE_OF_CODE.get(code, ""))
        lingering: frozenset[str] = frozenset()
        if code in STAGE_OF_CODE and (current is None or current.finished or workflow.stop_requested or overdue):
            lingering = await self._lingering(namespace, name)  # the step may start the filter or publish
        step = decide(
            status,
            jobs,
            stop_requested=workflow.stop_requested,
            filtering=bool(self.config.FILTERING_CONTAINER),
            now=now_rfc3339(),
            overdue=overdue,
            lingering=lingering,
        )
        if step:
            # The stage whose end this step follows: the current one, or at code 30 (provisioned) configure.
            await self._apply(
                body,
                workflow,
                step,
                current if code in STAGE_OF_CODE else jobs.get("configure") if code == 30 else None,
            )

    async def _apply(self, body: dict[str, Any], workflow: Workflow, step: Step, ended: JobView | None = None) -> None:
        """Apply one step. `ended`: the current stage's Job, whose end this step may follow (for the metrics)."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        outcome = step.status.get("outcome", (body.get("status") or {}).get("outcome")) or {}
        children = self.renderer.render(workflow, withhold_outputs=bool(outcome.get("withholdOutputs")))
        names = child_names(name)
        for component in step.delete:
            # In the foreground: the Job goes only once its pods are gone (see pipeline.decide).
            if await self.kube.delete("Job", namespace, names[component], foreground=True):
                log.info(f"Job {names[component]} deleted", workflow=name)
                if (
                    ended
                    and ended.created
                    and not (ended.finished or ended.deleting)
                    and component == STAGE_OF_CODE.get((body.get("status") or {}).get("statusCode"))
                ):
                    _observe_stage(component, ended.created, None)  # a stopped stage ends now
        for item in step.create:
            for child in (c for c in children if c.step == item):
                if await self._create(child, name) and child.kind == "Job" and ended and ended.ended:
                    metrics.TRANSITION_LATENCY.observe(_seconds_since(ended.ended))
        if step.status:
            status = dict(step.status)
            if step.event:
                status["conditions"] = _with_condition(body, step.event, status)
            if "statusCode" in status:
                log.info(f"Workflow {name}: {status['statusCode']} {status['statusText']}", workflow=name)
            if not await self.kube.patch_workflow_status(namespace, name, status):
                return
            _observe_step(body, status, ended)
            if step.event:
                reason, message = step.event
                self.post_event(
                    body, "Normal" if status.get("phase") not in ("Failed", "TimedOut") else "Warning", reason, message
                )
            if status.get("dateFinished"):
                ending = f": {status['message']}" if status.get("message") else ""
                log.info(f"Workflow {name} finished {status['phase']}{ending}", workflow=name)
                await self._after_terminal({**body, "status": {**(body.get("status") or {}), **status}})
                await self.admit(namespace)

    async def _create(self, child: Child, workflow_name: str) -> bool:
        """Create one child; False if it existed already."""
        if await self.kube.create(child.manifest):
            log.info(f"{child.kind} {child.name} created", workflow=workflow_name)
            return True
        log.info(f"{child.kind} {child.name} already exists", workflow=workflow_name)
        return False

    async def _observe(self, namespace: str, name: str, current: str | None) -> dict[str, JobView]:
        """The workflow's Jobs; the termination message only of the current stage's (one pod list)."""
        views: dict[str, JobView] = {}
        for job in await self.kube.list_children("Job", namespace, name):
            component = (job.metadata.labels or {}).get("component")
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
                ended=_job_end(job_status),
            )
            if view.finished and component == current:
                view = await self._with_termination(namespace, job.metadata.name, view)
            views[component] = view
        return views

    async def _lingering(self, namespace: str, name: str) -> frozenset[str]:
        """The stages with a pod that may still run: not yet Succeeded or Failed, being deleted or not.

        A pod in a terminal phase has no running container (the kubelet reports
        the phase only once they all stopped); any other pod, even one whose
        Job failed or is being deleted, may still write to the volumes.
        """
        return frozenset(
            (pod.metadata.labels or {}).get("component", "")
            for pod in await self.kube.list_workflow_pods(namespace, name)
            if not (pod.status and pod.status.phase in ("Succeeded", "Failed"))
        )

    async def _with_termination(self, namespace: str, job_name: str, view: JobView) -> JobView:
        """The exit code and termination message of the Job's last pod (docs/contract.md §2.3)."""
        pods = await self.kube.list_pods(namespace, job_name)
        pods.sort(key=lambda p: p.metadata.creation_timestamp or datetime.datetime.min)
        for pod in reversed(pods):
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

    # --- admission

    async def _queue(self, body: dict[str, Any], workflow: Workflow) -> None:
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        status = code_status(
            1,
            phase="Queued",
            stopreq=0,
            dateCreated=body["metadata"].get("creationTimestamp") or now_rfc3339(),
            owner=workflow.owner,
            agreementId=workflow.agreement_id,
        )
        notes = self.renderer.limits(workflow).notes
        if notes:
            status["message"] = "; ".join(notes)
        status["conditions"] = _with_condition(body, ("Queued", "waiting for a free slot"), status)
        if await self.kube.patch_workflow_status(namespace, name, status):
            metrics.CENSUS.update(body, status)
            log.info(f"Workflow {name} queued", workflow=name, shape=workflow.shape)
            self.post_event(body, "Normal", "Queued", "waiting for a free slot (maxJobs)")

    @_about_the_queue
    async def admit(self, namespace: str) -> None:
        """Admit the oldest Queued workflows while fewer than maxJobs run. The count is read from the cluster."""
        async with self._admission_lock:
            workflows = await self.kube.list_workflows(namespace)
            running = sum(
                1
                for w in workflows
                if (w.get("status") or {}).get("phase") == "Running" and not w["metadata"].get("deletionTimestamp")
            )
            queue = [
                w for w in workflows if (w["metadata"].get("uid") or w["metadata"]["name"]) not in self._unadmittable
            ]
            admitted: list[str] = []
            for name in admission(queue, self.config.maxJobs):
                try:
                    if await self._admit_one(namespace, name):
                        running += 1
                        admitted.append(name)
                except TransientError:
                    raise
                except Exception as exc:  # one workflow's failure never stops the others' admission
                    log.error(f"Workflow {name}: admission failed: {type(exc).__name__}: {exc}", workflow=name)
            metrics.CENSUS.replace(workflows, admitted)
            await self.refresh_environment(namespace, running)

    @_about_workflow
    async def _admit_one(self, namespace: str, name: str) -> bool:
        # Under the workflow's own lock, and only if it is still Queued: a stop
        # request or a deletion may have ended it since the list was read.
        logs.bind(stage="admission")
        async with self._lock(namespace, name):
            body = await self.kube.get_workflow(namespace, name)
            if (
                body is None
                or body["metadata"].get("deletionTimestamp")
                or (body.get("status") or {}).get("phase") != "Queued"
            ):
                return False
            status = code_status(10, phase="Running", dateStarted=now_rfc3339())
            status["conditions"] = _with_condition(body, ("Started", "admitted; the pipeline starts"), status)
            if not await self.kube.patch_workflow_status(namespace, name, status):
                return False
            log.info(f"Workflow {name} admitted", workflow=name)
            self.post_event(body, "Normal", "Started", "admitted; the pipeline starts")
            return True

    async def refresh_environment(self, namespace: str, current_jobs: int | None = None) -> None:
        """Keep the environment ConfigMap (check-config's JSON with a live currentJobs) up to date."""
        if current_jobs is None:
            workflows = await self.kube.list_workflows(namespace)
            current_jobs = sum(
                1
                for w in workflows
                if (w.get("status") or {}).get("phase") == "Running" and not w["metadata"].get("deletionTimestamp")
            )
        if current_jobs == self._current_jobs:
            return
        environment = json.dumps(self.config.environment(current_jobs), indent=2)
        await self.kube.apply_config_map(
            self.config.OPERATOR_NAMESPACE, ENVIRONMENT_CONFIGMAP, {"environment.json": environment}
        )
        self._current_jobs = current_jobs

    # --- endings

    async def _end_early(self, body: dict[str, Any], reason: str, message: str, **status_fields: Any) -> bool:
        """End a workflow outside the pipeline (code 70): its status, condition and Event. False if gone."""
        status = code_status(70, message=message, dateFinished=now_rfc3339(), **status_fields)
        status["conditions"] = _with_condition(body, (reason, message), status)
        if not await self.kube.patch_workflow_status(body["metadata"]["namespace"], body["metadata"]["name"], status):
            return False
        _observe_step(body, status, None)
        self.post_event(body, "Normal" if status["phase"] == "Stopped" else "Warning", reason, message[:1000])
        body["status"] = {**(body.get("status") or {}), **status}
        return True

    async def _reject(self, body: dict[str, Any], exc: InvalidWorkflow) -> None:
        name = body["metadata"]["name"]
        if await self._end_early(
            body,
            "Rejected",
            f"invalid Workflow: {exc}",
            phase="Failed",
            stopreq=0,
            dateCreated=body["metadata"].get("creationTimestamp") or now_rfc3339(),
        ):
            log.warning(f"Workflow {name} rejected: {exc.first}", workflow=name)

    async def _internal_error(self, body: dict[str, Any], exc: Exception) -> bool:
        """A step raised something no code path expects (a bug, or input the model let through).

        The workflow ends Failed ("internal error") at the first occurrence, rather
        than being retried with backoff: a step reads everything from the cluster
        and is deterministic for a given state, so a retry meets the same exception
        while the workflow holds a maxJobs slot (or, unchecked, the head of the
        queue) and every later workflow waits. Errors that may pass are not handled
        here: the Kubernetes calls retry transient answers themselves and raise
        TransientError, which the backstop retries. The provider gets the traceback
        once in the operator log; the consumer gets a status that says what
        happened without the details (which may quote the Workflow). True if the
        queue may have changed.
        """
        name = body["metadata"]["name"]
        key = body["metadata"].get("uid") or name
        if key not in self._crashed:
            self._crashed.add(key)
            # Formatted here, without local variables, whatever exception renderer is installed.
            trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            log.error(f"Workflow {name}: unexpected error, the workflow ends Failed\n{trace}", workflow=name)
        if is_terminal(body.get("status") or {}):
            return False  # it has its ending already; the backstop retries the clean-up
        message = f"internal error ({type(exc).__name__}) in the operator; the operator log has the details"
        try:
            if await self._end_early(
                body,
                "InternalError",
                message,
                phase="Failed",
                stopreq=0,
                dateCreated=(body.get("status") or {}).get("dateCreated")
                or body["metadata"].get("creationTimestamp")
                or now_rfc3339(),
            ):
                self._unadmittable.discard(key)
                await self._after_terminal(body)
        except Exception as again:  # noqa: BLE001 (the queue must not wait on this workflow)
            self._unadmittable.add(key)
            log.error(
                f"Workflow {name}: could not be ended Failed either ({type(again).__name__}: {again}); "
                "it is left out of admission until it can be",
                workflow=name,
            )
        return True

    async def _finish_unstarted(self, body: dict[str, Any], message: str) -> None:
        name = body["metadata"]["name"]
        if await self._end_early(body, "Stopped", message, phase="Stopped", stopreq=1):
            log.info(f"Workflow {name} stopped before it started", workflow=name)

    async def _fail_permanently(self, body: dict[str, Any], reason: str) -> None:
        name = body["metadata"]["name"]
        message = f"the API server refused a request: {reason}"
        log.error(f"Workflow {name} failed: {message}", workflow=name)
        if await self._end_early(body, "Failed", message, phase="Failed", stopreq=0):
            await self._after_terminal(body)

    async def _after_terminal(self, body: dict[str, Any]) -> None:
        """A terminal workflow: the stop notification (if it was started) and clean-up, each once."""
        logs.bind(stage="finished")
        status = body.get("status") or {}
        workflow = _started(body)
        if workflow is not None:
            self.notifier.ensure(body, workflow, "start")
            self.notifier.ensure(body, workflow, "stop")
        if not self.config.DEBUG_NO_CLEANUP and not status.get("cleanedUp"):
            namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
            await self.cleanup(namespace, name)
            await self.kube.patch_workflow_status(namespace, name, {"cleanedUp": True})

    async def cleanup(self, namespace: str, name: str) -> None:
        """Delete every child of the workflow; the Workflow itself stays, it holds the status.

        Each child the operator may have made is deleted by its fixed name
        (render.child_names); one that was never made, or is gone, answers 404,
        which counts as done. No list: see docs/SECURITY.md (least privilege).
        """
        names = child_names(name)
        for kind, keys in CLEANUP_CHILDREN:
            for key in keys:
                if await self.kube.delete(kind, namespace, names[key]):
                    log.info(f"{kind} {names[key]} deleted", workflow=name)

    async def finalize(self, body: dict[str, Any]) -> None:
        """The Workflow is being deleted: stop what runs, clean up, tell operator-service once."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        async with self._lock(namespace, name):
            await self.cleanup(namespace, name)
            workflow = _started(body)
            if workflow is not None:
                await self.notifier.before_delete(body, workflow)
            await self.kube.remove_finalizer(body, FINALIZER)
            metrics.CENSUS.forget(body)
            log.info(f"Workflow {name} deleted; children removed", workflow=name)
        self._locks.pop((namespace, name), None)
        await self.admit(namespace)

    def start_backstop(self, namespace: str, interval: float) -> None:
        self._backstop = asyncio.create_task(self._backstop_loop(namespace, interval), name="backstop")

    async def _backstop_loop(self, namespace: str, interval: float) -> None:
        """Every `interval` seconds, reconcile each workflow that is not settled.

        Not how stages advance (watch events do that): it catches an event
        lost to a watch reconnect, a deadline the Job controller missed, a
        notification or clean-up cut short, and queued workflows.
        """
        while True:
            await asyncio.sleep(interval)
            await self.sweep(namespace)

    async def sweep(self, namespace: str) -> bool:
        """Reconcile each workflow that is not settled; False if they could not be listed.

        The backstop's pass, and a new leader's first act: it carries on every
        workflow from the cluster's state, whatever the previous leader left.
        """
        try:
            workflows = await self.kube.list_workflows(namespace)
        except Exception as exc:  # the backstop must outlive any one failure
            log.warning(f"backstop pass failed, will retry: {type(exc).__name__}: {exc}")
            return False
        metrics.CENSUS.replace(workflows)
        for body in workflows:
            name = body["metadata"]["name"]
            try:
                if not self._settled(body):
                    await self.reconcile(namespace, name, backstop=True)
            except Exception as exc:  # one workflow's failure never ends the pass for the others
                log.warning(f"backstop: workflow {name} failed, will retry: {type(exc).__name__}: {exc}", workflow=name)
        return True

    def _settled(self, body: dict[str, Any]) -> bool:
        status = body.get("status") or {}
        if body["metadata"].get("deletionTimestamp") or not is_terminal(status):
            return False
        return not self.notifier.pending(status) and bool(status.get("cleanedUp") or self.config.DEBUG_NO_CLEANUP)

    async def close(self) -> None:
        await self.notifier.close()
        if self._backstop is not None:
            self._backstop.cancel()
            await asyncio.gather(self._backstop, return_exceptions=True)
        await asyncio.to_thread(self.kube.close)


def _seconds_since(moment: datetime.datetime) -> float:
    """Seconds from a Kubernetes timestamp (whole seconds) to now; never below 0."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return max(0.0, (datetime.datetime.now(datetime.UTC) - moment).total_seconds())


def _job_end(job_status: Any) -> datetime.datetime | None:
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


def _observe_stage(stage: str, created: datetime.datetime, ended: datetime.datetime | None) -> None:
    """One stage run: from its Job's creation to its pod's end (now, if no pod ended)."""
    end = ended or datetime.datetime.now(datetime.UTC)
    start = created if created.tzinfo else created.replace(tzinfo=datetime.UTC)
    end = end if end.tzinfo else end.replace(tzinfo=datetime.UTC)
    metrics.STAGE_DURATION.labels(stage=stage).observe(max(0.0, (end - start).total_seconds()))


def _observe_step(body: dict[str, Any], status: dict[str, Any], ended: JobView | None) -> None:
    """Metrics of a status the engine has just written: the census, a stage that ended, a finished workflow.

    A stage whose Job finished ends when the status code leaves the stage's
    code; that write happens once per stage run (the next call reads the new
    code), so each stage run is observed once. (A stopped stage is observed
    when its running Job is deleted, in `_apply`.)
    """
    metrics.CENSUS.update(body, status)
    previous = (body.get("status") or {}).get("statusCode")
    stage = STAGE_OF_CODE.get(previous)
    if (
        stage
        and "statusCode" in status
        and status["statusCode"] != previous
        and ended
        and ended.created
        and ended.finished
        and not ended.deleting
    ):
        _observe_stage(stage, ended.created, ended.ended)
    if status.get("dateFinished") and status.get("phase"):
        metrics.workflow_finished(status["phase"])


def _started(body: dict[str, Any]) -> Workflow | None:
    """The workflow, if it was admitted (so notifications concern it) and is valid."""
    if not (body.get("status") or {}).get("dateStarted"):
        return None
    try:
        return parse_workflow(body)
    except InvalidWorkflow:
        return None


def _with_condition(body: dict[str, Any], event: tuple[str, str], status: dict[str, Any]) -> list[dict[str, Any]]:
    """The Workflow's conditions with this step's one set (by type), for `kubectl describe`."""
    reason, message = event
    conditions = [c for c in ((body.get("status") or {}).get("conditions") or []) if c.get("type") != reason]
    failed = status.get("phase") in ("Failed", "TimedOut")
    conditions.append(
        {
            "type": reason,
            "status": "True",
            "reason": reason,
            "message": message[:1000],
            "lastTransitionTime": now_rfc3339(),
        }
    )
    if failed:
        conditions[-1]["reason"] = status["phase"]
    return conditions[-10:]
