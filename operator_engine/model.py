"""The workflow model: one typed view of both Workflow shapes of docs/contract.md §1.

operator-service writes `spec.metadata.stages[]`; the 2019 DDO sample writes
`spec.metadata.service[type=Metadata].attributes.workflow.stages[]` with
`requirements.container` and `transformation.id`. Both are checked where they
are written, so an error names the field the author actually wrote, and then
both become the same `Workflow`, whose `document()` is the stage document the
pods read from the ConfigMap.

Everything a Workflow author controls is checked here, before any manifest
exists: DIDs (they become directory names), image references (they become
`image:` fields), URLs, names (they become child object names). Anything this
module accepts can be rendered without changing a manifest's structure.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any
from urllib.parse import urlsplit

import pydantic
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from operator_engine.facts import CHILD_SUFFIXES, DNS_LABEL, LABEL_VALUE, MAX_CHILD_NAME, MAX_LABEL_VALUE, MAX_NAME

# W3C DID syntax (did-core §3.1): did:<method-name>:<method-specific-id>, where the
# id is *( *idchar ":" ) 1*idchar and idchar is ALPHA / DIGIT / "." / "-" / "_" / pct-encoded.
_IDCHAR = r"(?:[A-Za-z0-9._-]|%[0-9A-Fa-f]{2})"
_DID = re.compile(rf"did:[a-z0-9]+:(?:{_IDCHAR}*:)*{_IDCHAR}+", re.ASCII)
MAX_DID_LENGTH = 255  # a DID becomes a directory name: /data/inputs/<DID>

# The distribution/reference grammar that docker, containerd and the kubelet use.
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(rf"(?P<name>{_NAME})(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?", re.ASCII)
_TAG_ONLY = re.compile(_TAG, re.ASCII)
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}", re.ASCII)


MAX_SECRET_LENGTH = 64 * 1024
# How deeply a Workflow may nest, counted from the object itself (the 2019 shape's
# image sits at level 12). Rendering serializes the stage document with code that
# recurses per level (pydantic, json, yaml, the Kubernetes client), each with its own
# limit and error; a bound checked here, well below all of them, turns a deep
# document into a validation error that names the field instead.
MAX_NESTING = 64
# What a real API server stores: Go's encoding/json refuses deeper than 10000
# levels, so a Workflow up to that depth can exist, and the operator must be able
# to read it (to reject it) without its JSON decoder giving up.
KUBERNETES_MAX_JSON_DEPTH = 10_000
# Kubernetes carries JSON integers as int64; a larger one could not be stored and
# Python cannot even print one above 4300 digits.
MAX_INTEGER = 2**63 - 1


class InvalidWorkflow(ValueError):
    """A Workflow that must not run. `problems` are "path: message" strings."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))

    @property
    def first(self) -> str:
        return self.problems[0]


def check_did(value: str) -> str:
    if len(value) > MAX_DID_LENGTH or not _DID.fullmatch(value):
        raise ValueError(
            f"{_show(value)} is not a DID: expected did:<method>:<id>, the id made of letters, digits, "
            "'.', '-', '_', ':' and %-escapes"
        )
    return value


def check_image_reference(value: str) -> str:
    """Accept exactly what a container runtime would parse as an image reference."""
    match = _REFERENCE.fullmatch(value) if len(value) <= 512 else None
    if match is None or len(match["name"]) > 255:
        raise ValueError(
            "must be a valid image reference, such as python:3.11-slim or registry:5000/team/algo@sha256:<64 hex>"
        )
    return value


def _check_image_name(value: str) -> str:
    try:
        return check_image_reference(value)
    except ValueError as exc:
        raise ValueError(f"{_show(value)} {exc}") from None


def _check_tag(value: str) -> str:
    if not _TAG_ONLY.fullmatch(value):
        raise ValueError(f"{_show(value)} is not a valid image tag (letters, digits, '_', '.', '-', at most 128)")
    return value


def _check_http_url(value: str) -> str:
    parts = urlsplit(value) if not any(c.isspace() for c in value) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        # The value is not quoted: a URL may carry credentials or a signed token, and this
        # message reaches the status, an Event and the log (docs/SECURITY.md).
        scheme = f"a {parts.scheme!r} URL" if parts is not None and parts.scheme else "the value"
        raise ValueError(f"{scheme} is not an http:// or https:// URL (the URL itself is not shown)")
    return value


def _as_list(value: Any) -> Any:
    """operator-service sends `url` as a list; older documents send one string."""
    return [value] if isinstance(value, str) else value


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _show(value: str, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_@$-]{1,64}", re.ASCII)


def path_part(key: Any) -> str:
    """One step of a field path: `[3]` for an index, `.name` for a plain key, else `[<quoted key>]`.

    Keys come from the Workflow author: quoting keeps a key with a newline or a
    dot from breaking the one-line message or faking another field's path.
    """
    if isinstance(key, int) and not isinstance(key, bool):
        return f"[{key}]"
    if isinstance(key, str) and _PLAIN_KEY.fullmatch(key):
        return f".{key}"
    return f"[{_show(key if isinstance(key, str) else repr(key), 40)}]"


def check_json_document(value: Any, path: str, depth: int = 1) -> list[str]:
    """The first problem that makes `value` something other than a plain JSON document, else [].

    A Workflow reaches the operator as JSON, but the CLI reads YAML (dates,
    binary, non-string keys, NaN) and the API server stores what Go's JSON
    accepts (10000 levels). Everything later (pydantic, json.dumps, the YAML
    dumper, the templates) assumes a plain JSON value of moderate depth; this
    walk, iterative so that it cannot hit a recursion limit itself, is the one
    place that makes sure. `depth` is the nesting level of `value` itself.
    """
    stack: list[tuple[Any, str, int]] = [(value, path, depth)]
    while stack:
        item, where, level = stack.pop()
        if isinstance(item, (dict, list)):
            if level > MAX_NESTING:
                return [f"{_short(where)}: nested deeper than {MAX_NESTING} levels"]
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        return [
                            f"{_short(where)}: keys must be strings, found the {type(key).__name__} "
                            f"key {repr(key)[:40]}"
                        ]
                    if not _is_unicode(key):
                        return [f"{_short(where + path_part(key))}: the key is not valid Unicode (a lone surrogate)"]
                    stack.append((child, where + path_part(key), level + 1))
            else:
                stack.extend((child, f"{where}[{i}]", level + 1) for i, child in enumerate(item))
        elif isinstance(item, str):
            if not _is_unicode(item):
                return [f"{_short(where)}: not valid Unicode (a lone surrogate)"]
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not -MAX_INTEGER - 1 <= item <= MAX_INTEGER:
                return [f"{_short(where)}: integer out of range (64 bits)"]
        elif isinstance(item, float):
            if not math.isfinite(item):
                return [f"{_short(where)}: must be a finite number"]
        else:
            return [
                f"{_short(where)}: must be a JSON value (string, number, true/false, null, list or object), "
                f"not {type(item).__name__} (quote it if it is text)"
            ]
    return []


def _short(path: str, limit: int = 120) -> str:
    """A path that fits a one-line message: its start names the field the author wrote."""
    return path if len(path) <= limit else path[: limit - 3] + "..."


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


Did = Annotated[str, AfterValidator(check_did)]
HttpUrl = Annotated[str, AfterValidator(_check_http_url)]
UrlList = Annotated[list[HttpUrl], BeforeValidator(_as_list)]
Text = Annotated[str, AfterValidator(_no_nul)]


class _Open(BaseModel):
    """Unknown fields are kept: the document belongs to operator-service."""

    model_config = ConfigDict(extra="allow", str_strip_whitespace=False)


class Container(_Open):
    image: Annotated[str, AfterValidator(_check_image_name)]
    tag: Annotated[str, AfterValidator(_check_tag)] | None = None
    entrypoint: Annotated[Text, Field(min_length=1)] | None = None
    checksum: str | None = None

    @pydantic.field_validator("checksum")
    @classmethod
    def _sha256(cls, value: str | None) -> str | None:
        if value is not None and value.startswith("sha256:") and not _SHA256.fullmatch(value):
            raise ValueError(f"{_show(value)} is not sha256:<64 lowercase hex digits>")
        return value


class Input(_Open):
    index: int | None = None
    id: Did
    url: UrlList | None = None
    remote: dict[str, Any] | None = None
    ddo: dict[str, Any] | None = None


class Algorithm(_Open):
    id: Did | None = None
    url: UrlList | None = None
    rawcode: Text | None = None
    remote: dict[str, Any] | None = None
    ddo: dict[str, Any] | None = None
    container: Container

    @pydantic.model_validator(mode="after")
    def _has_code(self) -> Algorithm:
        if not (self.url or self.rawcode or self.remote):
            raise ValueError("one of url, rawcode or remote is required")
        return self


class Compute(_Open):
    Instances: Annotated[int, Field(ge=1, le=1)] = 1
    namespace: str | None = None
    maxtime: Annotated[int, Field(ge=1)] | None = None


class Stage(_Open):
    index: int | None = None
    stageType: str | None = None
    input: list[Input] = Field(default_factory=list)
    algorithm: Algorithm
    compute: Compute = Field(default_factory=Compute)
    output: dict[str, Any] = Field(default_factory=dict)


class LegacyInput(_Open):
    index: int | None = None
    id: Did
    url: UrlList | None = None


class LegacyRequirements(_Open):
    container: Container


class LegacyTransformation(_Open):
    id: Did


class LegacyStage(_Open):
    index: int | None = None
    stageType: str | None = None
    requirements: LegacyRequirements
    input: list[LegacyInput] = Field(default_factory=list)
    transformation: LegacyTransformation
    output: dict[str, Any] = Field(default_factory=dict)


class Spec(_Open):
    metadata: dict[str, Any]
    secret: Annotated[Text, Field(max_length=MAX_SECRET_LENGTH)] | None = None
    stopRequested: bool | None = None
    owner: str | None = None
    agreementId: str | None = None


@dataclasses.dataclass(frozen=True)
class Workflow:
    """A checked Workflow. `stage` is in the operator-service shape, whatever the input shape."""

    name: str
    namespace: str | None
    uid: str | None
    job_id: str
    shape: str  # "service" or "ddo-2019"
    stage: dict[str, Any]
    secret: str | None
    stop_requested: bool
    owner: str | None
    agreement_id: str | None
    creation_timestamp: str | None = None

    @property
    def input_dids(self) -> list[str]:
        return [item["id"] for item in self.stage.get("input", [])]

    @property
    def algorithm_did(self) -> str | None:
        return self.stage["algorithm"].get("id")

    @property
    def container(self) -> dict[str, Any]:
        return self.stage["algorithm"]["container"]

    @property
    def image(self) -> str:
        """`image@checksum` for a sha256 checksum, else `image:tag` (docs/contract.md §2.5)."""
        return algorithm_image(self.container)

    @property
    def maxtime(self) -> int | None:
        return self.stage.get("compute", {}).get("maxtime")

    def document(self) -> dict[str, Any]:
        """The stage document the pods read (`/workflow.json`)."""
        return {"jobId": self.job_id, "stages": [self.stage]}


def algorithm_image(container: Mapping[str, Any]) -> str:
    image = container["image"]
    checksum = container.get("checksum") or ""
    parsed = _REFERENCE.fullmatch(image)
    name = parsed["name"] if parsed else image
    if checksum.startswith("sha256:"):
        return f"{name}@{checksum}"
    if container.get("tag"):
        return f"{name}:{container['tag']}"
    return image if (parsed and (parsed["tag"] or parsed["digest"])) else f"{image}:latest"


def parse_workflow(body: Mapping[str, Any]) -> Workflow:
    """Check a WorkFlow object (as the API returns it) and build the model.

    Raises InvalidWorkflow whose problems each name the offending field.
    """
    if not isinstance(body, Mapping):
        raise InvalidWorkflow(["(document): must be a WorkFlow object"])
    problems: list[str] = []
    meta = body.get("metadata")
    if not isinstance(meta, Mapping):
        raise InvalidWorkflow(["metadata: required"])
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        problems.append("metadata.name: required")
    elif not DNS_LABEL.fullmatch(name) or len(name) > MAX_NAME:
        longest = name + max(CHILD_SUFFIXES, key=len)
        problems.append(
            f"metadata.name: {_show(name)} must be lowercase letters, digits and '-' and at most "
            f"{MAX_NAME} characters, because child names such as '<name>-configure-job' must fit "
            f"{MAX_CHILD_NAME} ({len(longest)} here)"
        )
    namespace = meta.get("namespace")
    if namespace is not None and (
        not isinstance(namespace, str) or not DNS_LABEL.fullmatch(namespace) or len(namespace) > MAX_LABEL_VALUE
    ):
        problems.append("metadata.namespace: must be a namespace name (lowercase letters, digits and '-')")
    for field in ("uid", "creationTimestamp"):
        if meta.get(field) is not None and not isinstance(meta.get(field), str):
            problems.append(f"metadata.{field}: must be a string")
    labels = meta.get("labels") or {}
    job_id = labels.get("workflow") if isinstance(labels, Mapping) else None
    if job_id is not None and (
        not isinstance(job_id, str) or len(job_id) > MAX_LABEL_VALUE or not LABEL_VALUE.fullmatch(job_id)
    ):
        problems.append("metadata.labels.workflow: must be a label value (letters, digits, '-', '_', '.', at most 63)")

    spec_raw = body.get("spec")
    if not isinstance(spec_raw, Mapping):
        problems.append("spec: required, an object")
        raise InvalidWorkflow(problems)
    shape_problems = check_json_document(spec_raw, "spec", depth=2)
    if shape_problems:
        raise InvalidWorkflow(problems + shape_problems)
    try:
        spec = Spec.model_validate(spec_raw)
    except pydantic.ValidationError as exc:
        raise InvalidWorkflow(problems + _problems(exc, "spec")) from None

    stage, shape, stage_problems = _parse_stage(spec.metadata)
    problems += stage_problems
    if problems:
        raise InvalidWorkflow(problems)
    assert stage is not None and isinstance(name, str)
    return Workflow(
        name=name,
        namespace=meta.get("namespace"),
        uid=meta.get("uid"),
        job_id=job_id or name,
        shape=shape,
        stage=stage,
        secret=spec.secret,
        stop_requested=bool(spec.stopRequested),
        owner=spec.owner,
        agreement_id=spec.agreementId,
        creation_timestamp=meta.get("creationTimestamp"),
    )


def _parse_stage(document: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str, list[str]]:
    if "stages" in document:
        return _parse_service_shape(document)
    if "service" in document:
        return _parse_ddo_shape(document)
    return (
        None,
        "",
        [
            "spec.metadata.stages: required (or, in the 2019 shape, "
            "spec.metadata.service[type=Metadata].attributes.workflow.stages)"
        ],
    )


def _parse_service_shape(document: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str, list[str]]:
    base = "spec.metadata.stages"
    problem = _one_stage(document.get("stages"), base)
    if problem:
        return None, "service", [problem]
    try:
        stage = Stage.model_validate(document["stages"][0])
    except pydantic.ValidationError as exc:
        return None, "service", _problems(exc, f"{base}[0]")
    problems = _check_container(stage.algorithm.container, f"{base}[0].algorithm.container")
    problems += _check_inputs([i.id for i in stage.input], f"{base}[0].input")
    return stage.model_dump(mode="json", exclude_none=True), "service", problems


def _parse_ddo_shape(document: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str, list[str]]:
    services = document.get("service")
    if not isinstance(services, list):
        return None, "ddo-2019", ["spec.metadata.service: must be a list"]
    found = [i for i, s in enumerate(services) if isinstance(s, Mapping) and s.get("type") == "Metadata"]
    if not found:
        return None, "ddo-2019", ["spec.metadata.service: no entry with type Metadata"]
    index = found[0]
    base = f"spec.metadata.service[{index}].attributes.workflow.stages"
    attributes = services[index].get("attributes")
    if attributes is not None and not isinstance(attributes, Mapping):
        return None, "ddo-2019", [f"spec.metadata.service[{index}].attributes: must be an object"]
    workflow = (attributes or {}).get("workflow")
    if workflow is not None and not isinstance(workflow, Mapping):
        return None, "ddo-2019", [f"spec.metadata.service[{index}].attributes.workflow: must be an object"]
    stages = workflow.get("stages") if isinstance(workflow, Mapping) else None
    problem = _one_stage(stages, base)
    if problem:
        return None, "ddo-2019", [problem]
    assert stages is not None
    try:
        legacy = LegacyStage.model_validate(stages[0])
    except pydantic.ValidationError as exc:
        return None, "ddo-2019", _problems(exc, f"{base}[0]")
    problems = _check_container(legacy.requirements.container, f"{base}[0].requirements.container")
    problems += _check_inputs([i.id for i in legacy.input], f"{base}[0].input")
    dumped = legacy.model_dump(mode="json", exclude_none=True)
    stage: dict[str, Any] = {
        "index": dumped.get("index", 0),
        "input": dumped["input"],
        "algorithm": {"id": dumped["transformation"]["id"], "container": dumped["requirements"]["container"]},
        "compute": {"Instances": 1},
        "output": dumped["output"],
    }
    if "stageType" in dumped:
        stage["stageType"] = dumped["stageType"]
    return stage, "ddo-2019", problems


def _one_stage(stages: Any, base: str) -> str | None:
    if not isinstance(stages, list) or not stages:
        return f"{base}: required, a list with one stage"
    if len(stages) > 1:
        return f"{base}: has {len(stages)} stages; this operator runs exactly one stage per Workflow"
    return None


def _check_container(container: Container, path: str) -> list[str]:
    """The parts may each be valid while the image they compose is not (a tag on an image that has one)."""
    parsed = _REFERENCE.fullmatch(container.image)
    if container.tag and parsed and (parsed["tag"] or parsed["digest"]):
        return [f"{path}.tag: the image {_show(container.image)} already has a tag or digest"]
    return []


def _check_inputs(dids: list[str], path: str) -> list[str]:
    seen: set[str] = set()
    for i, did in enumerate(dids):
        if did in seen:
            return [f"{path}[{i}].id: {_show(did)} appears twice; each input DID gets its own folder"]
        seen.add(did)
    return []


_MESSAGES = {
    "missing": "required",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
}


def _problems(exc: pydantic.ValidationError, base: str) -> list[str]:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        path = base + "".join(path_part(part) for part in error["loc"])
        message = _MESSAGES.get(error["type"]) or str(error["msg"]).removeprefix("Value error, ")
        if error["type"] in ("string_too_long", "too_long"):
            message = f"must be at most {error['ctx']['max_length']} characters"
        problems.append(f"{path}: {message}")
    return problems
