"""
What the pods of the embedded cluster do: the kubelet's container runtime, pluggable.

The job controller asks a :class:`Runtime` to run each Pod and turns the
:class:`Result` into Pod and Job status. :class:`ScriptedRuntime` lets a test
decide each outcome; a runtime that runs the container command as a local
process can implement the same interface.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import fnmatch
from collections.abc import Callable
from typing import Any

__all__ = ["Runtime", "Result", "Outcome", "ScriptedRuntime", "terminated_state", "kubelet_pod_status"]


@dataclasses.dataclass(frozen=True)
class Result:
    """How a pod's (first) container ended, as the kubelet would report it."""

    exit_code: int
    message: str | None = None  # the termination message (container's terminationMessagePath)
    logs: str = ""  # served at /api/v1/namespaces/NS/pods/NAME/log


def terminated_state(result: Result, started: str, finished: str) -> dict[str, Any]:
    """``containerStatuses[].state.terminated`` as the kubelet writes it for a container that exited."""
    terminated: dict[str, Any] = {
        "exitCode": result.exit_code,
        "reason": "Completed" if result.exit_code == 0 else "Error",
        "startedAt": started,
        "finishedAt": finished,
    }
    if result.message is not None:
        terminated["message"] = result.message
    return terminated


def kubelet_pod_status(
    pod: dict[str, Any],
    phase: str,
    started: str,
    now: str,
    state: dict[str, Any],
    reason: str | None = None,
    message: str | None = None,
    host_ip: str = "127.0.0.1",
    ready: bool | None = None,
) -> dict[str, Any]:
    """
    A Pod's whole ``status`` as a kubelet reports it: phase, the five pod
    conditions (Ready and ContainersReady False with reason PodCompleted once
    the containers ended), and one containerStatus per container in ``state``
    (``{'running': ...}`` or ``{'terminated': ...}``). The embedded cluster's
    Job controller and the ProcessNode for a real API server both write this.
    ``ready``: the readiness probe's verdict for a running container (None: no
    probe, so running means ready).
    """
    running = "running" in state
    is_ready = running if ready is None else running and ready
    containers = (pod.get("spec") or {}).get("containers") or [{"name": "main"}]

    def condition(kind: str, ok: bool, why: str | None = None) -> dict[str, Any]:
        found: dict[str, Any] = {
            "type": kind,
            "status": "True" if ok else "False",
            "lastProbeTime": None,
            "lastTransitionTime": now,
        }
        if why is not None:
            found["reason"] = why
        return found

    ended = None if is_ready else "ContainersNotReady" if running else "PodCompleted"
    status: dict[str, Any] = {
        "phase": phase,
        "startTime": started,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": host_ip,
        "podIPs": [{"ip": host_ip}],
        "qosClass": _qos_class(containers),
        "conditions": [
            condition("PodReadyToStartContainers", running),
            condition("Initialized", True),
            condition("Ready", is_ready, ended),
            condition("ContainersReady", is_ready, ended),
            condition("PodScheduled", True),
        ],
        "containerStatuses": [
            {
                "name": c.get("name", "main"),
                "image": c.get("image", ""),
                "imageID": "",
                "containerID": f"process://{(pod.get('metadata') or {}).get('uid', '')}/{c.get('name', 'main')}",
                "ready": is_ready,
                "started": running,
                "restartCount": 0,
                "state": state,
            }
            for c in containers
        ],
    }
    if reason is not None:
        status["reason"] = reason
    if message is not None:
        status["message"] = message
    return status


def _qos_class(containers: list[dict[str, Any]]) -> str:
    """Guaranteed when every container's requests equal its cpu and memory limits; BestEffort with none."""
    resources = [c.get("resources") or {} for c in containers]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    guaranteed = all(
        (r.get("limits") or {}).get(k) is not None
        and (r.get("requests") or {}).get(k, (r.get("limits") or {}).get(k)) == (r.get("limits") or {}).get(k)
        for r in resources
        for k in ("cpu", "memory")
    )
    return "Guaranteed" if guaranteed else "Burstable"


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A scripted pod outcome: exit after ``duration`` seconds, or never (``hang``) until killed."""

    exit_code: int = 0
    duration: float = 0.0
    message: str | None = None
    hang: bool = False
    logs: str = ""
    #: Seconds the pod goes on after it is told to stop (a process that ignores SIGTERM);
    #: the kubelet's SIGKILL ends it at the pod's grace period at the latest.
    stop_delay: float = 0.0


class Runtime(abc.ABC):
    """
    Runs pods. Subclasses implement :meth:`run`; the controller calls :meth:`execute`.

    ``run`` must be cancellable: the controller cancels it when the Pod or Job
    is deleted or the Job's ``activeDeadlineSeconds`` expires, as the kubelet
    kills containers. :meth:`execute` records starts and ends so that tests can
    await them with :meth:`wait_started` / :meth:`wait_finished`.
    """

    def __init__(self) -> None:
        self.started: dict[str, dict[str, Any]] = {}  # job name -> its latest pod
        self.finished: dict[str, Result | None] = {}  # job name -> result (None: killed)
        self._changed = asyncio.Event()
        self.api: Any = None

    def attach(self, api: Any) -> None:
        """Called by the cluster with its :class:`ApiServer` (for runtimes that read ConfigMaps, Secrets...)."""
        self.api = api

    def grace_period(self, pod: dict[str, Any]) -> float:
        """
        How long the pod's containers may take to stop once told to, as the kubelet computes it.

        While the pod is being deleted: its ``deletionGracePeriodSeconds``; else
        (a deadline) its ``terminationGracePeriodSeconds``, 30 when unset.
        """
        current = self.api.find_uid(pod["metadata"].get("uid", "")) if self.api is not None else None
        meta = (current or pod)["metadata"]
        if meta.get("deletionTimestamp") and meta.get("deletionGracePeriodSeconds") is not None:
            return float(meta["deletionGracePeriodSeconds"])
        return float((pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30))

    @abc.abstractmethod
    async def run(self, pod: dict[str, Any], job: dict[str, Any]) -> Result:
        """Run the pod's containers to completion and report how they ended."""

    async def execute(self, pod: dict[str, Any], job: dict[str, Any]) -> Result:
        job_name = job["metadata"]["name"]
        self.finished.pop(job_name, None)
        self.started[job_name] = pod
        self._signal()
        result: Result | None = None
        try:
            result = await self.run(pod, job)
            return result
        finally:
            self.finished[job_name] = result
            self._signal()

    async def wait_started(self, job_name: str, timeout: float = 10.0) -> dict[str, Any]:
        """The pod of the job once the runtime has been asked to run it."""
        async with asyncio.timeout(timeout):
            while job_name not in self.started:
                await self._wait()
        return self.started[job_name]

    async def wait_finished(self, job_name: str, timeout: float = 10.0) -> Result | None:
        """The result of the job's latest pod once it ended (None if it was killed)."""
        async with asyncio.timeout(timeout):
            while job_name not in self.finished:
                await self._wait()
        return self.finished[job_name]

    async def _wait(self) -> None:
        await self._changed.wait()

    def _signal(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


OutcomeRule = Callable[[dict[str, Any]], "Outcome | None"]


class ScriptedRuntime(Runtime):
    """
    Pods do what the test scripted for their Job; by default they succeed at once.

    Precedence: an exact job name, then name patterns (fnmatch, in the order
    registered), then callables ``(job_manifest) -> Outcome | None`` (in order;
    None passes), then :attr:`default`.
    """

    def __init__(self, default: Outcome = Outcome()) -> None:
        super().__init__()
        self.default = default
        self._by_name: dict[str, Outcome] = {}
        self._patterns: list[tuple[str, Outcome]] = []
        self._rules: list[OutcomeRule] = []

    def script(self, job_name_or_pattern: str, outcome: Outcome) -> None:
        """Script the Job(s) of this name; ``*?[`` make it an fnmatch pattern."""
        if any(c in job_name_or_pattern for c in "*?["):
            self._patterns.append((job_name_or_pattern, outcome))
        else:
            self._by_name[job_name_or_pattern] = outcome

    def script_with(self, rule: OutcomeRule) -> None:
        """Decide outcomes by a function of the Job manifest (return None to pass)."""
        self._rules.append(rule)

    def outcome_for(self, job: dict[str, Any]) -> Outcome:
        name = job["metadata"]["name"]
        if name in self._by_name:
            return self._by_name[name]
        for pattern, outcome in self._patterns:
            if fnmatch.fnmatchcase(name, pattern):
                return outcome
        for rule in self._rules:
            if (decided := rule(job)) is not None:
                return decided
        return self.default

    async def run(self, pod: dict[str, Any], job: dict[str, Any]) -> Result:
        outcome = self.outcome_for(job)
        try:
            if outcome.hang:
                await asyncio.Future()  # until cancelled: deleted, or the deadline expired
            if outcome.duration > 0:
                await asyncio.sleep(outcome.duration)
        except asyncio.CancelledError:
            if outcome.stop_delay > 0:
                await asyncio.sleep(min(outcome.stop_delay, self.grace_period(pod)))
            raise
        return Result(exit_code=outcome.exit_code, message=outcome.message, logs=outcome.logs)
