"""The compute environment's limits, applied to one workflow (docs/contract.md §2.5).

Pure arithmetic on the configuration and the workflow: what the algorithm pod
may use and for how long. `notes` say, for the Workflow's status message,
where a request was clamped to the environment's limits.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from operator_engine.config import Config
from operator_engine.model import Workflow

# The configure, publish and filter pods do I/O, not computation: a small,
# fixed share keeps them schedulable next to the algorithm pods.
SYSTEM_POD_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"cpu": "1", "memory": "1Gi"},
}


@dataclasses.dataclass(frozen=True)
class Limits:
    algorithm_resources: dict[str, Any]
    disk: str
    algorithm_deadline: int
    stage_deadline: int
    notes: tuple[str, ...]


def limits_for(workflow: Workflow, config: Config) -> Limits:
    quantities: dict[str, Any] = {"cpu": str(config.nCPU), "memory": f"{config.ramGB}Gi"}
    if config.nGPU > 0:
        quantities["nvidia.com/gpu"] = str(config.nGPU)
    notes: list[str] = []
    deadline = config.maxJobDuration
    if workflow.maxtime is not None:
        if workflow.maxtime > config.maxJobDuration:
            notes.append(
                f"compute.maxtime {workflow.maxtime}s exceeds this environment's maxJobDuration "
                f"{config.maxJobDuration}s; the algorithm gets {config.maxJobDuration}s"
            )
        deadline = min(workflow.maxtime, config.maxJobDuration)
    return Limits(
        # requests = limits: the Guaranteed QoS class, so an algorithm gets exactly what is advertised.
        algorithm_resources={"requests": dict(quantities), "limits": dict(quantities)},
        disk=f"{config.diskGB}Gi",
        algorithm_deadline=deadline,
        stage_deadline=config.maxJobDuration,
        notes=tuple(notes),
    )
