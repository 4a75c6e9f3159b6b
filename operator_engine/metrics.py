"""Prometheus metrics: their one definition, the census of Workflows, and the `/metrics` server.

Metrics are observations only: nothing the operator decides reads them. The
gauges that describe the cluster (workflows in flight by status code, the
queue, the running workflows) are set from a list of every Workflow read from
the cluster (at admission and at each backstop pass), not counted up and down,
so they are right again after a restart. Between two lists, a status code the
engine has just written moves its workflow in the in-flight gauge. Counters and
histograms count what this process did since it started, as usual for
Prometheus (a restart resets them; `rate()` and `increase()` handle that).

Every metric lives in `REGISTRY` (not prometheus_client's global one), so the
tests and the dashboard check read exactly what the operator serves. The names,
labels and meanings are listed in the README ("Metrics").
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from operator_engine.config import Config
from operator_engine.facts import TERMINAL_PHASES, StatusCode

REGISTRY = CollectorRegistry(auto_describe=True)

WORKFLOWS_FINISHED = Counter(
    "operator_engine_workflows_finished",
    "Workflows that reached a terminal phase, by phase",
    ["phase"],
    registry=REGISTRY,
)
WORKFLOWS_IN_FLIGHT = Gauge(
    "operator_engine_workflows_in_flight",
    "Workflows not yet terminal, by status code (1 = queued)",
    ["status_code"],
    registry=REGISTRY,
)
QUEUE_LENGTH = Gauge(
    "operator_engine_queue_length", "Workflows waiting Queued for a free slot (maxJobs)", registry=REGISTRY
)
RUNNING_JOBS = Gauge(
    "operator_engine_running_jobs",
    "Workflows admitted and running (what maxJobs limits; currentJobs)",
    registry=REGISTRY,
)
MAX_JOBS = Gauge("operator_engine_max_jobs", "The configured maxJobs", registry=REGISTRY)
STAGE_DURATION = Histogram(
    "operator_engine_stage_duration_seconds",
    "From a stage Job's creation to the end of its pod, one observation per stage run, by stage",
    ["stage"],
    registry=REGISTRY,
    buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400),
)
TRANSITION_LATENCY = Histogram(
    "operator_engine_transition_latency_seconds",
    "From the end of a stage's pod to the creation of the next stage's Job",
    registry=REGISTRY,
    buckets=(0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30, 60, 120, 300),
)
NOTIFICATIONS = Counter(
    "operator_engine_notifications",
    "Start and stop notifications, by kind and result",
    ["kind", "result"],
    registry=REGISTRY,
)
API_ERRORS = Counter(
    "operator_engine_api_errors",
    "Kubernetes API requests that failed, by reason (each attempt counts)",
    ["reason"],
    registry=REGISTRY,
)

# The status codes a workflow in flight can have (the terminal 70 is not one).
IN_FLIGHT_CODES = tuple(int(code) for code in StatusCode if code != StatusCode.COMPLETED)
# Kubernetes' StatusReason for the HTTP statuses the API server answers (metav1.StatusReason),
# so that the api_errors label has a small, fixed set of values.
API_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    408: "Timeout",
    409: "Conflict",
    410: "Expired",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "Timeout",
}
NOTIFICATION_RESULTS = ("delivered", "refused", "gave_up")


def metric_names() -> list[str]:
    """The name of every metric the operator defines (as PromQL names it, e.g. `..._total`)."""
    names: list[str] = []
    for metric in REGISTRY.collect():
        suffix = "_total" if metric.type == "counter" else ""
        names.append(metric.name + suffix)
    return names


# --- the census: gauges from the cluster's Workflows


class _Census:
    """Each Workflow's status code as last read or written; the in-flight gauge is computed from it.

    Replaced whole by each list of every Workflow; between two lists, the
    status code the engine writes updates one entry. It only feeds the gauge:
    the engine never reads it.
    """

    def __init__(self) -> None:
        self._codes: dict[str, int] = {}
        self._lock = threading.Lock()  # the scrape thread reads the gauge while the engine writes it

    def replace(self, workflows: Iterable[Mapping[str, Any]], admitted: Iterable[str] = ()) -> None:
        started = set(admitted)
        codes: dict[str, int] = {}
        queued = running = 0
        for workflow in workflows:
            meta = workflow.get("metadata") or {}
            status = workflow.get("status") or {}
            code = 10 if meta.get("name") in started else status.get("statusCode")
            phase = "Running" if meta.get("name") in started else status.get("phase")
            if phase in TERMINAL_PHASES and status.get("dateFinished"):
                continue
            if isinstance(code, int) and code in IN_FLIGHT_CODES:
                codes[_key(meta)] = code
            if not meta.get("deletionTimestamp"):
                queued += phase == "Queued"
                running += phase == "Running"
        with self._lock:
            self._codes = codes
            self._publish()
        QUEUE_LENGTH.set(queued)
        RUNNING_JOBS.set(running)

    def update(self, workflow: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        """The engine wrote `status` to `workflow`: move it in the in-flight gauge."""
        key = _key(workflow.get("metadata") or {})
        code = status.get("statusCode")
        with self._lock:
            if status.get("dateFinished") and status.get("phase") in TERMINAL_PHASES:
                self._codes.pop(key, None)
            elif isinstance(code, int) and code in IN_FLIGHT_CODES:
                self._codes[key] = code
            else:
                return
            self._publish()

    def forget(self, workflow: Mapping[str, Any]) -> None:
        with self._lock:
            if self._codes.pop(_key(workflow.get("metadata") or {}), None) is not None:
                self._publish()

    def _publish(self) -> None:
        counts = dict.fromkeys(IN_FLIGHT_CODES, 0)
        for code in self._codes.values():
            counts[code] += 1
        for code, count in counts.items():
            WORKFLOWS_IN_FLIGHT.labels(status_code=str(code)).set(count)


def _key(meta: Mapping[str, Any]) -> str:
    return str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}")


CENSUS = _Census()


# --- the events the engine reports


def workflow_finished(phase: str) -> None:
    WORKFLOWS_FINISHED.labels(phase=phase).inc()


def notification(kind: str, result: str) -> None:
    """`result` as notify.deliver returns it ("delivered", "refused: ...", "gave up after ...")."""
    label = "delivered" if result == "delivered" else "refused" if result.startswith("refused") else "gave_up"
    NOTIFICATIONS.labels(kind=kind, result=label).inc()


def api_error(status: int | None) -> None:
    """One failed Kubernetes API request: an HTTP status, or None when no answer came (connection, timeout)."""
    if not status:
        reason = "NoResponse"
    else:
        reason = API_REASONS.get(status, f"HTTP{status}")
    API_ERRORS.labels(reason=reason).inc()


def _initialise() -> None:
    """Show every label value that is known in advance at 0, so dashboards have a line from the start."""
    for phase in sorted(TERMINAL_PHASES):
        WORKFLOWS_FINISHED.labels(phase=phase)
    for kind in ("start", "stop"):
        for result in NOTIFICATION_RESULTS:
            NOTIFICATIONS.labels(kind=kind, result=result)
    for code in IN_FLIGHT_CODES:
        WORKFLOWS_IN_FLIGHT.labels(status_code=str(code))


_initialise()


# --- the /metrics endpoint


def start(config: Config) -> MetricsServer | None:
    """Serve the metrics on METRICS_PORT (None when it is 0), and record the configured maxJobs.

    A port that cannot be bound (in use, or privileged) stops the operator at
    start with a message naming the variable, like any other bad setting.
    """
    MAX_JOBS.set(config.maxJobs)
    if not config.METRICS_PORT:
        return None
    try:
        return MetricsServer(config.METRICS_PORT)
    except OSError as exc:
        import kopf  # only the operator starts the server

        raise kopf.PermanentError(f"METRICS_PORT={config.METRICS_PORT}: cannot listen there: {exc}") from None


class MetricsServer:
    """prometheus_client's HTTP server (a thread) serving REGISTRY on every path, `/metrics` included."""

    def __init__(self, port: int, address: str = "0.0.0.0") -> None:
        self.server, self.thread = start_http_server(port, addr=address, registry=REGISTRY)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)
