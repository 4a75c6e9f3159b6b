"""Whole workflows through the real operator and real pod processes (ProcessRuntime), in-process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from operator_engine.demo import follow_workflow, running_stack

from .helpers import closed_port, workflow

ENV_DUMP = """\
import json, os
os.makedirs(os.environ["OUTPUTS"], exist_ok=True)
with open(os.path.join(os.environ["OUTPUTS"], "env.json"), "w") as f:
    json.dump(dict(os.environ), f)
print("dumped", len(os.environ), "variables")
"""

OPERATOR_SECRETS = {
    "OPERATOR_PRIVATE_KEY": "0x" + "4c" * 32,
    "AWS_ACCESS_KEY_ID": "AKIADEMOTESTKEY00001",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-value-never-in-pods",
    "IPFS_API_KEY": "ipfs-key-value-never-in-pods",
    "IPFS_API_CLIENT": "ipfs-client-value-never-in-pods",
}


async def run(tmp_path: Path, body: dict[str, Any], env: dict[str, str | None] | None = None) -> dict[str, Any]:
    async with running_stack(tmp_path, data_port=0, operator_env=env) as stack:
        body = json.loads(json.dumps(body).replace("DATA_URL", stack.data_url))
        await stack.cluster.create(body)
        final = await follow_workflow(stack.cluster, body["metadata"]["name"], timeout=90)
    return final["status"]


async def test_the_algorithm_sees_its_env_and_no_operator_credentials(tmp_path: Path) -> None:
    env: dict[str, str | None] = {
        **OPERATOR_SECRETS,
        "AWS_BUCKET_OUTPUT": None,
        "IPFS_OUTPUT": None,
        "AWS_REGION": "eu-west-1",
    }
    body = workflow(
        "wf-env", ["DATA_URL/data/uk-weather-2011.csv"], algorithm={"rawcode": ENV_DUMP}, secret="the-algorithm-secret"
    )
    status = await run(tmp_path, body, env)
    assert status["phase"] == "Succeeded", status
    assert status["statusCode"] == 70
    [url] = status["outputsUrl"]
    assert url.startswith("file://") and url.endswith("/env.json")
    dumped_text = (tmp_path / "results" / "wf-env" / "outputs" / "env.json").read_text()
    dumped = json.loads(dumped_text)
    assert json.loads(dumped["DIDS"]) == ["a1" * 32]
    assert dumped["INPUTS"].endswith("/inputs")
    assert Path(dumped["INPUTS"], "did:op:" + "a1" * 32, "0").is_file()  # the input, where INPUTS says
    assert dumped["OUTPUTS"].endswith("/outputs")
    assert dumped["secret"] == "the-algorithm-secret"
    assert dumped["TRANSFORMATION_DID"] == "did:op:" + "b2" * 32
    for name, value in OPERATOR_SECRETS.items():
        assert name not in dumped, name
        assert value not in dumped_text, name
    assert not any(k.startswith(("AWS_", "IPFS_")) for k in dumped)
    assert "KUBECONFIG" not in dumped and "LOCAL_STORAGE_DIR" not in dumped  # nothing of the host leaks


async def test_unreachable_input_ends_with_31(tmp_path: Path) -> None:
    body = workflow(
        "wf-nodata",
        [f"http://127.0.0.1:{closed_port()}/gone.csv"],
        algorithm={"url": "DATA_URL/algorithms/weather_summary.py"},
    )
    status = await run(tmp_path, body)
    assert status["statusCode"] == 31, status
    assert status["phase"] == "Failed"
    assert "gone.csv" in status["message"] or "connect" in status["message"].lower(), status["message"]
    assert status.get("configlogUrl")  # the logs are still published


async def test_broken_algorithm_url_ends_with_32(tmp_path: Path) -> None:
    body = workflow(
        "wf-noalgo",
        ["DATA_URL/data/uk-weather-2011.csv"],
        algorithm={"url": "DATA_URL/algorithms/no-such-algorithm.py"},
    )
    status = await run(tmp_path, body)
    assert status["statusCode"] == 32, status
    assert status["phase"] == "Failed"
    assert "404" in status["message"] or "not found" in status["message"].lower(), status["message"]
