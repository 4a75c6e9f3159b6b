"""Every built-in Kubernetes object we ship validates strictly against the
Kubernetes 1.30 schemas; our own kinds are left to the CRD tests."""

import copy

import kubernetes_validate
import pytest

from ._support import all_docs, crd, doc_id, is_custom, load_docs, yaml_files

K8S_VERSION = "1.30"

BUILTIN_DOCS = [(p, d) for p, d in all_docs() if not is_custom(d)]


def test_every_yaml_file_holds_at_least_one_document():
    empty = [str(p) for p in yaml_files() if not load_docs(p)]
    assert yaml_files() and not empty


def test_every_document_has_api_version_kind_and_name():
    for path, doc in all_docs():
        assert doc.get("apiVersion") and doc.get("kind"), path
        assert doc.get("metadata", {}).get("name"), path


@pytest.mark.parametrize("path,doc", BUILTIN_DOCS, ids=[doc_id(p, d) for p, d in BUILTIN_DOCS])
def test_builtin_document_validates_strictly_against_kubernetes_1_30(path, doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_strict_validation_rejects_an_unknown_crd_field():
    # Proves the strict check above actually bites.
    broken = copy.deepcopy(crd())
    broken["spec"]["versions"][0]["servd"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
