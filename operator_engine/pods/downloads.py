"""Bounded, streamed, address-checked HTTP downloads for the configure pod.

Why this shape:
- **only from where it may** (docs/SECURITY.md): a Workflow chooses the URLs,
  and the algorithm can copy whatever was downloaded out to the consumer, so
  a URL must never reach cloud metadata or a cluster-internal service. Each
  hop (the URL, then every redirect) is resolved ONCE, every address the
  resolver gave is checked against :mod:`.addresses`, and the connection goes
  to exactly those checked addresses (the connection class below pins them),
  while the Host header, TLS SNI and certificate check still use the host
  name. A DNS answer that changes between check and connect (rebinding) is
  never asked for. Redirects are followed here, hop by hop (at most
  :data:`MAX_REDIRECTS`), each re-checked for scheme and address; only
  http and https are fetched. No proxy is used: a proxy would connect on our
  behalf, to addresses this code never checked.
- **time limits**: connect and per-read timeouts, plus a total limit per
  download and one for all downloads together, enforced by a watchdog that
  shuts the socket down, so a server dripping a byte at a time (headers or
  body) cannot hold the job until its deadline;
- a few retries with exponential backoff on connection errors and
  500/502/503/504 (the transient failures of object stores);
- streamed to a ``.part`` file and renamed, so a failed download never leaves
  a file that looks complete;
- one byte budget across every download of a job (``diskGB``);
- **nothing of the URL or of what answered in any message**: the configure
  log reaches the consumer, and a URL may be pre-signed, so errors and log
  lines name the field (given by the caller as ``label``), sizes and
  outcomes; never the URL, a resolved address, a server's reason phrase or
  body.

Tests replace :func:`resolve_host` and :func:`open_connection` (module
attributes, looked up at each call) to control DNS answers and to see where
a connection would go, without sending traffic off the machine.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import http
import logging
import os
import re
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import certifi
import requests
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.response import BaseHTTPResponse
from urllib3.util.timeout import Timeout

from .addresses import AllowList, forbidden_reason, parse_address
from .common import redact_url

ALLOWED_SCHEMES = ("http", "https")
RETRY_STATUSES = frozenset({500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
CHUNK_SIZE = 1024 * 1024
GIB = 1024**3

#: The answer to every address the policy refuses: it names no address, no host and no reason
#: that would tell the consumer what lives where inside the provider's network.
REFUSED_ADDRESS = "refused: address not allowed"


class DownloadError(Exception):
    """A download failed; ``str()`` is a reason safe to show the consumer (no URL, no address)."""


class RefusedError(DownloadError):
    """The URL (or a redirect) points where the configure pod may not fetch from."""


# --------------------------------------------------------------------------
# Seams: resolution and connection (tests replace these module attributes)
# --------------------------------------------------------------------------


def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, in the resolver's order, without duplicates."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in seen:
            seen.append(address)
    return seen


def open_connection(address: tuple[str, int], timeout: float | None) -> socket.socket:
    """Connect a TCP socket to exactly ``address`` (an IP literal, never a name)."""
    return socket.create_connection(address, timeout)


# --------------------------------------------------------------------------
# Budgets: bytes and time
# --------------------------------------------------------------------------


@dataclass
class ByteBudget:
    """How many bytes all downloads of a job may write in total (``None``: no limit)."""

    limit: int | None
    limit_text: str = ""
    used: int = 0

    def check(self, extra: int) -> None:
        """Raise when ``used + extra`` would go over the limit."""
        if self.limit is not None and self.used + extra > self.limit:
            raise DownloadError(
                f"too large: the downloads exceed the disk limit {self.limit_text} ({self.limit} bytes)"
            )

    def consume(self, amount: int) -> None:
        self.check(amount)
        self.used += amount

    @classmethod
    def from_disk_gb(cls, disk_gb: float | None) -> ByteBudget:
        if disk_gb is None or disk_gb == 0:
            return cls(limit=None)
        return cls(limit=int(disk_gb * GIB), limit_text=f"diskGB={disk_gb:g}")


@dataclass
class Deadline:
    """The moment one download must be over, enforced on its sockets by a watchdog timer.

    Socket timeouts bound each read, not their sum: a server that sends a
    byte every few seconds never trips them. When the deadline passes, the
    timer shuts down every socket of the download, which ends any blocked
    read at once; the caller then sees :attr:`expired` and reports ``reason``.
    """

    at: float
    reason: str
    expired: bool = False
    _sockets: list[socket.socket] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _timer: threading.Timer | None = None

    def start(self) -> None:
        self._timer = threading.Timer(max(0.0, self.at - time.monotonic()), self._expire)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def bound(self, timeout: float) -> float:
        """``timeout``, shortened so that no single wait outlives the deadline."""
        return max(0.001, min(timeout, self.remaining()))

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            if self.expired:
                _shutdown_quietly(sock)
            self._sockets.append(sock)

    def check(self) -> None:
        if self.expired or self.remaining() <= 0:
            self.expired = True
            raise DownloadError(self.reason)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shutdown_quietly(sock)


def _shutdown_quietly(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


# --------------------------------------------------------------------------
# Connections pinned to checked addresses
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Pin:
    """Where the connections of one hop go: the checked addresses, within a deadline."""

    addresses: tuple[str, ...]
    deadline: Deadline

    def connect(self, port: int, timeout: float | None, options: Any) -> socket.socket:
        """A socket to the first checked address that answers (as ``socket.create_connection`` does)."""
        self.deadline.check()
        failure: OSError | None = None
        for address in self.addresses:
            wait: float | None = timeout
            if self.deadline.at != float("inf"):
                wait = self.deadline.bound(timeout if timeout is not None else self.deadline.remaining())
            try:
                sock = open_connection((address, port), wait)
            except OSError as exc:
                failure = exc
                continue
            for option in options or ():
                with contextlib.suppress(OSError):
                    sock.setsockopt(*option)
            self.deadline.watch(sock)
            return sock
        assert failure is not None  # addresses is never empty
        raise failure


class _PinnedConnectionMixin:
    """Replaces urllib3's own resolve-and-connect with :meth:`Pin.connect`.

    Everything else (Host header, TLS with SNI and certificate checks against
    the host name) is urllib3's, unchanged: the pool's ``host`` is the name.
    """

    pin: Pin
    port: int
    timeout: float | None
    socket_options: Any

    def _new_conn(self) -> socket.socket:
        try:
            return self.pin.connect(self.port, self.timeout, self.socket_options)
        except DownloadError:
            raise NewConnectionError(self, "the time limit was reached") from None  # type: ignore[arg-type]
        except TimeoutError as exc:
            raise ConnectTimeoutError(self, "connection timed out") from exc
        except OSError as exc:
            raise NewConnectionError(self, "connection failed") from exc  # type: ignore[arg-type]


class PinnedHTTPConnection(_PinnedConnectionMixin, HTTPConnection):
    def __init__(self, *args: Any, pin: Pin, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pin = pin


class PinnedHTTPSConnection(_PinnedConnectionMixin, HTTPSConnection):
    def __init__(self, *args: Any, pin: Pin, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pin = pin


class PinnedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = PinnedHTTPConnection


class PinnedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = PinnedHTTPSConnection


# --------------------------------------------------------------------------
# One hop: a URL checked and resolved
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Hop:
    """A URL taken apart, with the addresses its host resolved to (all checked)."""

    scheme: str
    host: str
    port: int
    target: str  # path and query, as sent in the request line
    addresses: tuple[str, ...]
    authorization: str | None

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


def check_scheme(url: str, *, redirect: bool = False) -> urllib.parse.SplitResult:
    """Only http(s): other schemes (file://, s3://, ipfs://, gopher://) are refused."""
    if not isinstance(url, str) or not url:
        raise RefusedError("refused: the URL must be a non-empty string")
    try:
        parts = urllib.parse.urlsplit(url.strip())
    except ValueError:
        raise RefusedError("refused: the URL cannot be parsed") from None
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        if redirect:
            raise RefusedError("refused: redirect to a scheme other than http or https")
        shown = f"{scheme!r}" if scheme else "none"
        raise RefusedError(f"refused: unsupported URL scheme {shown} (only http and https are allowed)")
    return parts


def plan_hop(url: str, allow: AllowList, *, redirect: bool = False) -> Hop:
    """Check ``url``'s scheme, resolve its host once and check every address; raise :class:`RefusedError`."""
    parts = check_scheme(url, redirect=redirect)
    scheme = parts.scheme.lower()
    try:
        host = parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise RefusedError("refused: the URL has an invalid port") from None
    if not host:
        raise RefusedError("refused: the URL has no host")
    try:
        host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        raise RefusedError("refused: the URL has an invalid host name") from None
    try:
        resolved = resolve_host(host, port)
    except (OSError, UnicodeError) as exc:
        raise DownloadError(f"cannot resolve the host name{_errno_text(exc)}") from None
    if not resolved:
        raise DownloadError("cannot resolve the host name")
    host_allowed = allow.allows_host(host)
    for text in resolved:
        try:
            address = parse_address(text)
        except ValueError:
            raise RefusedError(REFUSED_ADDRESS) from None
        if not host_allowed and forbidden_reason(address) is not None and not allow.allows_address(address):
            raise RefusedError(REFUSED_ADDRESS)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    authorization = None
    if parts.username is not None or parts.password is not None:
        userinfo = f"{urllib.parse.unquote(parts.username or '')}:{urllib.parse.unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(userinfo.encode("utf-8")).decode("ascii")
    return Hop(scheme, host, port, target, tuple(resolved), authorization)


# --------------------------------------------------------------------------
# The downloader
# --------------------------------------------------------------------------


class Downloader:
    """Fetches URLs into files, sharing one :class:`ByteBudget` and one overall deadline.

    ``total_timeout`` bounds each download (every hop, retry and byte of it);
    ``overall_timeout`` bounds all of them together, counted from the
    downloader's creation. ``None`` means no such limit.
    """

    def __init__(
        self,
        budget: ByteBudget,
        timeout: float,
        logger: logging.Logger,
        retries: int = 3,
        backoff_factor: float = 0.5,
        *,
        allow: AllowList | None = None,
        total_timeout: float | None = None,
        overall_timeout: float | None = None,
        max_redirects: int = MAX_REDIRECTS,
        ca_certs: str | None = None,
    ) -> None:
        self.budget = budget
        self.timeout = timeout
        self.logger = logger
        self.retries = retries
        self.backoff_factor = backoff_factor
        self.allow = allow or AllowList()
        self.total_timeout = total_timeout
        self.overall_timeout = overall_timeout
        self.overall_at = None if overall_timeout is None else time.monotonic() + overall_timeout
        self.max_redirects = max_redirects
        self.ca_certs = ca_certs or certifi.where()

    def close(self) -> None:
        """Nothing stays open between downloads (each hop has its own pool)."""

    def _deadline(self) -> Deadline:
        candidates: list[tuple[float, str]] = []
        if self.total_timeout is not None:
            candidates.append(
                (
                    time.monotonic() + self.total_timeout,
                    f"took longer than the total limit of {self.total_timeout:g}s per download",
                )
            )
        if self.overall_at is not None:
            assert self.overall_timeout is not None
            candidates.append(
                (self.overall_at, f"the downloads together took longer than their limit of {self.overall_timeout:g}s")
            )
        if not candidates:
            return Deadline(at=float("inf"), reason="")
        at, reason = min(candidates)
        return Deadline(at=at, reason=reason)

    def fetch(self, url: str, dest: Path, label: str = "download") -> int:
        """Download ``url`` to ``dest``; return the number of bytes written.

        ``label`` names the download in log lines (the field, such as
        ``input[0] url 1 of 2``); the URL itself is never logged.
        """
        started = time.monotonic()
        deadline = self._deadline()
        part = dest.with_name(dest.name + ".part")
        self.logger.info("%s: downloading to %s", label, dest)
        try:
            deadline.check()
            if deadline.at != float("inf"):
                deadline.start()
            size = self._follow(url, part, label, deadline)
            os.replace(part, dest)
        except DownloadError:
            _unlink_quietly(part)
            raise
        except OSError as exc:
            _unlink_quietly(part)
            raise DownloadError(f"cannot write {dest}: {exc.strerror or exc}") from None
        finally:
            deadline.cancel()
        self.logger.info("%s: downloaded %d bytes in %.1fs", label, size, time.monotonic() - started)
        return size

    def _follow(self, url: str, part: Path, label: str, deadline: Deadline) -> int:
        """Fetch ``url``, following redirects by hand so that each hop is checked."""
        hop = plan_hop(url, self.allow)
        current = url
        for redirects in range(self.max_redirects + 1):
            pool, response = self._request(hop, label, deadline)
            try:
                location = response.headers.get("Location")
                if response.status in REDIRECT_STATUSES and location:
                    if redirects >= self.max_redirects:
                        raise RefusedError(f"refused: more than {self.max_redirects} redirects")
                    current = urllib.parse.urljoin(current, location.strip())
                    previous = hop
                    hop = plan_hop(current, self.allow, redirect=True)
                    if hop.authorization is None and hop.origin == previous.origin:
                        # Credentials from the URL go on to its own origin only, as browsers do.
                        hop = dataclasses.replace(hop, authorization=previous.authorization)
                    self.logger.info("%s: redirected (%d of at most %d)", label, redirects + 1, self.max_redirects)
                    continue
                if response.status >= 400:
                    raise DownloadError(_status_text(response.status))
                return self._save(response, part, deadline)
            except (HTTPError, OSError) as exc:
                if deadline.expired:
                    raise DownloadError(deadline.reason) from None
                if isinstance(exc, OSError):
                    raise
                raise DownloadError(describe_error(exc, self.timeout)) from None
            finally:
                response.release_conn()
                pool.close()
        raise AssertionError("unreachable: the loop returns or raises")

    def _request(self, hop: Hop, label: str, deadline: Deadline) -> tuple[HTTPConnectionPool, BaseHTTPResponse]:
        """One GET on ``hop``, retried on connection errors and 5xx; redirects are returned, not followed."""
        pin = Pin(hop.addresses, deadline)
        pool_class = PinnedHTTPSConnectionPool if hop.scheme == "https" else PinnedHTTPConnectionPool
        pool_options: dict[str, Any] = {"pin": pin, "maxsize": 1, "retries": False}
        if hop.scheme == "https":
            pool_options.update(cert_reqs="CERT_REQUIRED", ca_certs=self.ca_certs)
        pool = pool_class(hop.host, hop.port, **pool_options)
        headers = {"User-Agent": "operator-engine-configure", "Accept-Encoding": "identity"}
        if hop.authorization:
            headers["Authorization"] = hop.authorization
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            deadline.check()
            timeout = Timeout(connect=deadline.bound(self.timeout), read=deadline.bound(self.timeout))
            reason: str
            try:
                response = pool.urlopen(
                    "GET",
                    hop.target,
                    headers=headers,
                    redirect=False,
                    retries=False,
                    preload_content=False,
                    decode_content=True,
                    timeout=timeout,
                    assert_same_host=False,
                )
            except SSLError:
                pool.close()
                if deadline.expired:
                    raise DownloadError(deadline.reason) from None
                raise DownloadError("TLS error (handshake or certificate check failed)") from None
            except (HTTPError, OSError) as exc:
                if deadline.expired:
                    pool.close()
                    raise DownloadError(deadline.reason) from None
                reason = describe_error(exc, self.timeout)
                if attempt == attempts:
                    pool.close()
                    raise DownloadError(reason) from None
            else:
                if response.status not in RETRY_STATUSES or attempt == attempts:
                    return pool, response
                reason = _status_text(response.status)
                response.drain_conn()
                response.release_conn()
            wait = min(self.backoff_factor * (2 ** (attempt - 1)), deadline.remaining())
            self.logger.warning(
                "%s: attempt %d of %d failed (%s); retrying in %.1fs", label, attempt, attempts, reason, wait
            )
            time.sleep(wait)
        raise AssertionError("unreachable: the loop returns or raises")

    def _save(self, response: BaseHTTPResponse, part: Path, deadline: Deadline) -> int:
        declared = _content_length(response)
        if declared is not None:
            self.budget.check(declared)  # fail before writing anything
        part.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with open(part, "wb") as out:
            for chunk in response.stream(CHUNK_SIZE, decode_content=True):
                self.budget.consume(len(chunk))
                out.write(chunk)
                written += len(chunk)
        if deadline.expired:  # the watchdog's shutdown can look like a normal end of the body
            raise DownloadError(deadline.reason)
        return written


def describe_error(exc: BaseException, timeout: float) -> str:
    """A short reason for a transport error: no URL, no host, no address, nothing the server said."""
    if isinstance(exc, NewConnectionError):  # before ConnectTimeoutError: it is a subclass
        cause = exc.__cause__
        if isinstance(cause, socket.timeout):
            return f"connection timed out after {timeout:g}s"
        return "connection failed" + _errno_text(cause)
    if isinstance(exc, ConnectTimeoutError):
        return f"connection timed out after {timeout:g}s"
    if isinstance(exc, ReadTimeoutError):
        return f"read timed out after {timeout:g}s"
    if isinstance(exc, SSLError):
        return "TLS error (handshake or certificate check failed)"
    if isinstance(exc, ProtocolError):
        return "transfer interrupted" + _errno_text(exc.args[1] if len(exc.args) > 1 else None)
    if isinstance(exc, HTTPError):
        return f"transfer failed ({type(exc).__name__})"
    return "transfer failed" + _errno_text(exc)


def _errno_text(exc: BaseException | None) -> str:
    """``": Connection refused"``: the OS's own words for an errno, which name no host."""
    number = getattr(exc, "errno", None)
    if isinstance(exc, socket.gaierror):
        return ": " + (exc.strerror or "lookup failed")
    if isinstance(number, int) and number in errno.errorcode:
        return ": " + os.strerror(number)
    return ""


def _status_text(status: int) -> str:
    """``HTTP 404 Not Found``: the standard phrase, never the server's own reason text."""
    try:
        return f"HTTP {status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


# --------------------------------------------------------------------------
# requests errors, for the publish pod's IPFS uploads (storage.py)
# --------------------------------------------------------------------------


def describe_request_error(exc: requests.RequestException, url: str, timeout: float) -> str:
    """A short reason for ``exc`` that names no credential or query string of ``url``."""
    # After the retries, requests reports a read timeout as a ConnectionError
    # wrapping urllib3's MaxRetryError; its ``reason`` says what really happened.
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return f"connection timed out after {timeout:g}s"
    if isinstance(exc, requests.exceptions.ReadTimeout) or isinstance(reason, ReadTimeoutError):
        return f"read timed out after {timeout:g}s"
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS error"
    if isinstance(exc, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)):
        return "transfer interrupted"
    text = str(exc)
    errno_reason = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if errno_reason:
        return f"connection failed: {errno_reason.group(1).strip()}"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "connection failed: " + scrub(text, url)
    return f"{type(exc).__name__}: {scrub(text, url)}"


def scrub(text: str, url: str) -> str:
    """Remove ``url``'s query, fragment and userinfo from ``text``, wherever quoted."""
    parts = urllib.parse.urlsplit(url)
    for secret in (parts.query, parts.fragment, parts.password, parts.username):
        if secret:
            text = text.replace(secret, "***")
    return re.sub(r"url: \S+", "url: " + urllib.parse.urlsplit(redact_url(url)).path, text)


def _content_length(response: BaseHTTPResponse) -> int | None:
    try:
        return int(response.headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
