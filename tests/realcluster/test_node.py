"""The process node as a kubelet: a deleted pod is killed and removed, however many deletes and events follow.

Found in CI: the garbage collector's delete of a pod already Terminating (a foreground Job deletion) cancelled
the node's clean-up half way; the pod then stayed Terminating for good and every later test's clean-up waited
on it. These tests delete pods directly, without the operator.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from .conftest import RealCluster
from .support import wait_until

NAMESPACE = "node-test"
DEADLINE = 180.0  # (as the other tiers' waits: the machine may be loaded)

# Ignores SIGTERM, as an algorithm may: only the SIGKILL after the grace period ends it.
STUBBORN = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(600)"
)


def running_with(marker: str) -> list[str]:
    """Command lines of this machine's live (not zombie) processes that carry ``marker``."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            text = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        if marker in text:
            found.append(text)
    return found


@pytest.fixture(scope="module")
def namespace(real: RealCluster) -> str:
    try:
        real.kube.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
    except ApiException as e:
        if e.status != 409:
            raise
    return NAMESPACE


# `python` by name, found in the node's PATH (the running Python's folder first), as a pod's command is:
# an absolute path under /tmp would be read as the pod's own /tmp (an emptyDir), as CI's clone in /tmp showed.
def stubborn_pod(real: RealCluster, namespace: str, grace: int) -> tuple[str, str]:
    name = f"stubborn-{uuid.uuid4().hex[:6]}"
    marker = f"marker-{uuid.uuid4().hex}"
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "nodeName": real.node.name,
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": grace,
            "containers": [{"name": "main", "image": "stubborn", "command": ["python", "-c", STUBBORN, marker]}],
        },
    }
    real.kube.core.create_namespaced_pod(namespace, pod)
    wait_until(lambda: running_with(marker), DEADLINE, f"pod {name}'s process to start", lambda: describe(real, name))

    def phase() -> str | None:
        return real.kube.core.read_namespaced_pod(name, namespace).status.phase

    wait_until(lambda: phase() == "Running", DEADLINE, f"pod {name} Running")
    return name, marker


def describe(real: RealCluster, name: str) -> str:
    """The pod as the API server has it, and what the node has of it, for a failure's message."""
    try:
        pod = real.kube.core.read_namespaced_pod(name, NAMESPACE)
        seen = f"phase {pod.status.phase}, conditions {[(c.type, c.status) for c in pod.status.conditions or []]}"
    except ApiException as e:
        seen = f"read: {e.status} {e.reason}"
    folder = real.node.runtime.pod_dir(NAMESPACE, name)
    return f"pod {name}: {seen}; node folder {folder} exists: {folder.exists()}"


def gone(real: RealCluster, namespace: str, name: str) -> bool:
    try:
        real.kube.core.read_namespaced_pod(name, namespace)
    except ApiException as e:
        if e.status == 404:
            return True
        raise
    return False


def delete(real: RealCluster, namespace: str, name: str, grace: int) -> None:
    try:
        real.kube.core.delete_namespaced_pod(name, namespace, grace_period_seconds=grace)
    except ApiException as e:
        if e.status != 404:
            raise


def test_a_deleted_pod_ignoring_sigterm_is_killed_after_its_grace_and_removed(
    real: RealCluster, namespace: str
) -> None:
    name, marker = stubborn_pod(real, namespace, grace=2)
    delete(real, namespace, name, grace=2)
    wait_until(lambda: gone(real, namespace, name), DEADLINE, f"pod {name} removed")
    wait_until(lambda: not running_with(marker), DEADLINE, f"pod {name}'s process ended")


def test_deletes_repeated_while_the_pod_terminates_do_not_leave_it_terminating(
    real: RealCluster, namespace: str
) -> None:
    name, marker = stubborn_pod(real, namespace, grace=4)
    # The first delete starts the grace period; the second (a shorter grace, as the garbage collector's or a
    # user's second delete) brings the node another event for the same pod while it is being killed, and no
    # event follows it: the node alone must end the pod.
    delete(real, namespace, name, grace=4)
    delete(real, namespace, name, grace=2)
    wait_until(lambda: gone(real, namespace, name), DEADLINE, f"pod {name} removed")
    wait_until(lambda: not running_with(marker), DEADLINE, f"pod {name}'s process ended")
