"""`operator-engine demo` and `operator-engine dev`: the whole pipeline on a laptop, no Kubernetes needed.

Both start, in this process:

* the embedded cluster (:mod:`operator_engine.devcluster`) whose kubelet is
  the :class:`~operator_engine.devcluster.ProcessRuntime`: every pod runs as
  a LOCAL PROCESS, without container isolation and ignoring images. This is
  for trying and developing, never for production or untrusted algorithms;
* a small HTTP server on 127.0.0.1:8765 serving ``operator_engine/demo_data``
  (the dataset and the algorithm the sample Workflow points at);
* the operator itself (kopf, in-process), with ``LOCAL_STORAGE_DIR`` set so
  that the publish pod copies results into ``<workdir>/results``.

``demo`` submits ``k8s_install/workflow-1.yaml``, prints each status change,
the final status and the algorithm's result, and exits 0 if the workflow
succeeded. ``dev`` keeps everything up until Ctrl-C and prints a kubeconfig
for ``kubectl``.

The operator's log lines go to ``<workdir>/operator.log``, not the console.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

import yaml

import operator_engine
from operator_engine.facts import TERMINAL_PHASES

__all__ = [
    "DATA_PORT",
    "DataServerError",
    "Stack",
    "TERMINAL_PHASES",
    "demo_data_dir",
    "dev_main",
    "demo_main",
    "follow_workflow",
    "load_sample_workflow",
    "run_demo",
    "run_dev",
    "running_stack",
    "sample_workflow_path",
    "serve_demo_data",
]

#: The demo data is served on loopback, which the configure pod refuses unless the operator
#: allows it (CONFIGURE_ALLOWED_NETWORKS): demo and dev allow loopback, and say so.
LOOPBACK_NETWORKS = "127.0.0.0/8,::1"
#: The port the sample Workflow's URLs name.
DATA_PORT = 8765
NAMESPACE = "ocean-compute"
SAMPLE_URL_PREFIX = f"http://127.0.0.1:{DATA_PORT}/"


class DataServerError(Exception):
    """The demo data server cannot start (its port is taken)."""


def demo_data_dir() -> Path:
    return Path(operator_engine.__file__).parent / "demo_data"


def sample_workflow_path() -> Path:
    return Path(operator_engine.__file__).parents[1] / "k8s_install" / "workflow-1.yaml"


def load_sample_workflow(data_port: int = DATA_PORT) -> dict[str, Any]:
    """The sample Workflow; its data URLs point at ``data_port`` when that is not 8765."""
    path = sample_workflow_path()
    if not path.exists():
        raise FileNotFoundError(f"the sample Workflow {path} is missing (run from a clone of the repository)")
    body: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    if data_port != DATA_PORT:
        text = json.dumps(body).replace(SAMPLE_URL_PREFIX, f"http://127.0.0.1:{data_port}/")
        body = json.loads(text)
    return body


# ---------------------------------------------------------------------- data server


@contextlib.asynccontextmanager
async def serve_demo_data(
    port: int = DATA_PORT, directory: Path | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[str]:
    """Serve ``directory`` (the packaged demo data) over HTTP on host:port; yields the base URL."""
    import aiohttp.web

    directory = directory or demo_data_dir()
    app = aiohttp.web.Application()
    app.router.add_static("/", directory, show_index=True)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise DataServerError(
            f"cannot serve the demo data on {host}:{port}: {exc.strerror or exc}. The sample Workflow "
            f"fetches its data from http://{host}:{port}/; stop whatever uses that port (another "
            f"`operator-engine demo` or `dev`?) and try again."
        ) from None
    bound = runner.addresses[0][1] if runner.addresses else port
    try:
        yield f"http://{host}:{bound}"
    finally:
        await runner.cleanup()


# ---------------------------------------------------------------------- the stack


@dataclass
class Stack:
    """A running embedded cluster + data server + operator."""

    cluster: Any  # EmbeddedCluster
    workdir: Path
    kubeconfig: Path
    results: Path
    data_url: str
    operator_log: Path
    operator: asyncio.Task[Any] | None = None
    env: dict[str, str] = field(default_factory=dict)
    config: Any = None  # the operator's checked configuration (operator_engine.config.Config)


def stack_environment(
    workdir: Path, metrics: bool = False, operator_env: Mapping[str, str | None] | None = None
) -> dict[str, str | None]:
    """What the stack sets for its operator, on top of the process's environment (None unsets)."""
    env: dict[str, str | None] = {
        "KUBECONFIG": str(workdir / "kubeconfig"),  # for a person's kubectl; the operator is given it directly
        "LOCAL_STORAGE_DIR": str(workdir / "results"),
        "OPERATOR_NAMESPACE": NAMESPACE,
        "CONFIGURE_ALLOWED_NETWORKS": LOOPBACK_NETWORKS,
    }
    if not metrics:
        env["METRICS_PORT"] = "0"
    env.update(operator_env or {})
    return env


def operator_config(operator_env: Mapping[str, str | None]) -> Any:
    """The operator's configuration: the process's environment with ``operator_env`` on top (None unsets).

    Checked (``render.load_checked_config``): a bad variable raises ConfigError before
    anything starts. The process's environment itself is left as it is.
    """
    from operator_engine.render import load_checked_config

    environ = dict(os.environ)
    for key, value in operator_env.items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    return load_checked_config(environ)


@contextlib.asynccontextmanager
async def running_stack(
    workdir: str | Path,
    *,
    data_port: int | None = DATA_PORT,
    operator_env: Mapping[str, str | None] | None = None,
    logs_to_file: bool = True,
    metrics: bool = False,
) -> AsyncIterator[Stack]:
    """
    Start the cluster (ProcessRuntime under ``<workdir>/cluster``), the data server and the operator.

    The operator's configuration is the process's environment with
    ``operator_env`` on top (the environment itself is not changed), checked
    before anything starts (a bad variable raises ConfigError);
    ``LOCAL_STORAGE_DIR`` defaults to ``<workdir>/results`` and
    ``CONFIGURE_ALLOWED_NETWORKS`` to loopback (where the demo data is served).
    ``data_port=None`` skips the data server. With ``logs_to_file``, the
    operator's log lines go to ``<workdir>/operator.log``, else to stderr.
    Without ``metrics``, METRICS_PORT is 0 unless ``operator_env`` sets it.
    """
    import kopf

    from operator_engine.devcluster import EmbeddedCluster, ProcessRuntime
    from operator_engine.operator_main import launch_memo

    workdir = Path(workdir).absolute()
    results = workdir / "results"
    operator_log = workdir / "operator.log"
    kubeconfig = workdir / "kubeconfig"
    env = stack_environment(workdir, metrics, operator_env)
    config = operator_config(env)  # before anything starts: a bad variable leaves nothing behind
    workdir.mkdir(parents=True, exist_ok=True)
    results.mkdir(exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        data_url = ""
        if data_port is not None:
            data_url = await stack.enter_async_context(serve_demo_data(data_port))
        cluster = await stack.enter_async_context(
            EmbeddedCluster(namespace=NAMESPACE, runtime=ProcessRuntime(workdir / "cluster"))
        )
        partial = workdir / ".kubeconfig.tmp"
        cluster.write_kubeconfig(partial)
        partial.replace(kubeconfig)  # atomically: whoever waits for the file reads it whole
        log_stream: TextIO | None = None
        if logs_to_file:
            log_stream = stack.enter_context(operator_log.open("a", encoding="utf-8", buffering=1))
        memo = launch_memo(config, kubeconfig=str(kubeconfig), log_stream=log_stream)

        # The operator gets its own thread and event loop, as in a real deployment
        # where it is a process of its own: at exit kopf waits for every task of
        # its loop, and the cluster's connection handlers must not be among them.
        stop = threading.Event()
        operator = asyncio.create_task(
            asyncio.to_thread(
                asyncio.run,
                kopf.operator(standalone=True, namespaces=[NAMESPACE], clusterwide=False, stop_flag=stop, memo=memo),
            )
        )

        async def stop_operator() -> None:
            stop.set()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(operator, 30)

        stack.push_async_callback(stop_operator)
        yield Stack(
            cluster=cluster,
            workdir=workdir,
            kubeconfig=kubeconfig,
            results=results,
            data_url=data_url,
            operator_log=operator_log,
            operator=operator,
            env={k: v for k, v in env.items() if v is not None},
            config=config,
        )
        if operator.done() and not operator.cancelled() and operator.exception() is not None:
            raise RuntimeError("the operator stopped unexpectedly") from operator.exception()


async def follow_workflow(
    cluster: Any,
    name: str,
    on_change: Callable[[dict[str, Any]], None] | None = None,
    timeout: float = 120.0,
    namespace: str = NAMESPACE,
) -> dict[str, Any]:
    """Call ``on_change(status)`` at each status change of the Workflow; return it once terminal."""
    last: Any = None

    def terminal(obj: dict[str, Any] | None) -> bool:
        nonlocal last
        if obj is None:
            return False
        status = obj.get("status") or {}
        seen = (status.get("statusCode"), status.get("phase"), status.get("message"))
        if status and seen != last:
            last = seen
            if on_change is not None:
                on_change(status)
        return bool(status.get("dateFinished")) and status.get("phase") in TERMINAL_PHASES

    found = await cluster.wait_for("wf", name, terminal, timeout=timeout, namespace=namespace)
    assert found is not None
    return found


# ---------------------------------------------------------------------- demo


def _url_path(url: str) -> Path | None:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme != "file":
        return None
    return Path(urllib.request.url2pathname(parsed.path))


def _show_output(url: str, out: IO[str]) -> None:
    path = _url_path(url)
    if path is None or not path.exists():
        return
    if path.suffix == ".json" or path.suffix in (".txt", ".csv", ".log"):
        text = path.read_text(encoding="utf-8", errors="replace")
        print(f"\n{path.name}:", file=out)
        print(text.rstrip()[:20000], file=out)
    elif path.name.endswith((".tar.gz", ".tgz")):
        import tarfile

        with tarfile.open(path) as tar:
            print(f"\n{path.name} holds: {', '.join(tar.getnames())}", file=out)


async def run_demo(
    workdir: str | Path, out: IO[str] = sys.stdout, *, data_port: int = DATA_PORT, timeout: float = 120.0
) -> int:
    """Run the sample Workflow end to end; 0 if it Succeeded, else 1."""
    workdir = Path(workdir).absolute()
    started = time.monotonic()

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    say(f"operator-engine demo: working in {workdir}")
    say("  pods run as LOCAL PROCESSES on this machine (no containers): for trying, not for production")
    say(f"  the configure pod may fetch from loopback ({LOOPBACK_NETWORKS}), where the demo data is served;")
    say("  a real deployment refuses loopback and private addresses unless CONFIGURE_ALLOWED_NETWORKS lists them")
    body = load_sample_workflow(data_port)
    name = body["metadata"]["name"]
    async with running_stack(workdir, data_port=data_port) as stack:
        say(
            f"  embedded cluster at {stack.cluster.url}, demo data at {stack.data_url}, "
            f"operator log in {stack.operator_log}"
        )
        say(f"submitting Workflow {name} (from {sample_workflow_path()})")
        t0 = time.monotonic()
        await stack.cluster.create(body)

        def on_change(status: dict[str, Any]) -> None:
            line = (
                f"[{time.monotonic() - t0:5.1f}s] {status.get('statusCode', '?'):>2} "
                f"{status.get('statusText', '')}  ({status.get('phase', '')})"
            )
            if status.get("message") and status.get("phase") in TERMINAL_PHASES:
                line += f": {status['message']}"
            say(line)

        follower = asyncio.create_task(follow_workflow(stack.cluster, name, on_change, timeout=timeout))
        assert stack.operator is not None
        await asyncio.wait({follower, stack.operator}, return_when=asyncio.FIRST_COMPLETED)
        if not follower.done():
            follower.cancel()
            say(f"the operator stopped unexpectedly; see {stack.operator_log}")
            return 1
        try:
            final = follower.result()
        except TimeoutError:
            say(f"the workflow did not finish within {timeout:.0f} s; see {stack.operator_log}")
            return 1
        status = final.get("status") or {}
        say("")
        say(f"Workflow {name}: {status.get('phase')} (code {status.get('statusCode')} {status.get('statusText')})")
        if status.get("message"):
            say(f"  message:       {status['message']}")
        for key in ("outputsUrl", "algologUrl", "configlogUrl", "publishlogUrl"):
            value = status.get(key)
            for url in value if isinstance(value, list) else [value]:
                if url:
                    say(f"  {key + ':':<14} {url}")
        say(f"  results folder: {stack.results / name}")
        for url in status.get("outputsUrl") or []:
            _show_output(url, out)
        algolog = _url_path(status.get("algologUrl") or "")
        if algolog is not None and algolog.exists():
            say("\nalgorithm log:")
            say(algolog.read_text(encoding="utf-8", errors="replace").rstrip())
        say("\nstopping the operator and the cluster...")
    say(f"\ndone in {time.monotonic() - started:.1f} s")
    return 0 if status.get("phase") == "Succeeded" else 1


def _entry(command: str, run: Callable[..., Any], workdir: str | None, data_port: int, **options: Any) -> int:
    """Run `run(workdir, data_port=...)`; a person's mistake ends with one line, not a traceback."""
    from operator_engine.config import ConfigError
    from operator_engine.devcluster.realstack import MissingBinaries
    from operator_engine.operator_main import EXIT_BAD_CONFIG, configuration_problem

    if options.get("control_plane") != "real":  # the real stack's operator reads kubernetes/operator.yml instead
        try:  # before anything starts, on stderr (the operator's own lines go to <workdir>/operator.log)
            operator_config(stack_environment(Path(workdir or tempfile.gettempdir()), metrics=command == "dev"))
        except ConfigError as exc:
            print(configuration_problem(exc), file=sys.stderr)
            return EXIT_BAD_CONFIG

    if options.get("control_plane") == "real":
        try:  # before anything starts: a missing build leaves nothing behind, not even a folder
            from operator_engine.devcluster.realstack import require_assets

            options["assets"] = require_assets()
        except MissingBinaries as exc:
            print(f"operator-engine {command}: {exc}", file=sys.stderr)
            return 1
    path = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"operator-engine-{command}-"))
    try:
        return int(asyncio.run(run(path, data_port=data_port, **options)))
    except (DataServerError, FileNotFoundError, MissingBinaries) as exc:
        print(f"operator-engine {command}: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(configuration_problem(exc), file=sys.stderr)
        return EXIT_BAD_CONFIG
    except KeyboardInterrupt:
        return 130


def demo_main(workdir: str | None = None, data_port: int = DATA_PORT) -> int:
    """Entry point of ``operator-engine demo``."""
    return _entry("demo", run_demo, workdir, data_port)


# ---------------------------------------------------------------------- dev


async def run_dev(
    workdir: str | Path,
    out: IO[str] = sys.stdout,
    *,
    data_port: int = DATA_PORT,
    stop: asyncio.Event | None = None,
    control_plane: str = "embedded",
    assets: Path | None = None,
) -> int:
    """Keep the stack up until ``stop`` is set (or SIGINT/SIGTERM); ``control_plane`` is embedded or real."""
    workdir = Path(workdir).absolute()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    if control_plane == "real":
        return await _run_dev_real(workdir, say, data_port, stop, assets)

    async with running_stack(workdir, data_port=data_port, metrics=True) as stack:
        k = stack.kubeconfig
        sample = sample_workflow_path()
        say("operator-engine dev: an embedded cluster with the operator is running.")
        say("  WARNING: pods run as LOCAL PROCESSES on this machine, without containers or isolation:")
        say("  for trying and developing only, never for untrusted algorithms or production.")
        say("")
        say(f"kubeconfig:   {k}")
        say(f"API server:   {stack.cluster.url} (namespace {NAMESPACE})")
        say(f"demo data:    {stack.data_url or '(not served)'}")
        say(
            f"fetching:     the configure pod may fetch from loopback "
            f"(CONFIGURE_ALLOWED_NETWORKS={stack.env.get('CONFIGURE_ALLOWED_NETWORKS', '')}); "
            f"a real deployment refuses loopback and private addresses unless listed there"
        )
        say(f"results:      {stack.results}")
        say(f"volumes/pods: {workdir / 'cluster'}")
        say(f"operator log: {stack.operator_log}")
        say(f"metrics:      {_metrics_url(stack.config.METRICS_PORT)}")
        say("")
        say("try:")
        say(f"  export KUBECONFIG={k}")
        say(f"  kubectl apply -f {sample}")
        say("  kubectl get wf")
        say("  kubectl get wf workflow-1 -o jsonpath='{.status.statusCode}'")
        say("  kubectl get jobs,pods")
        say("  kubectl logs -l component=algorithm")
        say("  kubectl describe wf workflow-1")
        say("  kubectl delete wf workflow-1")
        say("")
        say("Ctrl-C stops the cluster.")
        say("ready")
        # kopf installs its own SIGINT/SIGTERM handlers once it runs: it stops the
        # operator on them, which ends this wait too.
        assert stack.operator is not None
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, stack.operator}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        say("stopping...")
    return 0


def _metrics_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/metrics (METRICS_PORT)" if port else "off (METRICS_PORT=0)"


async def _run_dev_real(
    workdir: Path, say: Callable[[str], None], data_port: int, stop: asyncio.Event, assets: Path | None
) -> int:
    """``dev --control-plane real``: see :mod:`operator_engine.devcluster.realstack`."""
    from operator_engine.devcluster.realstack import NAMESPACE as REAL_NAMESPACE
    from operator_engine.devcluster.realstack import running_real_stack, wait_process

    say(
        "operator-engine dev: starting a real control plane (etcd, kube-apiserver, kube-controller-manager, "
        "kube-scheduler), a process node and the operator..."
    )
    async with contextlib.AsyncExitStack() as stack:
        # The data server first: a port in use then stops everything before any process starts.
        data_url = await stack.enter_async_context(serve_demo_data(data_port))
        real = await stack.enter_async_context(running_real_stack(workdir, assets=assets))
        k = real.kubeconfig
        say("  WARNING: pods run as LOCAL PROCESSES on this machine, without containers or isolation:")
        say("  for trying and developing only, never for untrusted algorithms or production.")
        say("")
        say(f"kubeconfig:   {k} (cluster admin)")
        say(f"API server:   {real.control_plane.server} (namespace {REAL_NAMESPACE})")
        say(f"node:         {real.node.name} (pods run as local processes under {real.node.root})")
        say(
            f"operator:     runs as ServiceAccount {REAL_NAMESPACE}/ocean-compute-operator "
            f"(kubeconfig {real.operator_kubeconfig})"
        )
        say(f"demo data:    {data_url}")
        say(f"results:      {real.results}")
        say(f"operator log: {real.workdir / 'operator.log'}")
        say(f"cluster logs: {real.workdir / 'control-plane'}")
        say("")
        say("try:")
        say(f"  export KUBECONFIG={k}")
        say(f"  kubectl apply -f {sample_workflow_path()}")
        say("  kubectl get nodes")
        say(f"  kubectl -n {REAL_NAMESPACE} get wf,jobs,pods")
        say(f"  kubectl -n {REAL_NAMESPACE} describe wf workflow-1")
        say("")
        say("Ctrl-C stops everything.")
        say("ready")
        assert real.operator is not None
        await wait_process(real.operator, stop)
        if not stop.is_set():
            say(f"the operator stopped unexpectedly; see {real.workdir / 'operator.log'}")
        say("stopping...")
    return 0


def dev_main(workdir: str | None = None, data_port: int = DATA_PORT, control_plane: str = "embedded") -> int:
    """Entry point of ``operator-engine dev``."""
    if control_plane == "real":
        return _entry("dev", run_dev, workdir, data_port, control_plane="real")
    return _entry("dev", run_dev, workdir, data_port)
