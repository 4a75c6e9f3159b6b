"""The kopf entry module: `kopf run --standalone operator_engine/operator_main.py`.

Handlers stay thin: they put "reconcile workflow W" (with the body the watch
delivered) on the engine's work queue and return. A stage starts because a
watch event said the previous one ended (a Job's end); steps that need no
cluster change follow in the same reconcile. The engine's backstop task (one for all workflows, every
OPERATOR_BACKSTOP_SECONDS) only catches missed events and deadlines.

Importing this module only registers the handlers: it reads no variable,
sets up no logging and exits nothing, so tests and `operator-engine demo`
import it as it is. The startup handler reads and checks the configuration
first, before anything else runs: a bad variable stops the operator with one
line naming it (docs/contract.md §3) and exit code 78 (§6). Who runs the
operator in a process of its own (`operator-engine demo`, the tests) passes
what it would otherwise read from the environment in kopf's memo
(`launch_memo`): the checked configuration, a kubeconfig path and a stream
for the log lines.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import os
import sys
import threading
import types
from collections.abc import Callable
from typing import Any, TextIO, cast

import kopf

from operator_engine import config as _config
from operator_engine import health, leader, logs, metrics
from operator_engine.engine import Engine
from operator_engine.facts import MANAGED
from operator_engine.kube import GROUP, PLURAL, VERSION, Kube, kopf_connection, new_api_client
from operator_engine.model import KUBERNETES_MAX_JSON_DEPTH
from operator_engine.render import load_checked_config

EXIT_BAD_CONFIG = 78  # sysexits.h EX_CONFIG, as the command line (operator_engine/cli.py)


def launch_memo(config: _config.Config, kubeconfig: str | None = None, log_stream: TextIO | None = None) -> kopf.Memo:
    """kopf's memo for an operator run inside another program (`kopf.operator(memo=...)`).

    `config` is used as given (check it first: `render.load_checked_config`), instead
    of the process's environment; the API clients (kopf's and the engine's)
    use `kubeconfig` instead of KUBECONFIG or in-cluster credentials; the log
    lines go to `log_stream` instead of stderr.
    """
    return kopf.Memo(config=config, kubeconfig=kubeconfig, log_stream=log_stream)


def configuration_problem(exc: _config.ConfigError) -> str:
    """The one line a bad configuration prints."""
    return f"operator-engine: configuration error: {'; '.join(exc.problems)}"


def _prepare(memo: kopf.Memo) -> _config.Config:
    """The checked configuration (the memo's, else the environment's) with logging set up; exit 78 when bad."""
    try:
        config = memo.get("config") or load_checked_config()
        logs.setup(config.LOG_LEVEL, config.LOG_CFG, config.LOG_FORMAT, stream=memo.get("log_stream"))
    except _config.ConfigError as exc:
        print(configuration_problem(exc), file=sys.stderr, flush=True)
        if threading.current_thread() is threading.main_thread():
            # `kopf run`: nothing has started yet (this is the first handler), and a SystemExit
            # through kopf's tasks would add warnings about tasks never started to the one line.
            os._exit(EXIT_BAD_CONFIG)
        raise SystemExit(EXIT_BAD_CONFIG) from None  # an operator in a thread of another program: ends it
    # kopf's watch stream and the kubernetes client decode Workflows with Python's
    # json, which recurses once per level and gives up near sys.getrecursionlimit()
    # (1000 by default). A real API server stores Workflows up to 10000 levels deep:
    # one of them would make every list and watch of Workflows fail, stopping all
    # workflows. With room for that depth the operator reads it and rejects it
    # (model.MAX_NESTING) like any other invalid Workflow. (py_ecc, imported for the
    # notification signatures, happens to raise the limit too; this must not depend on it.)
    # Set here, before kopf starts any watch (they start once the startup handlers are done).
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 4 * KUBERNETES_MAX_JSON_DEPTH))
    return config


def _event_poster(memo: kopf.Memo) -> Callable[[dict[str, Any], str, str, str], None]:
    """Post Events through kopf's poster, from any task.

    kopf hands its Event queue to handlers in context variables; the engine's
    reconciles run in its own worker tasks, so the context of a handler is
    kept (`_remember_event_context`) and used where the worker's own lacks it.
    """

    def post(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        for context in (None, *memo.event_context):
            try:
                # A body the engine read from the API: a Kubernetes object, as kopf.RawBody declares one.
                kopf_body = kopf.Body(cast(kopf.RawBody, body))
                if context is None:
                    kopf.event(kopf_body, type=type_, reason=reason, message=message)
                else:
                    context.run(kopf.event, kopf_body, type=type_, reason=reason, message=message)
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


# The cyclic garbage collector's first-generation threshold (CPython's default: 700 allocations).
GC_THRESHOLD = 20_000


def _tune_garbage_collector() -> None:
    """Fewer, cheaper passes of the cyclic garbage collector, once the operator has started.

    Reconciles allocate many short-lived containers (parsed JSON answers,
    rendered manifests), so with CPython's default threshold a collection ran
    every few hundred allocations, and each older-generation pass walked the
    whole heap: the modules, kopf and the client, set up once and never
    freed. `gc.freeze()` moves what exists at start out of the collector's
    view, and a higher threshold collects less often. Measured with
    benchmarks/transitions.py at 300 workflows in flight: operator CPU 19-23 s
    before, 17-20 s after (docs/BENCHMARKS.md); memory is still returned
    (reference counting frees all but cycles, which the collector still finds).
    """
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])


class NoDiffBase(kopf.DiffBaseStorage):
    """No last-handled state: the operator's handlers are event handlers, which never diff.

    kopf builds an object's "essence" (a deep copy of the object without its
    status) and compares it with the stored one at every event, for
    create/update/delete handlers; with none registered, that was a tenth of
    the operator's CPU at 100 workflows in flight (docs/BENCHMARKS.md). Were a
    changing handler ever added, it would need kopf's default storages back.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


class NoProgress(kopf.ProgressStorage):
    """No handler progress: event handlers are not retried by kopf, so there is none to keep (see NoDiffBase)."""

    def fetch(self, *, key: Any, body: kopf.Body) -> kopf.ProgressRecord | None:
        return None

    def store(self, *, key: Any, record: kopf.ProgressRecord, body: kopf.Body, patch: kopf.Patch) -> None:
        return None

    def purge(self, *, key: Any, body: kopf.Body, patch: kopf.Patch) -> None:
        return None

    def touch(self, *, body: kopf.Body, patch: kopf.Patch, value: str | None) -> None:
        return None

    def clear(self, *, essence: kopf.BodyEssence) -> kopf.BodyEssence:
        return essence


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config = _prepare(memo)
    # The operator is namespaced (a Role, not cluster-admin): it must not list
    # namespaces or CRDs cluster-wide, which kopf's scanning would try.
    settings.scanning.disabled = True
    # kopf's own "Handler succeeded" lines would drown the story: the engine posts
    # its own Events and log lines; kopf speaks up for warnings and errors.
    settings.posting.level = logging.WARNING
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.watching.server_timeout = 300
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.persistence.progress_storage = NoProgress()
    if threading.current_thread() is threading.main_thread():  # `kopf run`, not a thread of another program
        _tune_garbage_collector()
    memo.metrics = metrics.start(config)
    # kopf runs on every replica (its watches and liveness endpoint too); the
    # handlers act only once `memo.live.engine` exists: at once without election,
    # else when this replica acquires the Lease (a lost Lease ends the process).
    kubeconfig = memo.get("kubeconfig")
    # kopf gives each object a shallow copy of this memo, made when it first sees the object: the
    # engine is set later (on taking the Lease), so it lives in an object every copy shares.
    memo.live = types.SimpleNamespace(engine=None)
    memo.event_context = []  # one contextvars.Context, once a handler ran
    memo.elector = None
    memo.readiness_server = None
    loop = asyncio.get_running_loop()
    readiness = health.Readiness(lambda: memo.elector is None or memo.elector.is_leader)
    if config.LEADER_ELECTION:
        memo.elector = leader.LeaderElector(
            lambda: new_api_client(kubeconfig),
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
    engine = Engine(config, Kube(await new_api_client(memo.get("kubeconfig"))), post_event=_event_poster(memo))
    memo.live.engine = engine
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
async def login(memo: kopf.Memo, **kwargs: Any) -> kopf.ConnectionInfo | None:
    """The memo's kubeconfig, else in-cluster credentials, else the kubeconfig named by KUBECONFIG at login."""
    if memo.get("kubeconfig"):
        return await kopf_connection(memo.kubeconfig)
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    live = getattr(memo, "live", None)
    engine = live.engine if live is not None else None
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
async def workflow_changed(event: kopf.RawEvent, name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Queue the workflow with the body the watch delivered (the engine reads it again if it is stale)."""
    _remember_event_context(memo)
    engine = memo.live.engine
    if engine is None or not namespace:  # a standby, or (never: Workflows are namespaced) no namespace
        return
    body = cast(dict[str, Any] | None, event.get("object"))
    if event.get("type") == "DELETED":
        engine.forget(namespace, name, body)
    else:
        engine.reconcile(namespace, name, body)


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
async def job_changed(labels: kopf.Labels, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    _remember_event_context(memo)
    workflow = labels.get("app")
    engine = memo.live.engine
    if workflow and namespace and engine is not None:
        engine.reconcile(namespace, workflow)
