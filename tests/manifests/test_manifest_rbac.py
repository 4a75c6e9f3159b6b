"""The operator gets a namespaced Role: its shape here, its content against use elsewhere.

Whether the Role grants exactly what the operator uses is checked by running
the operator: tests/operator/test_least_privilege.py compares the Role with
the requests the operator made to the embedded API server.
"""

from ._support import KUBERNETES_DIR, NAMESPACE, all_docs, find_doc

BINDING = KUBERNETES_DIR / "binding.yml"
SA_FILE = KUBERNETES_DIR / "sa.yml"

# Resources that are not namespaced: a Role cannot (and must not) grant them.
CLUSTER_SCOPED = {
    "nodes",
    "namespaces",
    "persistentvolumes",
    "clusterroles",
    "clusterrolebindings",
    "customresourcedefinitions",
    "storageclasses",
    "priorityclasses",
    "mutatingwebhookconfigurations",
    "validatingwebhookconfigurations",
    "certificatesigningrequests",
    "apiservices",
    "runtimeclasses",
    "csidrivers",
    "csinodes",
    "volumeattachments",
    "ingressclasses",
    "tokenreviews",
    "subjectaccessreviews",
    "selfsubjectaccessreviews",
    "componentstatuses",
}


def role():
    return find_doc(BINDING, "Role", "ocean-compute-operator")


def test_no_cluster_role_or_cluster_role_binding_anywhere():
    kinds = {doc["kind"] for _, doc in all_docs()}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}


def test_role_is_in_the_operator_namespace():
    assert role()["metadata"]["namespace"] == NAMESPACE


def test_role_has_no_wildcard():
    for rule in role()["rules"]:
        for key in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert not any("*" in value for value in rule.get(key, [])), rule


def test_role_never_lets_the_operator_read_secrets():
    # get/list/watch on Secrets would read every Secret in the namespace,
    # the operator's own credentials included; it deletes its Secrets by name.
    for rule in role()["rules"]:
        if "" in rule["apiGroups"] and "secrets" in rule["resources"]:
            assert not {"get", "list", "watch"} & set(rule["verbs"]), rule


def test_role_grants_no_cluster_scoped_resource_or_url():
    for rule in role()["rules"]:
        assert "nonResourceURLs" not in rule
        assert not {r.split("/")[0] for r in rule["resources"]} & CLUSTER_SCOPED, rule


def test_role_binding_binds_the_role_to_the_operator_service_account():
    binding = find_doc(BINDING, "RoleBinding")
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "ocean-compute-operator",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "ocean-compute-operator", "namespace": NAMESPACE}]


def test_every_role_rule_is_explained_by_a_comment():
    lines = BINDING.read_text().splitlines()
    rule_lines = [i for i, line in enumerate(lines) if line.strip().startswith("- apiGroups:")]
    assert len(rule_lines) == len(role()["rules"])
    for i in rule_lines:
        assert lines[i - 1].strip().startswith("#"), lines[i]


def test_operator_service_account_exists_in_the_namespace():
    sa = find_doc(SA_FILE, "ServiceAccount", "ocean-compute-operator")
    assert sa["metadata"]["namespace"] == NAMESPACE


def test_workflow_pod_service_account_mounts_no_token():
    sa = find_doc(SA_FILE, "ServiceAccount", "ocean-compute-pods")
    assert sa["metadata"]["namespace"] == NAMESPACE
    assert sa["automountServiceAccountToken"] is False
