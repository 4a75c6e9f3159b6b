"""The operator's ConfigMap and Deployment."""

import re

from ._support import KUBERNETES_DIR, NAMESPACE, OPERATOR_FILE, find_doc, load_docs

SECRET_VARS = {"OPERATOR_PRIVATE_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "IPFS_API_KEY", "IPFS_API_CLIENT"}
# The settings of the original operator-engine's ConfigMap (all in docs/contract.md §3), minus the secrets.
SETTINGS = [
    "nCPU",
    "cpuType",
    "nGPU",
    "gpuRam",
    "gpuType",
    "ramGB",
    "diskGB",
    "priceMinute",
    "description",
    "maxJobs",
    "maxJobDuration",
    "STORAGE_EXPIRY",
    "IPFS_TYPE",
    "IPFS_OUTPUT",
    "IPFS_ADMINLOGS",
    "IPFS_OUTPUT_PREFIX",
    "IPFS_ADMINLOGS_PREFIX",
    "IPFS_EXPIRY_TIME",
    "AWS_REGION",
    "AWS_BUCKET_OUTPUT",
    "AWS_BUCKET_ADMINLOGS",
    "STORAGE_CLASS",
    "NOTIFY_START_URL",
    "NOTIFY_STOP_URL",
    "SERVICE_ACCOUNT",
    "NODE_SELECTOR",
    "PULL_SECRET",
    "PULL_POLICY",
    "FILTERING_CONTAINER",
    "POD_CONFIGURATION_CONTAINER",
    "POD_PUBLISH_CONTAINER",
    "LOG_CFG",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "DEBUG_NO_CLEANUP",
    "TEMPLATES_DIR",
    "METRICS_PORT",
]
KOPF_COMMAND = [
    "kopf",
    "run",
    "--standalone",
    "--namespace=$(OPERATOR_NAMESPACE)",
    "--liveness=http://0.0.0.0:8080/healthz",
    "-m",
    "operator_engine.operator_main",
]


def config():
    return find_doc(OPERATOR_FILE, "ConfigMap", "ocean-compute-operator-config")


def deployment():
    return find_doc(OPERATOR_FILE, "Deployment", "ocean-compute-operator")


def pod_spec():
    return deployment()["spec"]["template"]["spec"]


def container():
    (only,) = pod_spec()["containers"]
    return only


def test_config_map_mentions_every_non_secret_setting():
    text = OPERATOR_FILE.read_text()
    data = config()["data"]
    for name in SETTINGS:
        assert name in data or re.search(rf"^\s*#\s*{name}:", text, re.M), name


def test_config_map_values_are_strings():
    assert all(isinstance(v, str) for v in config()["data"].values())


def test_config_map_example_values():
    data = config()["data"]
    assert data["nCPU"] == "1" and data["nGPU"] == "0" and data["ramGB"] == "1"
    assert data["diskGB"] == "1" and data["maxJobs"] == "5"
    assert data["maxJobDuration"] == "3600" and data["STORAGE_CLASS"] == "standard"
    assert data["SERVICE_ACCOUNT"] == "ocean-compute-pods"
    assert data["LOG_LEVEL"] == "INFO"
    assert data["LOG_FORMAT"] == "json"  # the Deployment logs for an aggregator


def test_no_secret_values_are_shipped():
    assert not SECRET_VARS & set(config()["data"])
    for path in KUBERNETES_DIR.iterdir():
        if path.suffix in (".yaml", ".yml"):
            assert all(d["kind"] != "Secret" for d in load_docs(path)), path


def test_service_account_setting_names_the_pod_service_account():
    pods_sa = find_doc(KUBERNETES_DIR / "sa.yml", "ServiceAccount", config()["data"]["SERVICE_ACCOUNT"])
    assert pods_sa["automountServiceAccountToken"] is False


def test_deployment_runs_two_replicas_with_leader_election_kept_apart():
    spec = deployment()["spec"]
    assert deployment()["metadata"]["namespace"] == NAMESPACE
    assert spec["replicas"] == 2
    # Only the leader is Ready: a rolling update would wait for a Ready new pod forever.
    assert spec["strategy"] == {"type": "Recreate"}
    env = {e["name"]: e for e in container()["env"]}
    assert env["LEADER_ELECTION"]["value"] == "true"
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    (term,) = pod_spec()["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]


def test_a_disruption_budget_keeps_one_operator():
    budget = find_doc(OPERATOR_FILE, "PodDisruptionBudget")
    assert budget["metadata"]["namespace"] == NAMESPACE
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"] == deployment()["spec"]["selector"]


def test_deployment_readiness_probe_hits_the_readiness_endpoint():
    probe = container()["readinessProbe"]["httpGet"]
    env = {e["name"]: e for e in container()["env"]}
    assert env["READINESS_ENDPOINT"]["value"] == f"http://0.0.0.0:{probe['port']}{probe['path']}"
    assert probe["port"] in {p["containerPort"] for p in container()["ports"]}


def test_deployment_uses_the_operator_service_account():
    assert pod_spec()["serviceAccountName"] == "ocean-compute-operator"


def test_deployment_runs_kopf_in_its_own_namespace():
    assert container()["command"] == KOPF_COMMAND
    env = {e["name"]: e for e in container()["env"]}
    assert env["OPERATOR_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_deployment_image_is_the_operator_engine_image():
    assert container()["image"].startswith("oceanprotocol/operator-engine:")


def test_deployment_reads_settings_and_optional_secret():
    env_from = container()["envFrom"]
    assert {"configMapRef": {"name": "ocean-compute-operator-config"}} in env_from
    assert {"secretRef": {"name": "ocean-compute-operator-secrets", "optional": True}} in env_from


def test_deployment_liveness_probe_hits_kopf_health_endpoint():
    probe = container()["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz" and probe["port"] == 8080


def test_deployment_exposes_metrics_where_its_annotations_and_settings_say():
    (port,) = [p for p in container()["ports"] if p["name"] == "metrics"]
    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == port["containerPort"] == int(config()["data"]["METRICS_PORT"])


def test_deployment_sets_resource_requests_and_limits():
    resources = container()["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) <= set(resources["limits"])


def test_deployment_pod_runs_as_non_root_with_runtime_default_seccomp():
    ctx = pod_spec()["securityContext"]
    assert ctx["runAsNonRoot"] is True
    assert ctx["runAsUser"] == 10001 and ctx["runAsGroup"] == 10001 and ctx["fsGroup"] == 10001
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}


def test_deployment_containers_drop_all_capabilities_without_privilege_escalation():
    for c in pod_spec()["containers"] + pod_spec().get("initContainers", []):
        ctx = c["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"]["drop"] == ["ALL"]
        assert "add" not in ctx["capabilities"]
        assert ctx.get("privileged", False) is False
        assert ctx.get("runAsUser", 10001) != 0


def test_deployment_has_read_only_root_and_writable_tmp():
    assert container()["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in container()["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_namespace_manifest_creates_ocean_compute():
    assert find_doc(KUBERNETES_DIR / "namespace.yml", "Namespace", NAMESPACE)
