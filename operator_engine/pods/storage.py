"""Where the publish pod puts results: IPFS, S3 or a local folder.

Every target answers one question: "store this file in this area under this
name, and give me the URL the consumer will use". The areas are ``outputs``
and ``logs`` (the output target: what the consumer gets) and ``adminlogs``
(the admin-logs target: configure/publish logs, for the operator's owner).

Selection follows docs/contract.md §3: IPFS when ``IPFS_OUTPUT`` is
set, else S3 when ``AWS_BUCKET_OUTPUT`` is set, else a local folder when
``LOCAL_STORAGE_DIR`` is set (the embedded dev cluster).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol

import requests
from requests_toolbelt import MultipartEncoder

from .common import PodError, env_float, redact_url
from .downloads import describe_request_error

Area = Literal["outputs", "logs", "adminlogs"]

#: S3 refuses pre-signed URLs valid for more than 7 days (SigV4).
S3_PRESIGN_MAX_SECONDS = 7 * 24 * 3600
DEFAULT_IPFS_PREFIX = "ipfs://"
DEFAULT_PUBLISH_TIMEOUT = 600.0
CONNECT_TIMEOUT = 30.0


#: The characters an uploaded file's name keeps; every other one becomes "_".
_UNSAFE_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]")
#: S3 keys, IPFS names and file names all stay well within their limits at this length.
MAX_NAME_LENGTH = 200


def object_name(name: str) -> str:
    """The name a file is stored under: ``name`` made safe for a key, a header and a folder.

    Output names come from the algorithm, which is untrusted: a name with
    ``/``, ``..``, quotes, CR/LF or other control characters, non-UTF-8 bytes
    (``os`` hands them over as surrogates) or thousands of characters could
    leave the job's prefix or folder, or break a multipart header. Only
    letters, digits, ``.``, ``-`` and ``_`` are kept, no leading dot, at most
    MAX_NAME_LENGTH characters; nothing left gives ``output``.
    """
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    safe = _UNSAFE_NAME_CHARACTERS.sub("_", text).lstrip(".")[:MAX_NAME_LENGTH]
    return safe or "output"


class Target(Protocol):
    """A place results can be uploaded to."""

    description: str

    def upload(self, source: BinaryIO, area: Area, name: str) -> str:
        """Store what the open file ``source`` holds as ``object_name(name)``; return the consumer's URL.

        The caller opened ``source`` (see publish.py: never through a link); a
        target reads from it and never opens a path of the volume itself.
        """
        ...


# --------------------------------------------------------------------------
# IPFS (HTTP RPC of a node, or the REST API of ipfs-cluster)
# --------------------------------------------------------------------------


def ipfs_base_url(value: str) -> str:
    """``IPFS_OUTPUT`` as a base URL: the original settings give ``host:port`` without a scheme."""
    value = value.strip().rstrip("/")
    return value if "://" in value else f"http://{value}"


@dataclass
class IpfsEndpoint:
    """One IPFS API (node or cluster) plus the prefix that turns a hash into a URL."""

    base_url: str
    prefix: str
    cluster: bool
    expiry: str | None
    headers: dict[str, str]
    timeout: float

    @property
    def add_url(self) -> str:
        return f"{self.base_url}/add" if self.cluster else f"{self.base_url}/api/v0/add"

    def add(self, source: BinaryIO, name: str) -> str:
        """Upload one file; return its content identifier."""
        params = {"expire-in": self.expiry} if self.cluster and self.expiry else {}
        shown = redact_url(self.add_url)
        # A multipart/form-data body read from the file as it is sent (requests' own files= would
        # build the whole body in memory, and an output may be as large as the data volume); its
        # length is known, so requests sends a Content-Length rather than a chunked body. The file
        # name is encoded as browsers do (WHATWG HTML): '"', CR and LF percent-encoded.
        body = MultipartEncoder(fields={"file": (name, source, "application/octet-stream")})
        try:
            response = requests.post(
                self.add_url,
                params=params,
                data=body,
                headers={**self.headers, "Content-Type": body.content_type},
                timeout=(CONNECT_TIMEOUT, self.timeout),
            )
        except requests.RequestException as exc:
            raise PodError(
                f"IPFS add of {name} to {shown} failed: {describe_request_error(exc, self.add_url, self.timeout)}"
            ) from None
        if response.status_code >= 400:
            raise PodError(
                f"IPFS add of {name} to {shown} failed: HTTP {response.status_code} {response.reason or ''}".rstrip()
                + f": {response.text[:200]}"
            )
        return self._identifier(response.text, name, shown)

    def _identifier(self, body: str, name: str, shown: str) -> str:
        key = "cid" if self.cluster else "Hash"
        for item in reversed(_json_objects(body)):
            value = item.get(key)
            if isinstance(value, dict):  # ipfs-cluster may encode a CID as {"/": "..."}
                value = value.get("/")
            if isinstance(value, str) and value:
                return value
        raise PodError(f"IPFS add of {name} to {shown} answered without a '{key}': {body[:200]!r}")


def _json_objects(body: str) -> list[dict[str, Any]]:
    """The objects of a JSON answer: one object, a list, or one object per line (streamed)."""
    try:
        parsed: Any = json.loads(body)
        items = parsed if isinstance(parsed, list) else [parsed]
    except json.JSONDecodeError:
        items = []
        for line in body.splitlines():
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return [item for item in items if isinstance(item, dict)]


@dataclass
class IpfsTarget:
    output: IpfsEndpoint
    adminlogs: IpfsEndpoint
    description: str = "IPFS"

    def upload(self, source: BinaryIO, area: Area, name: str) -> str:
        endpoint = self.adminlogs if area == "adminlogs" else self.output
        return endpoint.prefix + endpoint.add(source, object_name(name))


def ipfs_target(env: Mapping[str, str]) -> IpfsTarget:
    cluster = (env.get("IPFS_TYPE") or "CLIENT").strip().upper() == "CLUSTER"
    expiry = (env.get("IPFS_EXPIRY_TIME") or "").strip()
    headers = {}
    if env.get("IPFS_API_KEY"):
        headers["X-API-KEY"] = env["IPFS_API_KEY"]
    if env.get("IPFS_API_CLIENT"):
        headers["CLIENT-ID"] = env["IPFS_API_CLIENT"]
    timeout = env_float(env, "PUBLISH_TIMEOUT", DEFAULT_PUBLISH_TIMEOUT) or DEFAULT_PUBLISH_TIMEOUT

    def endpoint(url_var: str, prefix_var: str) -> IpfsEndpoint:
        url = env.get(url_var) or env["IPFS_OUTPUT"]
        prefix = env.get(prefix_var) or env.get("IPFS_OUTPUT_PREFIX") or DEFAULT_IPFS_PREFIX
        return IpfsEndpoint(
            base_url=ipfs_base_url(url),
            prefix=prefix,
            cluster=cluster,
            expiry=expiry if expiry and expiry != "0" else None,
            headers=dict(headers),
            timeout=timeout,
        )

    output = endpoint("IPFS_OUTPUT", "IPFS_OUTPUT_PREFIX")
    adminlogs = endpoint("IPFS_ADMINLOGS", "IPFS_ADMINLOGS_PREFIX")
    kind = "ipfs-cluster" if cluster else "IPFS node"
    return IpfsTarget(output, adminlogs, f"{kind} at {redact_url(output.base_url)}")


# --------------------------------------------------------------------------
# S3
# --------------------------------------------------------------------------


@dataclass
class S3Target:
    """Objects ``<jobId>/<area>/<name>`` in the output or admin-logs bucket.

    URLs are pre-signed GET URLs valid ``STORAGE_EXPIRY`` hours (clamped to
    S3's 7-day maximum) when that is > 0; with 0 ("no expiry", the original
    meaning) a pre-signed URL cannot express it, so the URL is the permanent
    ``s3://bucket/key`` reference instead.
    """

    client: Any
    job_id: str
    output_bucket: str
    adminlogs_bucket: str
    expiry_seconds: int
    description: str = "S3"

    def upload(self, source: BinaryIO, area: Area, name: str) -> str:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        bucket = self.adminlogs_bucket if area == "adminlogs" else self.output_bucket
        name = object_name(name)
        key = f"{self.job_id}/{area}/{name}"
        try:
            self.client.upload_fileobj(source, bucket, key)
            if self.expiry_seconds <= 0:
                return f"s3://{bucket}/{key}"
            return str(
                self.client.generate_presigned_url(
                    "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=self.expiry_seconds
                )
            )
        except NoCredentialsError:
            raise PodError(
                f"S3 upload of {name} to s3://{bucket}/{key} failed: no AWS credentials "
                "(set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
            ) from None
        except (BotoCoreError, ClientError, Boto3Error) as exc:
            raise PodError(f"S3 upload of {name} to s3://{bucket}/{key} failed: {exc}") from None


def s3_target(env: Mapping[str, str], job_id: str, logger: logging.Logger) -> S3Target:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        region_name=env.get("AWS_REGION") or None,
        endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
        aws_session_token=env.get("AWS_SESSION_TOKEN") or None,
        config=Config(
            signature_version="s3v4",  # SigV4 pre-signed URLs: SigV2 is refused by newer regions
            connect_timeout=CONNECT_TIMEOUT,
            retries={"max_attempts": 3, "mode": "standard"},
        ),
    )
    hours = env_float(env, "STORAGE_EXPIRY", 0.0) or 0.0
    seconds = int(hours * 3600)
    if seconds > S3_PRESIGN_MAX_SECONDS:
        logger.warning(
            "STORAGE_EXPIRY=%g hours is longer than S3 pre-signed URLs allow; the URLs expire after 7 days",
            hours,
        )
        seconds = S3_PRESIGN_MAX_SECONDS
    output_bucket = env["AWS_BUCKET_OUTPUT"]
    adminlogs_bucket = env.get("AWS_BUCKET_ADMINLOGS") or output_bucket
    return S3Target(
        client,
        job_id,
        output_bucket,
        adminlogs_bucket,
        seconds,
        f"S3 buckets {output_bucket} (outputs) and {adminlogs_bucket} (admin logs)",
    )


# --------------------------------------------------------------------------
# Local folder (embedded dev cluster)
# --------------------------------------------------------------------------


@dataclass
class LocalTarget:
    """Copies to ``<root>/<jobId>/<area>/<name>``; URLs are ``file://`` URIs."""

    root: Path
    job_id: str
    description: str = field(default="local folder")

    def upload(self, source: BinaryIO, area: Area, name: str) -> str:
        name = object_name(name)
        destination = self.root / self.job_id / area / name
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            # O_NOFOLLOW: a link left at the destination is refused, never written through.
            fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            with os.fdopen(fd, "wb") as copy:
                shutil.copyfileobj(source, copy)
        except OSError as exc:
            raise PodError(f"copy of {name} to {destination} failed: {exc.strerror or exc}") from None
        return destination.resolve().as_uri()


# --------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------


def select_target(env: Mapping[str, str], job_id: str, logger: logging.Logger) -> Target:
    """The upload target, by the priority of docs/contract.md §3: IPFS, then S3, then local."""
    if env.get("IPFS_OUTPUT"):
        return ipfs_target(env)
    if env.get("AWS_BUCKET_OUTPUT"):
        return s3_target(env, job_id, logger)
    if env.get("LOCAL_STORAGE_DIR"):
        root = Path(env["LOCAL_STORAGE_DIR"]).absolute()
        return LocalTarget(root, job_id, f"local folder {root}")
    raise PodError(
        "no upload target configured: set IPFS_OUTPUT (IPFS), or AWS_BUCKET_OUTPUT with "
        "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_REGION (S3), or LOCAL_STORAGE_DIR (local folder)"
    )
