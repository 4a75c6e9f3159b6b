"""The configure program end to end: where it may fetch from, and what its log may say.

DNS and the connect step are stubbed (``network``, see ``harness.NetworkStub``):
nothing leaves loopback, and a refused address is refused before any
connection. The pod environment allows loopback (``pod_env``); tests of the
default rule remove that allowance.
"""

from __future__ import annotations

import pytest

from operator_engine.pods import configure

from .harness import FileServer, NetworkStub, PodEnv, Reply, redirect
from .test_pod_configure import ALGO_DID, DID_A, DID_B, data_input, run_configure, stage

PUBLIC = "93.184.216.34"  # a public address; connections to it are routed to the loopback server


def without_allowance(pod_env: PodEnv) -> None:
    pod_env.monkeypatch.delenv("CONFIGURE_ALLOWED_NETWORKS", raising=False)


def test_a_loopback_input_is_refused_by_default_with_31(pod_env: PodEnv, file_server: FileServer) -> None:
    without_allowance(pod_env)
    url = file_server.serve("/data.csv", "rows")

    assert run_configure(pod_env, stage([data_input(DID_A, url)])) == 1

    report = pod_env.termination()
    assert report == {"statusCode": 31, "message": f"input {DID_A} (input[0].url[0]): refused: address not allowed"}
    assert file_server.hits["/data.csv"] == 0


def test_an_algorithm_url_at_the_metadata_address_is_refused_with_32(pod_env: PodEnv, network: NetworkStub) -> None:
    network.answer("metadata.google.internal", ["169.254.169.254"])
    algorithm = {"id": ALGO_DID, "url": ["http://metadata.google.internal/computeMetadata/v1/?recursive=true"]}

    assert run_configure(pod_env, stage([], algorithm)) == 1

    report = pod_env.termination()
    assert report["statusCode"] == 32
    assert report["message"] == f"algorithm {ALGO_DID} (algorithm.url[0]): refused: address not allowed"
    assert network.connects == []


def test_a_redirect_to_the_metadata_address_ends_31_without_connecting_there(
    pod_env: PodEnv, file_server: FileServer, network: NetworkStub
) -> None:
    without_allowance(pod_env)
    network.answer("files.example", [PUBLIC])
    network.route(PUBLIC, file_server.base_url)
    port = file_server.base_url.rsplit(":", 1)[1]
    file_server.serve_sequence("/data.csv", [redirect("http://169.254.169.254/latest/meta-data/")])

    assert run_configure(pod_env, stage([data_input(DID_A, f"http://files.example:{port}/data.csv")])) == 1

    assert pod_env.termination()["statusCode"] == 31
    assert "refused: address not allowed" in pod_env.termination()["message"]
    assert network.connects == [(PUBLIC, int(port))]
    assert not (pod_env.volume / "inputs" / DID_A / "0").exists()


def test_a_public_input_is_fetched_from_the_address_that_was_checked(
    pod_env: PodEnv, file_server: FileServer, network: NetworkStub
) -> None:
    without_allowance(pod_env)
    network.answer("files.example", [PUBLIC], ["127.0.0.1"])  # a second answer would rebind
    network.route(PUBLIC, file_server.base_url)
    port = file_server.base_url.rsplit(":", 1)[1]
    file_server.serve("/data.csv", "public rows")

    assert run_configure(pod_env, stage([data_input(DID_A, f"http://files.example:{port}/data.csv")])) == 0

    assert (pod_env.volume / "inputs" / DID_A / "0").read_text() == "public rows"
    assert network.connects == [(PUBLIC, int(port))]


def test_a_bad_allow_list_fails_naming_the_variable(pod_env: PodEnv) -> None:
    pod_env.set(CONFIGURE_ALLOWED_NETWORKS="10.0.0.0/40")

    assert run_configure(pod_env, stage([])) == 1

    assert pod_env.termination()["statusCode"] == 31
    assert "CONFIGURE_ALLOWED_NETWORKS" in pod_env.termination()["message"]


def test_a_slow_drip_input_ends_31_at_the_total_limit(pod_env: PodEnv, file_server: FileServer) -> None:
    pod_env.set(CONFIGURE_TOTAL_TIMEOUT="0.5")
    url = file_server.serve_sequence("/drip", [Reply(200, b"x" * 200, drip=0.05)])  # 10 s to send

    assert run_configure(pod_env, stage([data_input(DID_A, url)])) == 1

    report = pod_env.termination()
    assert report["statusCode"] == 31
    assert report["message"] == (
        f"input {DID_A} (input[0].url[0]): took longer than the total limit of 0.5s per download"
    )


# -- the configure log reaches the consumer: it names fields, never URLs -----------------------


def test_no_url_nor_token_reaches_the_log_stdout_stderr_or_the_message(
    pod_env: PodEnv, file_server: FileServer, capsys: pytest.CaptureFixture[str]
) -> None:
    host = file_server.base_url.removeprefix("http://")
    file_server.serve("/private/a.csv", "aaaa")
    file_server.serve_sequence(
        "/private/moved.csv", [redirect(f"http://{host}/private/b.csv?X-Amz-Signature=TOKEN-REDIR-2")]
    )
    file_server.serve_sequence(
        "/private/b.csv", [Reply(503, b"upstream vault-7 said no", reason="vault-7 busy"), Reply(200, b"bbbbbb")]
    )
    file_server.serve("/private/gone.csv", "missing in vault-7", status=404)
    urls = [
        f"http://reader:PASSWORD-1@{host}/private/a.csv?token=TOKEN-QUERY-1",
        f"http://{host}/private/moved.csv?sig=TOKEN-QUERY-2#TOKEN-FRAGMENT-2",
        f"http://{host}/private/gone.csv?token=TOKEN-QUERY-3",
    ]

    assert run_configure(pod_env, stage([data_input(DID_A, urls[0], urls[1]), data_input(DID_B, urls[2])])) == 1

    captured = capsys.readouterr()
    logs = {path.name: path.read_text() for path in pod_env.adminlogs.iterdir()}
    everything = "\n".join([*logs.values(), captured.out, captured.err, pod_env.termination_path.read_text()])
    log = logs["configure.log"]
    assert f"input[0] ({DID_A}) url 1 of 2: downloaded 4 bytes" in log
    assert f"input[0] ({DID_A}) url 2 of 2: redirected" in log
    assert f"input[0] ({DID_A}) url 2 of 2: attempt 1 of 4 failed (HTTP 503 Service Unavailable)" in log
    assert f"input[0] ({DID_A}) url 2 of 2: downloaded 6 bytes" in log
    assert pod_env.termination()["message"] == f"input {DID_B} (input[1].url[0]): HTTP 404 Not Found"
    for leak in (
        *urls,
        host,
        "/private",
        "a.csv",
        "moved.csv",
        "gone.csv",
        "reader",
        "PASSWORD-1",
        "TOKEN-QUERY-1",
        "TOKEN-QUERY-2",
        "TOKEN-FRAGMENT-2",
        "TOKEN-REDIR-2",
        "TOKEN-QUERY-3",
        "vault-7",
        "http://",
    ):
        assert leak not in everything, leak
    assert file_server.seen_headers[0]["Authorization"] == "Basic cmVhZGVyOlBBU1NXT1JELTE="  # reader:PASSWORD-1


def test_an_unexpected_error_quoting_a_url_is_logged_without_it(
    pod_env: PodEnv, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("cannot handle http://files.example/private/x.csv?token=TOKEN-BUG")

    monkeypatch.setattr(configure.Provisioner, "provision_inputs", broken)

    assert run_configure(pod_env, stage([])) == 1

    everything = pod_env.log("configure.log") + capsys.readouterr().out + pod_env.termination_path.read_text()
    assert "unexpected error" in everything
    for leak in ("files.example", "private/x.csv", "TOKEN-BUG"):
        assert leak not in everything
