"""docs/SECURITY.md §9: checkov finds nothing over kubernetes/ and over every rendered manifest.

checkov runs twice (it takes seconds to start): once over kubernetes/, once
over a folder of every manifest the operator renders for every shape of
Workflow under every configuration (filter, storage credentials, node
selector, pull secrets), next to the network policies that select those pods
in a cluster. Each remaining finding must be skipped on its object with
checkov's annotation (`checkov.io/skipN: CKV_…=reason`); docs/SECURITY.md
lists them. checkov lives in .venv-checkov (scripts/setup-checkov.sh): it pins
an older boto3 than the operator. It runs with every download and update
check off and its proxies pointed at a closed loopback port, so it sends
nothing off this machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from operator_engine import config as config_module
from operator_engine.model import parse_workflow
from operator_engine.render import Renderer

from .workflows import CONFIGURATIONS, ROOT, workflows

KUBERNETES = ROOT / "kubernetes"
# The policies that select the workflow pods, copied next to the rendered Jobs.
POD_POLICIES = ("networkpolicy.yaml", "egress.yaml")


def checkov_binary() -> str:
    for candidate in (
        os.environ.get("CHECKOV"),
        str(ROOT / ".venv-checkov" / "bin" / "checkov"),
        shutil.which("checkov"),
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail("checkov is not installed: run `bash scripts/setup-checkov.sh` (scripts/test.sh does)")


def checkov(directory: Path) -> dict[str, Any]:
    """checkov's JSON report of the Kubernetes manifests under `directory`."""
    closed = "http://127.0.0.1:9"  # nothing listens there: any request checkov tried would fail here
    env = {key: value for key, value in os.environ.items() if not key.lower().endswith("_proxy")}
    env.update(
        CKV_SKIP_PACKAGE_UPDATE_CHECK="true",
        BC_SKIP_MAPPING="TRUE",
        HTTPS_PROXY=closed,
        HTTP_PROXY=closed,
        https_proxy=closed,
        http_proxy=closed,
        NO_PROXY="",
        no_proxy="",
        LOG_LEVEL="WARNING",
    )
    result = subprocess.run(
        [
            checkov_binary(),
            "--directory",
            str(directory),
            "--framework",
            "kubernetes",
            "--skip-download",
            "--output",
            "json",
            "--compact",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert isinstance(report, dict) and report.get("check_type") == "kubernetes", result.stdout[:2000]
    return report


def rendered_folder(folder: Path) -> Path:
    for shape, body in workflows().items():
        for name, environ in CONFIGURATIONS.items():
            renderer = Renderer(config_module.load(environ))
            children = renderer.render(parse_workflow(body))
            target = folder / f"{shape}--{name}"
            target.mkdir()
            for number, child in enumerate(children, 1):
                text = yaml.safe_dump(child.manifest, sort_keys=False)
                (target / f"{number:02d}-{child.kind.lower()}-{child.name}.yaml").write_text(text)
    for policy in POD_POLICIES:
        if (KUBERNETES / policy).is_file():  # a missing one shows as CKV2_K8S_6 (a pod without a policy)
            shutil.copy(KUBERNETES / policy, folder / policy)
    return folder


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, dict[str, Any]]:
    return {
        "kubernetes/": checkov(KUBERNETES),
        "rendered": checkov(rendered_folder(tmp_path_factory.mktemp("rendered"))),
    }


def described(checks: list[dict[str, Any]]) -> list[str]:
    return sorted({f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}" for c in checks})


@pytest.mark.parametrize("scan", ["kubernetes/", "rendered"])
def test_checkov_finds_no_failed_check(reports, scan):
    report = reports[scan]
    assert report["summary"]["passed"] > 0, "checkov checked nothing"
    assert not report["results"]["failed_checks"], "\n".join(described(report["results"]["failed_checks"]))


@pytest.mark.parametrize("scan", ["kubernetes/", "rendered"])
def test_every_skipped_check_says_why(reports, scan):
    for check in reports[scan]["results"]["skipped_checks"]:
        reason = (check.get("check_result") or {}).get("suppress_comment") or ""
        assert len(reason) > 20, f"{check['check_id']} on {check['resource']} is skipped without a reason"


def test_the_rendered_scan_covers_every_stage_of_every_configuration(reports):
    resources = {c["resource"] for c in reports["rendered"]["results"]["passed_checks"]}
    for component in ("configure", "algorithm", "filter", "publish"):
        assert any(r.startswith("Job.") and r.endswith(f"-{component}-job") for r in resources), component
