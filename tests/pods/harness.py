"""Test harness for the pod programs: a pod's environment, and the peers it talks to.

Every peer is real HTTP on 127.0.0.1: a scripted file server for configure,
and a minimal IPFS / ipfs-cluster ``add`` server for publish (moto provides
S3). Tests only say what a peer should answer and read back what it got.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import ipaddress
import json
import socket
import threading
import time
import urllib.parse
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

#: Variables of the real environment that would change what the pods do.
POD_VARIABLES = (
    "VOLUME",
    "ADMINLOGS",
    "WORKFLOW",
    "TERMINATION_LOG",
    "diskGB",
    "CONFIGURE_TIMEOUT",
    "CONFIGURE_BACKOFF",
    "CONFIGURE_TOTAL_TIMEOUT",
    "CONFIGURE_OVERALL_TIMEOUT",
    "CONFIGURE_ALLOWED_NETWORKS",
    "STORAGE_EXPIRY",
    "PUBLISH_TIMEOUT",
    "LOCAL_STORAGE_DIR",
    "IPFS_TYPE",
    "IPFS_OUTPUT",
    "IPFS_ADMINLOGS",
    "IPFS_OUTPUT_PREFIX",
    "IPFS_ADMINLOGS_PREFIX",
    "IPFS_EXPIRY_TIME",
    "IPFS_API_KEY",
    "IPFS_API_CLIENT",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_BUCKET_OUTPUT",
    "AWS_BUCKET_ADMINLOGS",
    "AWS_ENDPOINT_URL",
    "AWS_PROFILE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
)

#: What the pod tests allow configure to fetch from: their own servers, on loopback.
LOOPBACK_ALLOWED = "127.0.0.0/8,::1"

FAKE_ACCESS_KEY = "AKIAFAKEACCESSKEY123"
FAKE_SECRET_KEY = "fake-secret-key-DO-NOT-LEAK-4f1c9b"


# --------------------------------------------------------------------------
# The pod's environment
# --------------------------------------------------------------------------


@dataclass
class PodEnv:
    """A pod's view of the world, under a temporary folder."""

    root: Path
    monkeypatch: pytest.MonkeyPatch

    @property
    def volume(self) -> Path:
        return self.root / "data"

    @property
    def adminlogs(self) -> Path:
        return self.root / "adminlogs"

    @property
    def workflow_path(self) -> Path:
        return self.root / "workflow.json"

    @property
    def termination_path(self) -> Path:
        return self.root / "termination-log"

    def set(self, **variables: str) -> None:
        for name, value in variables.items():
            self.monkeypatch.setenv(name, value)

    def write_workflow(self, stage: dict[str, Any], job_id: str = "job-1") -> None:
        self.workflow_path.write_text(json.dumps({"jobId": job_id, "stages": [stage]}))

    def termination(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.termination_path.read_text())
        return result

    def log(self, name: str) -> str:
        return (self.adminlogs / name).read_text()

    def write(self, relative: str, content: str | bytes) -> Path:
        """Create a file under the data volume (what earlier pods would leave)."""
        path = self.volume / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path


# --------------------------------------------------------------------------
# Serving a handler on a loopback port
# --------------------------------------------------------------------------


def serve(handler: type[BaseHTTPRequestHandler], state: Any) -> Iterator[Any]:
    """Run ``handler`` on 127.0.0.1:<free port> for the duration of a fixture."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.block_on_close = False  # a test's slow reply must not delay the teardown
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def send_body(self, status: int, body: bytes, content_type: str = "application/octet-stream") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


# --------------------------------------------------------------------------
# A scripted file server (what configure downloads from)
# --------------------------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_length: bool = True
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    reason: str | None = None  # the server's own reason phrase (None: the standard one)
    drip: float = 0.0  # seconds between body bytes, for a server that sends slowly


def redirect(location: str, status: int = 302) -> Reply:
    """A reply that sends the client on to ``location``."""
    return Reply(status, b"", headers={"Location": location})


@dataclass
class FileServer:
    """Serves scripted replies per path and counts the requests it got."""

    base_url: str = ""
    replies: dict[str, list[Reply]] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    seen_headers: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def serve(self, path: str, body: bytes | str, status: int = 200, **options: Any) -> str:
        """Always answer ``path`` with ``body``; return its URL."""
        return self.serve_sequence(path, [Reply(status, _bytes(body), **options)])

    def serve_sequence(self, path: str, replies: list[Reply]) -> str:
        """Answer ``path`` with ``replies`` in turn, repeating the last one; return its URL."""
        self.replies[path] = list(replies)
        return self.url(path)

    def url(self, path: str) -> str:
        return self.base_url + path

    def next_reply(self, path: str, headers: dict[str, str] | None = None) -> Reply:
        with self.lock:
            self.hits[path] += 1
            self.seen_headers.append(dict(headers or {}))
            queue = self.replies.get(path)
            if not queue:
                return Reply(404, b"not found")
            return queue.pop(0) if len(queue) > 1 else queue[0]


def _bytes(body: bytes | str) -> bytes:
    return body.encode() if isinstance(body, str) else body


def file_handler(state: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            reply = state.next_reply(urllib.parse.urlsplit(self.path).path, dict(self.headers.items()))
            time.sleep(reply.delay)
            self.send_response(reply.status, reply.reason)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if reply.content_length:
                self.send_header("Content-Length", str(len(reply.body)))
            else:
                # No length: the body ends when the connection closes (like a chunked stream).
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if not reply.drip:
                self.wfile.write(reply.body)
                return
            for index in range(len(reply.body)):
                try:
                    self.wfile.write(reply.body[index : index + 1])
                    self.wfile.flush()
                except OSError:
                    return  # the client gave up
                time.sleep(reply.drip)

    return Handler


# --------------------------------------------------------------------------
# A minimal IPFS HTTP RPC / ipfs-cluster REST "add" server
# --------------------------------------------------------------------------


@dataclass
class Upload:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    field_name: str
    filename: str
    content: bytes
    cid: str


@dataclass
class FakeIpfs:
    """Stores what is added under a content-derived fake CID and answers like IPFS.

    ``cluster_cid_as_object``: answer ipfs-cluster's ``cid`` as ``{"/": ...}``
    (as some versions do) instead of a plain string.
    """

    base_url: str = ""
    uploads: list[Upload] = field(default_factory=list)
    cluster_cid_as_object: bool = False
    fail_with: int | None = None

    @staticmethod
    def cid_of(content: bytes) -> str:
        return "Qm" + hashlib.sha256(content).hexdigest()[:44]

    def content(self, cid: str) -> bytes:
        return next(upload.content for upload in self.uploads if upload.cid == cid)

    @property
    def host_port(self) -> str:
        return self.base_url.removeprefix("http://")


def _multipart_file(content_type: str, body: bytes) -> tuple[str, str, bytes]:
    """(field name, file name, content) of the first part of a multipart body."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        content = part.get_payload(decode=True)
        assert isinstance(content, bytes)
        return str(name), str(part.get_filename()), content
    raise AssertionError("no part in the multipart body")


def ipfs_handler(state: FakeIpfs) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            url = urllib.parse.urlsplit(self.path)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if state.fail_with:
                return self._json(state.fail_with, {"Message": "boom"})
            if url.path not in ("/api/v0/add", "/add"):
                return self._json(404, {"Message": "no such endpoint"})
            field_name, filename, content = _multipart_file(self.headers["Content-Type"], body)
            cid = state.cid_of(content)
            state.uploads.append(
                Upload(
                    url.path,
                    urllib.parse.parse_qs(url.query),
                    dict(self.headers.items()),
                    field_name,
                    filename,
                    content,
                    cid,
                )
            )
            if url.path == "/api/v0/add":
                return self._json(200, {"Name": filename, "Hash": cid, "Size": str(len(content))})
            answer_cid: Any = {"/": cid} if state.cluster_cid_as_object else cid
            return self._json(200, [{"name": filename, "cid": answer_cid, "size": len(content)}])

        def _json(self, status: int, payload: Any) -> None:
            self.send_body(status, json.dumps(payload).encode(), "application/json")

    return Handler


# --------------------------------------------------------------------------
# S3 (moto) access for assertions
# --------------------------------------------------------------------------


@dataclass
class S3:
    endpoint: str
    client: Any
    output_bucket: str
    admin_bucket: str
    secret_key: str = FAKE_SECRET_KEY

    def read(self, bucket: str, key: str) -> bytes:
        data: bytes = self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return data

    def keys(self, bucket: str) -> list[str]:
        return sorted(item["Key"] for item in self.client.list_objects_v2(Bucket=bucket).get("Contents", []))


# --------------------------------------------------------------------------
# DNS and connections, stubbed: no test sends traffic beyond loopback
# --------------------------------------------------------------------------


@dataclass
class NetworkStub:
    """Replaces the configure pod's resolver and connect step (``downloads.resolve_host``/``open_connection``).

    ``answers[host]`` is the list of DNS answers the host gets, one per
    lookup (the last repeats); a host without answers that is no IP literal
    fails to resolve, so no real DNS query leaves the machine. ``routes``
    maps a made-up public address to the loopback server that plays it: the
    code under test connects to "93.184.216.34", the bytes go to 127.0.0.1.
    Any other non-loopback connection attempt is recorded in ``violations``
    and fails, so a refused address can never be reached by mistake.
    """

    answers: dict[str, list[list[str]]] = field(default_factory=dict)
    routes: dict[str, tuple[str, int]] = field(default_factory=dict)
    lookups: list[str] = field(default_factory=list)
    connects: list[tuple[str, int]] = field(default_factory=list)
    violations: list[tuple[str, int]] = field(default_factory=list)

    def answer(self, host: str, *answers: list[str]) -> None:
        self.answers[host] = [list(a) for a in answers]

    def route(self, address: str, server_url: str) -> None:
        """Connections to ``address`` (any port) reach the loopback server at ``server_url``."""
        parts = urllib.parse.urlsplit(server_url)
        assert parts.hostname in ("127.0.0.1", "::1"), server_url
        self.routes[address] = (parts.hostname, int(parts.port or 80))

    def resolve(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        queue = self.answers.get(host)
        if queue:
            return queue.pop(0) if len(queue) > 1 else queue[0]
        # IP literals in any spelling (127.1, 2852039166, 0xa9fea9fe): parsed, never looked up.
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
        return [str(info[4][0]) for info in infos]

    def connect(self, address: tuple[str, int], timeout: float | None) -> socket.socket:
        self.connects.append(address)
        host, port = address
        if host in self.routes:
            return socket.create_connection(self.routes[host], timeout)
        if ipaddress.ip_address(host.split("%")[0]).is_loopback:
            return socket.create_connection(address, timeout)
        self.violations.append(address)
        raise AssertionError(f"a test tried to connect to {address}, which is not loopback")

    def install(self, monkeypatch: pytest.MonkeyPatch) -> NetworkStub:
        from operator_engine.pods import downloads

        monkeypatch.setattr(downloads, "resolve_host", self.resolve)
        monkeypatch.setattr(downloads, "open_connection", self.connect)
        return self
