"""Rendering: a checked Workflow plus the configuration become manifests.

The templates (Jinja2 YAML, `TEMPLATES_DIR`) hold the structure; every value
reaches them through the `j` filter, which writes it as a JSON scalar, list or
mapping. JSON is valid YAML flow syntax, so a value is always exactly one YAML
node: quotes, newlines, `{{`, `: ` or a document marker inside it stay text
and cannot add, remove or change a key. `check_templates` refuses a template
that prints anything without `| j`, so a customized folder keeps that promise.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import jinja2
import yaml

from operator_engine.config import Config, ConfigError, load
from operator_engine.facts import LABEL_APP, LABEL_COMPONENT, LABEL_WORKFLOW, MANAGED, STAGES, child_names
from operator_engine.limits import SYSTEM_POD_RESOURCES, Limits, limits_for
from operator_engine.model import Workflow

DATA = "/data"
ALGORITHM_PATH = f"{DATA}/transformations/algorithm"

# One template per kind of child, plus the shared Job skeleton.
TEMPLATE_FILES = (
    "configmap.yaml.j2",
    "pvc.yaml.j2",
    "secret.yaml.j2",
    "_job.yaml.j2",
    "job-configure.yaml.j2",
    "job-algorithm.yaml.j2",
    "job-filter.yaml.j2",
    "job-publish.yaml.j2",
)

# The ConfigMap W holds two copies of the stage document (the contract keeps
# `workflow.json`/`workflow.yaml`, the whole document, for operator-service and
# the configure pod). Only configure fetches, so only configure gets the whole
# one; every other pod gets the redacted one (`redacted_document`) at the same
# paths, /workflow.json and /workflow.yaml. See docs/SECURITY.md, item 1.
FULL_DOCUMENT_KEYS = {"workflow.json": "workflow.json", "workflow.yaml": "workflow.yaml"}
REDACTED_DOCUMENT_KEYS = {"workflow.json": "redacted-workflow.json", "workflow.yaml": "redacted-workflow.yaml"}
FULL_DOCUMENT_COMPONENTS = ("configure",)

# The provider's own images may be pulled with PULL_SECRET; the algorithm's
# image is the consumer's choice, so it gets ALGORITHM_PULL_SECRET or nothing.
CONSUMER_IMAGE_COMPONENTS = ("algorithm",)

# The algorithm container runs its entrypoint ($1) through this fixed script so
# that stdout and stderr also land in /data/logs/algorithm.log while the exit
# code stays the entrypoint's. The entrypoint is an argument, never spliced
# into the script.
ALGORITHM_WRAPPER = (
    '{ sh -c "$1"; echo "$?" > /tmp/.algorithm-exit-code; } 2>&1 | tee -a /data/logs/algorithm.log; '
    'exit "$(cat /tmp/.algorithm-exit-code)"'
)

# Publish-pod settings that are not secret (the secret ones go through a Secret).
PUBLISH_SETTINGS = (
    "STORAGE_EXPIRY",
    "IPFS_TYPE",
    "IPFS_OUTPUT",
    "IPFS_ADMINLOGS",
    "IPFS_OUTPUT_PREFIX",
    "IPFS_ADMINLOGS_PREFIX",
    "IPFS_EXPIRY_TIME",
    "AWS_REGION",
    "AWS_BUCKET_OUTPUT",
    "AWS_BUCKET_ADMINLOGS",
    "LOCAL_STORAGE_DIR",
)
#: The operator settings the configure pod reads (where it may fetch from, and for how long).
CONFIGURE_SETTINGS = ("CONFIGURE_ALLOWED_NETWORKS", "CONFIGURE_TOTAL_TIMEOUT", "CONFIGURE_OVERALL_TIMEOUT")
PUBLISH_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "IPFS_API_KEY", "IPFS_API_CLIENT")

_ESCAPED_PAIR = re.compile(r"(?<!\\)((?:\\\\)*)\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})")
_EXPRESSION = re.compile(r"{{(.*?)}}", re.DOTALL)
_FILTERED = re.compile(r"\|\s*j\s*$")


def yaml_safe_json(value: Any) -> str:
    """`value` as JSON-style flow YAML that PyYAML and libyaml read back as exactly `value`.

    ASCII-only scalars keep every character YAML treats specially (NEL, line
    and paragraph separators, DEL) escaped. JSON writes characters outside the
    BMP as surrogate pairs, which YAML would read as two broken characters, so
    they are rewritten as YAML's own 8-digit `\\U` escape. Mapping keys are
    written as explicit keys (`? "key": value`): YAML 1.1 refuses a plain
    "simple key" longer than 1024 characters.
    """
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises UndefinedError, naming the missing value
    if isinstance(value, dict):
        return "{" + ", ".join(f"? {_scalar(str(k))}: {yaml_safe_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_safe_json(v) for v in value) + "]"
    return _scalar(value)


def _scalar(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True, allow_nan=False)

    def join_pair(match: re.Match[str]) -> str:
        high, low = int(match[2], 16), int(match[3], 16)
        return f"{match[1]}\\U{0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00):08x}"

    return _ESCAPED_PAIR.sub(join_pair, text).replace("\x7f", "\\u007f")


def redacted_document(workflow: Workflow) -> dict[str, Any]:
    """The stage document without anything that says where the data or the algorithm come from.

    The algorithm, filter and publish pods read this one. It is built from an
    allow-list (DIDs, the container, the compute limits), never by deleting
    known URL fields, so an unknown field that carries a URL, a pre-signed
    token or credentials (in `url`, `remote`, `ddo`, `output`, or anything
    operator-service adds) stays with the configure pod.
    """
    stage = workflow.stage
    algorithm = stage["algorithm"]
    container = {
        key: algorithm["container"][key]
        for key in ("image", "tag", "entrypoint", "checksum")
        if algorithm["container"].get(key) is not None
    }
    compute = {
        key: stage.get("compute", {})[key]
        for key in ("Instances", "maxtime")
        if isinstance(stage.get("compute", {}).get(key), int)
    }
    redacted_stage: dict[str, Any] = {}
    if isinstance(stage.get("index"), int):
        redacted_stage["index"] = stage["index"]
    redacted_stage["input"] = [
        {**({"index": item["index"]} if isinstance(item.get("index"), int) else {}), "id": item["id"]}
        for item in stage.get("input", [])
    ]
    redacted_stage["algorithm"] = {**({"id": algorithm["id"]} if algorithm.get("id") else {}), "container": container}
    redacted_stage["compute"] = compute
    return {"jobId": workflow.job_id, "stages": [redacted_stage]}


def check_templates(directory: Path) -> None:
    """Stop early, naming every missing or unsafe template in TEMPLATES_DIR."""
    problems = []
    missing = [name for name in TEMPLATE_FILES if not (directory / name).is_file()]
    if missing:
        problems.append(f"TEMPLATES_DIR={str(directory)!r}: missing template(s) {', '.join(missing)}")
    for name in TEMPLATE_FILES:
        path = directory / name
        if not path.is_file():
            continue
        for expression in _EXPRESSION.findall(path.read_text(encoding="utf-8")):
            if not _FILTERED.search(expression.strip().rstrip("-").strip()):
                problems.append(
                    f"TEMPLATES_DIR={str(directory)!r}: {name} prints {{{{{expression}}}}} without the "
                    "'| j' filter; every printed value must go through it"
                )
    if problems:
        raise ConfigError(problems)
    problems = [f"TEMPLATES_DIR={str(directory)!r}: {problem}" for problem in _document_exposure(directory)]
    if problems:
        raise ConfigError(problems)


def load_checked_config(environ: Mapping[str, str] | None = None) -> Config:
    """`config.load()` plus the templates in TEMPLATES_DIR: everything checked before the operator starts.

    Here, not in operator_engine/config.py: checking the templates renders them,
    and rendering builds on the configuration, not the other way round.
    """
    config = load(environ)
    check_templates(Path(config.TEMPLATES_DIR))
    return config


# A Workflow rendered once at start with the templates in TEMPLATES_DIR, to see
# what each pod would be given (see `_document_exposure`).
_PROBE_WORKFLOW = {
    "apiVersion": "oceanprotocol.com/v1alpha",
    "kind": "WorkFlow",
    "metadata": {"name": "probe", "namespace": "probe"},
    "spec": {
        "secret": "probe",
        "metadata": {
            "stages": [
                {
                    "input": [{"id": "did:op:probe", "url": ["https://probe.invalid/data"]}],
                    "algorithm": {
                        "id": "did:op:probe",
                        "url": "https://probe.invalid/algorithm",
                        "container": {"image": "probe", "tag": "1"},
                    },
                }
            ]
        },
    },
}


def _document_exposure(directory: Path) -> list[str]:
    """Which templates give a pod other than configure the whole stage document (with its URLs).

    A folder of templates copied from an older release, or edited, could mount
    the ConfigMap's every key into the algorithm pod; that is refused at start,
    like an unfiltered value (docs/SECURITY.md, item 1).
    """
    from operator_engine.model import parse_workflow

    config = load({"TEMPLATES_DIR": str(directory), "FILTERING_CONTAINER": "probe/filter:1"})
    renderer = Renderer(config, _checked=True)
    try:
        children = renderer.render(parse_workflow(_PROBE_WORKFLOW))
    except jinja2.TemplateError as exc:
        where = f"{exc.name}:{exc.lineno}: " if isinstance(exc, jinja2.TemplateSyntaxError) else ""
        return [f"the templates do not render: {where}{exc.message or type(exc).__name__}"]
    problems = []
    for child in children:
        if child.kind != "Job" or child.step in FULL_DOCUMENT_COMPONENTS:
            continue
        pod = child.manifest.get("spec", {}).get("template", {}).get("spec", {})
        if _reads_full_document(pod, child_names("probe")["configmap"]):
            problems.append(
                f"job-{child.step}.yaml.j2 lets the {child.step} pod read the whole workflow document (input and "
                f"algorithm URLs); project only the keys {', '.join(REDACTED_DOCUMENT_KEYS.values())} of the "
                "workflow ConfigMap into it (volume items)"
            )
    return problems


def _reads_full_document(pod: dict[str, Any], configmap: str) -> bool:
    allowed = set(REDACTED_DOCUMENT_KEYS.values())
    sources = []
    for volume in pod.get("volumes") or []:
        sources.append(volume)
        sources += (volume.get("projected") or {}).get("sources") or []
    for source in sources:
        ref = source.get("configMap")
        if (
            ref
            and ref.get("name") == configmap
            and (not ref.get("items") or {item.get("key") for item in ref["items"]} - allowed)
        ):
            return True
    for container in (pod.get("initContainers") or []) + (pod.get("containers") or []):
        for env_from in container.get("envFrom") or []:
            if (env_from.get("configMapRef") or {}).get("name") == configmap:
                return True
        for env in container.get("env") or []:
            ref = (env.get("valueFrom") or {}).get("configMapKeyRef") or {}
            if ref.get("name") == configmap and ref.get("key") not in allowed:
                return True
    return False


@dataclasses.dataclass(frozen=True)
class Child:
    """One object the operator creates for a workflow."""

    kind: str
    name: str
    step: str  # "setup" (ConfigMap, PVCs, Secrets) or the Job's component
    manifest: dict[str, Any]


def job_components(config: Config) -> list[str]:
    """The stage Jobs, in the order they run."""
    return [stage for stage in STAGES if stage != "filter" or config.FILTERING_CONTAINER]


class Renderer:
    def __init__(self, config: Config, *, _checked: bool = False) -> None:
        self.config = config
        directory = Path(config.TEMPLATES_DIR)
        if not _checked:
            check_templates(directory)
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(directory),
            # The templates are checked once at start and read once: not a stat of each file at every render.
            auto_reload=False,
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        self.env.filters["j"] = yaml_safe_json

    def limits(self, workflow: Workflow) -> Limits:
        return limits_for(workflow, self.config)

    def render(
        self, workflow: Workflow, *, withhold_outputs: bool = False, steps: Collection[str] | None = None
    ) -> list[Child]:
        """Every child of `workflow`, in creation order; with `steps`, only the children of those steps.

        `withhold_outputs` tells the publish pod to upload the logs but not the
        outputs (the filter stage failed, so nobody vouched for them). `steps`
        ("setup" and Job components) is what the reconciler is about to create:
        a step creates one or two of them, and rendering the rest (each a Jinja
        render and a YAML parse) would be spent for nothing.
        """
        names = child_names(workflow.name)
        limits = limits_for(workflow, self.config)
        namespace = workflow.namespace or self.config.OPERATOR_NAMESPACE
        base = {"names": names, "namespace": namespace, "labels": self._labels(workflow, None)}
        # The credentials decide the publish pod's environment, so they are read for any step.
        credentials = {
            key: secret.get_secret_value()
            for key in PUBLISH_CREDENTIALS
            if (secret := getattr(self.config, key)) is not None
        }
        children = self._setup(workflow, base, limits, credentials) if steps is None or "setup" in steps else []
        for component in job_components(self.config):
            if steps is None or component in steps:
                children.append(
                    self._job(
                        workflow,
                        component,
                        base,
                        limits,
                        has_credentials=bool(credentials),
                        withhold_outputs=withhold_outputs,
                    )
                )
        if workflow.uid:
            for child in children:
                child.manifest["metadata"]["ownerReferences"] = [owner_reference(workflow)]
        return children

    def _setup(
        self, workflow: Workflow, base: dict[str, Any], limits: Limits, credentials: dict[str, str]
    ) -> list[Child]:
        """The children every stage needs, made before the configure Job: ConfigMap, volumes, Secrets."""
        names = base["names"]
        document, redacted = workflow.document(), redacted_document(workflow)
        data = {}
        for keys, doc in ((FULL_DOCUMENT_KEYS, document), (REDACTED_DOCUMENT_KEYS, redacted)):
            data[keys["workflow.json"]] = json.dumps(doc, indent=2, ensure_ascii=False)
            data[keys["workflow.yaml"]] = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
        children = [self._child("configmap.yaml.j2", "setup", base, data=data)]
        for volume in ("data", "adminlogs"):
            children.append(
                self._child(
                    "pvc.yaml.j2",
                    "setup",
                    base,
                    volume=volume,
                    storage_class=self.config.STORAGE_CLASS,
                    disk=limits.disk,
                )
            )
        if workflow.secret is not None:
            children.append(
                self._child(
                    "secret.yaml.j2",
                    "setup",
                    base,
                    secret_name=names["algorithm_secret"],
                    secret_data={"secret": workflow.secret},
                )
            )
        if credentials:  # the one place the credentials leave their SecretStr: the publish pod's Secret
            children.append(
                self._child(
                    "secret.yaml.j2", "setup", base, secret_name=names["publish_secret"], secret_data=credentials
                )
            )
        return children

    def _labels(self, workflow: Workflow, component: str | None) -> dict[str, str]:
        labels = {LABEL_APP: workflow.name, LABEL_WORKFLOW: workflow.job_id, **MANAGED}
        if component:
            labels[LABEL_COMPONENT] = component
        return labels

    def _child(self, template: str, step: str, base: dict[str, Any], **values: Any) -> Child:
        text = self.env.get_template(template).render({**base, **values})
        try:
            manifest = yaml.load(text, Loader=_Loader)
        except yaml.YAMLError as exc:  # only a broken custom template can get here
            raise ConfigError([f"TEMPLATES_DIR: {template} does not render to valid YAML: {exc}"]) from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("metadata"), dict):
            raise ConfigError([f"TEMPLATES_DIR: {template} must render one Kubernetes object"])
        return Child(
            kind=str(manifest.get("kind")), name=str(manifest["metadata"].get("name")), step=step, manifest=manifest
        )

    def _job(
        self,
        workflow: Workflow,
        component: str,
        base: dict[str, Any],
        limits: Limits,
        has_credentials: bool,
        withhold_outputs: bool,
    ) -> Child:
        config = self.config
        names = base["names"]
        if component == "algorithm":
            entrypoint = (workflow.container.get("entrypoint") or "$ALGO").replace("$ALGO", ALGORITHM_PATH)
            image, command = workflow.image, ["/bin/sh", "-c", ALGORITHM_WRAPPER, "algorithm", entrypoint]
            env = self._algorithm_env(workflow, names, with_secret=True)
            resources, deadline = limits.algorithm_resources, limits.algorithm_deadline
        elif component == "filter":
            if config.FILTERING_CONTAINER is None:  # job_components() has a filter only when it is set
                raise ValueError("the filter stage needs FILTERING_CONTAINER")
            image, command = config.FILTERING_CONTAINER, None
            env = self._algorithm_env(workflow, names, with_secret=False)
            resources, deadline = SYSTEM_POD_RESOURCES, limits.algorithm_deadline
        else:
            image = config.POD_CONFIGURATION_CONTAINER if component == "configure" else config.POD_PUBLISH_CONTAINER
            command = ["operator-engine", component]
            env = self._system_env(workflow, component, names, has_credentials)
            if component == "publish" and withhold_outputs:
                env.append({"name": "PUBLISH_OUTPUTS", "value": "false"})
            resources, deadline = SYSTEM_POD_RESOURCES, limits.stage_deadline
        document_keys = FULL_DOCUMENT_KEYS if component in FULL_DOCUMENT_COMPONENTS else REDACTED_DOCUMENT_KEYS
        pull_secret, pull_policy = config.PULL_SECRET, config.PULL_POLICY
        if component in CONSUMER_IMAGE_COMPONENTS:
            # Always: the kubelet then checks the registry for every pod, so a consumer cannot run a
            # private image that the provider's own pods left on the node without being allowed to pull it.
            pull_secret, pull_policy = config.ALGORITHM_PULL_SECRET, config.PULL_POLICY or "Always"
        child = self._child(
            f"job-{component}.yaml.j2",
            component,
            base,
            labels=self._labels(workflow, component),
            job_name=names[component],
            component=component,
            image=image,
            command=command,
            env=env,
            resources=with_ephemeral_storage(resources, config),
            deadline=deadline,
            admin_logs=component in ("configure", "publish"),
            document_items=[{"key": key, "path": path} for path, key in document_keys.items()],
            tmp_size=config.EPHEMERAL_STORAGE,
            service_account=config.SERVICE_ACCOUNT,
            node_selector=config.NODE_SELECTOR,
            pull_secret=pull_secret,
            pull_policy=pull_policy,
        )
        container = child.manifest["spec"]["template"]["spec"]["containers"][0]
        if container.get("command") is None:  # the filter image runs its own entrypoint
            container.pop("command")
        return child

    def _algorithm_env(self, workflow: Workflow, names: dict[str, str], with_secret: bool) -> list[dict[str, Any]]:
        dids = [did.removeprefix("did:op:") for did in workflow.input_dids]
        env: list[dict[str, Any]] = [
            {"name": "DIDS", "value": json.dumps(dids)},
            {"name": "TRANSFORMATION_DID", "value": workflow.algorithm_did or ""},
            {"name": "VOLUME", "value": DATA},
            {"name": "LOGS", "value": f"{DATA}/logs"},
            {"name": "INPUTS", "value": f"{DATA}/inputs"},
            {"name": "OUTPUTS", "value": f"{DATA}/outputs"},
        ]
        if with_secret and workflow.secret is not None:
            env.append(
                {"name": "secret", "valueFrom": {"secretKeyRef": {"name": names["algorithm_secret"], "key": "secret"}}}
            )
        return env

    def _system_env(
        self, workflow: Workflow, component: str, names: dict[str, str], has_credentials: bool
    ) -> list[dict[str, Any]]:
        env: list[dict[str, Any]] = [
            {"name": "VOLUME", "value": DATA},
            {"name": "ADMINLOGS", "value": f"{DATA}/adminlogs"},
            {"name": "WORKFLOW", "value": "/workflow.json"},
            {"name": "JOB_ID", "value": workflow.job_id},
            {"name": "LOG_LEVEL", "value": self.config.LOG_LEVEL},
        ]
        if component == "configure":
            env.append({"name": "diskGB", "value": str(self.config.diskGB)})
            for key in CONFIGURE_SETTINGS:
                if getattr(self.config, key) is not None:
                    env.append({"name": key, "value": str(getattr(self.config, key))})
            return env
        for key in PUBLISH_SETTINGS:
            value = getattr(self.config, key)
            if value is not None and value != "":
                env.append({"name": key, "value": str(value)})
        if has_credentials:
            for key in PUBLISH_CREDENTIALS:
                if getattr(self.config, key):
                    env.append(
                        {"name": key, "valueFrom": {"secretKeyRef": {"name": names["publish_secret"], "key": key}}}
                    )
        return env


def with_ephemeral_storage(resources: dict[str, Any], config: Config) -> dict[str, Any]:
    """`resources` plus an ephemeral-storage request and limit (EPHEMERAL_STORAGE).

    The root filesystem is read-only, so what a pod writes outside its volumes
    (its /tmp emptyDir, its container log) is bounded by this: a pod cannot
    fill the node's disk and get its neighbours evicted.
    """
    quantity = {"ephemeral-storage": config.EPHEMERAL_STORAGE}
    return {part: {**resources.get(part, {}), **quantity} for part in ("requests", "limits")}


def owner_reference(workflow: Workflow) -> dict[str, Any]:
    """Children are garbage-collected with their Workflow and found through it."""
    return {
        "apiVersion": "oceanprotocol.com/v1alpha",
        "kind": "WorkFlow",
        "name": workflow.name,
        "uid": workflow.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# libyaml's emitter where PyYAML has it: the same data as the pure-Python emitter's (it escapes a few more
# characters, emoji among them), several times faster.
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _ReadableDumper(yaml.SafeDumper):
    """Multi-line strings (the workflow document, scripts) as literal blocks, for people reading `render`."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    if "\n" in value and all(c.isprintable() or c == "\n" for c in value):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_ReadableDumper.add_representer(str, _represent_str)


def to_yaml_stream(manifests: list[dict[str, Any]]) -> str:
    return "".join(
        "---\n" + yaml.dump(m, Dumper=_ReadableDumper, sort_keys=False, allow_unicode=True, width=120)
        for m in manifests
    )
