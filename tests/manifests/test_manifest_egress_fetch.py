"""The configure and publish pods reach DNS and public addresses only (kubernetes/egress.yaml)."""

import ipaddress

from ._support import KUBERNETES_DIR, NAMESPACE, find_doc

NAME = "ocean-compute-configure-publish-public-egress"
MUST_BE_EXCLUDED = [
    "169.254.169.254",
    "169.254.0.1",
    "10.0.0.1",
    "10.96.0.1",
    "172.16.0.1",
    "172.31.255.1",
    "192.168.1.1",
    "100.64.0.1",
    "fd00::1",
    "fe80::1",
]
MUST_BE_REACHABLE = ["93.184.216.34", "8.8.8.8", "2606:4700::1111"]


def policy():
    return find_doc(KUBERNETES_DIR / "egress.yaml", "NetworkPolicy", NAME)


def ip_rules():
    return [peer["ipBlock"] for rule in policy()["spec"]["egress"] for peer in rule.get("to", []) if "ipBlock" in peer]


def reachable(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    for block in ip_rules():
        network = ipaddress.ip_network(block["cidr"])
        if (
            ip.version == network.version
            and ip in network
            and not any(ip in ipaddress.ip_network(e) for e in block.get("except", []))
        ):
            return True
    return False


def test_it_selects_the_configure_and_publish_pods_only():
    spec = policy()["spec"]
    assert policy()["metadata"]["namespace"] == NAMESPACE
    assert spec["podSelector"] == {
        "matchExpressions": [{"key": "component", "operator": "In", "values": ["configure", "publish"]}]
    }
    assert spec["policyTypes"] == ["Egress"]


def test_it_allows_dns_to_the_cluster_dns_pods():
    [dns] = [rule for rule in policy()["spec"]["egress"] if any(p.get("port") == 53 for p in rule.get("ports", []))]
    assert sorted(p["protocol"] for p in dns["ports"]) == ["TCP", "UDP"]
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}


def test_metadata_and_private_ranges_are_not_reachable():
    for address in MUST_BE_EXCLUDED:
        assert not reachable(address), address


def test_public_addresses_are_reachable():
    for address in MUST_BE_REACHABLE:
        assert reachable(address), address


def test_the_policy_says_it_is_editable():
    text = (KUBERNETES_DIR / "egress.yaml").read_text()
    assert "EDITABLE" in text and "CONFIGURE_ALLOWED_NETWORKS" in text
