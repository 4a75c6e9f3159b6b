"""What comes next for a workflow: pure functions of what the cluster holds.

No I/O here, and no clock: the caller passes `now`. The reconciler observes
the cluster (the Workflow, its Jobs, their pods' termination messages, which
workflows admission picked), calls `next_step`, and applies the `Step` it
returns: add the finalizer, create these children, delete those Jobs, merge
this into the status. Every status transition is decided here, queueing,
admission, rejection, a stop while queued and the endings the API server or a
bug force included (`refused`, `internal_error`); so is the set of
conditions each status carries. Because a decision depends only on what the
cluster holds, a restarted operator decides the same thing, and applying a
step twice is harmless (creating an existing child is a no-op).

The status codes and their order come from operator-service (docs/contract.md §1.2, §1.3).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from operator_engine.facts import (
    FAILED,
    FAILED_PHASES,
    PROVISIONING_FAILURES,
    QUEUED,
    RUNNING,
    STATUS_TEXT,
    STOPPED,
    SUCCEEDED,
    TERMINAL_PHASES,
    StatusCode,
)

__all__ = [
    "STATUS_TEXT",
    "TERMINAL_PHASES",
    "JobView",
    "Step",
    "View",
    "admission",
    "code_status",
    "conditions",
    "decide",
    "internal_error",
    "is_terminal",
    "next_step",
    "refused",
]

# The stages whose pods write to the volumes that the filter and publish read.
OUTPUT_WRITERS = ("configure", "algorithm", "filter")
# The stages that read what the writers left (and, for publish, send it out).
OUTPUT_READERS = ("filter", "publish")
RESULT_FIELDS = ("algologUrl", "configlogUrl", "publishlogUrl", "outputsUrl")
MAX_MESSAGE = 1000  # a condition's message, an Event's: the status keeps the whole `message`


@dataclasses.dataclass(frozen=True)
class JobView:
    """What the cluster says about one stage Job."""

    exists: bool = False
    succeeded: bool = False
    failed: bool = False
    reason: str | None = None  # the Failed condition's reason, e.g. DeadlineExceeded
    exit_code: int | None = None
    message: Any = None  # the pod's termination message, parsed as JSON when it is JSON
    deleting: bool = False  # deletionTimestamp set: its deletion runs (foreground: until its pods are gone)
    # When the Job was created and when it ended (its last pod's finishedAt where the engine read the
    # pod, else the Job's completionTime; whole seconds): only the metrics read them.
    created: datetime.datetime | None = dataclasses.field(default=None, compare=False)
    ended: datetime.datetime | None = dataclasses.field(default=None, compare=False)

    @property
    def finished(self) -> bool:
        return self.succeeded or self.failed


MISSING = JobView()


@dataclasses.dataclass
class Step:
    """What to do now. Empty means: nothing, wait for the next event."""

    create: list[str] = dataclasses.field(default_factory=list)  # "setup" or Job components, in order
    delete: list[str] = dataclasses.field(default_factory=list)  # Job components
    status: dict[str, Any] = dataclasses.field(default_factory=dict)
    event: tuple[str, str] | None = None  # (reason, message) for a Kubernetes Event
    finalizer: bool = False  # add the operator's finalizer before anything else

    def __bool__(self) -> bool:
        return bool(self.create or self.delete or self.status or self.finalizer)

    @property
    def waits(self) -> bool:
        """The cluster must move before the next decision: a Job was created or is being deleted, or it ended.

        A step that only changes the status (admission, code 30, ...) is a pure
        hop: the reconciler decides again at once, in the same call.
        """
        return any(c != "setup" for c in self.create) or bool(self.delete) or bool(self.status.get("dateFinished"))


@dataclasses.dataclass(frozen=True)
class View:
    """Everything a decision needs about one workflow, as the reconciler observed it.

    `problem` is why the Workflow is invalid (None for a valid one); `admitted`
    says that admission picked it for a free slot; `jobs`, `lingering` and
    `overdue` are observed only for the stage codes (see `decide`).
    """

    status: Mapping[str, Any]
    created: str | None = None  # metadata.creationTimestamp
    generation: int | None = None  # metadata.generation, for the conditions' observedGeneration
    problem: str | None = None
    stop_requested: bool = False
    owner: str | None = None
    agreement_id: str | None = None
    notes: tuple[str, ...] = ()  # where the request was clamped to the environment's limits
    admitted: bool = False
    filtering: bool = False
    jobs: Mapping[str, JobView] = dataclasses.field(default_factory=dict)
    lingering: Collection[str] = frozenset()
    overdue: bool = False


def is_terminal(status: Mapping[str, Any]) -> bool:
    return bool(status.get("dateFinished")) and status.get("phase") in TERMINAL_PHASES


def code_status(code: int, **extra: Any) -> dict[str, Any]:
    return {"statusCode": int(code), "statusText": STATUS_TEXT[code], **extra}


def next_step(view: View, now: str) -> Step:
    """The next step of a workflow that is not being deleted, with the conditions its status then has.

    Terminal: nothing (clean-up and notifications are not transitions).
    Invalid: it ends Failed, naming the field, and creates nothing. New: the
    finalizer, then Queued (code 1). Queued: a stop request ends it Stopped;
    admission's pick starts it (code 10). Admitted: `decide`.
    """
    status = view.status
    if is_terminal(status):
        return Step()
    if view.problem is not None:
        return _ending(
            view,
            now,
            "Rejected",
            f"invalid Workflow: {view.problem}",
            phase=FAILED,
            stopreq=0,
            dateCreated=view.created or now,
        )
    code = status.get("statusCode")
    if code is None:
        queued = code_status(
            StatusCode.QUEUED,
            phase=QUEUED,
            stopreq=0,
            dateCreated=view.created or now,
            owner=view.owner,
            agreementId=view.agreement_id,
        )
        if view.notes:
            queued["message"] = "; ".join(view.notes)
        return _with_conditions(
            view, Step(status=queued, event=("Queued", "waiting for a free slot (maxJobs)"), finalizer=True), now
        )
    if code == StatusCode.QUEUED:
        if view.stop_requested:
            return _ending(view, now, STOPPED, "stop requested while queued", phase=STOPPED, stopreq=1)
        if view.admitted and status.get("phase") == QUEUED:
            started = code_status(StatusCode.STARTED, phase=RUNNING, dateStarted=now)
            return _with_conditions(view, Step(status=started, event=("Started", "admitted; the pipeline starts")), now)
        return Step()
    step = decide(
        status,
        view.jobs,
        stop_requested=view.stop_requested,
        filtering=view.filtering,
        now=now,
        overdue=view.overdue,
        lingering=view.lingering,
    )
    return _with_conditions(view, step, now)


def refused(view: View, reason: str, now: str) -> Step:
    """The API server refused a request for good (a PermanentError): the workflow ends Failed."""
    return _ending(view, now, FAILED, f"the API server refused a request: {reason}", phase=FAILED, stopreq=0)


def internal_error(view: View, error: str, now: str) -> Step:
    """A step raised what no code path expects (`error`: the exception's type): it ends Failed at once.

    The message says what happened without the details (they may quote the
    Workflow); the operator log has the traceback. Nothing for a workflow that
    has its ending already (only its clean-up is retried).
    """
    if is_terminal(view.status):
        return Step()
    return _ending(
        view,
        now,
        "InternalError",
        f"internal error ({error}) in the operator; the operator log has the details",
        phase=FAILED,
        stopreq=0,
        dateCreated=view.status.get("dateCreated") or view.created or now,
    )


def _ending(view: View, now: str, reason: str, message: str, **fields: Any) -> Step:
    """An end outside the stages (code 70): rejected, stopped while queued, refused, internal error."""
    status = code_status(StatusCode.COMPLETED, message=message, dateFinished=now, **fields)
    return _with_conditions(view, Step(status=status, event=(reason, message[:MAX_MESSAGE])), now)


# The condition types, each true or false now (docs/contract.md §1.2).
ADMITTED, RUNNING_CONDITION, SUCCEEDED_CONDITION, FAILED_CONDITION = "Admitted", "Running", "Succeeded", "Failed"
# The reason of the Running condition while a stage runs, by status code.
RUNNING_REASON: dict[object, str] = {
    int(StatusCode.STARTED): "Started",
    int(StatusCode.CONFIGURING): "Configuring",
    int(StatusCode.PROVISIONED): "Provisioned",
    int(StatusCode.RUNNING_ALGORITHM): "RunningAlgorithm",
    int(StatusCode.FILTERING): "Filtering",
    int(StatusCode.PUBLISHING): "Publishing",
}
# Endings whose own name says more than the phase does (the Failed condition's reason).
NAMED_ENDINGS = frozenset({"Rejected", "InternalError"})


def conditions(
    previous: Sequence[Mapping[str, Any]],
    status: Mapping[str, Any],
    *,
    generation: int | None,
    now: str,
    event: tuple[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The conditions for `status` (the whole status after a step), Kubernetes style.

    Four conditions, each saying what holds now: `Admitted` (past the queue),
    `Running` (a stage runs), `Succeeded`, `Failed` (Failed or TimedOut). A
    condition's `lastTransitionTime` changes only when its `status` does; its
    reason and message follow the step. The story of the steps is in Events.
    """
    phase = status.get("phase")
    terminal = is_terminal(status)
    code = status.get("statusCode")
    # Once it ended, why (the status's message); before, what the last step did.
    said = [status.get("message"), event and event[1]] if is_terminal(status) else [event and event[1]]
    message = str(next((m for m in said if m), None) or STATUS_TEXT.get(code, ""))[:MAX_MESSAGE]
    named = event[0] if event and event[0] in NAMED_ENDINGS else None
    ending = named or str(phase)
    admitted = bool(status.get("dateStarted"))
    wanted: list[tuple[str, bool, str]] = [
        (ADMITTED, admitted, "Admitted" if admitted else (ending if terminal else "Queued")),
        (
            RUNNING_CONDITION,
            phase == RUNNING and not terminal,
            RUNNING_REASON.get(code, "Running")
            if phase == RUNNING and not terminal
            else (ending if terminal else QUEUED),
        ),
        (SUCCEEDED_CONDITION, terminal and phase == SUCCEEDED, ending if terminal else "NotFinished"),
        (FAILED_CONDITION, terminal and phase in FAILED_PHASES, ending if terminal else "NotFinished"),
    ]
    before = {c.get("type"): c for c in previous}
    result = []
    for type_, true, reason in wanted:
        value = "True" if true else "False"
        old = before.get(type_) or {}
        result.append(
            {
                "type": type_,
                "status": value,
                "observedGeneration": generation,
                "reason": reason,
                "message": message,
                "lastTransitionTime": old.get("lastTransitionTime") if old.get("status") == value else now,
            }
        )
    if generation is None:
        for condition in result:
            del condition["observedGeneration"]
    return result


def _with_conditions(view: View, step: Step, now: str) -> Step:
    """The step with the conditions of the status it leads to (none when it does not change the status)."""
    if not step.status:
        return step
    merged = {**view.status, **step.status}
    step.status["conditions"] = conditions(
        view.status.get("conditions") or [], merged, generation=view.generation, now=now, event=step.event
    )
    return step


def decide(
    status: Mapping[str, Any],
    jobs: Mapping[str, JobView],
    *,
    stop_requested: bool,
    filtering: bool,
    now: str,
    overdue: bool = False,
    lingering: Collection[str] = frozenset(),
) -> Step:
    """The next step of an admitted, non-terminal workflow (statusCode 10 and later).

    `lingering` names the stages (components) that still have a pod that may
    run: one not yet Succeeded or Failed, deleted or not. The engine observes
    it whenever this step may start the filter or publish.
    """
    code = status.get("statusCode")
    outcome: dict[str, Any] = dict(status.get("outcome") or {})

    def job(component: str) -> JobView:
        return jobs.get(component, MISSING)

    def gated(step: Step, stopping: Sequence[str] = ()) -> Step:
        """No stage reads the outputs while a pod that writes them may still run.

        A stopped or timed-out pod keeps running through its grace period (or
        longer, if it ignores SIGTERM): started now, the filter could pass
        outputs the algorithm then rewrites, and publish could read a file the
        algorithm swapped for a link to a secret between a check and a read.
        So the step deletes the writer's Job in the foreground (the Job goes
        only after its pods) and creates nothing; that Job's deletion event, or
        the backstop, brings the workflow back here, and the reader starts once
        no writer is left.
        """
        writers = [c for c in OUTPUT_WRITERS if c in lingering or c in stopping]
        if not writers or not any(c in OUTPUT_READERS for c in step.create):
            return step
        delete = [*step.delete, *(c for c in writers if c not in step.delete and job(c).exists and not job(c).deleting)]
        return dataclasses.replace(step, create=[c for c in step.create if c not in OUTPUT_READERS], delete=delete)

    def to_output_stages(
        outcome: dict[str, Any], algorithm_ran: bool, event: tuple[str, str], stopping: Sequence[str] = ()
    ) -> Step:
        # Outputs always pass the filter before they are published, whatever the algorithm's end.
        kept = {"outcome": outcome} if outcome else {}
        if filtering and algorithm_ran:
            step = Step(create=["filter"], status=code_status(StatusCode.FILTERING, **kept), event=event)
        else:
            step = Step(create=["publish"], status=code_status(StatusCode.PUBLISHING, **kept), event=event)
        return gated(dataclasses.replace(step, delete=list(stopping)), stopping)

    if code == StatusCode.STARTED:
        return Step(
            create=["setup", "configure"],
            status=code_status(StatusCode.CONFIGURING),
            event=("Configuring", "volumes, ConfigMap and configure Job created"),
        )

    if code == StatusCode.CONFIGURING:
        configure = job("configure")
        if stop_requested and not configure.finished:
            stopped: dict[str, Any] = {"phase": "Stopped", "stopreq": 1, "message": "stop requested while provisioning"}
            return to_output_stages(stopped, False, ("Stopped", stopped["message"]), stopping=["configure"])
        if not configure.exists:
            return Step(create=["configure"])  # lost (deleted by hand): make it again
        if configure.succeeded:
            return Step(
                status=code_status(StatusCode.PROVISIONED), event=("Provisioned", "inputs and algorithm are in place")
            )
        if configure.failed:
            failure = _provisioning_failure(configure)
            return to_output_stages(failure, False, ("ProvisioningFailed", failure["message"]))
        return Step()

    if code == StatusCode.PROVISIONED:
        if stop_requested:
            stopped = {"phase": "Stopped", "stopreq": 1, "message": "stop requested before the algorithm started"}
            return to_output_stages(stopped, False, ("Stopped", stopped["message"]))
        return Step(
            create=["algorithm"],
            status=code_status(StatusCode.RUNNING_ALGORITHM, algorithmStarted=now),
            event=("AlgorithmStarted", "algorithm Job created"),
        )

    if code == StatusCode.RUNNING_ALGORITHM:
        algorithm = job("algorithm")
        if algorithm.succeeded:
            return to_output_stages({}, True, ("AlgorithmFinished", "the algorithm succeeded"))
        if algorithm.failed:
            if algorithm.reason == "DeadlineExceeded":
                ended: dict[str, Any] = {
                    "phase": "TimedOut",
                    "stopreq": 2,
                    "message": "the algorithm exceeded its maximum duration and was stopped",
                }
            else:
                ended = {"phase": "Failed", "message": _algorithm_failure(algorithm)}
            return to_output_stages(ended, True, ("AlgorithmFinished", ended["message"]))
        if overdue:  # the backstop for a Job whose activeDeadlineSeconds did not fire
            ended = {
                "phase": "TimedOut",
                "stopreq": 2,
                "message": "the algorithm exceeded its maximum duration and was stopped",
            }
            return to_output_stages(ended, True, ("AlgorithmFinished", ended["message"]), stopping=["algorithm"])
        if stop_requested:
            stopped = {"phase": "Stopped", "stopreq": 1, "message": "stopped on request"}
            return to_output_stages(stopped, True, ("Stopped", stopped["message"]), stopping=["algorithm"])
        if not algorithm.exists:
            lost: dict[str, Any] = {"phase": "Failed", "message": "the algorithm Job was deleted before it finished"}
            return to_output_stages(lost, True, ("AlgorithmLost", lost["message"]))
        return Step()

    if code == StatusCode.FILTERING:
        filtered = job("filter")
        if not filtered.exists:
            return gated(Step(create=["filter"]))
        if filtered.failed:
            # Outputs the filter could not vouch for are never published; the logs still are.
            outcome = {**outcome, "withholdOutputs": True}
            if outcome.get("phase") in (None, "Succeeded"):
                outcome.update(phase="Failed", message=f"the filter stage failed{_exit(filtered)}; outputs withheld")
        if filtered.finished:
            kept = {"outcome": outcome} if outcome else {}
            return gated(
                Step(
                    create=["publish"],
                    status=code_status(StatusCode.PUBLISHING, **kept),
                    event=("Filtered", "outputs checked by the filter"),
                )
            )
        return Step()

    if code == StatusCode.PUBLISHING:
        publish = job("publish")
        if not publish.exists:
            return gated(Step(create=["publish"]))
        if not publish.finished:
            return Step()
        final = _final_status(outcome, publish, now)
        return Step(status=final, event=("Finished", final.get("message") or f"workflow {final['phase']}"))

    return Step()  # codes 1 and terminal states: see next_step


def _provisioning_failure(configure: JobView) -> dict[str, Any]:
    message = configure.message if isinstance(configure.message, Mapping) else {}
    code = message.get("statusCode") if message.get("statusCode") in PROVISIONING_FAILURES else 31
    reason = message.get("message") or (
        "the configure pod exceeded its deadline"
        if configure.reason == "DeadlineExceeded"
        else f"the configure pod failed{_exit(configure)}"
    )
    return {"phase": "Failed", "statusCode": code, "message": str(reason)}


def _algorithm_failure(algorithm: JobView) -> str:
    if algorithm.exit_code is not None:
        return f"the algorithm failed with exit code {algorithm.exit_code}"
    return f"the algorithm Job failed ({algorithm.reason or 'no reason given'})"


def _exit(job: JobView) -> str:
    return f" with exit code {job.exit_code}" if job.exit_code is not None else ""


def _final_status(outcome: Mapping[str, Any], publish: JobView, now: str) -> dict[str, Any]:
    code = outcome.get("statusCode", StatusCode.COMPLETED)
    final = code_status(
        code, phase=outcome.get("phase", "Succeeded"), stopreq=outcome.get("stopreq", 0), dateFinished=now
    )
    message = outcome.get("message")
    results = publish.message if isinstance(publish.message, Mapping) else {}
    for field in RESULT_FIELDS:
        if field in results:
            final[field] = results[field]
    if publish.failed:
        failure = results.get("message") or f"publishing the results failed{_exit(publish)}"
        message = f"{message}; {failure}" if message else str(failure)
        if final["phase"] == "Succeeded":
            final["phase"] = "Failed"
    if message:
        final["message"] = message
    return final


def admission(workflows: Sequence[Mapping[str, Any]], max_jobs: int) -> list[str]:
    """Names of Queued workflows to admit now: the oldest first, up to the free slots.

    `workflows` are Workflow objects. Creation order is (creationTimestamp,
    name): the API server's timestamps have one-second resolution, so the
    name breaks ties, the same way on every run and after a restart.
    """
    # A Running workflow that is being deleted is on its way out: its slot is free.
    running = sum(
        1
        for w in workflows
        if (w.get("status") or {}).get("phase") == "Running" and not (w.get("metadata") or {}).get("deletionTimestamp")
    )
    # The queue holds the Queued workflows and those the operator has not looked at
    # yet (no statusCode): an older unchecked workflow must not be overtaken.
    waiting = [
        w
        for w in workflows
        if not (w.get("metadata") or {}).get("deletionTimestamp")
        and ((w.get("status") or {}).get("phase") == "Queued" or "statusCode" not in (w.get("status") or {}))
    ]
    waiting.sort(key=lambda w: (w["metadata"].get("creationTimestamp") or "", w["metadata"]["name"]))
    admitted = []
    for workflow in waiting[: max(0, max_jobs - running)]:
        if (workflow.get("status") or {}).get("phase") != "Queued":
            break  # its own check comes first; admission resumes when it is Queued or rejected
        admitted.append(workflow["metadata"]["name"])
    return admitted
