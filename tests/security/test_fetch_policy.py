"""The configure pod fetches only from where it may (docs/SECURITY.md, "fetching").

Every test here runs the real downloader (urllib3, real sockets) against
servers on 127.0.0.1. DNS is a stub (``network.answer``) and so is the connect
step (``network.route``): the code under test may believe it connects to a
public address such as 93.184.216.34, while the bytes go to a loopback
server; any other connection beyond loopback fails the test. A refused
address must be refused before any connection: ``network.connects`` says
where the downloader tried to connect.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import trustme
import yaml
from pods.harness import FileServer, NetworkStub, Reply, file_handler, redirect

from operator_engine import config as config_module
from operator_engine.model import parse_workflow
from operator_engine.pods.addresses import forbidden_reason, parse_address, parse_allow_list
from operator_engine.pods.downloads import ByteBudget, Downloader, DownloadError, RefusedError
from operator_engine.render import Renderer

PUBLIC = "93.184.216.34"  # stands for any public address; connections to it are routed to loopback
LOOPBACK = parse_allow_list("127.0.0.0/8,::1")

FORBIDDEN = [
    ("127.0.0.1", "loopback"),
    ("127.45.6.7", "loopback"),
    ("::1", "loopback"),
    ("10.0.0.1", "private"),
    ("10.255.255.254", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.254", "private"),
    ("192.168.1.1", "private"),
    ("fc00::1", "private"),
    ("fd12:3456:789a::1", "private"),
    ("169.254.169.254", "link-local"),
    ("169.254.0.1", "link-local"),
    ("fe80::1", "link-local"),
    ("fe80::1%2", "link-local"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.254", "carrier-grade NAT"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("ff02::1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    # IPv6 spellings of forbidden IPv4 addresses: mapped, NAT64, 6to4, IPv4-compatible.
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:169.254.169.254", "link-local"),
    ("::ffff:10.0.0.1", "private"),
    ("64:ff9b::a9fe:a9fe", "link-local"),
    ("2002:a9fe:a9fe::1", "link-local"),
    ("::a9fe:a9fe", "reserved"),
]


def downloader(logger_name: str = "test", **options: object) -> Downloader:
    options.setdefault("retries", 0)
    options.setdefault("backoff_factor", 0)
    return Downloader(ByteBudget(None), 5.0, logging.getLogger(logger_name), **options)  # type: ignore[arg-type]


def public_host(network: NetworkStub, file_server: FileServer, host: str = "files.example") -> str:
    """``host`` resolves to a public address, played by ``file_server``; returns ``http://host:port``."""
    network.answer(host, [PUBLIC])
    network.route(PUBLIC, file_server.base_url)
    return f"http://{host}:{file_server.base_url.rsplit(':', 1)[1]}"


# -- the address rule -----------------------------------------------------------


@pytest.mark.parametrize("address,reason", FORBIDDEN, ids=[a for a, _ in FORBIDDEN])
def test_every_forbidden_range_is_refused_before_connecting(
    address: str, reason: str, network: NetworkStub, tmp_path: Path
) -> None:
    assert forbidden_reason(parse_address(address)) == reason
    network.answer("data.example", [address])

    with pytest.raises(RefusedError) as refused:
        downloader().fetch("http://data.example/file.csv", tmp_path / "out")

    assert str(refused.value) == "refused: address not allowed"
    assert network.connects == []
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:93.184.216.34"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert forbidden_reason(parse_address(address)) is None


def test_a_host_with_one_forbidden_address_among_public_ones_is_refused(network: NetworkStub, tmp_path: Path) -> None:
    network.answer("mixed.example", [PUBLIC, "10.0.0.5"])

    with pytest.raises(RefusedError):
        downloader().fetch("http://mixed.example/x", tmp_path / "out")

    assert network.connects == []


@pytest.mark.parametrize("host", ["2852039166", "0xa9fea9fe", "0251.0376.0251.0376", "[::ffff:a9fe:a9fe]", "127.1"])
def test_every_spelling_of_an_address_is_checked_once_resolved(host: str, network: NetworkStub, tmp_path: Path) -> None:
    with pytest.raises(RefusedError):
        downloader().fetch(f"http://{host}/latest/meta-data/", tmp_path / "out")

    assert network.connects == []


# -- redirects -------------------------------------------------------------------


@pytest.mark.parametrize(
    "location",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://metadata.internal/computeMetadata/v1/",
        "http://[fd00::1]/",
        "http://127.0.0.1:1/admin",
    ],
)
def test_a_redirect_to_a_forbidden_address_is_refused_without_connecting(
    location: str, network: NetworkStub, file_server: FileServer, tmp_path: Path
) -> None:
    network.answer("metadata.internal", ["169.254.169.254"])
    base = public_host(network, file_server)
    file_server.serve_sequence("/start", [redirect(location)])

    with pytest.raises(RefusedError) as refused:
        downloader().fetch(base + "/start", tmp_path / "out")

    assert str(refused.value) == "refused: address not allowed"
    assert network.connects == [(PUBLIC, int(base.rsplit(":", 1)[1]))]  # the first hop only


@pytest.mark.parametrize("location", ["file:///etc/passwd", "gopher://127.0.0.1:70/", "ftp://files.example/x"])
def test_a_redirect_to_another_scheme_is_refused(
    location: str, network: NetworkStub, file_server: FileServer, tmp_path: Path
) -> None:
    base = public_host(network, file_server)
    file_server.serve_sequence("/start", [redirect(location, 301)])

    with pytest.raises(RefusedError) as refused:
        downloader().fetch(base + "/start", tmp_path / "out")

    assert str(refused.value) == "refused: redirect to a scheme other than http or https"
    assert len(network.connects) == 1


def test_redirects_to_allowed_places_are_followed_and_each_hop_is_checked(
    network: NetworkStub, file_server: FileServer, tmp_path: Path
) -> None:
    base = public_host(network, file_server)
    network.answer("cdn.example", [PUBLIC])
    port = base.rsplit(":", 1)[1]
    file_server.serve_sequence("/a", [redirect(f"http://cdn.example:{port}/b", 307)])
    file_server.serve_sequence("/b", [redirect("/c", 308)])
    file_server.serve("/c", "the data")

    assert downloader().fetch(base + "/a", tmp_path / "out") == len("the data")

    assert (tmp_path / "out").read_text() == "the data"
    assert network.lookups == ["files.example", "cdn.example", "cdn.example"]
    assert [headers.get("Host") for headers in file_server.seen_headers] == [
        f"files.example:{port}",
        f"cdn.example:{port}",
        f"cdn.example:{port}",
    ]


def test_too_many_redirects_are_refused(network: NetworkStub, file_server: FileServer, tmp_path: Path) -> None:
    base = public_host(network, file_server)
    file_server.serve_sequence("/loop", [redirect("/loop")])

    with pytest.raises(RefusedError, match="more than 5 redirects"):
        downloader().fetch(base + "/loop", tmp_path / "out")

    assert file_server.hits["/loop"] == 6


# -- DNS rebinding -------------------------------------------------------------------


def test_the_connection_goes_to_the_address_that_was_checked(
    network: NetworkStub, file_server: FileServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The resolver answers public, then private: only the first answer is ever asked for and used."""
    port = int(file_server.base_url.rsplit(":", 1)[1])
    network.answer("rebind.example", [PUBLIC], ["169.254.169.254"])
    network.route(PUBLIC, file_server.base_url)
    file_server.serve_sequence("/data", [Reply(503), Reply(200, b"public data")])  # a retry reconnects

    import socket as socket_module

    real_getaddrinfo = socket_module.getaddrinfo

    def no_second_lookup(host: object, *args: object, **kwargs: object) -> object:
        assert host != "rebind.example", "the host was resolved again, outside the checked path"
        return real_getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket_module, "getaddrinfo", no_second_lookup)

    downloader(retries=1).fetch(f"http://rebind.example:{port}/data", tmp_path / "out")

    assert (tmp_path / "out").read_bytes() == b"public data"
    assert network.lookups == ["rebind.example"]
    assert network.connects == [(PUBLIC, port), (PUBLIC, port)]


def test_a_redirect_to_the_same_host_is_resolved_and_checked_again(
    network: NetworkStub, file_server: FileServer, tmp_path: Path
) -> None:
    port = int(file_server.base_url.rsplit(":", 1)[1])
    network.answer("rebind.example", [PUBLIC], ["10.0.0.7"])
    network.route(PUBLIC, file_server.base_url)
    file_server.serve_sequence("/a", [redirect("/b")])

    with pytest.raises(RefusedError):
        downloader().fetch(f"http://rebind.example:{port}/a", tmp_path / "out")

    assert network.connects == [(PUBLIC, port)]


# -- the allow-list ------------------------------------------------------------------


def test_the_allow_list_lets_loopback_through(network: NetworkStub, file_server: FileServer, tmp_path: Path) -> None:
    url = file_server.serve("/local", "local data")

    downloader(allow=LOOPBACK).fetch(url, tmp_path / "out")

    assert (tmp_path / "out").read_text() == "local data"
    with pytest.raises(RefusedError):
        downloader().fetch(url, tmp_path / "refused")


def test_an_allowed_host_name_may_resolve_to_a_private_address(
    network: NetworkStub, file_server: FileServer, tmp_path: Path
) -> None:
    port = int(file_server.base_url.rsplit(":", 1)[1])
    network.answer("minio.storage.svc", ["10.96.0.20"])
    network.answer("s3.internal.example", ["10.96.0.21"])
    network.answer("other.svc", ["10.96.0.22"])
    network.route("10.96.0.20", file_server.base_url)
    network.route("10.96.0.21", file_server.base_url)
    file_server.serve("/bucket/file", "internal object")
    allow = parse_allow_list("minio.storage.svc, *.internal.example")

    downloader(allow=allow).fetch(f"http://minio.storage.svc:{port}/bucket/file", tmp_path / "one")
    downloader(allow=allow).fetch(f"http://s3.internal.example:{port}/bucket/file", tmp_path / "two")
    with pytest.raises(RefusedError):
        downloader(allow=allow).fetch(f"http://other.svc:{port}/bucket/file", tmp_path / "three")

    assert network.connects == [("10.96.0.20", port), ("10.96.0.21", port)]


def test_allowing_loopback_does_not_allow_the_metadata_address(
    network: NetworkStub, file_server: FileServer, tmp_path: Path
) -> None:
    url = file_server.serve_sequence("/start", [redirect("http://169.254.169.254/latest/meta-data/")])

    with pytest.raises(RefusedError):
        downloader(allow=LOOPBACK).fetch(url, tmp_path / "out")

    assert [address for address, _ in network.connects] == ["127.0.0.1"]


@pytest.mark.parametrize("value", ["10.0.0.0/33", "not a host!", "http://10.0.0.1/", "10.0.0.0/8,,bad/host"])
def test_a_bad_allow_list_stops_the_operator_naming_the_variable(value: str) -> None:
    with pytest.raises(config_module.ConfigError) as error:
        config_module.load({"CONFIGURE_ALLOWED_NETWORKS": value})

    assert "CONFIGURE_ALLOWED_NETWORKS" in str(error.value)


def test_the_allow_list_and_time_limits_reach_the_configure_pod_only() -> None:
    config = config_module.load(
        {
            "CONFIGURE_ALLOWED_NETWORKS": "10.20.0.0/16 minio.svc",
            "CONFIGURE_TOTAL_TIMEOUT": "60",
            "CONFIGURE_OVERALL_TIMEOUT": "300",
        }
    )
    sample = yaml.safe_load((Path(__file__).parents[2] / "k8s_install" / "workflow-1.yaml").read_text())
    workflow = parse_workflow(sample)
    jobs = {child.step: child.manifest for child in Renderer(config).render(workflow) if child.kind == "Job"}

    def env_of(step: str) -> dict[str, str]:
        container = jobs[step]["spec"]["template"]["spec"]["containers"][0]
        return {item["name"]: item.get("value") for item in container["env"]}

    assert env_of("configure")["CONFIGURE_ALLOWED_NETWORKS"] == "10.20.0.0/16,minio.svc"
    assert env_of("configure")["CONFIGURE_TOTAL_TIMEOUT"] == "60"
    assert env_of("configure")["CONFIGURE_OVERALL_TIMEOUT"] == "300"
    for step in ("algorithm", "publish"):
        assert not any(name.startswith("CONFIGURE_") for name in env_of(step)), step


# -- time limits -----------------------------------------------------------------------


def test_a_slow_drip_body_ends_at_the_total_limit(
    network: NetworkStub, file_server: FileServer, tmp_path: Path
) -> None:
    url = file_server.serve_sequence("/drip", [Reply(200, b"x" * 200, drip=0.05)])  # 10 s to send

    with pytest.raises(DownloadError) as failed:
        downloader(allow=LOOPBACK, total_timeout=0.5).fetch(url, tmp_path / "out")

    assert str(failed.value) == "took longer than the total limit of 0.5s per download"
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.part").exists()


def test_a_slow_drip_without_content_length_ends_at_the_total_limit(
    network: NetworkStub, file_server: FileServer, tmp_path: Path
) -> None:
    url = file_server.serve_sequence("/drip", [Reply(200, b"x" * 200, content_length=False, drip=0.05)])

    with pytest.raises(DownloadError, match="total limit"):
        downloader(allow=LOOPBACK, total_timeout=0.5).fetch(url, tmp_path / "out")

    assert not (tmp_path / "out").exists()


def test_the_overall_limit_counts_every_download_together(
    network: NetworkStub, file_server: FileServer, tmp_path: Path
) -> None:
    fast = file_server.serve("/fast", "quick")
    slow = file_server.serve_sequence("/slow", [Reply(200, b"x" * 200, drip=0.05)])
    fetcher = downloader(allow=LOOPBACK, total_timeout=600, overall_timeout=0.5)

    fetcher.fetch(fast, tmp_path / "one")
    with pytest.raises(DownloadError) as failed:
        fetcher.fetch(slow, tmp_path / "two")

    assert str(failed.value) == "the downloads together took longer than their limit of 0.5s"


def test_a_slow_drip_of_headers_ends_at_the_total_limit(network: NetworkStub, tmp_path: Path) -> None:
    """A server that sends its status line a byte at a time: each read is quick, the whole is not."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip_headers() -> None:
        connection, _ = listener.accept()
        with connection:
            for byte in b"HTTP/1.1 200 OK\r\nX-Padding: " + b"p" * 10_000:
                if stop.is_set():
                    return
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    return
                stop.wait(0.05)

    thread = threading.Thread(target=drip_headers, daemon=True)
    thread.start()
    try:
        with pytest.raises(DownloadError, match="total limit"):
            downloader(allow=LOOPBACK, total_timeout=0.5).fetch(
                f"http://127.0.0.1:{listener.getsockname()[1]}/x", tmp_path / "out"
            )
    finally:
        stop.set()
        listener.close()
        thread.join(5)


# -- what a message may say -------------------------------------------------------------


def test_an_error_never_tells_what_answered(network: NetworkStub, file_server: FileServer, tmp_path: Path) -> None:
    base = public_host(network, file_server)
    file_server.serve_sequence(
        "/err",
        [Reply(500, b"<html>internal-service-v2.3 stack trace</html>", reason="Backend internal-service-v2.3 failed")],
    )

    with pytest.raises(DownloadError) as failed:
        downloader().fetch(base + "/err", tmp_path / "out")

    assert str(failed.value) == "HTTP 500 Internal Server Error"


def test_a_refusal_names_no_address_or_host(network: NetworkStub, file_server: FileServer, tmp_path: Path) -> None:
    network.answer("vault.corp.example", ["10.1.2.3"])
    base = public_host(network, file_server)
    file_server.serve_sequence("/start", [redirect("http://vault.corp.example:8200/v1/secret")])

    with pytest.raises(RefusedError) as refused:
        downloader().fetch(base + "/start", tmp_path / "out")

    for revealing in ("10.1.2.3", "vault", "8200", "private", "files.example", PUBLIC):
        assert revealing not in str(refused.value)


# -- TLS with a pinned address ---------------------------------------------------------------


@pytest.fixture
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server(tls_ca: trustme.CA) -> Iterator[FileServer]:
    """The file server over TLS, with a certificate for ``secure.example`` only."""
    state = FileServer()
    server = ThreadingHTTPServer(("127.0.0.1", 0), file_handler(state))
    server.daemon_threads = True
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("secure.example").configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    state.base_url = f"https://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_tls_checks_the_host_name_while_connecting_to_the_checked_address(
    network: NetworkStub, tls_server: FileServer, tls_ca: trustme.CA, tmp_path: Path
) -> None:
    port = int(tls_server.base_url.rsplit(":", 1)[1])
    network.answer("secure.example", [PUBLIC])
    network.answer("impostor.example", [PUBLIC])
    network.route(PUBLIC, tls_server.base_url)
    tls_server.serve("/data", "over tls")
    with tls_ca.cert_pem.tempfile() as ca_file:
        downloader(ca_certs=ca_file).fetch(f"https://secure.example:{port}/data", tmp_path / "out")
        with pytest.raises(DownloadError) as failed:
            downloader(ca_certs=ca_file).fetch(f"https://impostor.example:{port}/data", tmp_path / "bad")

    assert (tmp_path / "out").read_text() == "over tls"
    assert str(failed.value) == "TLS error (handshake or certificate check failed)"
    assert network.connects == [(PUBLIC, port), (PUBLIC, port)]
    assert tls_server.hits["/data"] == 1  # the impostor got no request
