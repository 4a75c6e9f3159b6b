"""Install with one command (README.md, Deploying to a cluster): `kubectl apply -k kubernetes/`.

`kubectl kustomize kubernetes/` (the real kubectl, whose kustomize is built
in; offline, no cluster) must render every object of the step-by-step install
unchanged, into ocean-compute, plus the empty Secret template, and every
rendered object (the CRD included) must validate strictly for Kubernetes 1.30.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ._support import KUBERNETES_DIR, KUSTOMIZATION, NAMESPACE, load_docs

K8S_VERSION = "1.30"
SECRET_NAME = "ocean-compute-operator-secrets"


def kubectl() -> str:
    for candidate in ("/usr/bin/kubectl", shutil.which("kubectl")):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail("kubectl is not installed (its kustomize renders kubernetes/)")


def rendered() -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    result = subprocess.run(
        [kubectl(), "kustomize", str(KUBERNETES_DIR)], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def key(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def canonical(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True)


def test_every_manifest_file_is_part_of_the_kustomization() -> None:
    listed = set(yaml.safe_load(KUSTOMIZATION.read_text())["resources"])
    files = {p.name for p in KUBERNETES_DIR.iterdir() if p.suffix in (".yaml", ".yml") and p != KUSTOMIZATION}
    assert listed == files


def test_kustomize_renders_the_step_by_step_install_unchanged_plus_the_secret_template() -> None:
    docs = rendered()
    by_file = [
        doc
        for name in yaml.safe_load(KUSTOMIZATION.read_text())["resources"]
        for doc in load_docs(KUBERNETES_DIR / name)
    ]
    others = [doc for doc in docs if key(doc) != f"Secret/{SECRET_NAME}"]
    assert sorted(map(canonical, others)) == sorted(map(canonical, by_file))
    kinds = {doc["kind"] for doc in docs}
    assert {
        "Namespace",
        "CustomResourceDefinition",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "NetworkPolicy",
        "ConfigMap",
        "Secret",
        "Deployment",
        "PodDisruptionBudget",
    } <= kinds, kinds
    (secret,) = [doc for doc in docs if doc["kind"] == "Secret"]
    assert secret["metadata"]["name"] == SECRET_NAME and not secret.get("data"), "the template ships no value"
    for doc in docs:
        if doc["kind"] not in ("Namespace", "CustomResourceDefinition"):
            assert doc["metadata"]["namespace"] == NAMESPACE, key(doc)


def test_the_operator_starts_after_its_network_policies_settings_and_secret() -> None:
    """kubectl applies in the rendered order, as the step-by-step install does."""
    kinds = [doc["kind"] for doc in rendered()]
    assert kinds[:2] == ["Namespace", "CustomResourceDefinition"], kinds
    last_before = max(
        i
        for i, kind in enumerate(kinds)
        if kind in ("NetworkPolicy", "ConfigMap", "Secret", "Role", "RoleBinding", "ServiceAccount")
    )
    assert last_before < kinds.index("Deployment"), kinds


def test_every_rendered_object_validates_strictly_for_kubernetes_1_30() -> None:
    docs = rendered()
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert any(doc["kind"] == "CustomResourceDefinition" for doc in docs)


def test_applying_the_secret_template_again_keeps_a_secret_the_admin_filled(tmp_path: Path) -> None:
    """The README's promise: `kubectl apply -k` never wipes keys it did not set (real kubectl, embedded cluster)."""
    from operator_engine.devcluster import EmbeddedCluster

    (template,) = [doc for doc in rendered() if doc["kind"] == "Secret"]
    filled = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET_NAME, "namespace": NAMESPACE},
        "data": {"OPERATOR_PRIVATE_KEY": "MHhhYmM="},
    }
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    with EmbeddedCluster.start_in_thread(NAMESPACE) as cluster:
        kubeconfig = str(cluster.write_kubeconfig(tmp_path / "kubeconfig"))

        def run(*args: str, document: dict[str, Any] | None = None) -> str:
            result = subprocess.run(
                [kubectl(), "--kubeconfig", kubeconfig, *args],
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
                input=json.dumps(document) if document else None,
            )
            assert result.returncode == 0, result.stderr
            return result.stdout

        run("create", "-f", "-", document=filled)  # as `kubectl create secret generic ... --from-literal`
        for _ in range(2):
            run("apply", "-f", "-", document=template)
        secret = json.loads(run("-n", NAMESPACE, "get", "secret", SECRET_NAME, "-o", "json"))
    assert secret["data"] == filled["data"]
