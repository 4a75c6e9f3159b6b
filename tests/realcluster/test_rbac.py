"""
RBAC on the real API server: the operator runs as its ServiceAccount, the audit log records every
request it made; none may be refused (403), and every (group, resource, verb) the Role grants must
be used by some request (a grant nobody uses is a right to remove).
"""

from __future__ import annotations

from typing import Any

import yaml

from .conftest import RealCluster
from .support import NS, OPERATOR_USER, TESTS, wait_until
from .test_workflows import FAILING_ALGORITHM, SLEEP_ALGORITHM, sample, with_algorithm

BINDING = TESTS.parent / "kubernetes" / "binding.yml"


def granted() -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) of every rule of the operator's Role."""
    rules: set[tuple[str, str, str]] = set()
    for doc in yaml.safe_load_all(BINDING.read_text(encoding="utf-8")):
        if isinstance(doc, dict) and doc.get("kind") == "Role":
            for rule in doc["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        for verb in rule["verbs"]:
                            rules.add((group, resource, verb))
    return rules


def test_the_role_is_exactly_what_the_operator_uses(real: RealCluster, operator: Any, receiver: Any) -> None:
    since = real.audit.lines()
    # As the Deployment runs it (kubernetes/operator.yml): with leader election, whose Lease
    # the Role grants.
    # A short backstop: its pass reads each workflow that is not settled (`get`), the one path that
    # reads a Workflow by name now that watch events carry the bodies the operator acts on.
    op = operator(LEADER_ELECTION="true", POD_NAME="ocean-compute-operator-rbac", OPERATOR_BACKSTOP_SECONDS="2")
    # Every path through the operator: success, a failing algorithm, a stop, a deletion while running,
    # the backstop.
    real.kube.create_workflow(sample(real, "rc-rbac-ok"))
    real.kube.create_workflow(with_algorithm(real, "rc-rbac-fail", FAILING_ALGORITHM))
    real.kube.create_workflow(with_algorithm(real, "rc-rbac-stop", SLEEP_ALGORITHM.format(seconds=600)))
    real.kube.create_workflow(with_algorithm(real, "rc-rbac-delete", SLEEP_ALGORITHM.format(seconds=600)))
    for name in ("rc-rbac-stop", "rc-rbac-delete"):
        real.kube.wait_code(name, 40, context=lambda: op.log()[-3000:])
    wait_until(
        lambda: any(
            e.verb == "get" and e.resource == "workflows" for e in real.audit.events(OPERATOR_USER, since=since)
        ),
        60,
        "a backstop pass that reads a running workflow",
    )
    real.kube.patch_spec("rc-rbac-stop", {"stopRequested": True})
    real.kube.delete_workflow("rc-rbac-delete")
    for name in ("rc-rbac-ok", "rc-rbac-fail", "rc-rbac-stop"):
        real.kube.wait_terminal(name, context=lambda: op.log()[-3000:])
    real.kube.wait_gone("rc-rbac-delete")
    for name in ("rc-rbac-ok", "rc-rbac-fail", "rc-rbac-stop", "rc-rbac-delete"):
        real.kube.wait_clean(name)
    wait_until(lambda: len(receiver.accepted("/stop")) >= 4, 60, "four stop notifications")
    op.stop()  # a graceful stop: the watches end, their requests are complete in the audit log

    events = wait_until(lambda: real.audit.events(OPERATOR_USER, since=since), 30, "the operator's requests")
    refused = sorted({(e.verb, e.group, e.resource, e.namespace, e.uri) for e in events if e.code == 403})
    assert not refused, f"requests the Role refused: {refused}"
    used = {(e.group, e.resource, e.verb) for e in events if e.namespace == NS}
    outside = sorted({(e.verb, e.group, e.resource, e.uri) for e in events if e.namespace != NS})
    # Not a request but an admission check: OwnerReferencesPermissionEnforcement (on in
    # this control plane) lets a child carry blockOwnerDeletion only for a user that may
    # update its owner's finalizers; without the grant, creating the children is refused.
    used |= {("oceanprotocol.com", "workflows/finalizers", "update")}
    unused = sorted(granted() - used)
    assert not unused, (
        f"granted by kubernetes/binding.yml but never used by the operator: {unused}\n"
        f"(used: {sorted(used)}; requests outside the namespace: {outside})"
    )
