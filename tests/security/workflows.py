"""Workflows of every shape, full of URLs that the algorithm and filter pods must never read.

Each URL carries markers (`leak…`) in its user, password, host, path and
query token, so a test can look for the whole URL and for each part of it in
every encoding a pod could decode (see `encodings`).
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVICE_SAMPLE = ROOT / "k8s_install" / "workflow-1.yaml"
DDO_SAMPLE = ROOT / "tests" / "fixtures" / "workflow-ddo-2019.yaml"

# URLs as operator-service may hand them over: credentials in the user part,
# pre-signed tokens in the query, percent-encoded paths.
INPUT_URL = "https://leakuser1:leakpass1@leakhost1.example.org/leakpath1/data.csv?token=leaktoken1&sig=leaksig1"
INPUT_URL_2 = "http://leakhost2.example.org:8443/leak%20path2/file%2Fx.csv?X-Amz-Signature=leaksig2"
ALGORITHM_URL = "https://leakuser3:leakpass3@leakhost3.example.org/leakpath3/algo.py?X-Amz-Credential=leakcred3"
REMOTE_URL = "https://leakhost4.example.org/leakpath4?access_token=leaktoken4"
DDO_URL = "https://leakhost5.example.org/leakpath5/ddo-file.csv?key=leakkey5"
BASIC_AUTH = base64.b64encode(b"leakuser6:leakpass6").decode()
PERCENT_URL = quote("https://leakuser7:leakpass7@leakhost7.example.org/leakpath7?t=leaktoken7", safe="")
BASE64_URL = base64.b64encode(b"https://leakhost8.example.org/leakpath8?t=leaktoken8").decode()

#: Every URL above, decoded: what must not be readable, whole or in parts.
URLS = (
    INPUT_URL,
    INPUT_URL_2,
    ALGORITHM_URL,
    REMOTE_URL,
    DDO_URL,
    "https://leakuser7:leakpass7@leakhost7.example.org/leakpath7?t=leaktoken7",
    "https://leakhost8.example.org/leakpath8?t=leaktoken8",
)
#: The distinctive parts of those URLs (users, passwords, hosts, paths, tokens).
MARKERS = tuple(
    sorted(
        {
            word
            for url in URLS
            for word in url.replace("/", " ")
            .replace(":", " ")
            .replace("@", " ")
            .replace("?", " ")
            .replace("&", " ")
            .replace("=", " ")
            .replace(".", " ")
            .split()
            if word.startswith("leak") and len(word) > len("leak")
        }
        | {"leakuser6", "leakpass6"}
    )
)


def encodings(needle: str) -> set[str]:
    """`needle` as a pod could find it: plain, percent-encoded, JSON-escaped, base64 at every alignment."""
    forms = {
        needle,
        quote(needle, safe=""),
        quote(needle),
        json.dumps(needle)[1:-1],
        json.dumps(needle, ensure_ascii=False)[1:-1],
    }
    raw = needle.encode()
    for offset in range(3):  # where the needle starts in the encoded stream, modulo 3 bytes
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(b"\0" * offset + raw).decode()
            # Only the characters whose 6 bits all come from the needle's bytes.
            core = encoded[-(-8 * offset // 6) : 8 * (offset + len(raw)) // 6]
            if len(core) >= 8:
                forms.add(core)
    return {form for form in forms if form}


def _base(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def service_shape(**stage_changes: Any) -> dict[str, Any]:
    body = _base(SERVICE_SAMPLE)
    stage = body["spec"]["metadata"]["stages"][0]
    stage["input"][0]["url"] = [INPUT_URL, INPUT_URL_2, PERCENT_URL_AS_URL]
    stage["algorithm"]["url"] = ALGORITHM_URL
    stage.update(stage_changes)
    return body


# A percent-encoded URL is only a valid input URL with its scheme in clear.
PERCENT_URL_AS_URL = "https://leakhost7.example.org/" + PERCENT_URL


def workflows() -> dict[str, dict[str, Any]]:
    """Name -> WorkFlow body: every shape the operator accepts, each with URLs in a different place."""
    bodies: dict[str, dict[str, Any]] = {}
    bodies["service"] = service_shape()

    body = service_shape()
    stage = body["spec"]["metadata"]["stages"][0]
    stage["input"].append(
        {
            "index": 1,
            "id": "did:op:remote1",
            "remote": {
                "url": REMOTE_URL,
                "headers": {"Authorization": f"Basic {BASIC_AUTH}"},
                "encoded": BASE64_URL,
                "escaped": PERCENT_URL,
            },
        }
    )
    stage["algorithm"] = {
        "id": "did:op:algoremote",
        "remote": {"url": ALGORITHM_URL, "b64": BASE64_URL},
        "container": stage["algorithm"]["container"],
    }
    bodies["service-remote"] = body

    body = service_shape()
    stage = body["spec"]["metadata"]["stages"][0]
    stage["algorithm"].pop("url")
    stage["algorithm"]["rawcode"] = "print('hello')\n"
    stage["algorithm"]["ddo"] = {"id": "did:op:algo", "service": [{"serviceEndpoint": DDO_URL, "files": BASE64_URL}]}
    stage["input"][0]["ddo"] = {"id": stage["input"][0]["id"], "files": [{"url": DDO_URL}], "u": PERCENT_URL}
    stage["output"] = {"metadataUri": REMOTE_URL, "brizoUrl": DDO_URL, "nodeUri": INPUT_URL_2}
    bodies["service-rawcode-ddo"] = body

    body = service_shape()
    body["spec"]["metadata"]["stages"][0]["compute"]["namespace"] = INPUT_URL
    body["spec"]["metadata"]["stages"][0]["stageType"] = ALGORITHM_URL
    body["spec"]["metadata"]["stages"][0]["unknownField"] = {"nested": [INPUT_URL, BASE64_URL]}
    bodies["service-unknown-fields"] = body

    body = _base(DDO_SAMPLE)
    attributes = body["spec"]["metadata"]["service"][1]["attributes"]
    legacy = attributes["workflow"]["stages"][0]
    legacy["input"][0]["url"] = [INPUT_URL, PERCENT_URL_AS_URL]
    legacy["input"][1]["url"] = INPUT_URL_2
    legacy["transformation"]["url"] = ALGORITHM_URL
    legacy["output"]["metadataUrl"] = REMOTE_URL
    bodies["ddo-2019"] = body

    body = copy.deepcopy(body)
    body["spec"]["metadata"]["service"][0]["serviceEndpoint"] = DDO_URL
    body["spec"]["secret"] = "consumer-secret"
    bodies["ddo-2019-with-secret"] = body
    return bodies


#: Configurations every shape is rendered with (one per optional feature).
CONFIGURATIONS: dict[str, dict[str, str]] = {
    "defaults": {},
    "filter": {"FILTERING_CONTAINER": "registry.example.com:5000/team/filter:1.2"},
    "storage-credentials": {
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEY",
        "AWS_SECRET_ACCESS_KEY": "aws-secret-value",
        "AWS_BUCKET_OUTPUT": "outputs",
        "AWS_REGION": "eu-west-1",
        "IPFS_API_KEY": "ipfs-key",
        "IPFS_API_CLIENT": "ipfs-client",
    },
    "node-selector": {"NODE_SELECTOR": "c2d-nodes"},
    "pull-secret": {"PULL_SECRET": "registry-creds", "PULL_POLICY": "Always"},
    "everything": {
        "FILTERING_CONTAINER": "registry.example.com:5000/team/filter:1.2",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEY",
        "AWS_SECRET_ACCESS_KEY": "aws-secret-value",
        "AWS_BUCKET_OUTPUT": "outputs",
        "NODE_SELECTOR": "c2d-nodes",
        "PULL_SECRET": "registry-creds",
        "ALGORITHM_PULL_SECRET": "algorithm-registry",
        "SERVICE_ACCOUNT": "ocean-compute-pods",
        "STORAGE_CLASS": "standard",
        "OPERATOR_PRIVATE_KEY": "0x" + "11" * 32,
    },
}
