"""Pod Security admission.

The ocean-compute namespace enforces `restricted`, and every pod the operator's Jobs create is admitted.
"""

from __future__ import annotations

import json
from typing import Any

from .conftest import RealCluster
from .support import NS
from .test_workflows import sample


def test_the_namespace_enforces_restricted(real: RealCluster) -> None:
    labels = real.kube.core.read_namespace(NS).metadata.labels or {}
    assert labels.get("pod-security.kubernetes.io/enforce") == "restricted", labels
    # Enforced, not only labelled: a pod that may run as root is refused at admission.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "rc-root", "namespace": NS},
        "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["true"]}]},
    }
    path = real.workdir / "root-pod.json"
    path.write_text(json.dumps(pod))
    done = real.kube.kubectl("apply", "--dry-run=server", "-f", str(path))
    assert done.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in done.stderr, done.stderr


def test_every_pod_of_a_workflow_is_admitted(real: RealCluster, operator: Any) -> None:
    name = "rc-psa"
    since = real.audit.lines()
    op = operator()
    real.kube.create_workflow(sample(real, name))
    final = real.kube.wait_terminal(name, context=lambda: op.log()[-3000:])
    assert final["phase"] == "Succeeded", final
    creates = [
        e
        for e in real.audit.events(user=None, since=since)
        if e.verb == "create" and e.resource == "pods" and e.namespace == NS
    ]
    refused = [e for e in creates if e.code >= 400]
    assert not refused, refused
    assert len([e for e in creates if e.code == 201]) >= 3, creates
    for job in real.kube.batch.list_namespaced_job(NS, label_selector=f"app={name}").items:
        events = real.kube.core.list_namespaced_event(NS, field_selector=f"involvedObject.name={job.metadata.name}")
        assert not [e.message for e in events.items if e.reason == "FailedCreate"], job.metadata.name
