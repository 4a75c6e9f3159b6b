"""k8s_install/ reuses the kubernetes/ manifests through relative symlinks."""

import os

import pytest

from ._support import K8S_INSTALL_DIR, KUBERNETES_DIR

LINKS = {"crd.yaml": "crd.yaml", "operator.yml": "operator.yml"}


@pytest.mark.parametrize("name,target", LINKS.items())
def test_k8s_install_file_is_a_relative_symlink_into_kubernetes(name, target):
    link = K8S_INSTALL_DIR / name
    assert link.is_symlink()
    assert os.readlink(link) == f"../kubernetes/{target}"


@pytest.mark.parametrize("name,target", LINKS.items())
def test_k8s_install_symlink_resolves_to_the_kubernetes_file(name, target):
    link = K8S_INSTALL_DIR / name
    assert link.exists()
    assert link.resolve() == (KUBERNETES_DIR / target).resolve()


def test_workflow_sample_is_a_regular_file():
    sample = K8S_INSTALL_DIR / "workflow-1.yaml"
    assert sample.is_file() and not sample.is_symlink()
