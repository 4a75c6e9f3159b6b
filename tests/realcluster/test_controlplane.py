"""The real control plane itself: version, TLS and tokens, RBAC, the audit log, an API-server restart, cleanup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from operator_engine.devcluster.controlplane import ControlPlane, ControlPlaneError, versions

from .support import wait_until

DEADLINE = 60.0


def processes_naming(folder: Path) -> list[str]:
    """Command lines of running processes that name ``folder`` (every control-plane process does)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(folder) in text:
            found.append(text)
    return found


def test_server_and_kubectl_are_the_built_version(control_plane: ControlPlane) -> None:
    done = control_plane.kubectl("version", "-o", "json")
    assert done.returncode == 0, done.stderr
    version = json.loads(done.stdout)
    assert version["serverVersion"]["gitVersion"] == versions()["K8S_VERSION"]
    assert version["clientVersion"]["gitVersion"] == versions()["K8S_VERSION"]
    assert control_plane.server.startswith("https://127.0.0.1:")


def test_service_account_token_is_who_it_says_and_rbac_is_enforced(control_plane: ControlPlane, tmp_path: Path) -> None:
    for args in (("create", "namespace", "smoke"), ("create", "serviceaccount", "probe", "-n", "smoke")):
        done = control_plane.kubectl(*args)
        assert done.returncode == 0, done.stderr
    kubeconfig = control_plane.kubeconfig_for_service_account("smoke", "probe", tmp_path / "probe.kubeconfig")

    whoami = control_plane.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig)
    assert whoami.returncode == 0, whoami.stderr
    assert json.loads(whoami.stdout)["status"]["userInfo"]["username"] == "system:serviceaccount:smoke:probe"

    denied = control_plane.kubectl("get", "pods", "-n", "smoke", kubeconfig=kubeconfig)
    assert denied.returncode != 0
    assert "(Forbidden)" in denied.stderr and "system:serviceaccount:smoke:probe" in denied.stderr

    for args in (
        ("create", "role", "read-pods", "--verb=get,list", "--resource=pods", "-n", "smoke"),
        (
            "create",
            "rolebinding",
            "probe-reads-pods",
            "--role=read-pods",
            "--serviceaccount=smoke:probe",
            "-n",
            "smoke",
        ),
    ):
        done = control_plane.kubectl(*args)
        assert done.returncode == 0, done.stderr
    wait_until(
        lambda: control_plane.kubectl("get", "pods", "-n", "smoke", kubeconfig=kubeconfig).returncode == 0,
        DEADLINE,
        "the RoleBinding grants get pods",
    )
    still_denied = control_plane.kubectl("get", "secrets", "-n", "smoke", kubeconfig=kubeconfig)
    assert "(Forbidden)" in still_denied.stderr


def test_audit_log_records_who_did_what(control_plane: ControlPlane) -> None:
    assert control_plane.audit_log is not None
    done = control_plane.kubectl("get", "namespaces")
    assert done.returncode == 0, done.stderr

    def admin_list_of_namespaces() -> bool:
        for line in control_plane.audit_log.read_text().splitlines():  # type: ignore[union-attr]
            event = json.loads(line)
            if (
                event["stage"] == "ResponseComplete"
                and event["verb"] == "list"
                and event.get("objectRef", {}).get("resource") == "namespaces"
                and event["user"]["username"] == "admin"
            ):
                return True
        return False

    wait_until(admin_list_of_namespaces, DEADLINE, "the audit log has admin listing namespaces")


def test_apiserver_restart_keeps_address_and_data(control_plane: ControlPlane) -> None:
    done = control_plane.kubectl("create", "configmap", "survives-restart", "--from-literal=a=b")
    assert done.returncode == 0, done.stderr
    old_pid = control_plane.processes["kube-apiserver"].pid
    server = control_plane.server

    control_plane.restart_apiserver()

    assert control_plane.processes["kube-apiserver"].pid != old_pid
    assert control_plane.server == server
    got = control_plane.kubectl("get", "configmap", "survives-restart", "-o", "jsonpath={.data.a}")
    assert (got.returncode, got.stdout) == (0, "b"), got.stderr


def test_failed_start_leaves_no_process(
    control_plane: ControlPlane, control_plane_assets: Path, tmp_path: Path
) -> None:
    """kube-apiserver cannot bind a port that is taken: start() raises, naming it, and ends etcd too."""
    plane = ControlPlane(tmp_path / "broken", control_plane_assets, audit=False)
    plane.ports["kube-apiserver"] = control_plane.ports["kube-apiserver"]
    with pytest.raises(ControlPlaneError, match="kube-apiserver exited"):
        plane.start()
    assert plane.processes == {}
    assert processes_naming(tmp_path / "broken") == []
