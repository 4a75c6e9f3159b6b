"""Algorithm and filter pods get no network egress at all."""

from ._support import KUBERNETES_DIR, NAMESPACE, find_doc


def policy():
    return find_doc(KUBERNETES_DIR / "egress.yaml", "NetworkPolicy")


def test_network_policy_selects_algorithm_and_filter_pods():
    assert policy()["metadata"]["namespace"] == NAMESPACE
    assert policy()["spec"]["podSelector"] == {
        "matchExpressions": [{"key": "component", "operator": "In", "values": ["algorithm", "filter"]}]
    }


def test_network_policy_allows_no_egress():
    spec = policy()["spec"]
    assert spec["policyTypes"] == ["Egress"]
    assert not spec.get("egress")


def test_network_policy_explains_itself_in_a_comment():
    assert (KUBERNETES_DIR / "egress.yaml").read_text().lstrip().startswith("#")
