"""The facts every other module agrees on, each defined once (docs/contract.md §1, §2).

Status codes, phases, the stages and their order, the labels and names of a
workflow's children, and the Kubernetes name rules. No internal imports: any
module may import this one, so `config`, `model`, `render`, `limits` and
`pipeline` no longer import each other for a constant.
"""

from __future__ import annotations

import enum
import re


class StatusCode(enum.IntEnum):
    """`status.statusCode`, with operator-service's values (docs/contract.md §1.2)."""

    QUEUED = 1
    STARTED = 10
    CONFIGURING = 20
    PROVISIONED = 30
    DATA_PROVISIONING_FAILED = 31
    ALGORITHM_PROVISIONING_FAILED = 32
    RUNNING_ALGORITHM = 40
    FILTERING = 50
    PUBLISHING = 60
    COMPLETED = 70

    @property
    def text(self) -> str:
        """`status.statusText` for this code."""
        return STATUS_TEXT[self]


# Keyed by plain ints: these go into JSON, metric labels and log lines as numbers. Looked up
# with whatever statusCode a status holds (None included), hence `object` keys for the type checker.
STATUS_TEXT: dict[object, str] = {
    int(code): text
    for code, text in (
        (StatusCode.QUEUED, "Warming up"),
        (StatusCode.STARTED, "Job started"),
        (StatusCode.CONFIGURING, "Configuring volumes"),
        (StatusCode.PROVISIONED, "Provisioning success"),
        (StatusCode.DATA_PROVISIONING_FAILED, "Data provisioning failed"),
        (StatusCode.ALGORITHM_PROVISIONING_FAILED, "Algorithm provisioning failed"),
        (StatusCode.RUNNING_ALGORITHM, "Running algorithm"),
        (StatusCode.FILTERING, "Filtering results"),
        (StatusCode.PUBLISHING, "Publishing results"),
        (StatusCode.COMPLETED, "Job completed"),
    )
}
PROVISIONING_FAILURES = frozenset({StatusCode.DATA_PROVISIONING_FAILED, StatusCode.ALGORITHM_PROVISIONING_FAILED})

# `status.phase`: Queued and Running while it lasts, then one terminal value.
QUEUED, RUNNING = "Queued", "Running"
SUCCEEDED, FAILED, STOPPED, TIMED_OUT = "Succeeded", "Failed", "Stopped", "TimedOut"
TERMINAL_PHASES = frozenset({SUCCEEDED, FAILED, STOPPED, TIMED_OUT})
FAILED_PHASES = frozenset({FAILED, TIMED_OUT})  # the endings a Warning Event reports

# The stage Jobs, in the order they run (filter only when FILTERING_CONTAINER is set).
STAGES = ("configure", "algorithm", "filter", "publish")
# The stage whose Job's outcome decides the next step, by status code.
STAGE_OF_CODE: dict[object, str] = {
    int(StatusCode.CONFIGURING): "configure",
    int(StatusCode.RUNNING_ALGORITHM): "algorithm",
    int(StatusCode.FILTERING): "filter",
    int(StatusCode.PUBLISHING): "publish",
}

# Labels every child carries (docs/contract.md §2).
LABEL_APP = "app"
LABEL_WORKFLOW = "workflow"
LABEL_COMPONENT = "component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "operator-engine"
MANAGED = {LABEL_MANAGED_BY: MANAGED_BY}
# Held on every valid Workflow so that deleting one waits until the operator has
# stopped its Jobs, cleaned up and sent the stop notification.
FINALIZER = "oceanprotocol.com/operator-engine"
# The ConfigMap with check-config's JSON and a live currentJobs.
ENVIRONMENT_CONFIGMAP = "operator-engine-environment"


def child_names(workflow_name: str) -> dict[str, str]:
    """The name of each child of workflow W, by key ("configmap", ..., and each stage)."""
    return {
        "configmap": workflow_name,
        "data": f"{workflow_name}-data",
        "adminlogs": f"{workflow_name}-adminlogs",
        "algorithm_secret": f"{workflow_name}-algorithm-secret",
        "publish_secret": f"{workflow_name}-publish-credentials",
        "configure": f"{workflow_name}-configure-job",
        "algorithm": f"{workflow_name}-algorithm-job",
        "filter": f"{workflow_name}-filter-job",
        "publish": f"{workflow_name}-publish-job",
    }


# Kubernetes name rules. A Job's name becomes its pods' `job-name` label, so every
# child name must fit a label value (63); the longest suffix bounds a Workflow's name.
DNS_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?", re.ASCII)
DNS_SUBDOMAIN = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*", re.ASCII)
LABEL_VALUE = re.compile(r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?", re.ASCII)
MAX_LABEL_VALUE = 63
MAX_DNS_SUBDOMAIN = 253
MAX_CHILD_NAME = 63
# The suffixes held to that bound: the Jobs' (labels) and the volumes'; Secrets' names may be longer.
CHILD_SUFFIXES = ("-configure-job", "-algorithm-job", "-filter-job", "-publish-job", "-adminlogs", "-data")
MAX_NAME = MAX_CHILD_NAME - max(len(s) for s in CHILD_SUFFIXES)
