"""Builders shared by the demo/dev and process-runtime tests."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import Any

NS = "ocean-compute"
KUBECTL = "/usr/bin/kubectl"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def assert_dead(pid: int, timeout: float = 10.0) -> None:
    """Wait until process ``pid`` is gone (or a zombie: dead, not yet reaped); fail after ``timeout``."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            # a zombie not yet reaped by its (killed) parent counts as dead
            stat = Path(f"/proc/{pid}/stat")
            if stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"):
                return
            await asyncio.sleep(0.05)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def process_job(
    name: str,
    command: list[str],
    *,
    env: list[dict[str, Any]] | None = None,
    mounts: list[dict[str, Any]] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    policy: str = "FallbackToLogsOnError",
    **spec: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "backoffLimit": 0,
            **spec,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "restartPolicy": "Never",
                    "volumes": volumes or [],
                    "containers": [
                        {
                            "name": "main",
                            "image": "ignored:latest",
                            "command": command,
                            "env": env or [],
                            "volumeMounts": mounts or [],
                            "terminationMessagePolicy": policy,
                        }
                    ],
                },
            },
        },
    }


def workflow(
    name: str, input_urls: list[str], *, algorithm: dict[str, Any], secret: str | None = None, maxtime: int = 120
) -> dict[str, Any]:
    """A WorkFlow of the current shape (docs/contract.md §1.1) with one stage."""
    spec: dict[str, Any] = {
        "metadata": {
            "stages": [
                {
                    "index": 0,
                    "input": [{"index": 0, "id": "did:op:" + "a1" * 32, "url": input_urls}],
                    "algorithm": {
                        "id": "did:op:" + "b2" * 32,
                        "container": {"image": "python", "tag": "3.11-slim", "entrypoint": "python $ALGO"},
                        **algorithm,
                    },
                    "compute": {"Instances": 1, "namespace": NS, "maxtime": maxtime},
                    "output": {"publishAlgorithmLog": True, "publishOutput": True},
                }
            ]
        }
    }
    if secret is not None:
        spec["secret"] = secret
    return {
        "apiVersion": "oceanprotocol.com/v1alpha",
        "kind": "WorkFlow",
        "metadata": {"name": name, "namespace": NS, "labels": {"workflow": name}},
        "spec": spec,
    }
