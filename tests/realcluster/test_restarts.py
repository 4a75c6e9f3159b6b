"""
Crashes and restarts on the real control plane: the operator killed with SIGKILL at several status
codes, and the API server itself restarted while workflows run (watches reconnect; an expired
resourceVersion is answered 410 Gone and the clients list again).
"""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import RealCluster, operator_helpers
from .support import CHILD_KINDS, wait_until
from .test_workflows import SLEEP_ALGORITHM, jobs_in_order, sample, with_algorithm


def created_twice(real: RealCluster, name: str) -> dict[str, int]:
    """Children of the Workflow that existed under more than one uid: created again after a crash."""
    twice: dict[str, int] = {}
    for plural in CHILD_KINDS:
        for child, uids in real.history.uids(plural, name).items():
            if len(uids) > 1:
                twice[f"{plural}/{child}"] = len(uids)
    return twice


@pytest.mark.parametrize("code", [10, 20, 40, 60], ids=lambda c: f"after-{c}")
def test_kill_9_then_restart_creates_nothing_twice_and_notifies_once(
    real: RealCluster, operator: Any, receiver: Any, code: int
) -> None:
    name = f"rc-kill-{code}"
    # A slow algorithm holds the workflow at 40 long enough to kill there; other codes pass quickly,
    # so the kill lands at or soon after them: either way the restart must not redo anything.
    body = with_algorithm(real, name, SLEEP_ALGORITHM.format(seconds=4)) if code == 40 else sample(real, name)
    op = operator(OPERATOR_BACKSTOP_SECONDS="2")
    real.kube.create_workflow(body)
    real.kube.wait_code(name, code, context=lambda: op.log()[-3000:])
    op.kill()
    op.start_and_wait()
    final = real.kube.wait_terminal(name, context=lambda: op.log()[-3000:])
    assert final["phase"] == "Succeeded", final
    assert final["statusCode"] == 70, final
    codes = real.history.codes(name)
    assert codes == sorted(codes), f"status codes went backwards: {codes}"
    real.kube.wait_clean(name)
    assert not created_twice(real, name), created_twice(real, name)
    assert jobs_in_order(real, name) == [f"{name}-{s}-job" for s in ("configure", "algorithm", "publish")]
    wait_until(lambda: receiver.accepted("/stop", name), 60, "the stop notification")
    # One notification of each kind, as the receiver sees it: one idempotency key. A kill between the
    # start POST and its record in the status (the crash window, docs/contract.md §4) makes the successor
    # send it again, with the same key: at most one copy per kill.
    for kind, copies in (("/start", 2), ("/stop", 1)):
        accepted = receiver.accepted(kind, name)
        assert len({p["idempotencyKey"] for p in accepted}) == 1, receiver.all()
        assert 1 <= len(accepted) <= copies, receiver.all()
    for payload in receiver.accepted("/start", name) + receiver.accepted("/stop", name):
        operator_helpers.check_payload(payload, body)


def test_workflows_finish_across_an_api_server_restart(real: RealCluster, operator: Any, receiver: Any) -> None:
    names = ["rc-apirestart-0", "rc-apirestart-1"]
    op = operator()
    for name in names:
        real.kube.create_workflow(with_algorithm(real, name, SLEEP_ALGORITHM.format(seconds=8)))
    for name in names:
        real.kube.wait_code(name, 40, context=lambda: op.log()[-3000:])
    relists = real.node.relists
    real.control_plane.restart_apiserver()
    for name in names:
        final = real.kube.wait_terminal(name, timeout=300, context=lambda: op.log()[-3000:])
        assert final["phase"] == "Succeeded", final
        assert final["statusCode"] == 70, final
        real.kube.wait_clean(name)
        assert not created_twice(real, name), created_twice(real, name)
        wait_until(lambda n=name: receiver.accepted("/stop", n), 60, "the stop notification")
        assert len(receiver.accepted("/start", name)) == 1 and len(receiver.accepted("/stop", name)) == 1
    assert op.alive(), "the operator survived the API server restart"
    # The node's pod watch lost its connection and listed again (410 Gone or a refused connection).
    assert real.node.relists > relists
