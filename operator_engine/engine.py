"""The reconciler: the only writer of a Workflow's status.

A watch event or the backstop puts a workflow's key on the work queue
(`workqueue`); a worker takes it, observes the workflow (`observation`),
asks `pipeline.next_step` and applies the step, and decides again in the
same call until a step needs the cluster to move (a Job to run or to go).
Admission (`admission`) picks which Queued workflows may start; the
reconciler admits them. Everything is read from the cluster: the Workflow's
status says where the workflow is, its Jobs say what happened since.

Memory kept between calls, each entry dropped once its workflow is deleted
or settled: what this process knows of each workflow's newest body (`Known`:
the status fields it wrote, so that a body a watch delivered is used only
when it is not older than our own writes; and the resourceVersion of the
newest body it decided on, so that the watch's echo of its own write costs
nothing), and which workflows crashed (their traceback is logged once).
The notifications on their way are the notifier's (`notifier.Notifier`),
which keeps them only while in flight.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime
import traceback
from collections.abc import Callable, Hashable
from typing import Any

from operator_engine import logs, metrics, observation
from operator_engine.admission import Admission
from operator_engine.config import Config
from operator_engine.facts import (
    FAILED_PHASES,
    FINALIZER,
    STAGE_OF_CODE,
    TERMINAL_PHASES,
    StatusCode,
    child_names,
)
from operator_engine.kube import Conflict, Kube, PermanentError, TransientError
from operator_engine.model import InvalidWorkflow, Workflow, parse_workflow
from operator_engine.notifier import Notifier
from operator_engine.observation import Observer, with_termination
from operator_engine.pipeline import JobView, Step, View, internal_error, is_terminal, next_step, refused
from operator_engine.render import Child, Renderer
from operator_engine.workqueue import Entry, WorkQueue

# Admission's writes conditioned on the version it listed: a Workflow that changes under it this many
# times in a row is left to its reconcile (the next admission pass picks it again).
ADMIT_ATTEMPTS = 3
DEADLINE_GRACE_SECONDS = 30  # the backstop waits this long past activeDeadlineSeconds before acting
# At most this many reconciles at once (each mostly waits on the API server). Measured with
# benchmarks/transitions.py, 200 workflows in flight: 16 gave a transition median of 1.3 s, 64 of 0.7 s.
RECONCILE_WORKERS = 64
# What cleanup deletes, by kind, as keys of facts.child_names, in this order
# (Jobs first, so nothing runs on a volume that goes). By name, not by a label
# list: the Role then needs no `list` on Secrets, ConfigMaps or PVCs.
CLEANUP_CHILDREN = (
    ("Job", ("configure", "algorithm", "filter", "publish")),
    ("PersistentVolumeClaim", ("data", "adminlogs")),
    ("ConfigMap", ("configmap",)),
    ("Secret", ("algorithm_secret", "publish_secret")),
)
# The `stage` field of a workflow's log lines, by its status code (terminal: "finished").
LOG_STAGE_OF_CODE: dict[int | None, str] = {
    None: "queue",
    StatusCode.QUEUED: "queue",
    StatusCode.STARTED: "configure",
    StatusCode.CONFIGURING: "configure",
    StatusCode.PROVISIONED: "algorithm",
    StatusCode.RUNNING_ALGORITHM: "algorithm",
    StatusCode.FILTERING: "filter",
    StatusCode.PUBLISHING: "publish",
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


@dataclasses.dataclass
class Observed:
    """What one reconcile listed for a stage: its Jobs' views and, once a step needed them, the workflow's pods."""

    stage: str
    jobs: dict[str, JobView]
    pods: list[Any] | None = None


def _log_stage(status: dict[str, Any]) -> str:
    if status.get("dateFinished") and status.get("phase") in TERMINAL_PHASES:
        return "finished"
    return LOG_STAGE_OF_CODE.get(status.get("statusCode"), "unknown")


@dataclasses.dataclass
class Known:
    """What this process knows of a workflow's newest body, from its own writes and reads.

    `written`: the status fields it wrote and their values as the API server
    stored them; a delivered body whose status does not show them all
    predates one of its writes. `version`: the resourceVersion of the newest
    body it decided on, None when it is not sure it decided on everything
    that body holds (someone else changed the Workflow's spec or deletion
    meanwhile, or a reconcile stopped half-way). `own`: the resourceVersions
    its own writes made whose echo the watch has not delivered yet (the watch
    delivers them in order, so they go once `version`'s echo comes).
    `body`: the newest body it has while the workflow runs (admitted, not
    finished), as the API server answered a write or a read, or as the watch
    delivered it: what a reconcile asked for by a Job's end (whose event
    carries the Job, not the Workflow) starts from, as a controller's informer
    cache serves it; the backstop reads the Workflow. `uid`: the Workflow's,
    so that a new one of the same name is never mistaken for it.
    """

    written: dict[str, Any] = dataclasses.field(default_factory=dict)
    version: str | None = None
    own: set[str] = dataclasses.field(default_factory=set)
    body: dict[str, Any] | None = None
    uid: str | None = None


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`target` with `patch` merged in as a JSON merge patch (RFC 7386) does it: what the API server stores."""
    result = dict(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge_patch(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


class Engine:
    def __init__(
        self,
        config: Config,
        kube: Kube,
        post_event: EventPoster | None = None,
        notify_deadline: float = 300.0,
        workers: int = RECONCILE_WORKERS,
    ) -> None:
        self.config = config
        self.kube = kube
        self.renderer = Renderer(config)
        self.observer = Observer(kube)
        self.admission = Admission(config, kube, admit_one=self._admit_one)
        self.queue = WorkQueue(self._process, workers)
        self.post_event = post_event or (lambda body, type_, reason, message: None)
        self.notifier = Notifier(config, kube, deadline=notify_deadline, on_write=self._own_write)
        # What this process knows of each workflow's newest body (see Known); dropped once the
        # workflow is settled and the watch has caught up with it, or deleted.
        self._known: dict[tuple[str, str], Known] = {}
        self._backstop: asyncio.Task[None] | None = None
        self._finalizing: dict[tuple[str, str], asyncio.Task[None]] = {}  # deletions in progress
        # Workflows (by uid) whose handling raised unexpectedly: the traceback is logged once.
        self._crashed: set[str] = set()

    # --- the entries: watch events, the backstop, admission

    def reconcile(
        self,
        namespace: str,
        name: str,
        body: dict[str, Any] | None = None,
        *,
        backstop: bool = False,
        nudged: bool = False,
    ) -> None:
        """Queue workflow `name` for a reconcile, with the body a watch delivered (if any).

        `nudged`: reconcile even if `body` is one this process decided on already.
        """
        self.queue.add(("workflow", namespace, name), body, backstop=backstop, nudged=nudged)

    def request_admission(self, namespace: str) -> None:
        """Queue an admission pass (many requests while one waits make one pass)."""
        self.queue.add(("admission", namespace))

    async def admit(self, namespace: str) -> None:
        """An admission pass now (at start, before the watches)."""
        await self.admission.admit(namespace)

    def forget(self, namespace: str, name: str, body: dict[str, Any] | None = None) -> None:
        """Drop what this process keeps about a workflow (deleted, or settled)."""
        self._known.pop((namespace, name), None)
        self.admission.forget(body)
        if body is not None:
            uid = body["metadata"].get("uid")
            self._crashed.discard(uid or name)

    async def _process(self, key: Hashable, entry: Entry) -> None:
        assert isinstance(key, tuple)  # ("workflow", namespace, name) or ("admission", namespace)
        if key[0] == "admission":
            await self.admission.admit(key[1])
            return
        _, namespace, name = key
        with logs.bound(workflow=name):
            try:
                await self._reconcile(namespace, name, entry)
            except Exception as exc:  # logged with its workflow; the backstop tries again
                if known := self._known.get((namespace, name)):
                    known.version = None  # it stopped half-way: the echo of its last write is looked at
                log.warning(
                    f"Workflow {name}: reconcile failed, the backstop retries: {type(exc).__name__}: {exc}",
                    workflow=name,
                )

    # --- one workflow: observe, decide, apply, until the cluster must move

    def _stale(self, namespace: str, name: str, body: dict[str, Any]) -> bool:
        """Whether `body` may predate what this process knows: it must be read again before it is acted on.

        With a memory of the workflow: a body that does not show every status
        field written. Without (this process never wrote to it, or forgot it
        once it was settled): any body that could make it act, that is one of
        a workflow admitted and not settled; a new or Queued one, or a settled
        one, is taken as it is (after a restart, each of thousands of finished
        workflows costs no read).
        """
        known = self._known.get((namespace, name))
        status = body.get("status") or {}
        if known is None:
            return bool(status.get("dateStarted")) and not self._settled(body)
        return any(status.get(field) != value for field, value in known.written.items())

    def _seen(self, namespace: str, name: str, entry: Entry) -> bool:
        """Whether this reconcile would only look again at what this process decided on already.

        True for a body the watch delivered, when nothing else asked (no Job's
        end, no backstop, no admission), and the body is either the newest one
        this process decided on (`Known.version`: the echo of its last write)
        or the echo of an earlier write of its own (`Known.own`), whose
        successors up to that last echo come next (a watch delivers one
        object's events in order). Any other body is looked at.
        """
        known = self._known.get((namespace, name))
        if entry.body is None or entry.nudged or entry.backstop or known is None or known.version is None:
            return False
        version = entry.body["metadata"].get("resourceVersion")
        return version == known.version or version in known.own

    async def _reconcile(self, namespace: str, name: str, entry: Entry) -> None:
        delivered, backstop = entry.body, entry.backstop
        version = (delivered or {}).get("metadata", {}).get("resourceVersion")
        known = self._known.get((namespace, name))
        if known is not None and delivered is not None and known.uid != delivered["metadata"].get("uid"):
            self._known.pop((namespace, name))  # a new Workflow of the same name: nothing known of it
            known = None
        if self._seen(namespace, name, entry):
            assert delivered is not None and known is not None
            if version == known.version:
                known.own.clear()  # the watch caught up with the last write: every earlier echo came
            if self._settled(delivered):
                # Settled as of a write of its own: an older body the watch may still deliver is of a
                # workflow admitted and not settled, which is read again when nothing is known of it.
                self.forget(namespace, name, delivered)
            return
        if delivered is None and not backstop and known is not None and known.body is not None:
            delivered = known.body  # a Job's end: the newest body this process has
        stale = delivered is None or self._stale(namespace, name, delivered)
        body = None if stale else copy.deepcopy(delivered)
        if body is None:
            body = await self.kube.get_workflow(namespace, name)
            if body is None:
                self.forget(namespace, name, delivered)
                return
            if known is not None:
                # What the API server says now is the truth: later bodies are compared with it.
                status = body.get("status") or {}
                known.written = {field: status.get(field) for field in known.written}
                known.version = body["metadata"].get("resourceVersion")
                known.body = copy.deepcopy(body) if _running(body) else None
                known.uid = body["metadata"].get("uid")
        elif known is not None and delivered is not None:
            known.body = delivered if _running(delivered) else None
        deleting = bool(body["metadata"].get("deletionTimestamp"))
        logs.bind(stage="delete" if deleting else _log_stage(body.get("status") or {}))
        if deleting:
            if FINALIZER in (body["metadata"].get("finalizers") or []) and (namespace, name) not in self._finalizing:
                # Its own task: the stop notification may wait minutes for a receiver that is
                # down, which must not hold one of the workers every other workflow needs.
                self._finalizing[(namespace, name)] = asyncio.create_task(self._finalize_apart(body))
            return
        try:
            queue_changed = await self._run(body, backstop)
            self.admission.unadmittable(body, stuck=False)  # its writes go through: it queues as usual
        except TransientError:
            raise  # the API server is unwell for every workflow; the backstop tries again
        except Exception as exc:  # a PermanentError too, when even its ending could not be written
            queue_changed = await self._internal_error(body, exc)
        if queue_changed:
            self.request_admission(namespace)
        known = self._known.get((namespace, name))
        if self._settled(body) and (known is None or (version is not None and known.version == version)):
            self.forget(namespace, name, body)  # settled, and no echo of a write of its own is on its way

    async def _run(self, body: dict[str, Any], backstop: bool) -> bool:
        """Steps until one waits for the cluster. True if the queue may have changed."""
        status = body.get("status") or {}
        if is_terminal(status):
            await self._after_terminal(body)
            return False
        workflow: Workflow | None = None
        invalid: InvalidWorkflow | None = None
        try:
            workflow = parse_workflow(body)
        except InvalidWorkflow as exc:
            invalid = exc
        queue_changed = False
        observed: Observed | None = None
        try:
            while True:
                status = body.get("status") or {}
                code = status.get("statusCode")
                logs.bind(stage=_log_stage(status))
                if workflow is not None and code not in (None, StatusCode.QUEUED):
                    self.notifier.ensure(body, workflow, "start")
                view, observed, ended = await self._observe(body, workflow, invalid, backstop, observed)
                step = next_step(view, now_rfc3339())
                if not step:
                    break
                if not await self._apply(body, workflow, step, ended, invalid):
                    return queue_changed  # the Workflow is gone
                if step.status.get("statusCode") == StatusCode.QUEUED or step.status.get("dateFinished"):
                    queue_changed = True
                if step.waits or step.status.get("dateFinished"):
                    break
        except PermanentError as exc:
            await self._refused(body, str(exc))
            return True
        return queue_changed

    async def _observe(
        self,
        body: dict[str, Any],
        workflow: Workflow | None,
        invalid: InvalidWorkflow | None,
        backstop: bool,
        observed: Observed | None,
    ) -> tuple[View, Observed | None, JobView | None]:
        """What the next decision needs, and the Job whose end the step may follow (for the metrics).

        The Jobs are listed once per call and stage, and the pods at most once
        (`observed`): a step that changes them waits for the cluster. The pods
        are listed when the step may start the filter or publish (which wait
        for every pod that writes the outputs to be gone), and that is when
        the current stage's Job has ended, whose last pod says how.
        """
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        status = body.get("status") or {}
        code = status.get("statusCode")
        base = View(
            status=status,
            created=body["metadata"].get("creationTimestamp"),
            generation=body["metadata"].get("generation"),
            problem=str(invalid) if invalid is not None else None,
            filtering=bool(self.config.FILTERING_CONTAINER),
        )
        if workflow is None:
            return base, observed, None
        base = dataclasses.replace(
            base, stop_requested=workflow.stop_requested, owner=workflow.owner, agreement_id=workflow.agreement_id
        )
        if code is None:
            return dataclasses.replace(base, notes=self.renderer.limits(workflow).notes), observed, None
        stage = STAGE_OF_CODE.get(code)
        if stage is None:
            # Code 30 follows the configure Job's end: its view, when this call observed it, is for the metrics.
            configure = observed.jobs.get("configure") if observed and code == StatusCode.PROVISIONED else None
            return base, observed, configure
        if observed is None or observed.stage != stage:
            observed = Observed(stage, await self.observer.jobs(namespace, name))
        jobs = observed.jobs
        overdue = False
        if backstop and code == StatusCode.RUNNING_ALGORITHM:
            started = _parse_time(status.get("algorithmStarted"))
            deadline = self.renderer.limits(workflow).algorithm_deadline
            overdue = (
                started is not None
                and (datetime.datetime.now(datetime.UTC) - started).total_seconds() > deadline + DEADLINE_GRACE_SECONDS
            )
        current = jobs.get(stage)
        lingering: frozenset[str] = frozenset()
        if current is None or current.finished or workflow.stop_requested or overdue:
            if observed.pods is None:  # the step may start the filter or publish
                observed.pods = await self.observer.pods(namespace, name)
                if current is not None and current.finished:
                    current = jobs[stage] = with_termination(current, observed.pods, child_names(name)[stage])
            lingering = observation.lingering(observed.pods)
        view = dataclasses.replace(base, jobs=jobs, lingering=lingering, overdue=overdue)
        return view, observed, current

    async def _apply(
        self,
        body: dict[str, Any],
        workflow: Workflow | None,
        step: Step,
        ended: JobView | None = None,
        invalid: InvalidWorkflow | None = None,
        version: str | None = None,
    ) -> bool:
        """Apply one step; the body then holds the status written. False if the Workflow is gone.

        `ended`: the current stage's Job, whose end this step may follow (for the metrics).
        `version`: write the status only if the Workflow is still this resourceVersion (else `Conflict`).
        """
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        before = body.get("status") or {}
        if step.finalizer:
            if stored := await self.kube.add_finalizer(body, FINALIZER):
                self._own_write(body, stored)
            body["metadata"]["finalizers"] = [*(body["metadata"].get("finalizers") or []), FINALIZER]
        names = child_names(name)
        for component in step.delete:
            # In the foreground: the Job goes only once its pods are gone (see pipeline.decide).
            if await self.kube.delete("Job", namespace, names[component], foreground=True):
                log.info(f"Job {names[component]} deleted", workflow=name)
                if (
                    ended
                    and ended.created
                    and not (ended.finished or ended.deleting)
                    and component == STAGE_OF_CODE.get(before.get("statusCode"))
                ):
                    _observe_stage(component, ended.created, None)  # a stopped stage ends now
        if step.create and workflow is not None:
            # Rendered only for a step that creates: most steps only change the status.
            outcome = step.status.get("outcome", before.get("outcome")) or {}
            children = self.renderer.render(
                workflow, withhold_outputs=bool(outcome.get("withholdOutputs")), steps=step.create
            )
            for item in step.create:
                for child in (c for c in children if c.step == item):
                    if await self._create(child, name) and child.kind == "Job" and ended and ended.ended:
                        metrics.TRANSITION_LATENCY.observe(_seconds_since(ended.ended))
        if not step.status:
            return True
        status = step.status
        if "statusCode" in status and not status.get("dateFinished") and status["statusCode"] != StatusCode.QUEUED:
            log.info(f"Workflow {name}: {status['statusCode']} {status['statusText']}", workflow=name)
        if not await self._write_status(body, status, version):
            return False
        _observe_step({**body, "status": before}, status, ended)
        if step.event:
            reason, message = step.event
            self.post_event(body, "Warning" if status.get("phase") in FAILED_PHASES else "Normal", reason, message)
            self._log_step(name, reason, before, status, workflow, invalid)
        if status.get("dateFinished"):
            await self._after_terminal(body)
        return True

    def _log_step(
        self,
        name: str,
        reason: str,
        before: dict[str, Any],
        status: dict[str, Any],
        workflow: Workflow | None,
        invalid: InvalidWorkflow | None,
    ) -> None:
        """The operator log's line for a step that changed the status (the Event has the same story)."""
        if reason == "Queued":
            log.info(f"Workflow {name} queued", workflow=name, shape=workflow.shape if workflow else None)
        elif reason == "Started":
            log.info(f"Workflow {name} admitted", workflow=name)
        elif reason == "Rejected" and invalid is not None:
            log.warning(f"Workflow {name} rejected: {invalid.first}", workflow=name)
        elif status.get("dateFinished") and before.get("statusCode") == StatusCode.QUEUED:
            log.info(f"Workflow {name} stopped before it started", workflow=name)
        elif status.get("dateFinished"):
            ending = f": {status['message']}" if status.get("message") else ""
            log.info(f"Workflow {name} finished {status['phase']}{ending}", workflow=name)

    async def _write_status(self, body: dict[str, Any], status: dict[str, Any], version: str | None = None) -> bool:
        """Merge `status` into the Workflow's, on the API server and in `body`. False if the Workflow is gone.

        The answer is the Workflow as stored: when its spec and deletion are
        those `body` has, this process decides on everything it holds, and its
        resourceVersion is remembered (`Known.version`) so that the watch's echo
        of this write is not reconciled again.
        """
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        stored = await self.kube.patch_workflow_status(namespace, name, status, resource_version=version)
        if not stored:
            return False
        body["status"] = merge_patch(body.get("status") or {}, status)
        known = self._own_write(body, stored)
        for field in status:  # as stored: the API server may normalise a value (a schema's pruning, ...)
            known.written[field] = (stored.get("status") or {}).get(field)
        meta = stored.get("metadata") or {}
        known.version = meta.get("resourceVersion") if _unchanged(body, stored) else None
        known.body = stored if _running(stored) else None
        return True

    def _own_write(self, body: dict[str, Any], stored: dict[str, Any]) -> Known:
        """Remember a write of this process to the Workflow (`body`: as the writer had it; `stored`: the answer).

        Its echo is one of this process's own (`Known.own`) only when the answer
        shows nothing else changed: a spec or a deletion someone else wrote
        meanwhile comes with that echo, which must then be looked at.
        """
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        known = self._known.setdefault((namespace, name), Known())
        meta = stored.get("metadata") or {}
        if known.uid != meta.get("uid"):
            known.written, known.own, known.uid = {}, set(), meta.get("uid")
        if meta.get("resourceVersion") and _unchanged(body, stored):
            known.own.add(meta["resourceVersion"])
        return known

    async def _create(self, child: Child, workflow_name: str) -> bool:
        """Create one child; False if it existed already."""
        if await self.kube.create(child.manifest):
            log.info(f"{child.kind} {child.name} created", workflow=workflow_name)
            return True
        log.info(f"{child.kind} {child.name} already exists", workflow=workflow_name)
        return False

    async def _admit_one(self, namespace: str, name: str, listed: dict[str, Any]) -> bool:
        """Admission picked this workflow: admit it now if it is still Queued, then let it go on in the queue.

        Called by admission, oldest first, one after the other: held like a
        worker holds the key, so that no reconcile of the same workflow runs
        meanwhile. `listed` is the Workflow as admission listed it; a stop
        request or a deletion may have come since, so the admission is written
        only if the Workflow is still that version (else it is read again).
        """
        key = ("workflow", namespace, name)
        async with self.queue.exclusive(key):
            with logs.bound(workflow=name, stage="admission"):
                body: dict[str, Any] | None = copy.deepcopy(listed)
                for attempt in range(1, ADMIT_ATTEMPTS + 1):
                    if body is None or body["metadata"].get("deletionTimestamp"):
                        return False
                    try:
                        # The last attempt, on a body just read while the workflow is held, writes whatever
                        # changed since (a label, an annotation): a stop request is then its reconcile's.
                        return await self._admit_version(namespace, name, body, conditional=attempt < ADMIT_ATTEMPTS)
                    except Conflict:
                        body = await self.kube.get_workflow(namespace, name)
                return False

    async def _admit_version(self, namespace: str, name: str, body: dict[str, Any], conditional: bool) -> bool:
        """Admit the Workflow if it is Queued; `conditional`: only if `body` is still its version (else `Conflict`)."""
        try:
            workflow = parse_workflow(body)
        except InvalidWorkflow:
            self.reconcile(namespace, name, body, nudged=True)  # its reconcile rejects it
            return False
        view = dataclasses.replace(self._view(body), stop_requested=workflow.stop_requested, admitted=True)
        step = next_step(view, now_rfc3339())
        if step.status.get("statusCode") != StatusCode.STARTED:
            self.reconcile(namespace, name, body, nudged=True)  # no longer Queued, or stopped: it says
            # Listed Queued, read admitted: an earlier attempt of this pass whose answer was lost (its
            # retry met its own write: 409) admitted it. It counts as admitted by this pass.
            return _running(body)
        version = body["metadata"].get("resourceVersion") if conditional else None
        admitted = await self._apply(body, workflow, step, version=version)
        self.reconcile(namespace, name, body, nudged=True)  # on at once: volumes and the configure Job
        return admitted

    # --- endings the API server or a bug force

    def _view(self, body: dict[str, Any]) -> View:
        return View(
            status=body.get("status") or {},
            created=body["metadata"].get("creationTimestamp"),
            generation=body["metadata"].get("generation"),
        )

    async def _refused(self, body: dict[str, Any], reason: str) -> None:
        """The API server refused a request for good: the workflow ends Failed, and its slot is free."""
        name = body["metadata"]["name"]
        log.error(f"Workflow {name} failed: the API server refused a request: {reason}", workflow=name)
        try:
            await self._apply(body, None, refused(self._view(body), reason, now_rfc3339()))
        except PermanentError as exc:
            if not is_terminal(body.get("status") or {}):
                raise  # not even its ending could be written: see _internal_error
            log.warning(f"Workflow {name}: clean-up refused too ({exc}); the backstop retries it", workflow=name)

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
        step = internal_error(self._view(body), type(exc).__name__, now_rfc3339())
        if not step:
            return True  # it has its ending already (the backstop retries the clean-up): its slot is free
        try:
            if await self._write_status(body, step.status):
                _observe_step(body, step.status, None)
                assert step.event is not None
                self.post_event(body, "Warning", *step.event)
                self.admission.unadmittable(body, stuck=False)
                await self._after_terminal(body)
        except Exception as again:  # noqa: BLE001 (the queue must not wait on this workflow)
            self.admission.unadmittable(body, stuck=True)
            log.error(
                f"Workflow {name}: could not be ended Failed either ({type(again).__name__}: {again}); "
                "it is left out of admission until it can be",
                workflow=name,
            )
        return True

    async def _after_terminal(self, body: dict[str, Any]) -> None:
        """A terminal workflow: the stop notification (if it was started) and clean-up, each once."""
        logs.bind(stage="finished")
        status = body.get("status") or {}
        workflow = _started(body)
        if workflow is not None:
            self.notifier.ensure(body, workflow, "start")
            self.notifier.ensure(body, workflow, "stop")
        if not self.config.DEBUG_NO_CLEANUP and not status.get("cleanedUp"):
            await self.cleanup(body["metadata"]["namespace"], body["metadata"]["name"])
            await self._write_status(body, {"cleanedUp": True})

    async def cleanup(self, namespace: str, name: str) -> None:
        """Delete every child of the workflow; the Workflow itself stays, it holds the status.

        Each child the operator may have made is deleted by its fixed name
        (facts.child_names); one that was never made, or is gone, answers 404,
        which counts as done. No list: see docs/SECURITY.md (least privilege).
        """
        names = child_names(name)
        for kind, keys in CLEANUP_CHILDREN:
            for key in keys:
                if await self.kube.delete(kind, namespace, names[key]):
                    log.info(f"{kind} {names[key]} deleted", workflow=name)

    async def _finalize_apart(self, body: dict[str, Any]) -> None:
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        with logs.bound(workflow=name, stage="delete"):
            try:
                await self.finalize(body)
            except Exception as exc:  # the next event or the backstop tries again
                log.warning(f"Workflow {name}: deletion failed, will retry: {type(exc).__name__}: {exc}", workflow=name)
            finally:
                self._finalizing.pop((namespace, name), None)

    async def finalize(self, body: dict[str, Any]) -> None:
        """The Workflow is being deleted: stop what runs, clean up, tell operator-service once."""
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        await self.cleanup(namespace, name)
        workflow = _started(body)
        if workflow is not None:
            await self.notifier.before_delete(body, workflow)
        await self.kube.remove_finalizer(body, FINALIZER)
        metrics.CENSUS.forget(body)
        log.info(f"Workflow {name} deleted; children removed", workflow=name)
        self.forget(namespace, name, body)
        self.request_admission(namespace)

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
        """Queue each workflow that is not settled, and an admission pass; False if they could not be listed.

        The backstop's pass, and a new leader's first act: it carries on every
        workflow from the cluster's state, whatever the previous leader left.
        Each is read again (not taken from the list): the backstop is the path
        that must work when the watches' bodies are not to be trusted.
        """
        try:
            workflows = await self.kube.list_workflows(namespace)
        except Exception as exc:  # the backstop must outlive any one failure
            log.warning(f"backstop pass failed, will retry: {type(exc).__name__}: {exc}")
            return False
        metrics.CENSUS.replace(workflows)
        for body in workflows:
            if not self._settled(body):
                self.reconcile(namespace, body["metadata"]["name"], backstop=True)
            else:
                self.forget(namespace, body["metadata"]["name"], body)  # settled since its last reconcile
        self.request_admission(namespace)
        return True

    def _settled(self, body: dict[str, Any]) -> bool:
        status = body.get("status") or {}
        if body["metadata"].get("deletionTimestamp") or not is_terminal(status):
            return False
        return not self.notifier.pending(status) and bool(status.get("cleanedUp") or self.config.DEBUG_NO_CLEANUP)

    async def close(self) -> None:
        await self.notifier.close()
        tasks = [
            *self._finalizing.values(),
            *([self._backstop] if self._backstop else []),
        ]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.queue.close()
        await self.kube.close()


def _seconds_since(moment: datetime.datetime) -> float:
    """Seconds from a Kubernetes timestamp (whole seconds) to now; never below 0."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return max(0.0, (datetime.datetime.now(datetime.UTC) - moment).total_seconds())


def _observe_stage(stage: str, created: datetime.datetime, ended: datetime.datetime | None) -> None:
    """One stage run: from its Job's creation to its pod's end (now, if no pod ended)."""
    end = ended or datetime.datetime.now(datetime.UTC)
    start = created if created.tzinfo else created.replace(tzinfo=datetime.UTC)
    end = end if end.tzinfo else end.replace(tzinfo=datetime.UTC)
    metrics.STAGE_DURATION.labels(stage=stage).observe(max(0.0, (end - start).total_seconds()))


def _observe_step(body: dict[str, Any], status: dict[str, Any], ended: JobView | None) -> None:
    """Metrics of a status the engine has just written: the census, a stage that ended, a finished workflow.

    `body` is the Workflow as it was before the write. A stage whose Job
    finished ends when the status code leaves the stage's code; that write
    happens once per stage run, so each stage run is observed once. (A stopped
    stage is observed when its running Job is deleted, in `_apply`.)
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


def _unchanged(body: dict[str, Any], stored: dict[str, Any]) -> bool:
    """Whether the API server's answer to a write has the spec and deletion `body` had (what decisions read)."""
    meta = stored.get("metadata") or {}
    return stored.get("spec") == body.get("spec") and meta.get("deletionTimestamp") == body["metadata"].get(
        "deletionTimestamp"
    )


def _running(body: dict[str, Any]) -> bool:
    """Admitted and not finished: a Job's end concerns it (the bodies kept are of these only, at most maxJobs)."""
    status = body.get("status") or {}
    return bool(status.get("dateStarted")) and not is_terminal(status)


def _started(body: dict[str, Any]) -> Workflow | None:
    """The workflow, if it was admitted (so notifications concern it) and is valid."""
    if not (body.get("status") or {}).get("dateStarted"):
        return None
    try:
        return parse_workflow(body)
    except InvalidWorkflow:
        return None
