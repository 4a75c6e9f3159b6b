"""The operator's configuration: every environment variable of docs/contract.md §3.

One table, the fields of `Config` (a pydantic-settings class), says for each
variable its type, its default, how its text is parsed and what is allowed;
`VARIABLES` lists them for the documentation checks. `load()` reads them all
at once and reports every bad value together, each naming the variable, the
value and what is allowed, so an admin fixes the ConfigMap in one go instead
of one crash at a time. Secret values (the private key, cloud credentials)
are `SecretStr`: never echoed in an error message, a repr or a log line.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, ValidationError, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, InitSettingsSource, SettingsConfigDict

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


def _choice(literal: Any) -> Callable[[str], str]:
    """The parser of a variable whose type is a Literal of its allowed values."""
    choices = get_args(literal)

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


def _address(private_key: str) -> str:
    from eth_account import Account

    return str(Account.from_key(private_key).address)


def _usable_private_key(value: SecretStr | None) -> SecretStr | None:
    """64 hex digits are not always a secp256k1 key (zero, or not below the curve's order)."""
    if value is not None:
        try:
            _address(value.get_secret_value())
        except Exception:  # eth-account raises several types for out-of-range keys
            raise ValueError("not a valid secp256k1 private key (value not shown)") from None
    return value


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


# --- the table: one field per variable of docs/contract.md §3, in its order. Each field's type is
# what the operator uses; its parser (a BeforeValidator) turns the text of the variable into that
# type and says what is allowed when it cannot; its default applies when the variable is unset or
# blank; its description is the one line of the contract's table. Secrets are SecretStr: shown as
# '**********' in any repr, and never echoed in an error.

IpfsType = Literal["CLIENT", "CLUSTER"]
PullPolicy = Literal["Always", "IfNotPresent", "Never"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LogFormat = Literal["json", "console"]


class Config(BaseSettings):
    """The parsed configuration. Attribute names are the variable names."""

    # Case-sensitive names (nCPU is not NCPU); frozen, as the configuration of a running operator.
    # The parsers read text: a default is already a value of the field's type, so it is not re-parsed.
    model_config = SettingsConfigDict(case_sensitive=True, frozen=True, extra="ignore", validate_default=False)

    # --- the compute environment (what operator-service advertises)
    nCPU: Annotated[int, BeforeValidator(_integer(1))] = Field(
        1, description="CPUs for each algorithm pod (requests = limits)"
    )
    cpuType: Annotated[str, BeforeValidator(_single_line)] = Field("", description="Type of CPU (informational)")
    nGPU: Annotated[int, BeforeValidator(_integer(0))] = Field(
        0, description="GPUs (nvidia.com/gpu) for each algorithm pod"
    )
    gpuRam: Annotated[str, BeforeValidator(_single_line)] = Field("", description="RAM per GPU (informational)")
    gpuType: Annotated[str, BeforeValidator(_single_line)] = Field("", description="Type of GPU (informational)")
    ramGB: Annotated[int, BeforeValidator(_integer(1))] = Field(
        1, description="Memory in GiB for each algorithm pod (requests = limits)"
    )
    diskGB: Annotated[int, BeforeValidator(_integer(1))] = Field(
        1, description="Size in GiB of each workflow volume (data and admin logs)"
    )
    priceMinute: Annotated[float, BeforeValidator(_number(0))] = Field(
        0.0, description="Price per minute (informational)"
    )
    description: Annotated[str, BeforeValidator(_text)] = Field("", description="Description of this environment")
    maxJobs: Annotated[int, BeforeValidator(_integer(1))] = Field(
        5, description="Maximum number of workflows running at once; the rest wait Queued"
    )
    maxJobDuration: Annotated[int, BeforeValidator(_integer(1))] = Field(
        3600, description="Maximum algorithm run time in seconds"
    )
    STORAGE_EXPIRY: Annotated[int, BeforeValidator(_integer(0))] = Field(
        0, description="Hours the published results are kept; 0 means no expiry"
    )
    # --- the operator
    OPERATOR_PRIVATE_KEY: Annotated[
        SecretStr | None, BeforeValidator(_private_key), AfterValidator(_usable_private_key)
    ] = Field(None, description="Key that signs notifications (hex)")
    OPERATOR_NAMESPACE: Annotated[str, BeforeValidator(_namespace)] = Field(
        "ocean-compute", description="Namespace the operator watches and runs pods in"
    )
    IPFS_TYPE: Annotated[IpfsType, BeforeValidator(_choice(IpfsType))] = Field(
        "CLIENT", description="IPFS API: CLIENT (ipfs node) or CLUSTER (ipfs-cluster)"
    )
    IPFS_OUTPUT: Annotated[str | None, BeforeValidator(_host_or_url)] = Field(
        None, description="IPFS API for outputs and the algorithm log"
    )
    IPFS_ADMINLOGS: Annotated[str | None, BeforeValidator(_host_or_url)] = Field(
        None, description="IPFS API for the admin logs (configure and publish)"
    )
    IPFS_OUTPUT_PREFIX: Annotated[str | None, BeforeValidator(_single_line)] = Field(
        None, description="Prefix of returned output URLs (default ipfs://)"
    )
    IPFS_ADMINLOGS_PREFIX: Annotated[str | None, BeforeValidator(_single_line)] = Field(
        None, description="Prefix of returned admin-log URLs (default ipfs://)"
    )
    IPFS_EXPIRY_TIME: Annotated[str | None, BeforeValidator(_go_duration)] = Field(
        None, description="Pin expiry for ipfs-cluster, Go duration; 0 = unlimited"
    )
    IPFS_API_KEY: Annotated[SecretStr | None, BeforeValidator(_single_line)] = Field(
        None, description="IPFS API key (publish pod only)"
    )
    IPFS_API_CLIENT: Annotated[SecretStr | None, BeforeValidator(_single_line)] = Field(
        None, description="IPFS API client id (publish pod only)"
    )
    AWS_ACCESS_KEY_ID: Annotated[SecretStr | None, BeforeValidator(_single_line)] = Field(
        None, description="S3 access key (publish pod only)"
    )
    AWS_SECRET_ACCESS_KEY: Annotated[SecretStr | None, BeforeValidator(_single_line)] = Field(
        None, description="S3 secret key (publish pod only)"
    )
    AWS_REGION: Annotated[str | None, BeforeValidator(_single_line)] = Field(None, description="S3 region")
    AWS_BUCKET_OUTPUT: Annotated[str | None, BeforeValidator(_single_line)] = Field(
        None, description="S3 bucket for outputs and the algorithm log"
    )
    AWS_BUCKET_ADMINLOGS: Annotated[str | None, BeforeValidator(_single_line)] = Field(
        None, description="S3 bucket for the admin logs"
    )
    STORAGE_CLASS: Annotated[str | None, BeforeValidator(_k8s_name)] = Field(
        None, description="storageClassName of the workflow volumes (cluster default if unset)"
    )
    NOTIFY_START_URL: Annotated[str | None, BeforeValidator(_http_url)] = Field(
        None, description="URL that receives the start notification (POST JSON)"
    )
    NOTIFY_STOP_URL: Annotated[str | None, BeforeValidator(_http_url)] = Field(
        None, description="URL that receives the stop notification (POST JSON)"
    )
    SERVICE_ACCOUNT: Annotated[str, BeforeValidator(_k8s_name)] = Field(
        "default", description="Service account of the workflow pods"
    )
    NODE_SELECTOR: Annotated[str | None, BeforeValidator(_label_value)] = Field(
        None, description="Pods get the required node affinity scope In [value]"
    )
    PULL_SECRET: Annotated[str | None, BeforeValidator(_k8s_name)] = Field(
        None,
        description="imagePullSecrets name for the provider's own pods (configure, filter, publish), "
        "never the algorithm's",
    )
    ALGORITHM_PULL_SECRET: Annotated[str | None, BeforeValidator(_k8s_name)] = Field(
        None, description="imagePullSecrets name for the algorithm pods (the consumer's image); unset: none"
    )
    PULL_POLICY: Annotated[PullPolicy | None, BeforeValidator(_choice(PullPolicy))] = Field(
        None, description="imagePullPolicy for every container"
    )
    EPHEMERAL_STORAGE: Annotated[str, BeforeValidator(_quantity)] = Field(
        "1Gi",
        description="ephemeral-storage request and limit of every workflow pod, also the size limit of its /tmp",
    )
    FILTERING_CONTAINER: Annotated[str | None, BeforeValidator(_image)] = Field(
        None, description="Image of the optional filter stage, run after the algorithm"
    )
    POD_CONFIGURATION_CONTAINER: Annotated[str, BeforeValidator(_image)] = Field(
        DEFAULT_POD_IMAGE, description="Image of the configure pod"
    )
    POD_PUBLISH_CONTAINER: Annotated[str, BeforeValidator(_image)] = Field(
        DEFAULT_POD_IMAGE, description="Image of the publish pod"
    )
    LOG_CFG: Annotated[str | None, BeforeValidator(_log_config_file)] = Field(
        None, description="A logging configuration file (YAML, logging.config dictConfig)"
    )
    LOG_LEVEL: Annotated[LogLevel, BeforeValidator(_choice(LogLevel))] = Field("INFO", description="Log level")
    LOG_FORMAT: Annotated[LogFormat | None, BeforeValidator(_choice(LogFormat))] = Field(
        None, description="Log lines as JSON objects or console text (unset: console on a terminal, else json)"
    )
    DEBUG_NO_CLEANUP: Annotated[bool, BeforeValidator(_boolean)] = Field(
        False, description="Keep Jobs, volumes, ConfigMap and Secrets after the end"
    )
    TEMPLATES_DIR: Annotated[str, BeforeValidator(_existing_dir)] = Field(
        str(PACKAGED_TEMPLATES_DIR), description="Folder of the manifest templates"
    )
    LOCAL_STORAGE_DIR: Annotated[str | None, BeforeValidator(_single_line)] = Field(
        None, description="Publish into this folder (embedded cluster only)"
    )
    CONFIGURE_ALLOWED_NETWORKS: Annotated[str | None, BeforeValidator(_allow_list)] = Field(
        None,
        description="Networks (CIDRs) and host names the configure pod may fetch from although they are "
        "loopback, link-local, private, CGNAT or reserved (refused by default)",
    )
    CONFIGURE_TOTAL_TIMEOUT: Annotated[int | None, BeforeValidator(_integer(0))] = Field(
        None, description="Seconds one download of the configure pod may take in all (unset: 1800; 0: no limit)"
    )
    CONFIGURE_OVERALL_TIMEOUT: Annotated[int | None, BeforeValidator(_integer(0))] = Field(
        None, description="Seconds all downloads of a workflow may take together (unset: 3000; 0: no limit)"
    )
    METRICS_PORT: Annotated[int, BeforeValidator(_integer(0, 65535))] = Field(
        9100, description="Port of the Prometheus /metrics endpoint on every interface; 0 turns the metrics off"
    )
    OPERATOR_BACKSTOP_SECONDS: Annotated[int, BeforeValidator(_integer(1))] = Field(
        30, description="Interval of the timer that catches missed events and deadlines"
    )
    LEADER_ELECTION: Annotated[bool, BeforeValidator(_boolean)] = Field(
        False, description="Act only while holding the Lease operator-engine-leader (for more than one replica)"
    )
    READINESS_ENDPOINT: Annotated[str | None, BeforeValidator(_http_endpoint)] = Field(
        None, description="Where to answer readiness, http://HOST:PORT/PATH: 200 while this replica acts, else 503"
    )

    @model_validator(mode="before")
    @classmethod
    def _blank_is_unset(cls, data: Any) -> Any:
        """An empty (or blank) ConfigMap entry means "not set": the default applies."""
        if isinstance(data, Mapping):
            return {k: v for k, v in data.items() if not (isinstance(v, str) and v.strip() == "")}
        return data

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
        if self.OPERATOR_PRIVATE_KEY is None:
            return None
        return _address(self.OPERATOR_PRIVATE_KEY.get_secret_value())

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


@dataclasses.dataclass(frozen=True)
class Variable:
    """One environment variable, as docs/contract.md §3 and the README's table list it."""

    name: str
    default: Any
    description: str
    secret: bool


def _is_secret(annotation: Any) -> bool:
    return annotation is SecretStr or SecretStr in get_args(annotation)


#: Every variable the operator reads, in the order of the contract: the fields of `Config`.
VARIABLES: tuple[Variable, ...] = tuple(
    Variable(name, field.default, field.description or "", _is_secret(field.annotation))
    for name, field in Config.model_fields.items()
)
VARIABLE_NAMES = frozenset(v.name for v in VARIABLES)
_SECRET_NAMES = frozenset(v.name for v in VARIABLES if v.secret)


def _problem(error: ErrorDetails) -> str:
    """One bad variable as a line: its name, its value (unless secret, at most 80 characters), what is allowed."""
    name = str(error["loc"][0]) if error["loc"] else "configuration"
    if error["type"] == "value_error":  # our parsers' ValueError: its text says what is allowed
        reason = str(error.get("ctx", {}).get("error", error["msg"]))
    else:
        reason = error["msg"]
    shown = ""
    if name not in _SECRET_NAMES and isinstance(error.get("input"), str):
        shown = f"={error['input']!r}"
        if len(shown) > 80:
            shown = shown[:77] + "...'"
    return f"{name}{shown}: {reason}"


def load(environ: Mapping[str, str] | None = None) -> Config:
    """Parse every variable, from `environ` or else the process environment; raise ConfigError listing all bad ones."""
    try:
        if environ is None:
            return Config()  # pydantic-settings reads the variables from os.environ
        # An explicit mapping (tests, tools) is the whole environment: its only source, os.environ unread.
        given = InitSettingsSource(Config, init_kwargs={k: v for k, v in environ.items() if k in VARIABLE_NAMES})
        return Config(_build_sources=((given,), {}))
    except ValidationError as exc:
        raise ConfigError([_problem(error) for error in exc.errors(include_url=False)]) from None


def environment_json(config: Config, current_jobs: int = 0) -> str:
    return json.dumps(config.environment(current_jobs), indent=2)
