"""The publish pod with an IPFS target (a minimal IPFS RPC / ipfs-cluster add server)."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from operator_engine.pods import publish, storage

from .harness import FakeIpfs, PodEnv

API_KEY = "ipfs-api-key-SECRET-9d2e"
CLIENT_ID = "client-77"


@pytest.fixture
def ipfs_env(pod_env: PodEnv, ipfs_server: FakeIpfs) -> PodEnv:
    pod_env.set(IPFS_OUTPUT=ipfs_server.base_url)
    pod_env.write_workflow({"index": 0, "input": []}, job_id="job-ipfs")
    (pod_env.volume / "outputs").mkdir(parents=True)
    return pod_env


def test_adds_the_output_through_the_rpc_api_with_default_prefix(ipfs_env: PodEnv, ipfs_server: FakeIpfs) -> None:
    ipfs_env.write("outputs/result.csv", "ipfs content")

    assert publish.main([]) == 0

    cid = ipfs_server.cid_of(b"ipfs content")
    assert ipfs_env.termination()["outputsUrl"] == [f"ipfs://{cid}"]
    upload = next(u for u in ipfs_server.uploads if u.cid == cid)
    assert (upload.path, upload.field_name, upload.filename) == ("/api/v0/add", "file", "result.csv")


def test_applies_the_output_prefix(ipfs_env: PodEnv, ipfs_server: FakeIpfs) -> None:
    ipfs_env.set(IPFS_OUTPUT_PREFIX="https://gateway.example/ipfs/")
    ipfs_env.write("outputs/result.csv", "x")

    assert publish.main([]) == 0

    assert ipfs_env.termination()["outputsUrl"] == ["https://gateway.example/ipfs/" + ipfs_server.cid_of(b"x")]


def test_accepts_host_and_port_without_scheme(ipfs_env: PodEnv, ipfs_server: FakeIpfs) -> None:
    ipfs_env.set(IPFS_OUTPUT=ipfs_server.host_port)
    ipfs_env.write("outputs/result.csv", "x")

    assert publish.main([]) == 0

    assert ipfs_env.termination()["outputsUrl"] == ["ipfs://" + ipfs_server.cid_of(b"x")]


def test_archives_several_outputs_before_adding(ipfs_env: PodEnv, ipfs_server: FakeIpfs) -> None:
    ipfs_env.write("outputs/a.txt", "a")
    ipfs_env.write("outputs/b.txt", "b")

    assert publish.main([]) == 0

    [url] = ipfs_env.termination()["outputsUrl"]
    archive = ipfs_server.content(url.removeprefix("ipfs://"))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert sorted(tar.getnames()) == ["a.txt", "b.txt"]


def test_admin_logs_use_their_own_endpoint_and_prefix(ipfs_env: PodEnv, ipfs_server: FakeIpfs) -> None:
    ipfs_env.set(
        IPFS_OUTPUT="http://127.0.0.1:9", IPFS_ADMINLOGS=ipfs_server.base_url, IPFS_ADMINLOGS_PREFIX="admin://"
    )
    ipfs_env.adminlogs.mkdir(parents=True, exist_ok=True)
    (ipfs_env.adminlogs / "configure.log").write_text("configured")

    assert publish.main([]) == 0  # no output, no algorithm log: the output endpoint is never called

    report = ipfs_env.termination()
    assert report["configlogUrl"] == "admin://" + ipfs_server.cid_of(b"configured")
    assert report["publishlogUrl"].startswith("admin://")


def test_cluster_mode_passes_expiry_and_auth_headers(ipfs_env: PodEnv, ipfs_server: FakeIpfs) -> None:
    ipfs_env.set(IPFS_TYPE="CLUSTER", IPFS_EXPIRY_TIME="12h", IPFS_API_KEY=API_KEY, IPFS_API_CLIENT=CLIENT_ID)
    ipfs_env.write("outputs/result.csv", "cluster content")

    assert publish.main([]) == 0

    assert ipfs_env.termination()["outputsUrl"] == ["ipfs://" + ipfs_server.cid_of(b"cluster content")]
    for upload in ipfs_server.uploads:
        assert upload.path == "/add"
        assert upload.query["expire-in"] == ["12h"]
        assert upload.headers["X-API-KEY"] == API_KEY
        assert upload.headers["CLIENT-ID"] == CLIENT_ID


def test_cluster_mode_reads_a_cid_given_as_an_object(ipfs_env: PodEnv, ipfs_server: FakeIpfs) -> None:
    ipfs_server.cluster_cid_as_object = True
    ipfs_env.set(IPFS_TYPE="CLUSTER")
    ipfs_env.write("outputs/result.csv", "y")

    assert publish.main([]) == 0

    assert ipfs_env.termination()["outputsUrl"] == ["ipfs://" + ipfs_server.cid_of(b"y")]


def test_cluster_mode_omits_expiry_zero(ipfs_env: PodEnv, ipfs_server: FakeIpfs) -> None:
    ipfs_env.set(IPFS_TYPE="CLUSTER", IPFS_EXPIRY_TIME="0")

    assert publish.main([]) == 0

    assert ipfs_server.uploads and all("expire-in" not in u.query for u in ipfs_server.uploads)


def test_an_ipfs_error_fails_with_the_status(ipfs_env: PodEnv, ipfs_server: FakeIpfs) -> None:
    ipfs_server.fail_with = 500
    ipfs_env.write("outputs/result.csv", "x")

    assert publish.main([]) == 1

    message = ipfs_env.termination()["message"]
    assert "IPFS add of result.csv" in message and "HTTP 500" in message


def test_the_ipfs_api_key_never_appears_in_output_or_logs(
    ipfs_env: PodEnv, ipfs_server: FakeIpfs, capsys: pytest.CaptureFixture[str]
) -> None:
    ipfs_env.set(IPFS_API_KEY=API_KEY, IPFS_TYPE="CLUSTER")
    ipfs_env.write("outputs/result.csv", "x")

    assert publish.main([]) == 0

    seen = capsys.readouterr()
    everything = seen.out + seen.err + ipfs_env.log("publish.log") + ipfs_env.termination_path.read_text()
    assert API_KEY not in everything


def test_streams_a_large_output_intact_with_a_content_length(ipfs_env: PodEnv, ipfs_server: FakeIpfs) -> None:
    content = os.urandom(3 * 1024 * 1024 + 17)
    ipfs_env.write("outputs/big.bin", content)

    assert publish.main([]) == 0

    [url] = ipfs_env.termination()["outputsUrl"]
    upload = next(u for u in ipfs_server.uploads if u.filename == "big.bin")
    assert upload.content == content
    assert url == "ipfs://" + ipfs_server.cid_of(content)
    assert "Transfer-Encoding" not in upload.headers


class _CountingFile(io.FileIO):
    """A file that remembers the largest read asked of it."""

    largest_read = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.largest_read = max(self.largest_read, len(data))
        return data


def test_the_upload_body_is_read_from_the_file_in_pieces(tmp_path, ipfs_server: FakeIpfs) -> None:
    """The multipart body streams: no read takes the whole output into memory at once."""
    content = os.urandom(4 * 1024 * 1024)
    path = tmp_path / "big.bin"
    path.write_bytes(content)
    target = storage.ipfs_target({"IPFS_OUTPUT": ipfs_server.base_url})

    with _CountingFile(path) as source:
        url = target.upload(source, "outputs", "big.bin")

    assert url == "ipfs://" + ipfs_server.cid_of(content)
    assert ipfs_server.content(ipfs_server.cid_of(content)) == content
    assert 0 < source.largest_read <= 1024 * 1024, source.largest_read
