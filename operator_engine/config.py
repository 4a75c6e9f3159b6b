"""The operator's configuration: every environment variable of docs/contract.md §3.

One table (`VARIABLES`) says, for each variable, its default, how its text is
parsed and what is allowed. `load()` reads them all at once and reports every
bad value together, each naming the variable, the value and what is allowed,
so an admin fixes the ConfigMap in one go instead of one crash at a time.
Secret values (the private key, cloud credentials) are never echoed in an
error message.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from operator_engine import __version__
from operator_engine.facts import DNS_LABEL, DNS_SUBDOMAIN, LABEL_VALUE, MAX_DNS_SUBDOMAIN, MAX_LABEL_VALUE

PACKAGED_TEMPLATES_DIR = Path(__file__).parent / "templates"
DEFAULT_POD_IMAGE = f"oceanprotocol/operator-engine:{__version__}"

_GO_DURATION = re.compile(r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+)$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_PRIVATE_KEY = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")


class ConfigError(Exception):
    """One or more environment variables are invalid. `problems` lists them all."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration: " + "; ".join(problems))


# --- parsers: each takes the raw text and returns the value or raises ValueError
# with a message that says what is allowed.


def _integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        allowed = f"an integer >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"must be {allowed}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise ValueError(f"must be {allowed}")
        return value

    return parse


def _number(minimum: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"must be a number >= {minimum:g}") from None
        if not value >= minimum or value == float("inf"):  # also rejects NaN
            raise ValueError(f"must be a number >= {minimum:g}")
        return value

    return parse


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip()
        if value not in choices:
            raise ValueError("must be one of " + ", ".join(choices))
        return value

    return parse


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ValueError("must be one of 1, true, yes, on, 0, false, no, off (or empty)")


def _text(text: str) -> str:
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    return text


def _http_endpoint(text: str) -> str:
    from operator_engine.health import parse_endpoint

    parse_endpoint(text.strip())
    return text.strip()


def _single_line(text: str) -> str:
    if any(ch in text for ch in "\r\n\x00"):
        raise ValueError("must be a single line")
    return text.strip()


def _http_url(text: str) -> str:
    value = text.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in value):
        raise ValueError("must be an http:// or https:// URL")
    return value


def _host_or_url(text: str) -> str:
    """IPFS endpoints: the original operator-engine took both `host:5001` and `http://host:5001`."""
    value = text.strip()
    if not value or any(c.isspace() for c in value):
        raise ValueError("must be host:port or an http(s):// URL, without spaces")
    if "://" in value:
        return _http_url(value)
    return value


def _k8s_name(text: str) -> str:
    value = text.strip()
    if len(value) > MAX_DNS_SUBDOMAIN or not DNS_SUBDOMAIN.fullmatch(value):
        raise ValueError("must be a Kubernetes object name (lowercase letters, digits, '-' and '.', at most 253)")
    return value


def _namespace(text: str) -> str:
    value = text.strip()
    if len(value) > MAX_LABEL_VALUE or not DNS_LABEL.fullmatch(value):
        raise ValueError("must be a Kubernetes namespace name (lowercase letters, digits and '-', at most 63)")
    return value


def _label_value(text: str) -> str:
    value = text.strip()
    if len(value) > MAX_LABEL_VALUE or not value or not LABEL_VALUE.fullmatch(value):
        raise ValueError("must be a Kubernetes label value (letters, digits, '-', '_' and '.', at most 63)")
    return value


def _image(text: str) -> str:
    from operator_engine.model import check_image_reference  # the one definition of a valid image

    return check_image_reference(text.strip())


def _quantity(text: str) -> str:
    value = text.strip()
    if not _QUANTITY.match(value) or not any(c in "123456789" for c in value):  # positive
        raise ValueError("must be a positive Kubernetes quantity such as 512Mi, 1Gi or 2G")
    return value


def _go_duration(text: str) -> str:
    value = text.strip()
    if not _GO_DURATION.match(value):
        raise ValueError("must be 0 or a Go duration such as 12h, 30m or 1h30m")
    return value


def _private_key(text: str) -> str:
    value = text.strip()
    if not _PRIVATE_KEY.match(value):
        raise ValueError("must be 64 hexadecimal digits, optionally prefixed with 0x (value not shown)")
    return value if value.startswith("0x") else "0x" + value


def _allow_list(text: str) -> str:
    from operator_engine.pods.addresses import parse_allow_list  # the one definition, shared with the pod

    parsed = parse_allow_list(text)
    return ",".join([str(n) for n in parsed.networks] + list(parsed.hosts))


def _existing_dir(text: str) -> str:
    value = text.strip()
    if not Path(value).is_dir():
        raise ValueError("must be an existing directory")
    return value


def _existing_file(text: str) -> str:
    value = text.strip()
    if not Path(value).is_file():
        raise ValueError("must be an existing file")
    return value


def _log_config_file(text: str) -> str:
    """An existing YAML file holding a logging.config.dictConfig mapping (version 1); applied at start."""
    import yaml

    value = _existing_file(text)
    try:
        settings = yaml.safe_load(Path(value).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raise ValueError("must be a readable YAML file") from None
    if not isinstance(settings, dict) or settings.get("version") != 1:
        raise ValueError("must hold a logging.config.dictConfig mapping with version: 1")
    return value


@dataclasses.dataclass(frozen=True)
class Variable:
    name: str
    parse: Callable[[str], Any]
    default: Any
    description: str
    secret: bool = False


VARIABLES: tuple[Variable, ...] = (
    # --- the compute environment (what operator-service advertises)
    Variable("nCPU", _integer(1), 1, "CPUs for each algorithm pod (requests = limits)"),
    Variable("cpuType", _single_line, "", "Type of CPU (informational)"),
    Variable("nGPU", _integer(0), 0, "GPUs (nvidia.com/gpu) for each algorithm pod"),
    Variable("gpuRam", _single_line, "", "RAM per GPU (informational)"),
    Variable("gpuType", _single_line, "", "Type of GPU (informational)"),
    Variable("ramGB", _integer(1), 1, "Memory in GiB for each algorithm pod (requests = limits)"),
    Variable("diskGB", _integer(1), 1, "Size in GiB of each workflow volume (data and admin logs)"),
    Variable("priceMinute", _number(0), 0.0, "Price per minute (informational)"),
    Variable("description", _text, "", "Description of this environment"),
    Variable("maxJobs", _integer(1), 5, "Maximum number of workflows running at once; the rest wait Queued"),
    Variable("maxJobDuration", _integer(1), 3600, "Maximum algorithm run time in seconds"),
    Variable("STORAGE_EXPIRY", _integer(0), 0, "Hours the published results are kept; 0 means no expiry"),
    # --- the operator
    Variable("OPERATOR_PRIVATE_KEY", _private_key, None, "Key that signs notifications (hex)", secret=True),
    Variable("OPERATOR_NAMESPACE", _namespace, "ocean-compute", "Namespace the operator watches and runs pods in"),
    Variable(
        "IPFS_TYPE", _choice("CLIENT", "CLUSTER"), "CLIENT", "IPFS API: CLIENT (ipfs node) or CLUSTER (ipfs-cluster)"
    ),
    Variable("IPFS_OUTPUT", _host_or_url, None, "IPFS API for outputs and the algorithm log"),
    Variable("IPFS_ADMINLOGS", _host_or_url, None, "IPFS API for the admin logs (configure and publish)"),
    Variable("IPFS_OUTPUT_PREFIX", _single_line, None, "Prefix of returned output URLs (default ipfs://)"),
    Variable("IPFS_ADMINLOGS_PREFIX", _single_line, None, "Prefix of returned admin-log URLs (default ipfs://)"),
    Variable("IPFS_EXPIRY_TIME", _go_duration, None, "Pin expiry for ipfs-cluster, Go duration; 0 = unlimited"),
    Variable("IPFS_API_KEY", _single_line, None, "IPFS API key (publish pod only)", secret=True),
    Variable("IPFS_API_CLIENT", _single_line, None, "IPFS API client id (publish pod only)", secret=True),
    Variable("AWS_ACCESS_KEY_ID", _single_line, None, "S3 access key (publish pod only)", secret=True),
    Variable("AWS_SECRET_ACCESS_KEY", _single_line, None, "S3 secret key (publish pod only)", secret=True),
    Variable("AWS_REGION", _single_line, None, "S3 region"),
    Variable("AWS_BUCKET_OUTPUT", _single_line, None, "S3 bucket for outputs and the algorithm log"),
    Variable("AWS_BUCKET_ADMINLOGS", _single_line, None, "S3 bucket for the admin logs"),
    Variable("STORAGE_CLASS", _k8s_name, None, "storageClassName of the workflow volumes (cluster default if unset)"),
    Variable("NOTIFY_START_URL", _http_url, None, "URL that receives the start notification (POST JSON)"),
    Variable("NOTIFY_STOP_URL", _http_url, None, "URL that receives the stop notification (POST JSON)"),
    Variable("SERVICE_ACCOUNT", _k8s_name, "default", "Service account of the workflow pods"),
    Variable("NODE_SELECTOR", _label_value, None, "Pods get the required node affinity scope In [value]"),
    Variable(
        "PULL_SECRET",
        _k8s_name,
        None,
        "imagePullSecrets name for the provider's own pods (configure, filter, publish), never the algorithm's",
    ),
    Variable(
        "ALGORITHM_PULL_SECRET",
        _k8s_name,
        None,
        "imagePullSecrets name for the algorithm pods (the consumer's image); unset: none",
    ),
    Variable("PULL_POLICY", _choice("Always", "IfNotPresent", "Never"), None, "imagePullPolicy for every container"),
    Variable(
        "EPHEMERAL_STORAGE",
        _quantity,
        "1Gi",
        "ephemeral-storage request and limit of every workflow pod, also the size limit of its /tmp",
    ),
    Variable("FILTERING_CONTAINER", _image, None, "Image of the optional filter stage, run after the algorithm"),
    Variable("POD_CONFIGURATION_CONTAINER", _image, DEFAULT_POD_IMAGE, "Image of the configure pod"),
    Variable("POD_PUBLISH_CONTAINER", _image, DEFAULT_POD_IMAGE, "Image of the publish pod"),
    Variable("LOG_CFG", _log_config_file, None, "A logging configuration file (YAML, logging.config dictConfig)"),
    Variable("LOG_LEVEL", _choice("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), "INFO", "Log level"),
    Variable(
        "LOG_FORMAT",
        _choice("json", "console"),
        None,
        "Log lines as JSON objects or console text (unset: console on a terminal, else json)",
    ),
    Variable("DEBUG_NO_CLEANUP", _boolean, False, "Keep Jobs, volumes, ConfigMap and Secrets after the end"),
    Variable("TEMPLATES_DIR", _existing_dir, str(PACKAGED_TEMPLATES_DIR), "Folder of the manifest templates"),
    Variable("LOCAL_STORAGE_DIR", _single_line, None, "Publish into this folder (embedded cluster only)"),
    Variable(
        "CONFIGURE_ALLOWED_NETWORKS",
        _allow_list,
        None,
        "Networks (CIDRs) and host names the configure pod may fetch from although they are "
        "loopback, link-local, private, CGNAT or reserved (refused by default)",
    ),
    Variable(
        "CONFIGURE_TOTAL_TIMEOUT",
        _integer(0),
        None,
        "Seconds one download of the configure pod may take in all (unset: 1800; 0: no limit)",
    ),
    Variable(
        "CONFIGURE_OVERALL_TIMEOUT",
        _integer(0),
        None,
        "Seconds all downloads of a workflow may take together (unset: 3000; 0: no limit)",
    ),
    Variable(
        "METRICS_PORT",
        _integer(0, 65535),
        9100,
        "Port of the Prometheus /metrics endpoint on every interface; 0 turns the metrics off",
    ),
    Variable(
        "OPERATOR_BACKSTOP_SECONDS", _integer(1), 30, "Interval of the timer that catches missed events and deadlines"
    ),
    Variable(
        "LEADER_ELECTION",
        _boolean,
        False,
        "Act only while holding the Lease operator-engine-leader (for more than one replica)",
    ),
    Variable(
        "READINESS_ENDPOINT",
        _http_endpoint,
        None,
        "Where to answer readiness, http://HOST:PORT/PATH: 200 while this replica acts, else 503",
    ),
)

VARIABLE_NAMES = frozenset(v.name for v in VARIABLES)


@dataclasses.dataclass(frozen=True)
class Config:
    """The parsed configuration. Attribute names are the variable names."""

    values: Mapping[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:  # never show secret values, even in a debugger or a traceback
        shown = {v.name: ("***" if v.secret and self.values[v.name] else self.values[v.name]) for v in VARIABLES}
        return f"Config({shown})"

    @property
    def upload_target(self) -> str | None:
        """IPFS when its variables are set, else S3, else a local folder (embedded cluster)."""
        if self.IPFS_OUTPUT:
            return "ipfs"
        if self.AWS_BUCKET_OUTPUT:
            return "s3"
        if self.LOCAL_STORAGE_DIR:
            return "local"
        return None

    @property
    def consumer_address(self) -> str | None:
        if not self.OPERATOR_PRIVATE_KEY:
            return None
        from eth_account import Account

        return str(Account.from_key(self.OPERATOR_PRIVATE_KEY).address)

    def environment(self, current_jobs: int = 0) -> dict[str, Any]:
        """The compute environment entry operator-service serves (docs/contract.md §5, check-config)."""
        return {
            "id": self.OPERATOR_NAMESPACE,
            "cpuNumber": self.nCPU,
            "cpuType": self.cpuType,
            "gpuNumber": self.nGPU,
            "gpuType": self.gpuType,
            "ramGB": self.ramGB,
            "diskGB": self.diskGB,
            "priceMin": self.priceMinute,
            "desc": self.description,
            "currentJobs": current_jobs,
            "maxJobs": self.maxJobs,
            "consumerAddress": self.consumer_address,
            "storageExpiry": self.STORAGE_EXPIRY,
            "maxJobDuration": self.maxJobDuration,
        }


def load(environ: Mapping[str, str] | None = None) -> Config:
    """Parse every variable; raise ConfigError listing all bad ones."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    problems: list[str] = []
    for variable in VARIABLES:
        raw = environ.get(variable.name)
        if raw is None or raw.strip() == "":  # an empty ConfigMap entry means "not set"
            values[variable.name] = variable.default
            continue
        try:
            values[variable.name] = variable.parse(raw)
        except ValueError as exc:
            shown = "" if variable.secret else f"={raw!r}"
            if len(shown) > 80:
                shown = shown[:77] + "...'"
            problems.append(f"{variable.name}{shown}: {exc}")
    if problems:
        raise ConfigError(problems)
    config = Config(values)
    if config.OPERATOR_PRIVATE_KEY:
        try:
            config.consumer_address  # noqa: B018 - proves the key is a usable secp256k1 key
        except Exception:  # eth-account raises several types for out-of-range keys
            raise ConfigError(["OPERATOR_PRIVATE_KEY: not a valid secp256k1 private key (value not shown)"]) from None
    return config


def load_checked(environ: Mapping[str, str] | None = None) -> Config:
    """`load()` plus the templates in TEMPLATES_DIR: everything checked before the operator starts."""
    config = load(environ)
    from operator_engine.render import check_templates  # render builds on this module

    check_templates(Path(config.TEMPLATES_DIR))
    return config


def environment_json(config: Config, current_jobs: int = 0) -> str:
    return json.dumps(config.environment(current_jobs), indent=2)
