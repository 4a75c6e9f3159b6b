"""What comes next for a workflow: one pure function of its status and its Jobs.

No I/O here. The handlers observe the cluster (the Workflow's status, the
Jobs labelled with its name and their pods' termination messages), call
`decide`, and apply the `Step` it returns: create these children, delete
those Jobs, merge this into the status. Because the decision depends only on
what the cluster holds, a restarted operator decides the same thing, and
applying a step twice is harmless (creating an existing child is a no-op).

The status codes and their order come from operator-service (docs/contract.md §1.2, §1.3).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Collection, Mapping, Sequence
from typing import Any

STATUS_TEXT = {
    1: "Warming up",
    10: "Job started",
    20: "Configuring volumes",
    30: "Provisioning success",
    31: "Data provisioning failed",
    32: "Algorithm provisioning failed",
    40: "Running algorithm",
    50: "Filtering results",
    60: "Publishing results",
    70: "Job completed",
}
TERMINAL_PHASES = frozenset({"Succeeded", "Failed", "Stopped", "TimedOut"})
# The stages whose pods write to the volumes that the filter and publish read.
OUTPUT_WRITERS = ("configure", "algorithm", "filter")
# The stages that read what the writers left (and, for publish, send it out).
OUTPUT_READERS = ("filter", "publish")
RESULT_FIELDS = ("algologUrl", "configlogUrl", "publishlogUrl", "outputsUrl")


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

    def __bool__(self) -> bool:
        return bool(self.create or self.delete or self.status)


def is_terminal(status: Mapping[str, Any]) -> bool:
    return bool(status.get("dateFinished")) and status.get("phase") in TERMINAL_PHASES


def code_status(code: int, **extra: Any) -> dict[str, Any]:
    return {"statusCode": code, "statusText": STATUS_TEXT[code], **extra}


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
            step = Step(create=["filter"], status=code_status(50, **kept), event=event)
        else:
            step = Step(create=["publish"], status=code_status(60, **kept), event=event)
        return gated(dataclasses.replace(step, delete=list(stopping)), stopping)

    if code == 10:
        return Step(
            create=["setup", "configure"],
            status=code_status(20),
            event=("Configuring", "volumes, ConfigMap and configure Job created"),
        )

    if code == 20:
        configure = job("configure")
        if stop_requested and not configure.finished:
            stopped: dict[str, Any] = {"phase": "Stopped", "stopreq": 1, "message": "stop requested while provisioning"}
            return to_output_stages(stopped, False, ("Stopped", stopped["message"]), stopping=["configure"])
        if not configure.exists:
            return Step(create=["configure"])  # lost (deleted by hand): make it again
        if configure.succeeded:
            return Step(status=code_status(30), event=("Provisioned", "inputs and algorithm are in place"))
        if configure.failed:
            failure = _provisioning_failure(configure)
            return to_output_stages(failure, False, ("ProvisioningFailed", failure["message"]))
        return Step()

    if code == 30:
        if stop_requested:
            stopped = {"phase": "Stopped", "stopreq": 1, "message": "stop requested before the algorithm started"}
            return to_output_stages(stopped, False, ("Stopped", stopped["message"]))
        return Step(
            create=["algorithm"],
            status=code_status(40, algorithmStarted=now),
            event=("AlgorithmStarted", "algorithm Job created"),
        )

    if code == 40:
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

    if code == 50:
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
                    status=code_status(60, **kept),
                    event=("Filtered", "outputs checked by the filter"),
                )
            )
        return Step()

    if code == 60:
        publish = job("publish")
        if not publish.exists:
            return gated(Step(create=["publish"]))
        if not publish.finished:
            return Step()
        final = _final_status(outcome, publish, now)
        return Step(status=final, event=("Finished", final.get("message") or f"workflow {final['phase']}"))

    return Step()  # codes 1 and terminal states are decided elsewhere (admission, clean-up)


def _provisioning_failure(configure: JobView) -> dict[str, Any]:
    message = configure.message if isinstance(configure.message, Mapping) else {}
    code = message.get("statusCode") if message.get("statusCode") in (31, 32) else 31
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
    code = outcome.get("statusCode", 70)
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
