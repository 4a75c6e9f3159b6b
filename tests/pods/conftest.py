"""Fixtures for the pod programs; the plumbing lives in ``harness``."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import (
    FAKE_ACCESS_KEY,
    FAKE_SECRET_KEY,
    LOOPBACK_ALLOWED,
    POD_VARIABLES,
    S3,
    FakeIpfs,
    FileServer,
    NetworkStub,
    PodEnv,
    file_handler,
    ipfs_handler,
    serve,
)


@pytest.fixture
def pod_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PodEnv:
    """Environment variables pointing every pod path into ``tmp_path``; nothing else set."""
    for name in POD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    env = PodEnv(tmp_path, monkeypatch)
    env.set(
        VOLUME=str(env.volume),
        ADMINLOGS=str(env.adminlogs),
        WORKFLOW=str(env.workflow_path),
        TERMINATION_LOG=str(env.termination_path),
        CONFIGURE_BACKOFF="0",
        CONFIGURE_TIMEOUT="5",
        # boto3 must not read a developer's ~/.aws
        AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials"),
        NO_PROXY="127.0.0.1,localhost",
        # The test servers listen on loopback, which configure refuses unless allowed.
        CONFIGURE_ALLOWED_NETWORKS=LOOPBACK_ALLOWED,
    )
    return env


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    """A scripted HTTP file server on loopback."""
    state = FileServer()
    yield from serve(file_handler(state), state)


@pytest.fixture
def closed_port_url() -> str:
    """A URL on a loopback port nobody listens on (connection refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/data.csv"


@pytest.fixture
def ipfs_server() -> Iterator[FakeIpfs]:
    """A minimal IPFS RPC / ipfs-cluster ``add`` server on loopback."""
    state = FakeIpfs()
    yield from serve(ipfs_handler(state), state)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's standalone server, shared by the session (tests use their own buckets)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(moto_endpoint: str, pod_env: PodEnv, request: pytest.FixtureRequest) -> S3:
    """Fresh output and admin-logs buckets in moto; the pod env points at them."""
    import boto3

    client = boto3.client(
        "s3",
        region_name="us-east-1",
        endpoint_url=moto_endpoint,
        aws_access_key_id=FAKE_ACCESS_KEY,
        aws_secret_access_key=FAKE_SECRET_KEY,
    )
    suffix = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:10]
    output_bucket, admin_bucket = f"outputs-{suffix}", f"adminlogs-{suffix}"
    client.create_bucket(Bucket=output_bucket)
    client.create_bucket(Bucket=admin_bucket)
    pod_env.set(
        AWS_ENDPOINT_URL=moto_endpoint,
        AWS_ACCESS_KEY_ID=FAKE_ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=FAKE_SECRET_KEY,
        AWS_REGION="us-east-1",
        AWS_BUCKET_OUTPUT=output_bucket,
        AWS_BUCKET_ADMINLOGS=admin_bucket,
    )
    return S3(moto_endpoint, client, output_bucket, admin_bucket)


@pytest.fixture
def network(monkeypatch: pytest.MonkeyPatch) -> Iterator[NetworkStub]:
    """The configure pod's resolver and connect step, stubbed; fails any test that connects off loopback."""
    stub = NetworkStub().install(monkeypatch)
    yield stub
    assert not stub.violations, f"connections attempted beyond loopback: {stub.violations}"
