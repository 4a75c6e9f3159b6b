"""Nothing secret in logs, at any setting (docs/SECURITY.md §8).

The real operator (``kopf run`` as a subprocess, ``--debug``, LOG_LEVEL=DEBUG)
runs a Workflow end to end on the embedded cluster whose kubelet runs the real
pod programs as local processes (configure, the algorithm, publish). Once with
the operator's own logging, once with a LOG_CFG file that turns root,
``kubernetes``, ``kopf`` and ``urllib3`` to DEBUG with handlers of its own (a
stream and a file), and gives ``kubernetes.client.rest`` (which logs response
bodies at DEBUG) DEBUG and handlers of its own, not propagating.

The Workflow carries a distinctive ``spec.secret`` and input/algorithm URLs
with distinctive tokens in their paths and query strings; a second one is
rejected for an ftp:// URL carrying credentials. The operator has a
distinctive private key, IPFS API key and client id, AWS keys (all of which
go into the publish pod's Secret) and a bearer token for the API server. Afterwards every place a person can
read is searched for each of them, and for their base64 form (how a Secret's
data travels in API bodies):

* the operator's stdout/stderr and the LOG_CFG's log file; the Events; the
  Workflow's status: no secret, no URL, no token;
* each pod's output (``kubectl logs``), termination message and published log
  (configure.log, publish.log, algorithm.log): no secret. Whether the
  configure log names the input URLs is the configure program's concern,
  covered by its own tests.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pods.harness import FakeIpfs, FileServer, file_handler, ipfs_handler, serve

from operator_engine import config as config_module
from operator_engine.devcluster import EmbeddedCluster, ProcessRuntime
from operator_engine.devcluster.cluster import kubeconfig

pytestmark = pytest.mark.slow

NS = "ocean-compute"
ROOT = Path(__file__).resolve().parents[2]
NAME = "wf-secrets"
REJECTED = "wf-rejected"

# Distinctive values: each must never be readable where it should not be.
WORKFLOW_SECRET = "wfsecret-7d3f9a1c-never-log"
PRIVATE_KEY = "0x" + hashlib.sha256(b"operator-engine sec test key").hexdigest()
IPFS_API_KEY = "ipfskey-5b2e8c4a-never-log"
IPFS_API_CLIENT = "ipfsclient-91c0d7e3-never-log"
AWS_ACCESS_KEY_ID = "AKIASECTEST7Q2W9E4R1"
AWS_SECRET_ACCESS_KEY = "awssecret-3e8b1f6d-never-log"
INPUT_PATH_TOKEN = "inpath-0c7e2a9b"
INPUT_QUERY_TOKEN = "inquery-6f1d3b8e"
ALGO_PATH_TOKEN = "algpath-2a9c4e7f"
ALGO_QUERY_TOKEN = "algquery-8d5b0f3a"
REJECTED_URL_TOKEN = "rejurl-4c1a7e9d"
API_TOKEN = "apitoken-0f6b2d8c-never-log"  # the operator's bearer token for the API server

SECRETS = {
    "spec.secret": WORKFLOW_SECRET,
    "OPERATOR_PRIVATE_KEY": PRIVATE_KEY[2:],
    "IPFS_API_KEY": IPFS_API_KEY,
    "IPFS_API_CLIENT": IPFS_API_CLIENT,
    "AWS_ACCESS_KEY_ID": AWS_ACCESS_KEY_ID,
    "AWS_SECRET_ACCESS_KEY": AWS_SECRET_ACCESS_KEY,
    "API bearer token": API_TOKEN,
}
TOKENS = {
    "input URL path token": INPUT_PATH_TOKEN,
    "input URL query token": INPUT_QUERY_TOKEN,
    "algorithm URL path token": ALGO_PATH_TOKEN,
    "algorithm URL query token": ALGO_QUERY_TOKEN,
    "rejected URL token": REJECTED_URL_TOKEN,
}

ALGORITHM = b"""import os, pathlib
pathlib.Path(os.environ["OUTPUTS"], "result.txt").write_text("rows counted\\n")
print("algorithm done")
"""

LOG_CFG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {
        "stream": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"},
        "file": {"class": "logging.FileHandler", "formatter": "plain", "filename": "PLACEHOLDER"},
    },
    "root": {"level": "DEBUG", "handlers": ["stream", "file"]},
    "loggers": {
        **{name: {"level": "DEBUG"} for name in ("kubernetes", "kopf", "kopf.objects", "urllib3", "aiohttp")},
        # The one that logs response bodies, given a handler of its own that bypasses the root's.
        "kubernetes.client.rest": {"level": "DEBUG", "handlers": ["stream", "file"], "propagate": False},
    },
}


def encodings(value: str) -> dict[str, str]:
    """The value as it may travel: itself, and base64 (a Secret's data in an API body)."""
    return {"plain": value, "base64": base64.b64encode(value.encode()).decode()}


def find_leaks(text: str, needles: dict[str, str]) -> list[str]:
    found = []
    for what, value in needles.items():
        for form, encoded in encodings(value).items():
            for line in text.splitlines():
                if encoded in line:
                    found.append(f"{what} ({form}): {line[:240]}")
                    break
    return found


# ---------------------------------------------------------------- peers on loopback


class Receiver:
    """Takes the start/stop notifications (they carry the secret, by contract: not a log)."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.bodies.append(json.loads(raw or b"null"))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    state = FileServer()
    yield from serve(file_handler(state), state)


@pytest.fixture
def ipfs_server() -> Iterator[FakeIpfs]:
    state = FakeIpfs()
    yield from serve(ipfs_handler(state), state)


# ---------------------------------------------------------------- the run


def workflow(input_url: str, algorithm_url: str, name: str = NAME) -> dict[str, Any]:
    return {
        "apiVersion": "oceanprotocol.com/v1alpha",
        "kind": "WorkFlow",
        "metadata": {"name": name, "namespace": NS, "labels": {"workflow": name}},
        "spec": {
            "secret": WORKFLOW_SECRET,
            "metadata": {
                "stages": [
                    {
                        "index": 0,
                        "input": [{"index": 0, "id": "did:op:" + "a1" * 32, "url": [input_url]}],
                        "algorithm": {
                            "id": "did:op:" + "b2" * 32,
                            "url": algorithm_url,
                            "container": {"image": "python", "tag": "3.11-slim", "entrypoint": "python $ALGO"},
                        },
                        "compute": {"Instances": 1, "namespace": NS, "maxtime": 120},
                        "output": {"publishAlgorithmLog": True, "publishOutput": True},
                    }
                ]
            },
        },
    }


def operator_env(kubeconfig: Path, receiver: Receiver, ipfs: FakeIpfs, log_cfg: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in config_module.VARIABLE_NAMES}
    env.update(
        {
            "KUBECONFIG": str(kubeconfig),
            "OPERATOR_NAMESPACE": NS,
            "LOG_LEVEL": "DEBUG",
            "OPERATOR_PRIVATE_KEY": PRIVATE_KEY,
            "OPERATOR_BACKSTOP_SECONDS": "30",
            "NOTIFY_START_URL": receiver.url + "/start",
            "NOTIFY_STOP_URL": receiver.url + "/stop",
            "IPFS_OUTPUT": ipfs.base_url,
            "IPFS_API_KEY": IPFS_API_KEY,
            "IPFS_API_CLIENT": IPFS_API_CLIENT,
            "AWS_ACCESS_KEY_ID": AWS_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": AWS_SECRET_ACCESS_KEY,
            "METRICS_PORT": "0",
            "PYTHONUNBUFFERED": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            "CONFIGURE_ALLOWED_NETWORKS": "127.0.0.0/8,::1",
        }
    )
    if log_cfg is not None:
        env["LOG_CFG"] = str(log_cfg)
    return env


async def wait_for(predicate: Any, what: str, timeout: float, context: Any = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := await predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{context()}")
        await asyncio.sleep(0.1)
    return value


def watching(cluster: EmbeddedCluster, plural: str) -> bool:
    return any(
        r.method == "GET" and r.query.get("watch") in ("true", "1") and r.path.rstrip("/").endswith(plural)
        for r in list(cluster.request_log)
    )


@pytest.mark.parametrize("with_log_cfg", [False, True], ids=["LOG_LEVEL=DEBUG", "LOG_CFG-all-DEBUG"])
async def test_no_secret_reaches_a_log_an_event_or_the_status(
    with_log_cfg: bool, tmp_path: Path, receiver: Receiver, file_server: FileServer, ipfs_server: FakeIpfs
) -> None:
    input_url = file_server.serve(f"/data/{INPUT_PATH_TOKEN}/weather.csv", "a,b\n1,2\n")
    input_url += f"?X-Amz-Signature={INPUT_QUERY_TOKEN}&token={INPUT_QUERY_TOKEN}"
    algorithm_url = file_server.serve(f"/algorithms/{ALGO_PATH_TOKEN}/count.py", ALGORITHM)
    algorithm_url += f"?sig={ALGO_QUERY_TOKEN}"
    log_cfg_path: Path | None = None
    config_log = tmp_path / "operator-logcfg.log"
    if with_log_cfg:
        cfg = json.loads(json.dumps(LOG_CFG))
        cfg["handlers"]["file"]["filename"] = str(config_log)
        log_cfg_path = tmp_path / "log.yaml"
        log_cfg_path.write_text(yaml.safe_dump(cfg))

    runtime = ProcessRuntime(tmp_path / "runtime")
    output_log = tmp_path / "operator.out"
    async with EmbeddedCluster(namespace=NS, runtime=runtime) as cluster:
        config = kubeconfig(cluster.url, NS)
        config["users"][0]["user"] = {"token": API_TOKEN}  # sent on every request; the cluster ignores it
        kubeconfig_path = tmp_path / "kubeconfig"
        kubeconfig_path.write_text(yaml.safe_dump(config))
        with output_log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kopf",
                    "run",
                    "--standalone",
                    "--debug",
                    f"--namespace={NS}",
                    "-m",
                    "operator_engine.operator_main",
                ],
                env=operator_env(kubeconfig_path, receiver, ipfs_server, log_cfg_path),
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:

            def tail() -> str:
                return output_log.read_text(errors="replace")[-3000:]

            async def ready() -> bool:
                assert proc.poll() is None, f"the operator exited with {proc.returncode}:\n{tail()}"
                return watching(cluster, "workflows")

            await wait_for(ready, "the operator to watch workflows", 60, tail)
            await cluster.create(workflow(input_url, algorithm_url))
            # Rejected (not http/https): its URL, which carries credentials, must not be quoted.
            rejected_url = f"ftp://user:{REJECTED_URL_TOKEN}@127.0.0.1/data.csv?sig={REJECTED_URL_TOKEN}"
            await cluster.create(workflow(rejected_url, algorithm_url, name=REJECTED))

            async def finished() -> dict[str, Any] | None:
                body = await cluster.get("wf", NAME)
                st = (body or {}).get("status") or {}
                return st if st.get("dateFinished") and st.get("cleanedUp") else None

            final = await wait_for(finished, "the workflow to end and be cleaned up", 120, tail)

            async def rejected() -> dict[str, Any] | None:
                st = ((await cluster.get("wf", REJECTED)) or {}).get("status") or {}
                return st if st.get("dateFinished") else None

            rejected_status = await wait_for(rejected, "the invalid workflow to be rejected", 60, tail)

            async def notified() -> bool:
                return len(receiver.bodies) >= 2

            await wait_for(notified, "both notifications", 60)
            events = await cluster.list("events")
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)

    assert final["phase"] == "Succeeded", json.dumps(final)[:2000]
    assert rejected_status["phase"] == "Failed" and "url" in rejected_status["message"], rejected_status
    operator_log = output_log.read_text(errors="replace")
    if with_log_cfg:
        operator_log += config_log.read_text(errors="replace")
        assert "kubernetes" in operator_log or "kopf" in operator_log, "the LOG_CFG file logged nothing"
    assert "DEBUG" in operator_log.upper(), "the operator did not log at DEBUG"
    assert NAME in operator_log, "the operator log says nothing about the workflow"

    # The notifications do carry the secret (docs/contract.md §4): it reached the operator and went where it should.
    assert [body["secret"] for body in receiver.bodies] == [WORKFLOW_SECRET, WORKFLOW_SECRET]

    everything = {
        **SECRETS,
        **TOKENS,
        "input URL": input_url.split("?")[0],
        "algorithm URL": algorithm_url.split("?")[0],
    }
    leaks = {
        "operator log": find_leaks(operator_log, everything),
        "Events": find_leaks(json.dumps(events, indent=1), everything),
        "Workflow status": find_leaks(json.dumps(final, indent=1), everything),
        "rejected Workflow status": find_leaks(json.dumps(rejected_status, indent=1), everything),
    }

    # The pods: their output (kubectl logs), termination messages, and the logs they published.
    pod_texts: dict[str, str] = {}
    for pod_dir in sorted((runtime.root / "pods").glob("*/*")):
        for file in ("output.log", "termination-log"):
            if (pod_dir / file).exists():
                pod_texts[f"{pod_dir.name}/{file}"] = (pod_dir / file).read_text(errors="replace")
    for upload in ipfs_server.uploads:
        if upload.filename.endswith(".log"):
            pod_texts[f"published {upload.filename}"] = upload.content.decode(errors="replace")
    assert any("configure" in key for key in pod_texts), sorted(pod_texts)
    assert any("publish" in key for key in pod_texts), sorted(pod_texts)
    assert {"published configure.log", "published publish.log"} <= set(pod_texts), sorted(pod_texts)
    for where, text in pod_texts.items():
        leaks[where] = find_leaks(text, everything if "configure" in where else SECRETS)

    found = {where: lines for where, lines in leaks.items() if lines}
    assert not found, "secrets or URLs readable where they must not be:\n" + json.dumps(found, indent=1)
