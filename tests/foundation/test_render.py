"""What `render` produces for a valid Workflow: order, names, limits, least privilege."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml

from operator_engine.model import parse_workflow
from operator_engine.render import Renderer

from .conftest import SAMPLE, clean_environ, run_cli

FULL_ENV = {
    "nCPU": "4",
    "nGPU": "2",
    "ramGB": "16",
    "diskGB": "50",
    "maxJobDuration": "1800",
    "NODE_SELECTOR": "c2d-nodes",
    "PULL_SECRET": "registry-creds",
    "PULL_POLICY": "Always",
    "SERVICE_ACCOUNT": "ocean-compute-pods",
    "STORAGE_CLASS": "standard",
    "FILTERING_CONTAINER": "registry.example.com:5000/team/filter:1.2",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEY",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-value-xyz",
    "AWS_REGION": "eu-west-1",
    "AWS_BUCKET_OUTPUT": "outputs",
    "AWS_BUCKET_ADMINLOGS": "adminlogs",
    "IPFS_API_KEY": "ipfs-key-value-xyz",
    "IPFS_API_CLIENT": "ipfs-client-value-xyz",
    "OPERATOR_PRIVATE_KEY": "0x" + "11" * 32,
}


def render(body: dict[str, Any], make_config: Any, **env: str) -> list[Any]:
    return Renderer(make_config(**env)).render(parse_workflow(body))


def job(children: list[Any], component: str) -> dict[str, Any]:
    return next(c.manifest for c in children if c.step == component)


def container(children: list[Any], component: str) -> dict[str, Any]:
    return job(children, component)["spec"]["template"]["spec"]["containers"][0]


def test_sample_renders_configmap_pvcs_secret_then_jobs_in_order(sample_body, make_config):
    children = render(sample_body, make_config)
    assert [(c.kind, c.name) for c in children] == [
        ("ConfigMap", "workflow-1"),
        ("PersistentVolumeClaim", "workflow-1-data"),
        ("PersistentVolumeClaim", "workflow-1-adminlogs"),
        ("Secret", "workflow-1-algorithm-secret"),
        ("Job", "workflow-1-configure-job"),
        ("Job", "workflow-1-algorithm-job"),
        ("Job", "workflow-1-publish-job"),
    ]


def test_filter_job_comes_before_publish_when_filtering_container_is_set(sample_body, make_config):
    children = render(sample_body, make_config, FILTERING_CONTAINER="oceanprotocol/filter:1")
    jobs = [c.name for c in children if c.kind == "Job"]
    assert jobs == [
        "workflow-1-configure-job",
        "workflow-1-algorithm-job",
        "workflow-1-filter-job",
        "workflow-1-publish-job",
    ]
    assert container(children, "filter")["image"] == "oceanprotocol/filter:1"


@pytest.mark.parametrize("steps", [["setup", "configure"], ["algorithm"], ["filter"], ["publish"]])
def test_a_step_renders_only_its_children_and_the_same_manifests_as_a_whole_render(steps, sample_body, make_config):
    config = make_config(**FULL_ENV)
    workflow = parse_workflow(sample_body)
    every = Renderer(config).render(workflow, withhold_outputs=True)
    some = Renderer(config).render(workflow, withhold_outputs=True, steps=steps)
    assert some, steps
    assert {c.step for c in some} == set(steps)
    assert [(c.kind, c.name, c.manifest) for c in some] == [
        (c.kind, c.name, c.manifest) for c in every if c.step in steps
    ]


@pytest.mark.parametrize("env", [{}, FULL_ENV], ids=["defaults", "everything-set"])
@pytest.mark.parametrize("sample", ["service", "ddo-2019"])
def test_every_manifest_validates_against_kubernetes_1_30_strict(sample, env, sample_body, ddo_body, make_config):
    body = sample_body if sample == "service" else ddo_body
    body["metadata"]["uid"] = "0b3c9c0e-6d0e-4a57-9a55-6e4a2b0f8f11"
    for child in render(body, make_config, **env):
        kubernetes_validate.validate(child.manifest, "1.30", strict=True)


def test_cli_render_prints_the_stream_that_validates(tmp_path):
    result = run_cli("render", str(SAMPLE), env=clean_environ(FILTERING_CONTAINER="oceanprotocol/filter:1"))
    assert result.returncode == 0, result.stderr
    documents = list(yaml.safe_load_all(result.stdout))
    assert [d["kind"] for d in documents] == [
        "ConfigMap",
        "PersistentVolumeClaim",
        "PersistentVolumeClaim",
        "Secret",
        "Job",
        "Job",
        "Job",
        "Job",
    ]
    assert [d["metadata"]["name"] for d in documents][-2:] == ["workflow-1-filter-job", "workflow-1-publish-job"]
    for document in documents:
        kubernetes_validate.validate(document, "1.30", strict=True)


def test_cli_render_writes_one_file_per_manifest_with_output_dir(tmp_path):
    result = run_cli("render", str(SAMPLE), "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files[0] == "01-configmap-workflow-1.yaml"
    assert files[-1] == "07-job-workflow-1-publish-job.yaml"
    assert len(files) == 7


def test_the_2019_shape_takes_image_with_checksum_and_transformation_did(ddo_body, make_config):
    children = render(ddo_body, make_config)
    algorithm = container(children, "algorithm")
    assert algorithm["image"] == "openjdk@sha256:cb57ecfa6ebbefd8ffc7f75c0f00e57a7fa739578a429b6f72a0df19315deadc"
    env = {e["name"]: e.get("value") for e in algorithm["env"]}
    assert env["TRANSFORMATION_DID"] == "did:op:abcde"
    assert env["DIDS"] == '["12345", "67890"]'


def test_both_shapes_mean_the_same_stage_document(sample_body, ddo_body):
    ddo_stage = parse_workflow(ddo_body).stage
    service_stage = parse_workflow(sample_body).stage
    assert set(ddo_stage) == set(service_stage) | {"stageType"}
    assert ddo_stage["algorithm"]["container"]["image"] == "openjdk"
    assert [i["id"] for i in ddo_stage["input"]] == ["did:op:12345", "did:op:67890"]


def test_algorithm_pod_gets_contract_env_and_entrypoint(sample_body, make_config):
    algorithm = container(render(sample_body, make_config), "algorithm")
    assert algorithm["image"] == "python:3.11-slim"
    assert algorithm["command"][:2] == ["/bin/sh", "-c"]
    assert algorithm["command"][-1] == "python /data/transformations/algorithm"
    env = {e["name"]: e for e in algorithm["env"]}
    assert env["DIDS"]["value"] == '["8d1b4d73e7af4634958f071ab8dfe7ab0df14019755e444090fd392c8ec9c3f4"]'
    assert env["TRANSFORMATION_DID"]["value"].startswith("did:op:abde8bc3")
    assert {k: env[k]["value"] for k in ("VOLUME", "LOGS", "INPUTS", "OUTPUTS")} == {
        "VOLUME": "/data",
        "LOGS": "/data/logs",
        "INPUTS": "/data/inputs",
        "OUTPUTS": "/data/outputs",
    }
    assert env["secret"] == {
        "name": "secret",
        "valueFrom": {"secretKeyRef": {"name": "workflow-1-algorithm-secret", "key": "secret"}},
    }


def test_algorithm_resources_and_deadline_follow_the_environment(sample_body, make_config):
    sample_body["spec"]["metadata"]["stages"][0]["compute"]["maxtime"] = 600
    children = render(sample_body, make_config, nCPU="4", ramGB="16", nGPU="2", maxJobDuration="1800")
    algorithm = container(children, "algorithm")
    expected = {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "2", "ephemeral-storage": "1Gi"}
    assert algorithm["resources"] == {"requests": expected, "limits": expected}
    assert job(children, "algorithm")["spec"]["activeDeadlineSeconds"] == 600


def test_maxtime_above_max_job_duration_is_clamped(sample_body, make_config):
    sample_body["spec"]["metadata"]["stages"][0]["compute"]["maxtime"] = 99999
    children = render(sample_body, make_config, maxJobDuration="1800")
    assert job(children, "algorithm")["spec"]["activeDeadlineSeconds"] == 1800


def test_no_gpu_resource_when_ngpu_is_zero(sample_body, make_config):
    algorithm = container(render(sample_body, make_config, nGPU="0"), "algorithm")
    assert "nvidia.com/gpu" not in algorithm["resources"]["limits"]


def test_pvcs_take_disk_size_and_storage_class(sample_body, make_config):
    children = render(sample_body, make_config, diskGB="50", STORAGE_CLASS="fast-ssd")
    for claim in (c.manifest for c in children if c.kind == "PersistentVolumeClaim"):
        assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
        assert claim["spec"]["storageClassName"] == "fast-ssd"


def test_every_pod_gets_node_affinity_pull_secret_policy_and_service_account(sample_body, make_config):
    children = render(sample_body, make_config, **FULL_ENV)
    for child in (c for c in children if c.kind == "Job"):
        pod = child.manifest["spec"]["template"]["spec"]
        terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert terms == [{"matchExpressions": [{"key": "scope", "operator": "In", "values": ["c2d-nodes"]}]}]
        # The consumer's image never gets the provider's pull secret (tests/security).
        assert pod.get("imagePullSecrets") == (None if child.step == "algorithm" else [{"name": "registry-creds"}])
        assert pod["serviceAccountName"] == "ocean-compute-pods"
        assert pod["containers"][0]["imagePullPolicy"] == "Always"


def test_every_pod_runs_restricted_without_a_service_account_token(sample_body, make_config):
    for child in (c for c in render(sample_body, make_config, **FULL_ENV) if c.kind == "Job"):
        pod = child.manifest["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        security = pod["containers"][0]["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert child.manifest["spec"]["backoffLimit"] == 0
        assert pod["containers"][0]["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_credentials_reach_only_the_publish_pod_and_only_through_a_secret(sample_body, make_config):
    children = render(sample_body, make_config, **FULL_ENV)
    secret_values = [
        FULL_ENV[k]
        for k in (
            "AWS_SECRET_ACCESS_KEY",
            "AWS_ACCESS_KEY_ID",
            "IPFS_API_KEY",
            "IPFS_API_CLIENT",
            "OPERATOR_PRIVATE_KEY",
        )
    ]
    for child in (c for c in children if c.kind != "Secret"):
        text = yaml.safe_dump(child.manifest)
        assert not [v for v in secret_values if v in text], child.name
    credentials = next(c.manifest for c in children if c.name == "workflow-1-publish-credentials")
    assert FULL_ENV["OPERATOR_PRIVATE_KEY"] not in yaml.safe_dump(credentials)
    publish_env = {e["name"]: e for e in container(children, "publish")["env"]}
    assert publish_env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "workflow-1-publish-credentials"
    for component in ("configure", "algorithm", "filter"):
        names = {e["name"] for e in container(children, component)["env"]}
        assert not names & {
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "IPFS_API_KEY",
            "IPFS_API_CLIENT",
            "OPERATOR_PRIVATE_KEY",
        }, component


def test_workflow_secret_reaches_only_the_algorithm_pod(sample_body, make_config):
    children = render(sample_body, make_config, FILTERING_CONTAINER="oceanprotocol/filter:1")
    secret_text = sample_body["spec"]["secret"]
    assert [c.name for c in children if secret_text in yaml.safe_dump(c.manifest)] == ["workflow-1-algorithm-secret"]
    refs = [c.step for c in children if c.kind == "Job" and "algorithm-secret" in yaml.safe_dump(c.manifest)]
    assert refs == ["algorithm"]


def test_algorithm_pod_mounts_inputs_read_only_and_no_admin_logs(sample_body, make_config):
    mounts = {m["mountPath"]: m for m in container(render(sample_body, make_config), "algorithm")["volumeMounts"]}
    assert mounts["/data/inputs"]["readOnly"] is True
    assert mounts["/data/transformations"]["readOnly"] is True
    assert not any(path.startswith("/data/adminlogs") for path in mounts)
    assert "readOnly" not in mounts["/data/outputs"]


def test_children_carry_contract_labels_and_owner_reference(sample_body, make_config):
    sample_body["metadata"]["uid"] = "uid-1"
    sample_body["metadata"]["labels"]["workflow"] = "job-42"
    for child in render(sample_body, make_config):
        labels = child.manifest["metadata"]["labels"]
        assert labels["app"] == "workflow-1"
        assert labels["workflow"] == "job-42"
        assert labels["app.kubernetes.io/managed-by"] == "operator-engine"
        assert child.manifest["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
        if child.kind == "Job":
            assert labels["component"] == child.step
            assert child.manifest["spec"]["template"]["metadata"]["labels"]["component"] == child.step


def test_configmap_holds_the_stage_document_as_json_and_yaml(sample_body, make_config):
    import json

    configmap = render(sample_body, make_config)[0].manifest
    document = json.loads(configmap["data"]["workflow.json"])
    assert document == yaml.safe_load(configmap["data"]["workflow.yaml"])
    assert document["stages"][0]["input"][0]["url"] == ["http://127.0.0.1:8765/data/uk-weather-2011.csv"]
    assert document["jobId"] == "workflow-1"


def test_publish_pod_is_told_to_withhold_outputs_only_when_asked(sample_body, make_config):
    renderer = Renderer(make_config())
    workflow = parse_workflow(sample_body)
    plain = {e["name"]: e.get("value") for e in container(renderer.render(workflow), "publish")["env"]}
    withheld = container(renderer.render(workflow, withhold_outputs=True), "publish")["env"]
    assert "PUBLISH_OUTPUTS" not in plain
    assert {"name": "PUBLISH_OUTPUTS", "value": "false"} in withheld
