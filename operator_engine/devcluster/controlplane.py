"""
A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager, kube-scheduler.

The embedded cluster (the rest of this package) is our own reading of
Kubernetes; this module runs the real thing so that tests, the benchmark and
``operator-engine dev --control-plane real`` can check the operator against it.
The binaries come from ``scripts/control-plane.sh`` (built from the Go module
proxy into a cache folder) or from ``KUBEBUILDER_ASSETS`` (envtest's layout);
see docs/TESTING.md.

Everything lives under one work folder: a CA and certificates generated here
(the API server serves TLS with them and admin is a client certificate of
``system:masters``), the service-account signing key pair, etcd's data, one
kubeconfig per component, the audit policy and log, and one log file per
process. Every port is a free loopback port. Each process runs in its own
process group; :meth:`ControlPlane.stop` ends the groups (SIGTERM, then
SIGKILL after a grace, each leader reaped last: see ``processgroup.py``), and
is also called at interpreter exit and when :meth:`ControlPlane.start` fails
half way, so no process is left behind.

No container runtime exists here, so nothing in this module runs pods: a node
that does (``operator_engine.devcluster.node``) registers with this API server.
"""

from __future__ import annotations

import atexit
import base64
import datetime
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from operator_engine.devcluster.processgroup import ProcessGroup

VERSIONS_FILE = Path(__file__).with_name("control-plane.env")
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
STOP_GRACE = 10.0
START_TIMEOUT = 300.0  # each wait of start(); generous, for a loaded 2-core machine
AUDIT_POLICY = {
    # Every request at level Metadata (who, verb, resource, response code; no
    # bodies). RequestReceived is omitted, so a request has one ResponseComplete
    # line (a watch also a ResponseStarted line): count stage == ResponseComplete.
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata"}],
}


def versions() -> dict[str, str]:
    """``K8S_VERSION`` and ``ETCD_VERSION``: one file, read by the build script too."""
    pairs = (
        line.split("=", 1)
        for line in VERSIONS_FILE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    return {key.strip(): value.strip() for key, value in pairs}


def cache_folder() -> Path:
    """Where ``scripts/control-plane.sh`` builds the binaries (keyed by version)."""
    v = versions()
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "operator-engine" / "control-plane" / f"k8s-{v['K8S_VERSION']}-etcd-{v['ETCD_VERSION']}"


def holds_binaries(folder: Path) -> bool:
    """Whether every binary of :data:`BINARIES` is in ``folder`` and executable."""
    return all(os.access(folder / name, os.X_OK) for name in BINARIES)


def find_assets() -> Path | None:
    """``KUBEBUILDER_ASSETS`` if it holds the binaries, else the built cache folder, else None. Never builds."""
    given = os.environ.get("KUBEBUILDER_ASSETS")
    if given and holds_binaries(Path(given)):
        return Path(given)
    built = cache_folder()
    return built if holds_binaries(built) else None


def free_port() -> int:
    """A loopback TCP port that nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- certificates ---------------------------------------------------------------------------------------------


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    hosts: tuple[str, ...] = (),
    client: bool = False,
) -> x509.Certificate:
    """One certificate, valid for a year (ECDSA P-256: fast to generate on a busy machine)."""
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        # Key identifiers: strict X.509 verification (Python 3.13's default) requires them.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    builder = builder.add_extension(
        x509.KeyUsage(
            digital_signature=True,
            key_cert_sign=ca,
            crl_sign=ca,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            encipher_only=False,
            decipher_only=False,
        ),
        critical=True,
    )
    if not ca:
        usage = x509.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if hosts:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _kubeconfig(path: Path, server: str, ca: Path, user: dict[str, str]) -> Path:
    """A kubeconfig with one cluster (CA-verified), one user and one current context."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "real",
                "cluster": {"server": server, "certificate-authority-data": base64.b64encode(ca.read_bytes()).decode()},
            }
        ],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "real", "context": {"cluster": "real", "user": "user"}}],
        "current-context": "real",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


class ControlPlaneError(RuntimeError):
    """A control-plane process did not start or become ready; the message names it and ends with its log."""


class ControlPlane:
    """etcd, kube-apiserver, kube-controller-manager and kube-scheduler under ``workdir``, on loopback ports."""

    def __init__(self, workdir: Path, assets: Path, *, audit: bool = True) -> None:
        self.workdir = Path(workdir).resolve()
        self.assets = Path(assets)
        self.pki = self.workdir / "pki"
        self.logs = self.workdir / "logs"
        # Chosen once: a restarted kube-apiserver comes back on the same port, so clients keep working.
        self.ports = {
            name: free_port()
            for name in ("etcd", "etcd-peer", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
        }
        self.server = f"https://127.0.0.1:{self.ports['kube-apiserver']}"
        self.admin_kubeconfig = self.workdir / "admin.kubeconfig"
        self.audit_log: Path | None = self.workdir / "audit" / "audit.log" if audit else None
        self.processes: dict[str, ProcessGroup] = {}

    # --- the public face ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the four processes in order; return when the API and its controllers work."""
        atexit.register(self.stop)
        try:
            self._write_files()
            self._launch("etcd", self._etcd_args())
            self._wait("etcd", self._etcd_healthy)
            self._launch("kube-apiserver", self._apiserver_args())
            self._wait("kube-apiserver", self._apiserver_ready)
            self._launch("kube-controller-manager", self._controller_manager_args())
            self._launch("kube-scheduler", self._scheduler_args())
            self._wait("kube-scheduler", self._healthz("kube-scheduler"))
            self._wait("kube-controller-manager", self._healthz("kube-controller-manager"))
            # The serviceaccount controller gives every namespace its "default" ServiceAccount; the
            # namespace controller finishes deleting a namespace. Both working means controllers run.
            self._wait(
                "kube-controller-manager",
                lambda: self._status("/api/v1/namespaces/default/serviceaccounts/default") == 200,
            )
            self._probe_namespace_deletion()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """End every process group (scheduler first, etcd last): SIGTERM, then SIGKILL after a grace."""
        for name in reversed(list(self.processes)):
            self._end(name)
        atexit.unregister(self.stop)

    def restart_apiserver(self) -> None:
        """Stop kube-apiserver and start it again on the same port with the same flags; wait until ready."""
        self._end("kube-apiserver")
        self._launch("kube-apiserver", self._apiserver_args())
        self._wait("kube-apiserver", self._apiserver_ready)

    def kubeconfig_for_service_account(self, namespace: str, name: str, path: Path) -> Path:
        """A kubeconfig that acts as ServiceAccount ``namespace/name``, with a token from the TokenRequest API."""
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 24 * 3600},
        }
        response = self._request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", request)
        return _kubeconfig(Path(path), self.server, self.pki / "ca.crt", {"token": response["status"]["token"]})

    def kubectl(self, *args: str, kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run the kubectl of the same version as the server (text output; the caller checks returncode)."""
        command = [str(self.assets / "kubectl"), "--kubeconfig", str(kubeconfig or self.admin_kubeconfig), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    # --- files -------------------------------------------------------------------------------------------

    def _write_files(self) -> None:
        """CA, serving and client certificates, the service-account keys, kubeconfigs and the audit policy."""
        for folder in (self.pki, self.logs, self.workdir / "etcd"):
            folder.mkdir(parents=True, exist_ok=True)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = _name("operator-engine-ca")
        ca = _certificate(ca_name, ca_key, ca_name, ca_key, ca=True)
        _write_key(ca_key, self.pki / "ca.key")
        _write_cert(ca, self.pki / "ca.crt")
        service_ip = str(next(ipaddress.ip_network(SERVICE_CLUSTER_IP_RANGE).hosts()))
        hosts = (
            "127.0.0.1",
            "localhost",
            service_ip,
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        )
        serving_key = ec.generate_private_key(ec.SECP256R1())
        _write_key(serving_key, self.pki / "apiserver.key")
        _write_cert(
            _certificate(_name("kube-apiserver"), serving_key, ca_name, ca_key, hosts=hosts), self.pki / "apiserver.crt"
        )
        sa_key = ec.generate_private_key(ec.SECP256R1())
        _write_key(sa_key, self.pki / "sa.key")
        (self.pki / "sa.pub").write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        # Each client is who a kubeadm cluster would make it: RBAC's default bindings name these users.
        clients = {
            "admin": ("admin", "system:masters"),
            "kube-controller-manager": ("system:kube-controller-manager", None),
            "kube-scheduler": ("system:kube-scheduler", None),
        }
        for client, (user, group) in clients.items():
            key = ec.generate_private_key(ec.SECP256R1())
            _write_key(key, self.pki / f"{client}.key")
            _write_cert(_certificate(_name(user, group), key, ca_name, ca_key, client=True), self.pki / f"{client}.crt")
            path = self.admin_kubeconfig if client == "admin" else self.workdir / f"{client}.kubeconfig"
            _kubeconfig(
                path,
                self.server,
                self.pki / "ca.crt",
                {"client-certificate": str(self.pki / f"{client}.crt"), "client-key": str(self.pki / f"{client}.key")},
            )
        # The front proxy's CA and client (what kubeadm sets up for aggregated APIs): without a
        # requestheader CA the controller-manager and the scheduler log an error every minute.
        proxy_ca_key = ec.generate_private_key(ec.SECP256R1())
        proxy_ca_name = _name("operator-engine-front-proxy-ca")
        _write_cert(
            _certificate(proxy_ca_name, proxy_ca_key, proxy_ca_name, proxy_ca_key, ca=True),
            self.pki / "front-proxy-ca.crt",
        )
        proxy_key = ec.generate_private_key(ec.SECP256R1())
        _write_key(proxy_key, self.pki / "front-proxy-client.key")
        _write_cert(
            _certificate(_name("front-proxy-client"), proxy_key, proxy_ca_name, proxy_ca_key, client=True),
            self.pki / "front-proxy-client.crt",
        )
        if self.audit_log:
            self.audit_log.parent.mkdir(parents=True, exist_ok=True)
            (self.audit_log.parent / "policy.yaml").write_text(yaml.safe_dump(AUDIT_POLICY))

    # --- command lines -----------------------------------------------------------------------------------

    def _etcd_args(self) -> list[str]:
        client, peer = f"http://127.0.0.1:{self.ports['etcd']}", f"http://127.0.0.1:{self.ports['etcd-peer']}"
        return [
            "--name=default",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--unsafe-no-fsync",
        ]  # a throw-away store: no fsync keeps a busy disk out of the latencies

    def _apiserver_args(self) -> list[str]:
        args = [
            f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.ports['kube-apiserver']}",
            f"--cert-dir={self.pki}",
            f"--tls-cert-file={self.pki / 'apiserver.crt'}",
            f"--tls-private-key-file={self.pki / 'apiserver.key'}",
            f"--client-ca-file={self.pki / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            # On top of the default set (NamespaceLifecycle, ServiceAccount, PodSecurity, ResourceQuota, ...).
            # OwnerReferencesPermissionEnforcement, as hardened clusters (OpenShift) run it:
            # setting blockOwnerDeletion then needs `update` on the owner's finalizers.
            "--enable-admission-plugins=NodeRestriction,PodSecurity,OwnerReferencesPermissionEnforcement",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={self.pki / 'sa.pub'}",
            f"--service-account-signing-key-file={self.pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            # A loopback address may not be an Endpoints address, so the "kubernetes" Service gets none.
            "--endpoint-reconciler-type=none",
            f"--requestheader-client-ca-file={self.pki / 'front-proxy-ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={self.pki / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={self.pki / 'front-proxy-client.key'}",
        ]
        if self.audit_log:
            args += [
                f"--audit-policy-file={self.audit_log.parent / 'policy.yaml'}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-mode=blocking",
            ]
        return args

    def _component_args(self, name: str) -> list[str]:
        """What the controller-manager and the scheduler share: kubeconfigs, loopback serving, no election."""
        kubeconfig = self.workdir / f"{name}.kubeconfig"
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports[name]}",
            f"--cert-dir={self.workdir / name}",
            # One instance: with election on, an API server down for longer than the renew deadline (as in
            # restart_apiserver) would make it exit.
            "--leader-elect=false",
        ]

    def _controller_manager_args(self) -> list[str]:
        return [
            *self._component_args("kube-controller-manager"),
            "--controllers=*",
            f"--service-account-private-key-file={self.pki / 'sa.key'}",
            f"--root-ca-file={self.pki / 'ca.crt'}",
            "--use-service-account-credentials=true",
            f"--cluster-signing-cert-file={self.pki / 'ca.crt'}",
            f"--cluster-signing-key-file={self.pki / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        ]

    def _scheduler_args(self) -> list[str]:
        return self._component_args("kube-scheduler")

    # --- processes ---------------------------------------------------------------------------------------

    def _launch(self, name: str, args: list[str]) -> None:
        """Start one binary in its own process group, output appended to ``logs/<name>.log``."""
        with open(self.logs / f"{name}.log", "ab") as log:
            self.processes[name] = ProcessGroup(
                [str(self.assets / name), *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )

    def _end(self, name: str) -> None:
        """SIGTERM to the group, SIGKILL to what is left of it after the grace, then reap the leader.

        The leader is reaped last: until then it keeps the group id ours (even as a zombie), so
        neither signal can reach a group that got the same number later (processgroup.py).
        """
        group = self.processes.pop(name, None)
        if group is None:
            return
        group.signal_group(signal.SIGTERM)
        group.ended_within(STOP_GRACE)
        # The leader, if it outlived the grace, and any child that outlived the leader (it keeps the group id).
        group.signal_group(signal.SIGKILL)
        group.reap()

    def _log_tail(self, name: str, lines: int = 15) -> str:
        try:
            return "\n".join((self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _wait(self, name: str, ready: Callable[[], bool], timeout: float = START_TIMEOUT) -> None:
        """Poll ``ready`` until true; fail at once when the process exits, or at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            process = self.processes.get(name)
            code = None if process is None else process.exit_status()  # not reaped: _end signals its group
            if code is not None:
                raise ControlPlaneError(
                    f"{name} exited with code {code}; its log ({self.logs / name}.log) ends:\n{self._log_tail(name)}"
                )
            if ready():
                return
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"{name} not ready after {timeout:.0f}s; its log ends:\n{self._log_tail(name)}")
            time.sleep(0.2)

    # --- readiness ---------------------------------------------------------------------------------------

    def _etcd_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['etcd']}/health", timeout=5) as response:
                return bool(json.load(response).get("health") == "true")
        except (OSError, ValueError):
            return False

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return context

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One API request as admin; raises ``urllib.error.HTTPError`` on an error status."""
        request = urllib.request.Request(
            self.server + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, context=self._ssl_context(), timeout=30) as response:
            return dict(json.load(response))

    def _status(self, path: str) -> int:
        """The HTTP status of a GET as admin; 0 when the server cannot be reached."""
        try:
            self._request("GET", path)
            return 200
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return 0

    def _apiserver_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.server}/readyz", context=self._ssl_context(), timeout=10) as r:
                return bool(r.read().strip() == b"ok")
        except OSError:
            return False

    def _healthz(self, name: str) -> Callable[[], bool]:
        """The component's own /healthz: its serving certificate is self-signed by it, so it is not verified."""
        url = f"https://127.0.0.1:{self.ports[name]}/healthz"
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(url, context=context, timeout=10) as response:
                    return bool(response.read().strip() == b"ok")
            except OSError:
                return False

        return healthy

    def _probe_namespace_deletion(self) -> None:
        """Create and delete a namespace; the namespace controller must finish the deletion."""
        name = f"control-plane-probe-{os.getpid()}"
        self._request(
            "POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        )
        self._request("DELETE", f"/api/v1/namespaces/{name}")
        self._wait("kube-controller-manager", lambda: self._status(f"/api/v1/namespaces/{name}") == 404)
