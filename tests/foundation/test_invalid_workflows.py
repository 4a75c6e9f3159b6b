"""Every kind of broken Workflow gets exit 2, one line naming the field, and no manifest."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from .conftest import DDO_SAMPLE, SAMPLE, run_cli


def _stage(body: dict[str, Any]) -> dict[str, Any]:
    return body["spec"]["metadata"]["stages"][0]


def _ddo_stage(body: dict[str, Any]) -> dict[str, Any]:
    return body["spec"]["metadata"]["service"][1]["attributes"]["workflow"]["stages"][0]


Breaker = Callable[[dict[str, Any]], None]

# name -> (sample, how to break it, the field the message must name)
CASES: dict[str, tuple[str, Breaker, str]] = {
    "missing-image": (
        "service",
        lambda b: _stage(b)["algorithm"]["container"].pop("image"),
        "spec.metadata.stages[0].algorithm.container.image: required",
    ),
    "image-with-newline": (
        "service",
        lambda b: _stage(b)["algorithm"]["container"].__setitem__("image", "python\nkind: Pod"),
        "spec.metadata.stages[0].algorithm.container.image:",
    ),
    "image-with-space": (
        "service",
        lambda b: _stage(b)["algorithm"]["container"].__setitem__("image", "python 3"),
        "spec.metadata.stages[0].algorithm.container.image:",
    ),
    "bad-tag": (
        "service",
        lambda b: _stage(b)["algorithm"]["container"].__setitem__("tag", "-bad tag"),
        "spec.metadata.stages[0].algorithm.container.tag:",
    ),
    "bad-checksum": (
        "service",
        lambda b: _stage(b)["algorithm"]["container"].__setitem__("checksum", "sha256:xyz"),
        "spec.metadata.stages[0].algorithm.container.checksum:",
    ),
    "input-did-not-a-did": (
        "service",
        lambda b: _stage(b)["input"][0].__setitem__("id", "../../etc"),
        "spec.metadata.stages[0].input[0].id:",
    ),
    "input-did-with-slash": (
        "service",
        lambda b: _stage(b)["input"][0].__setitem__("id", "did:op:abc/def"),
        "spec.metadata.stages[0].input[0].id:",
    ),
    "algorithm-did-empty-id": (
        "service",
        lambda b: _stage(b)["algorithm"].__setitem__("id", "did:op:"),
        "spec.metadata.stages[0].algorithm.id:",
    ),
    "duplicate-input-did": (
        "service",
        lambda b: _stage(b)["input"].append(dict(_stage(b)["input"][0], index=1)),
        "spec.metadata.stages[0].input[1].id:",
    ),
    "url-not-http": (
        "service",
        lambda b: _stage(b)["input"][0].__setitem__("url", ["file:///etc/passwd"]),
        "spec.metadata.stages[0].input[0].url[0]:",
    ),
    "no-algorithm-code": (
        "service",
        lambda b: _stage(b)["algorithm"].pop("url"),
        "spec.metadata.stages[0].algorithm: one of url, rawcode or remote is required",
    ),
    "no-stages": (
        "service",
        lambda b: b["spec"]["metadata"].__setitem__("stages", []),
        "spec.metadata.stages: required",
    ),
    "two-stages": (
        "service",
        lambda b: b["spec"]["metadata"]["stages"].append(_stage(b)),
        "spec.metadata.stages: has 2 stages",
    ),
    "no-stage-document": (
        "service",
        lambda b: b["spec"].__setitem__("metadata", {"foo": 1}),
        "spec.metadata.stages: required",
    ),
    "maxtime-not-a-number": (
        "service",
        lambda b: _stage(b)["compute"].__setitem__("maxtime", "forever"),
        "spec.metadata.stages[0].compute.maxtime: must be an integer",
    ),
    "maxtime-zero": (
        "service",
        lambda b: _stage(b)["compute"].__setitem__("maxtime", 0),
        "spec.metadata.stages[0].compute.maxtime:",
    ),
    "name-too-long": ("service", lambda b: b["metadata"].__setitem__("name", "w" * 50), "metadata.name:"),
    "name-uppercase": ("service", lambda b: b["metadata"].__setitem__("name", "Workflow_1"), "metadata.name:"),
    "workflow-label-invalid": (
        "service",
        lambda b: b["metadata"]["labels"].__setitem__("workflow", "not a label!"),
        "metadata.labels.workflow:",
    ),
    "secret-not-a-string": (
        "service",
        lambda b: b["spec"].__setitem__("secret", {"nested": True}),
        "spec.secret: must be a string",
    ),
    "secret-too-long": (
        "service",
        lambda b: b["spec"].__setitem__("secret", "s" * 70_000),
        "spec.secret: must be at most 65536 characters",
    ),
    "stop-requested-not-bool": (
        "service",
        lambda b: b["spec"].__setitem__("stopRequested", "please"),
        "spec.stopRequested: must be true or false",
    ),
    "no-spec": ("service", lambda b: b.pop("spec"), "spec: required"),
    "algorithm-not-an-object": (
        "service",
        lambda b: _stage(b).__setitem__("algorithm", "python"),
        "spec.metadata.stages[0].algorithm: must be an object",
    ),
    "ddo-missing-transformation": (
        "ddo",
        lambda b: _ddo_stage(b).pop("transformation"),
        "spec.metadata.service[1].attributes.workflow.stages[0].transformation: required",
    ),
    "ddo-image-invalid": (
        "ddo",
        lambda b: _ddo_stage(b)["requirements"]["container"].__setitem__("image", "UPPER/Case"),
        "spec.metadata.service[1].attributes.workflow.stages[0].requirements.container.image:",
    ),
    "ddo-no-metadata-service": (
        "ddo",
        lambda b: b["spec"]["metadata"]["service"].pop(1),
        "spec.metadata.service: no entry with type Metadata",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_invalid_workflow_exits_2_naming_the_field_without_manifests(case, tmp_path):
    sample, breaker, expected = CASES[case]
    body = yaml.safe_load((SAMPLE if sample == "service" else DDO_SAMPLE).read_text())
    breaker(body)
    path = tmp_path / "wf.yaml"
    path.write_text(json.dumps(body))
    result = run_cli("render", str(path))
    assert result.returncode == 2
    assert expected in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "text, expected",
    [
        ("kind: WorkFlow\nmetadata: [unclosed", "not valid YAML"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n", "kind: expected exactly one WorkFlow document"),
    ],
)
def test_unreadable_file_exits_2_with_one_line(text, expected, tmp_path):
    path = tmp_path / "wf.yaml"
    path.write_text(text)
    result = run_cli("render", str(path))
    assert result.returncode == 2
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_missing_file_exits_2():
    result = run_cli("render", "/nonexistent/workflow.yaml")
    assert result.returncode == 2
    assert "cannot read" in result.stderr


def test_render_reads_standard_input():
    result = run_cli("render", "-", stdin=SAMPLE.read_text())
    assert result.returncode == 0
    assert "workflow-1-publish-job" in result.stdout
