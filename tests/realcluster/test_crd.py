"""
The WorkFlow CRD on a real API server: what operator-service sends is admitted, what the structural
schema forbids is refused at admission (kubectl prints the API server's error), unknown fields are
pruned, and what the schema admits but the operator cannot run ends Failed with a message.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from .conftest import RealCluster
from .support import NS, TESTS

SAMPLE = TESTS.parent / "k8s_install" / "workflow-1.yaml"


def apply(real: RealCluster, body: dict[str, Any], *extra: str) -> Any:
    path = real.workdir / f"{body['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    return real.kube.kubectl("apply", "-f", str(path), *extra)


def sample(name: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(SAMPLE.read_text(encoding="utf-8"))
    body["metadata"]["name"] = name
    return body


def test_the_operator_service_payload_is_admitted_as_written(real: RealCluster) -> None:
    done = real.kube.kubectl("apply", "--dry-run=server", "-f", str(SAMPLE))
    assert done.returncode == 0, done.stderr
    assert "workflow.oceanprotocol.com/workflow-1 created (server dry run)" in done.stdout, done.stdout


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda b: b.pop("spec"), "spec: Required value"),
        (lambda b: b["spec"].pop("metadata"), "spec.metadata: Required value"),
        (lambda b: b["spec"].update(stopRequested="yes"), 'spec.stopRequested: Invalid value: "string"'),
        (lambda b: b["spec"].update(secret=42), 'spec.secret: Invalid value: "integer"'),
    ],
    ids=["no-spec", "no-metadata", "stopRequested-string", "secret-number"],
)
def test_the_schema_refuses_invalid_workflows_with_kubectls_error(real: RealCluster, mutate: Any, error: str) -> None:
    body = sample("rc-invalid")
    mutate(body)
    done = apply(real, body)
    assert done.returncode != 0, done.stdout
    assert "is invalid" in done.stderr and error in done.stderr, done.stderr
    assert real.kube.workflow("rc-invalid") is None


def test_unknown_fields_are_refused_by_kubectl_or_pruned_and_status_is_a_subresource(real: RealCluster) -> None:
    body = sample("rc-pruned")
    body["spec"]["notInTheSchema"] = "dropped"
    body["status"] = {"statusCode": 70, "phase": "Succeeded"}
    refused = apply(real, body)  # kubectl asks the server for strict field validation
    assert refused.returncode != 0
    assert 'strict decoding error: unknown field "spec.notInTheSchema"' in refused.stderr, refused.stderr
    done = apply(real, body, "--validate=false")  # without it, the structural schema prunes the field
    try:
        assert done.returncode == 0, done.stderr
        stored = real.kube.workflow("rc-pruned")
        assert stored is not None
        assert "notInTheSchema" not in stored["spec"], "the structural schema prunes unknown fields"
        assert "status" not in stored, "status is a subresource: a create cannot set it"
        assert stored["spec"]["metadata"] == body["spec"]["metadata"], "x-kubernetes-preserve-unknown-fields"
    finally:
        real.kube.delete_workflow("rc-pruned")


@pytest.mark.parametrize(
    "metadata",
    [
        {},
        {"stages": []},
        {"stages": [{"index": 0}]},
        {"stages": "not-a-list"},
    ],
    ids=["no-stages", "empty-stages", "stage-without-algorithm", "stages-not-a-list"],
)
def test_admitted_but_unrunnable_workflows_end_failed(real: RealCluster, operator: Any, metadata: Any) -> None:
    name = "rc-unrunnable"
    op = operator()
    body = sample(name)
    body["spec"]["metadata"] = metadata
    done = apply(real, body)
    assert done.returncode == 0, done.stderr
    final = real.kube.wait_terminal(name, timeout=120, context=lambda: op.log()[-3000:])
    assert final["phase"] == "Failed", final
    assert final.get("message"), final
    assert not real.kube.children(name).get("jobs"), "a broken Workflow creates no Job"
    shown = real.kube.kubectl("get", "wf", name, "-n", NS, "-o", "json")
    assert json.loads(shown.stdout)["status"]["phase"] == "Failed"
