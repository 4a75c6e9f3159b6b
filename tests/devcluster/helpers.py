"""Manifest builders shared by the embedded cluster's tests."""

from __future__ import annotations

from typing import Any


def job_manifest(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "backoffLimit": 0,
            **spec,
            "template": {
                "metadata": {"labels": {"component": "algorithm"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox"}]},
            },
        },
    }


def workflow_manifest(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "oceanprotocol.com/v1alpha",
        "kind": "WorkFlow",
        "metadata": {"name": name},
        "spec": {"metadata": {"stages": []}, **spec},
    }
