"""
The real-control-plane tier: etcd, kube-apiserver, kube-controller-manager and kube-scheduler, one per session.

Every test under this folder gets the ``realcluster`` marker. The binaries come
from ``KUBEBUILDER_ASSETS`` or from the cache that ``scripts/control-plane.sh``
builds (docs/TESTING.md). Without them the tests are skipped, except in CI
(``CI`` set), where missing binaries are a failure: CI must have run the script.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from operator_engine.devcluster.controlplane import ControlPlane, find_assets

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.realcluster)


@pytest.fixture(scope='session')
def control_plane_assets() -> Path:
    """The folder with etcd, kube-apiserver, ... and kubectl; skips (fails in CI) when there is none."""
    assets = find_assets()
    if assets is None:
        message = ('no control-plane binaries: run scripts/control-plane.sh or set KUBEBUILDER_ASSETS '
                   '(docs/TESTING.md)')
        if os.environ.get('CI'):
            pytest.fail(message)
        pytest.skip(message)
    return assets


@pytest.fixture(scope='session')
def control_plane(control_plane_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """One running control plane for the whole session, with the audit log on."""
    plane = ControlPlane(tmp_path_factory.mktemp('control-plane'), control_plane_assets)
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()
