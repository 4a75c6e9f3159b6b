"""docs/SECURITY.md §5 and §6: no provider credential for the consumer's image; hardened pods and namespace.

Every rendered Job, for every shape of Workflow and every configuration, and
the shipped manifests (kubernetes/) are checked here.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import pytest
import yaml

from operator_engine import __version__
from operator_engine import config as config_module
from operator_engine.model import parse_workflow
from operator_engine.render import Renderer

from .workflows import CONFIGURATIONS, ROOT, workflows

KUBERNETES = ROOT / "kubernetes"
WORKFLOWS = workflows()
PROVIDER_COMPONENTS = ("configure", "filter", "publish")


def load(path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def find(path, kind: str, name: str | None = None) -> dict[str, Any]:
    return next(d for d in load(path) if d["kind"] == kind and name in (None, d["metadata"]["name"]))


def jobs(shape: str = "service", **environ: str) -> dict[str, dict[str, Any]]:
    renderer = Renderer(config_module.load(environ))
    return {c.step: c.manifest for c in renderer.render(parse_workflow(WORKFLOWS[shape])) if c.kind == "Job"}


@functools.cache
def _every_job() -> tuple[tuple[str, dict[str, Any]], ...]:
    return tuple(
        (f"{shape}/{name}/{component}", job)
        for shape in sorted(WORKFLOWS)
        for name, environ in sorted(CONFIGURATIONS.items())
        for component, job in jobs(shape, **environ).items()
    )


def every_job() -> list[tuple[str, dict[str, Any]]]:
    """(label, Job) for every shape, configuration and stage (read-only: rendered once)."""
    return list(_every_job())


# --- item 5: the consumer's image gets none of the provider's credentials


def test_the_pull_secret_reaches_only_the_providers_own_images():
    rendered = jobs(PULL_SECRET="registry-creds", FILTERING_CONTAINER="registry.example.com/filter:1")
    for component in PROVIDER_COMPONENTS:
        assert rendered[component]["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "registry-creds"}]
    assert "imagePullSecrets" not in rendered["algorithm"]["spec"]["template"]["spec"]


def test_algorithm_pull_secret_is_a_separate_explicit_setting():
    rendered = jobs(
        PULL_SECRET="registry-creds",
        ALGORITHM_PULL_SECRET="consumer-registry",
        FILTERING_CONTAINER="registry.example.com/filter:1",
    )
    assert rendered["algorithm"]["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "consumer-registry"}]
    for component in PROVIDER_COMPONENTS:
        assert rendered[component]["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "registry-creds"}]


def test_algorithm_pull_secret_alone_leaves_the_provider_pods_without_one():
    rendered = jobs(ALGORITHM_PULL_SECRET="consumer-registry")
    assert rendered["algorithm"]["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "consumer-registry"}]
    assert "imagePullSecrets" not in rendered["configure"]["spec"]["template"]["spec"]


def test_a_bad_algorithm_pull_secret_stops_the_operator_naming_it():
    with pytest.raises(config_module.ConfigError, match="ALGORITHM_PULL_SECRET"):
        config_module.load({"ALGORITHM_PULL_SECRET": "Not A Name"})


def test_the_readme_and_the_operator_configmap_document_the_pull_secret_settings():
    readme = (ROOT / "README.md").read_text()
    for name in ("PULL_SECRET", "ALGORITHM_PULL_SECRET", "EPHEMERAL_STORAGE"):
        assert re.search(rf"^\| `{name}` \|", readme, re.M), name
        assert re.search(rf"^\s*#?\s*{name}:", (KUBERNETES / "operator.yml").read_text(), re.M), name


# --- item 6: hardened pods


def test_every_job_has_a_read_only_root_and_a_bounded_tmp():
    for label, job in every_job():
        pod = job["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, label
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        volume = next(v for v in pod["volumes"] if v["name"] == mounts["/tmp"]["name"])
        assert volume == {"name": mounts["/tmp"]["name"], "emptyDir": {"sizeLimit": "1Gi"}}, label


def test_every_job_requests_and_limits_ephemeral_storage():
    for label, job in every_job():
        resources = job["spec"]["template"]["spec"]["containers"][0]["resources"]
        assert resources["requests"]["ephemeral-storage"] == "1Gi", label
        assert resources["limits"]["ephemeral-storage"] == "1Gi", label


def test_ephemeral_storage_is_configurable_and_checked():
    for job in jobs(EPHEMERAL_STORAGE="3Gi").values():
        pod = job["spec"]["template"]["spec"]
        assert pod["containers"][0]["resources"]["limits"]["ephemeral-storage"] == "3Gi"
        assert {"name": "tmp", "emptyDir": {"sizeLimit": "3Gi"}} in pod["volumes"]
    for bad in ("lots", "0", "-1Gi", "1 Gi"):
        with pytest.raises(config_module.ConfigError, match="EPHEMERAL_STORAGE"):
            config_module.load({"EPHEMERAL_STORAGE": bad})


ALLOWED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What the Pod Security `restricted` profile (Kubernetes 1.30) refuses in `pod` (a PodSpec)."""
    problems = []
    pod_context = pod.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(flag)
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            problems.append(f"volume {volume['name']}: {kinds}")
    for container in (pod.get("initContainers") or []) + pod["containers"]:
        context = container.get("securityContext") or {}
        name = container["name"]
        if context.get("privileged"):
            problems.append(f"{name}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{name}: capabilities must drop ALL")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities")
        if not context.get("runAsNonRoot", pod_context.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot")
        if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
            problems.append(f"{name}: runAsUser 0")
        seccomp = (context.get("seccompProfile") or pod_context.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile")
        if any(port.get("hostPort") for port in container.get("ports") or []):
            problems.append(f"{name}: hostPort")
    return problems


def test_every_job_and_the_operator_pass_pod_security_restricted():
    for label, job in every_job():
        assert not restricted_violations(job["spec"]["template"]["spec"]), label
    deployment = find(KUBERNETES / "operator.yml", "Deployment")
    assert not restricted_violations(deployment["spec"]["template"]["spec"])


def test_the_restricted_check_bites():
    pod = jobs()["algorithm"]["spec"]["template"]["spec"]
    pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    assert len(restricted_violations(pod)) == 2


def test_the_namespace_enforces_pod_security_restricted():
    labels = find(KUBERNETES / "namespace.yml", "Namespace", "ocean-compute")["metadata"]["labels"]
    for mode in ("enforce", "warn", "audit"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted", mode


# --- item 6: network policies


def selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether the policy's podSelector selects a pod with ``labels``, as Kubernetes evaluates a LabelSelector."""
    selector = policy["spec"]["podSelector"]
    assert set(selector) <= {"matchLabels", "matchExpressions"}, selector
    if not all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        matched = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not matched:
            return False
    return True


def policies() -> list[dict[str, Any]]:
    return [
        d
        for name in ("networkpolicy.yaml", "egress.yaml")
        for d in load(KUBERNETES / name)
        if d["kind"] == "NetworkPolicy"
    ]


def test_the_algorithm_and_filter_pods_get_no_egress_and_configure_and_publish_only_public_egress():
    for label, job in every_job():
        labels = job["spec"]["template"]["metadata"]["labels"]
        egress = [p for p in policies() if selects(p, labels) and "Egress" in p["spec"]["policyTypes"]]
        assert egress, f"{label}: no egress policy selects the pod"
        rules = [rule for p in egress for rule in p["spec"].get("egress") or []]
        if labels["component"] in ("algorithm", "filter"):
            assert rules == [], f"{label}: some egress is allowed"
        else:
            assert labels["component"] in ("configure", "publish"), label
            blocks = [peer["ipBlock"] for rule in rules for peer in rule.get("to", []) if "ipBlock" in peer]
            assert blocks and all("169.254.0.0/16" in b.get("except", []) for b in blocks if b["cidr"] == "0.0.0.0/0")


def test_every_workflow_pod_is_denied_all_ingress():
    for label, job in every_job():
        labels = job["spec"]["template"]["metadata"]["labels"]
        ingress = [p for p in policies() if selects(p, labels) and "Ingress" in p["spec"]["policyTypes"]]
        assert ingress, f"{label}: no ingress policy selects the pod"
        assert all(not p["spec"].get("ingress") for p in ingress), f"{label}: some ingress is allowed"


def operator_container() -> dict[str, Any]:
    (container,) = find(KUBERNETES / "operator.yml", "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def liveness_port_and_path() -> tuple[int, str]:
    (url,) = [a.split("=", 1)[1] for a in operator_container()["command"] if a.startswith("--liveness=")]
    match = re.fullmatch(r"http://0\.0\.0\.0:(\d+)(/\S*)", url)
    assert match, url
    return int(match[1]), match[2]


def test_the_operator_may_receive_only_its_probes_and_scrapes_and_reach_only_dns_api_and_notifications():
    deployment = find(KUBERNETES / "operator.yml", "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (policy,) = [p for p in policies() if selects(p, labels)]
    assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    port, _ = liveness_port_and_path()
    (metrics,) = [p["containerPort"] for p in operator_container()["ports"] if p["name"] == "metrics"]
    ready = operator_container()["readinessProbe"]["httpGet"]["port"]  # the operator's own readiness endpoint
    assert policy["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": p} for p in (port, ready, metrics)]}]
    egress_ports = {(p["protocol"], p["port"]) for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert egress_ports == {("UDP", 53), ("TCP", 53), ("TCP", 443), ("TCP", 6443), ("TCP", 80)}
    (wide,) = [
        rule for rule in policy["spec"]["egress"] if ("TCP", 443) in {(p["protocol"], p["port"]) for p in rule["ports"]}
    ]
    blocks = {peer["ipBlock"]["cidr"]: peer["ipBlock"].get("except", []) for peer in wide["to"] if "ipBlock" in peer}
    assert "169.254.0.0/16" in blocks["0.0.0.0/0"] and "fe80::/10" in blocks["::/0"], "the metadata service is refused"
    dns = [
        rule for rule in policy["spec"]["egress"] if ("UDP", 53) in {(p["protocol"], p["port"]) for p in rule["ports"]}
    ]
    assert dns[0]["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}]


def test_the_readme_applies_the_network_policies_before_the_operator_starts():
    readme = (ROOT / "README.md").read_text()
    applied = re.findall(r"^kubectl apply -f (kubernetes/\S+)", readme, re.M)
    operator = applied.index("kubernetes/operator.yml")
    assert applied.index("kubernetes/networkpolicy.yaml") < operator
    assert applied.index("kubernetes/egress.yaml") < operator


# --- item 6: the operator's Deployment


def test_the_operator_has_a_liveness_probe_on_kopfs_endpoint_and_a_readiness_probe_on_its_own():
    port, path = liveness_port_and_path()
    container = operator_container()
    assert container["livenessProbe"]["httpGet"] == {"path": path, "port": port}
    assert {"name": "health", "containerPort": port, "protocol": "TCP"} in container["ports"]
    ready = container["readinessProbe"]["httpGet"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["READINESS_ENDPOINT"] == f"http://0.0.0.0:{ready['port']}{ready['path']}"
    assert ready["port"] != port
    assert {"name": "ready", "containerPort": ready["port"], "protocol": "TCP"} in container["ports"]


def test_the_operator_image_is_pinned_to_the_package_version():
    assert operator_container()["image"] == f"oceanprotocol/operator-engine:{__version__}"
    assert (ROOT / "k8s_install" / "operator.yml").resolve() == (KUBERNETES / "operator.yml").resolve()
