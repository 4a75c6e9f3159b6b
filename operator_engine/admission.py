"""Admission: which Queued workflows may start now (maxJobs), and the environment ConfigMap.

It decides with `pipeline.admission` from a list of the Workflows (the count
comes from the cluster, so it survives restarts) and writes no status: it
hands each pick, oldest first and one after the other (so that they start in
creation order), with the body listed, to the reconciler (`admit_one`),
which admits the workflow if it is still Queued, so that the reconciler
stays the only writer of a Workflow's status.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from operator_engine import logs, metrics
from operator_engine.config import Config
from operator_engine.facts import ENVIRONMENT_CONFIGMAP, RUNNING
from operator_engine.kube import Kube, TransientError
from operator_engine.pipeline import admission

log = logs.get()


def _running(workflows: list[dict[str, Any]]) -> int:
    return sum(
        1
        for w in workflows
        if (w.get("status") or {}).get("phase") == RUNNING and not w["metadata"].get("deletionTimestamp")
    )


def _key(body: Mapping[str, Any]) -> str:
    return str(body["metadata"].get("uid") or body["metadata"]["name"])


class Admission:
    def __init__(
        self, config: Config, kube: Kube, admit_one: Callable[[str, str, dict[str, Any]], Awaitable[bool]]
    ) -> None:
        self.config = config
        self.kube = kube
        self.admit_one = admit_one
        self._lock = asyncio.Lock()
        self._current_jobs: int | None = None
        # Workflows (by uid) that could not even be ended Failed: left out of admission, so
        # that an older workflow nobody can check never holds the queue.
        self._unadmittable: set[str] = set()

    async def admit(self, namespace: str) -> None:
        """Pick the oldest Queued workflows while fewer than maxJobs run, and hand them to the reconciler."""
        with logs.bound(stage="admission"):
            async with self._lock:
                workflows = await self.kube.list_workflows(namespace)
                running = _running(workflows)
                queue = [w for w in workflows if _key(w) not in self._unadmittable]
                admitted: list[str] = []
                listed = {w["metadata"]["name"]: w for w in queue}
                for name in admission(queue, self.config.maxJobs):
                    try:
                        if await self.admit_one(namespace, name, listed[name]):
                            admitted.append(name)
                    except TransientError:
                        raise
                    except Exception as exc:  # one workflow's failure never stops the others' admission
                        log.error(f"Workflow {name}: admission failed: {type(exc).__name__}: {exc}", workflow=name)
                metrics.CENSUS.replace(workflows, admitted)
                await self.refresh_environment(namespace, running + len(admitted))

    def unadmittable(self, body: Mapping[str, Any], stuck: bool) -> None:
        """Leave a workflow out of admission (`stuck`), or take it back in."""
        if stuck:
            self._unadmittable.add(_key(body))
        else:
            self._unadmittable.discard(_key(body))

    def forget(self, body: Mapping[str, Any] | None) -> None:
        """The workflow is gone: nothing of it is kept."""
        if body is not None:
            self._unadmittable.discard(_key(body))

    async def refresh_environment(self, namespace: str, current_jobs: int | None = None) -> None:
        """Keep the environment ConfigMap (check-config's JSON with a live currentJobs) up to date."""
        if current_jobs is None:
            current_jobs = _running(await self.kube.list_workflows(namespace))
        if current_jobs == self._current_jobs:
            return
        environment = json.dumps(self.config.environment(current_jobs), indent=2)
        await self.kube.apply_config_map(
            self.config.OPERATOR_NAMESPACE, ENVIRONMENT_CONFIGMAP, {"environment.json": environment}
        )
        self._current_jobs = current_jobs
