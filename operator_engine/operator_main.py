"""The kopf entry module: `kopf run --standalone operator_engine/operator_main.py`.

Handlers stay thin: they put "reconcile workflow W" (with the body the watch
delivered) on the engine's work queue and return. A stage starts because a
watch event said the previous one ended (a Job's end); steps that need no
cluster change follow in the same reconcile. The engine's backstop task (one for all workflows, every
OPERATOR_BACKSTOP_SECONDS) only catches missed events and deadlines.

Importing this module checks the configuration and the templates, so a bad
variable stops the operator at start with a message naming it (docs/contract.md §3, exit 78: §6).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
from collections.abc import Callable
from typing import Any

import kopf

from operator_engine import config as _config
from operator_engine import health, leader, logs, metrics
from operator_engine.engine import Engine
from operator_engine.facts import MANAGED
from operator_engine.kube import GROUP, PLURAL, VERSION, Kube, new_api_client
from operator_engine.model import KUBERNETES_MAX_JSON_DEPTH

try:
    _settings = _config.load_checked()
    # Now, not only at startup: kopf's own lines from here on go through our formatter, once.
    logs.setup(_settings.LOG_LEVEL, _settings.LOG_CFG, _settings.LOG_FORMAT)
except _config.ConfigError as _exc:
    print(f"operator-engine: configuration error: {'; '.join(_exc.problems)}", file=sys.stderr)
    raise SystemExit(78) from None

# kopf's watch stream and the kubernetes client decode Workflows with Python's
# json, which recurses once per level and gives up near sys.getrecursionlimit()
# (1000 by default). A real API server stores Workflows up to 10000 levels deep:
# one of them would make every list and watch of Workflows fail, stopping all
# workflows. With room for that depth the operator reads it and rejects it
# (model.MAX_NESTING) like any other invalid Workflow. (py_ecc, imported for the
# notification signatures, happens to raise the limit too; this must not depend on it.)
sys.setrecursionlimit(max(sys.getrecursionlimit(), 4 * KUBERNETES_MAX_JSON_DEPTH))


def _event_poster(memo: kopf.Memo) -> Callable[[dict[str, Any], str, str, str], None]:
    """Post Events through kopf's poster, from any task.

    kopf hands its Event queue to handlers in context variables; the engine's
    reconciles run in its own worker tasks, so the context of a handler is
    kept (`_remember_event_context`) and used where the worker's own lacks it.
    """

    def post(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        for context in (None, *memo.event_context):
            try:
                if context is None:
                    kopf.event(body, type=type_, reason=reason, message=message)
                else:
                    context.run(kopf.event, body, type=type_, reason=reason, message=message)
                return
            except LookupError:
                # kopf's event poster starts after the startup handlers: an admission made
                # while starting up has its log line and status condition, not an Event.
                continue

    return post


def _remember_event_context(memo: kopf.Memo) -> None:
    # A list made at startup: kopf gives each object a shallow copy of the memo.
    if not memo.event_context:
        memo.event_context.append(contextvars.copy_context())


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Read again at each start: tests and `operator-engine dev` start the operator in-process.
    config = _config.load()
    logs.setup(config.LOG_LEVEL, config.LOG_CFG, config.LOG_FORMAT)
    # The operator is namespaced (a Role, not cluster-admin): it must not list
    # namespaces or CRDs cluster-wide, which kopf's scanning would try.
    settings.scanning.disabled = True
    # kopf's own "Handler succeeded" lines would drown the story: the engine posts
    # its own Events and log lines; kopf speaks up for warnings and errors.
    settings.posting.level = logging.WARNING
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.watching.server_timeout = 300
    memo.metrics = metrics.start(config)
    # kopf runs on every replica (its watches and liveness endpoint too); the
    # handlers act only once `memo.engine` exists: at once without election,
    # else when this replica acquires the Lease (a lost Lease ends the process).
    memo.engine = None
    memo.event_context = []  # one contextvars.Context, once a handler ran
    memo.elector = None
    memo.readiness_server = None
    loop = asyncio.get_running_loop()
    readiness = health.Readiness(lambda: memo.elector is None or memo.elector.is_leader)
    if config.LEADER_ELECTION:
        memo.elector = leader.LeaderElector(
            new_api_client(),
            config.OPERATOR_NAMESPACE,
            leader.holder_identity(),
            on_acquired=lambda: loop.call_soon_threadsafe(_start_take_over, config, memo, readiness),
        )
    if config.READINESS_ENDPOINT:
        memo.readiness_server = await health.serve(config.READINESS_ENDPOINT, readiness)
    if memo.elector is not None:
        memo.elector.start()
    else:
        await _take_over(config, memo, readiness, first=True)


def _start_take_over(config: _config.Config, memo: kopf.Memo, readiness: health.Readiness) -> None:
    """On the event loop, when the elector's thread says this replica now leads."""
    memo.take_over = asyncio.ensure_future(_take_over(config, memo, readiness))  # a reference keeps it running


async def _take_over(config: _config.Config, memo: kopf.Memo, readiness: health.Readiness, first: bool = False) -> None:
    """Start acting: admit what the queue allows, carry every workflow on from the cluster's state, then the backstop.

    On a single operator this runs at start (where kopf's watch events also
    reach every workflow: no sweep needed); on a new leader, the events that
    reached it as a standby were ignored, so it reconciles every workflow
    that is not settled first.
    """
    engine = Engine(config, Kube(new_api_client()), post_event=_event_poster(memo))
    memo.engine = engine
    if first:
        await engine.admit(config.OPERATOR_NAMESPACE)
    else:
        try:
            await engine.admit(config.OPERATOR_NAMESPACE)
            await engine.sweep(config.OPERATOR_NAMESPACE)
        except Exception as exc:  # the API server is unwell: the backstop tries again
            logging.getLogger(__name__).warning(f"taking over: {type(exc).__name__}: {exc}; the backstop retries")
    engine.start_backstop(config.OPERATOR_NAMESPACE, float(config.OPERATOR_BACKSTOP_SECONDS))
    readiness.mark_ready()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster credentials, else the kubeconfig named by KUBECONFIG at the time of login."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    engine = getattr(memo, "engine", None)
    if engine is not None:
        await engine.close()
    elector = getattr(memo, "elector", None)
    if elector is not None:  # after the engine stopped writing: the standby may take over at once
        await asyncio.to_thread(elector.stop)
    server = getattr(memo, "readiness_server", None)
    if server is not None:
        await server.cleanup()
    if getattr(memo, "metrics", None) is not None:
        memo.metrics.close()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def workflow_changed(event: dict[str, Any], name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    """Queue the workflow with the body the watch delivered (the engine reads it again if it is stale)."""
    _remember_event_context(memo)
    if memo.engine is None:
        return
    if event.get("type") == "DELETED":
        memo.engine.forget(namespace, name, event.get("object"))
    else:
        memo.engine.reconcile(namespace, name, event.get("object"))


def _job_finished(status: kopf.Status, meta: kopf.Meta, type: str | None = None, **_: Any) -> bool:
    """Only a Job's end moves its workflow on; its other changes would only cost API reads.

    A Job's end is its success or failure, or the removal of a Job the operator
    deleted in the foreground (a stopped stage): it is removed only once its
    pods are gone, and that is when the next stage may start. (Clean-up deletes
    in the background: no deletionTimestamp, no event to act on.)
    """
    if type == "DELETED":
        return bool(meta.get("deletionTimestamp"))
    return bool(status.get("succeeded") or status.get("failed"))


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED, when=_job_finished)
async def job_changed(labels: dict[str, str], namespace: str, memo: kopf.Memo, **_: Any) -> None:
    _remember_event_context(memo)
    workflow = labels.get("app")
    if workflow and memo.engine is not None:
        memo.engine.reconcile(namespace, workflow)
