"""
``kubectl apply -k kubernetes/`` on the real control plane: the operator's Deployment runs on the process
node as a kubelet would run it (env from the ConfigMap and the optional Secret, POD_NAME from the
downward API, the ServiceAccount's projected token, the readiness probe, leader election on) and
carries a workflow to ``Succeeded`` with its ServiceAccount's rights, nothing more.

The session's ``real`` fixture has installed every object of ``kubernetes/`` but the Deployment; this
test applies the whole kustomization over it, then removes exactly what that added (the Deployment, the
Secret, the leader Lease) and restores the settings it changed, so the next
tests find the namespace, the ServiceAccount (whose token they hold) and the CRD untouched.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from operator_engine.demo import LOOPBACK_NETWORKS
from operator_engine.devcluster.realstack import OPERATOR_CONFIGMAP, STORAGE_CLASS, manifests_dir

from .conftest import RealCluster, clean_namespace
from .support import NS, wait_until
from .test_workflows import sample

DEPLOYMENT = "ocean-compute-operator"
SELECTOR = "app.kubernetes.io/name=ocean-compute-operator"
LEASE = "operator-engine-leader"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"


def kubectl(real: RealCluster, *args: str) -> str:
    done = real.control_plane.kubectl(*args)
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {(done.stderr or done.stdout).strip()}"
    return str(done.stdout)


def operator_pods(real: RealCluster) -> list[Any]:
    return [
        p
        for p in real.kube.core.list_namespaced_pod(NS, label_selector=SELECTOR).items
        if p.metadata.deletion_timestamp is None
    ]


def is_ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def pod_output(real: RealCluster) -> str:
    """The operator pods' output (the process node writes it into each pod's folder), for failure messages."""
    texts = []
    for pod in real.kube.core.list_namespaced_pod(NS, label_selector=SELECTOR).items:
        log = real.node.runtime.pod_dir(NS, pod.metadata.name) / "output.log"
        phase = pod.status.phase
        text = log.read_text(errors="replace")[-3000:] if log.exists() else "(no output yet)"
        conditions = [(c.type, c.status) for c in pod.status.conditions or []]
        texts.append(
            f"--- pod {pod.metadata.name} ({phase}, deleting={pod.metadata.deletion_timestamp}, {conditions}):\n{text}"
        )
    return "\n".join(texts)


def patch_settings(real: RealCluster, data: dict[str, Any]) -> None:
    """Merge ``data`` into the operator's settings ConfigMap, as an admin would with kubectl."""
    patch = json.dumps({"data": data})
    kubectl(real, "patch", "configmap", OPERATOR_CONFIGMAP, "-n", NS, "--type=merge", "-p", patch)


# The session's control plane, two operator starts (the apply, the restart) and one workflow.
@pytest.mark.timeout(600)
def test_apply_k_installs_the_operator_which_runs_a_workflow_as_its_service_account(
    real: RealCluster, tmp_path: Path
) -> None:
    name = "rc-apply-k"
    results = tmp_path / "results"
    results.mkdir()
    since = real.audit.lines()
    original: dict[str, str] = {}
    try:
        kubectl(real, "apply", "-k", str(manifests_dir()))
        # As an admin adapts the shipped settings to the cluster, then restarts the operator to read them:
        # the process node's StorageClass, results into a local folder (the node's pods share this file
        # system), and the demo data server on loopback allowed to the configure pod.
        original = json.loads(kubectl(real, "get", "configmap", OPERATOR_CONFIGMAP, "-n", NS, "-o", "json"))["data"]
        settings = {
            "STORAGE_CLASS": STORAGE_CLASS,
            "LOCAL_STORAGE_DIR": str(results),
            "CONFIGURE_ALLOWED_NETWORKS": LOOPBACK_NETWORKS,
        }
        patch_settings(real, settings)
        kubectl(real, "rollout", "restart", f"deployment/{DEPLOYMENT}", "-n", NS)

        # Two replicas, one node: the pods' ports are host ports here (local processes share one
        # network), so one runs and the other waits Pending; the one running wins the Lease and is Ready.
        def ready_pod() -> Any:
            pods = [
                p for p in operator_pods(real) if "kubectl.kubernetes.io/restartedAt" in (p.metadata.annotations or {})
            ]
            return next((p for p in pods if is_ready(p)), None)

        wait_until(ready_pod, 240, "an operator pod of the restarted Deployment to be Ready", lambda: pod_output(real))

        real.kube.create_workflow(sample(real, name))
        final = real.kube.wait_terminal(name, timeout=240, context=lambda: pod_output(real))
        assert final["phase"] == "Succeeded", final
        outputs = results / name / "outputs"
        assert outputs.is_dir() and any(outputs.iterdir()), f"no outputs in {outputs}"

        # Every request of the operator came with the ServiceAccount's token the node projected into
        # that pod (the API server records the pod a bound token belongs to), and none was refused.
        events = real.audit.raw(since=since)
        refused = [
            (e.get("verb"), e.get("requestURI")) for e in events if (e.get("responseStatus") or {}).get("code") == 403
        ]
        assert not refused, f"requests of the ServiceAccount refused: {refused}"
        writes = [
            e
            for e in events
            if e.get("verb") == "patch"
            and (e.get("objectRef") or {}).get("name") == name
            and (e.get("objectRef") or {}).get("subresource") == "status"
        ]
        assert writes, "the operator never wrote the status of the Workflow as its ServiceAccount"
        # ... and from one pod: the leader, as its Lease names it (POD_NAME from the downward API).
        pods = {tuple((e["user"].get("extra") or {}).get(POD_NAME_EXTRA) or ()) for e in writes}
        lease = json.loads(kubectl(real, "get", "lease", LEASE, "-n", NS, "-o", "json"))
        holder = lease["spec"].get("holderIdentity")
        assert pods == {(holder,)}, f"status writes came from pods {pods}, not only the leader {holder}"
        jobs = [e for e in events if e.get("verb") == "create" and (e.get("objectRef") or {}).get("resource") == "jobs"]
        assert jobs, "the operator created no Job as its ServiceAccount"
    finally:
        # Remove what apply -k added to the session's install and restore the settings it changed.
        kubectl(real, "delete", "deployment", DEPLOYMENT, "-n", NS, "--ignore-not-found")
        kubectl(real, "delete", "secret", "ocean-compute-operator-secrets", "-n", NS, "--ignore-not-found")
        wait_until(
            lambda: not real.kube.core.list_namespaced_pod(NS, label_selector=SELECTOR).items,
            120,
            "the operator pods to be gone",
            lambda: pod_output(real),
        )
        kubectl(real, "delete", "lease", LEASE, "-n", NS, "--ignore-not-found")
        if original:
            current = json.loads(kubectl(real, "get", "configmap", OPERATOR_CONFIGMAP, "-n", NS, "-o", "json"))
            restore = {k: original.get(k) for k in current.get("data") or {} if current["data"][k] != original.get(k)}
            patch_settings(real, restore)
        clean_namespace(real)
