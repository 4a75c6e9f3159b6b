"""Bounded, streamed HTTP downloads for the configure pod.

Why this shape:
- timeouts on connect and on every read, so a silent server cannot hold a
  job until its deadline;
- a few retries with exponential backoff on connection errors and 5xx (the
  transient failures of object stores), done by urllib3's ``Retry`` so the
  policy is declared, not hand-written; ``Retry-After`` is ignored so the
  total wait stays bounded;
- streamed to a ``.part`` file and renamed, so a failed download never leaves
  a file that looks complete;
- one byte budget across every download of a job (``diskGB``), because the
  volume is that size and a full volume fails the algorithm later, less
  clearly;
- error texts that never contain URL credentials or query strings (they may
  be pre-signed URLs).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ReadTimeoutError
from urllib3.util.retry import Retry

from .common import redact_url

ALLOWED_SCHEMES = ("http", "https")
RETRY_STATUSES = (500, 502, 503, 504)
CHUNK_SIZE = 1024 * 1024
GIB = 1024**3


class DownloadError(Exception):
    """A download failed; ``str()`` is a reason safe to show (no credentials)."""


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


def make_session(retries: int, backoff_factor: float) -> requests.Session:
    """A session that retries connection errors and 5xx answers on GET."""
    retry = Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        other=0,
        backoff_factor=backoff_factor,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET"}),
        raise_on_status=False,
        respect_retry_after_header=False,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class Downloader:
    """Fetches URLs into files, sharing one session and one :class:`ByteBudget`."""

    def __init__(
        self,
        budget: ByteBudget,
        timeout: float,
        logger: logging.Logger,
        retries: int = 3,
        backoff_factor: float = 0.5,
    ) -> None:
        self.budget = budget
        self.timeout = timeout
        self.logger = logger
        self.session = make_session(retries, backoff_factor)

    def close(self) -> None:
        self.session.close()

    def fetch(self, url: str, dest: Path) -> int:
        """Download ``url`` to ``dest``; return the number of bytes written."""
        check_scheme(url)
        self.logger.info("downloading %s to %s", redact_url(url), dest)
        part = dest.with_name(dest.name + ".part")
        try:
            size = self._stream(url, part)
            os.replace(part, dest)
        except DownloadError:
            _unlink_quietly(part)
            raise
        except requests.RequestException as exc:
            _unlink_quietly(part)
            raise DownloadError(describe_request_error(exc, url, self.timeout)) from None
        except OSError as exc:
            _unlink_quietly(part)
            raise DownloadError(f"cannot write {dest}: {exc.strerror or exc}") from None
        self.logger.info("downloaded %d bytes from %s", size, redact_url(url))
        return size

    def _stream(self, url: str, part: Path) -> int:
        with self.session.get(url, stream=True, timeout=(self.timeout, self.timeout)) as response:
            if response.status_code >= 400:
                raise DownloadError(f"HTTP {response.status_code} {response.reason or ''}".rstrip())
            declared = _content_length(response)
            if declared is not None:
                self.budget.check(declared)  # fail before writing anything
            part.parent.mkdir(parents=True, exist_ok=True)
            written = 0
            with open(part, "wb") as out:
                for chunk in response.iter_content(CHUNK_SIZE):
                    self.budget.consume(len(chunk))
                    out.write(chunk)
                    written += len(chunk)
            return written


def check_scheme(url: str) -> None:
    """Only http(s): other schemes (file://, s3://, ipfs://) need other code or are unsafe."""
    if not isinstance(url, str) or not url:
        raise DownloadError(f"URL must be a non-empty string, got {url!r}")
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        shown = f"{scheme!r}" if scheme else "none"
        raise DownloadError(
            f"unsupported URL scheme {shown} in {redact_url(url)}: only http and https are allowed"
        )


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


def _content_length(response: requests.Response) -> int | None:
    try:
        return int(response.headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
