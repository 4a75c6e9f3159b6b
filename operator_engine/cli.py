"""`operator-engine`: the command line of docs/contract.md §5 (exit codes: §6).

Every failure a person can cause (a bad variable, a bad Workflow file) ends
with one line on stderr naming what to fix and a non-zero exit code, never
with a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from operator_engine import __version__

EXIT_INVALID_INPUT = 2  # a Workflow or an argument is invalid
EXIT_BAD_CONFIG = 78  # sysexits.h EX_CONFIG: an environment variable or template is invalid
EXIT_MISSING_EXTRA = 1  # `demo` or `dev` without the [dev] extra installed


def _fail(message: str, code: int) -> int:
    """One line on stderr, whatever the message quotes (newlines, lone surrogates from a file)."""
    line = " ".join(message.splitlines()).encode("utf-8", "backslashreplace").decode("utf-8")
    print(f"operator-engine: {line}", file=sys.stderr)
    return code


def _load_config() -> Any:
    from operator_engine.render import load_checked_config

    return load_checked_config()


def cmd_check_config(args: argparse.Namespace) -> int:
    from operator_engine.config import environment_json

    print(environment_json(_load_config()))
    return 0


# The largest request body the Kubernetes API server accepts: no Workflow larger
# than this can exist in a cluster, so `render` need not read one either.
MAX_DOCUMENT_BYTES = 3 * 1024 * 1024
_TIMESTAMP = "tag:yaml.org,2002:timestamp"


class WorkflowLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing what a Workflow file has no use for and a hostile one could abuse.

    * Nesting deeper than the model allows stops at composition, before PyYAML's
      own recursion (about 300 levels) could raise RecursionError.
    * Aliases are allowed, but a document whose expansion (every alias counted
      as a copy of its anchor) is larger than a document could be, or that
      refers to itself, is refused: "billion laughs" stays a few KiB of text
      and never becomes gigabytes of JSON.
    * A key written twice in one mapping is refused (PyYAML keeps the last one
      silently, so two readers could disagree about the Workflow).
    * Timestamps stay strings as written, as kubectl sends them.
    """

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, stream: str) -> None:
        from operator_engine.model import MAX_NESTING

        super().__init__(stream)
        self._depth = 0
        self._max_nesting = MAX_NESTING

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > self._max_nesting + 1:  # + 1: the scalars inside the deepest allowed collection
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {self._max_nesting} levels", self.peek_event().start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> Any:
        node = super().compose_document()
        _check_expansion(node)
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` then a key of its own is an override, not a duplicate
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a scalar", key_node.start_mark
                ) from None
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {repr(key)[:60]}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def _check_expansion(root: yaml.Node | None) -> None:
    """Refuse a node graph whose expansion exceeds MAX_DOCUMENT_BYTES or that contains itself.

    Each node weighs 1 plus its scalar's length, and an alias weighs what its
    anchor does, so without aliases the weight never exceeds the text's size.
    Iterative, with the weight of each shared node computed once.
    """
    if root is None:
        return
    weights: dict[int, int] = {}
    entered: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]

    def children(node: yaml.Node) -> list[yaml.Node]:
        if isinstance(node, yaml.MappingNode):
            return [part for pair in node.value for part in pair]
        return list(node.value) if isinstance(node, yaml.SequenceNode) else []

    while stack:
        node, finished = stack.pop()
        if finished:
            entered.discard(id(node))
            own = len(node.value) if isinstance(node, yaml.ScalarNode) else 0
            weight = 1 + own + sum(weights[id(child)] for child in children(node))
            if weight > MAX_DOCUMENT_BYTES:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"its aliases expand to more than {MAX_DOCUMENT_BYTES // (1024 * 1024)} MiB",
                    node.start_mark,
                )
            weights[id(node)] = weight
        elif id(node) in weights:
            continue
        elif id(node) in entered:
            raise yaml.composer.ComposerError(
                None, None, "an alias refers to the node that contains it", node.start_mark
            )
        else:
            entered.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children(node))


def read_workflow_file(path: str) -> dict[str, Any]:
    """The WorkFlow document in FILE (or stdin for "-"); ValueError with a one-line reason."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_DOCUMENT_BYTES + 1)
        else:
            with open(path, "rb") as stream:
                data = stream.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) > MAX_DOCUMENT_BYTES:
        raise ValueError(
            f"{path}: larger than {MAX_DOCUMENT_BYTES // (1024 * 1024)} MiB, "
            "more than the Kubernetes API server accepts"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (invalid byte at offset {exc.start})") from None
    try:
        documents = [d for d in yaml.load_all(text, Loader=WorkflowLoader) if d is not None]
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where else ""
        raise ValueError(f"{path}: not valid YAML{line}: {getattr(exc, 'problem', None) or exc}") from None
    workflows = [d for d in documents if isinstance(d, dict) and d.get("kind") == "WorkFlow"]
    if len(workflows) != 1:
        kinds = ", ".join(repr(d.get("kind"))[:40] if isinstance(d, dict) else type(d).__name__ for d in documents[:10])
        raise ValueError(f"{path}: kind: expected exactly one WorkFlow document, found [{kinds}]")
    from operator_engine.model import check_json_document

    # The model checks `spec` (and the metadata it uses); a file is checked whole, as the API server would.
    for key, value in workflows[0].items():
        problems = check_json_document(value, str(key), depth=2) if key != "spec" else []
        if problems or not isinstance(key, str):
            raise ValueError(f"{path}: {problems[0] if problems else 'keys must be strings'}")
    return workflows[0]


def cmd_render(args: argparse.Namespace) -> int:
    from operator_engine.limits import limits_for
    from operator_engine.model import InvalidWorkflow, parse_workflow
    from operator_engine.render import Renderer, to_yaml_stream

    cfg = _load_config()
    try:
        body = read_workflow_file(args.file)
        workflow = parse_workflow(body)
    except InvalidWorkflow as exc:
        name = (body.get("metadata") or {}).get("name") if isinstance(body.get("metadata"), dict) else None
        return _fail(f"invalid Workflow {str(name)[:80] if name else args.file}: {exc}", EXIT_INVALID_INPUT)
    except ValueError as exc:
        return _fail(str(exc), EXIT_INVALID_INPUT)
    children = Renderer(cfg).render(workflow)
    for note in limits_for(workflow, cfg).notes:
        print(f"operator-engine: note: {note}", file=sys.stderr)
    if args.output is None:
        sys.stdout.write(to_yaml_stream([c.manifest for c in children]))
        return 0
    directory = Path(args.output)
    directory.mkdir(parents=True, exist_ok=True)
    for number, child in enumerate(children, start=1):
        path = directory / f"{number:02d}-{child.kind.lower()}-{child.name}.yaml"
        path.write_text(to_yaml_stream([child.manifest]), encoding="utf-8")
        print(path)
    return 0


def cmd_pod(args: argparse.Namespace) -> int:
    """The pod programs read their own variables; the operator's configuration does not apply."""
    if args.pod == "configure":
        from operator_engine.pods.configure import main as pod_main
    else:
        from operator_engine.pods.publish import main as pod_main
    return pod_main(args.pod_args)


def cmd_run(args: argparse.Namespace) -> int:
    _load_config()  # fail here, with a clear message, rather than inside kopf
    argv = [sys.executable, "-m", "kopf", "run", "--standalone", *args.kopf_args, "-m", "operator_engine.operator_main"]
    if not any(a.startswith(("--namespace", "-n", "--all-namespaces", "-A")) for a in args.kopf_args):
        argv[5:5] = [f"--namespace={os.environ.get('OPERATOR_NAMESPACE') or 'ocean-compute'}"]
    os.execv(sys.executable, argv)
    return 0  # not reached


DEV_EXTRA = "dev"  # the optional dependencies of the embedded cluster and the demo (pyproject.toml)


def _dev_extra_requirements() -> list[str]:
    """The distributions the [dev] extra adds, as the installed package's metadata lists them."""
    from importlib import metadata

    try:
        requires = metadata.requires("operator-engine") or []
    except metadata.PackageNotFoundError:  # run from a source tree without installing: the import below decides
        return []
    marker = re.compile(r"""extra\s*==\s*["']""" + DEV_EXTRA + """["']""")
    return [re.split(r"[^A-Za-z0-9._-]", line, maxsplit=1)[0] for line in requires if marker.search(line)]


def missing_dev_extra() -> list[str]:
    """What of the [dev] extra cannot be imported (empty when it is installed)."""
    import importlib

    missing = []
    for name in _dev_extra_requirements():
        try:
            importlib.import_module(name.replace("-", "_"))
        except ImportError:
            missing.append(name)
    if not missing:
        try:
            importlib.import_module("operator_engine.devcluster")
        except ModuleNotFoundError as exc:
            if exc.name and not exc.name.startswith("operator_engine"):
                missing.append(exc.name.split(".")[0])
    return missing


def _require_dev_extra(command: str) -> int | None:
    """One line naming the extra when `demo` or `dev` cannot run without it, else None."""
    missing = missing_dev_extra()
    if not missing:
        return None
    return _fail(
        f"{command} needs the [{DEV_EXTRA}] extra (the embedded cluster), which is not installed "
        f"(missing: {', '.join(missing)}): pip install 'operator-engine[{DEV_EXTRA}]'",
        EXIT_MISSING_EXTRA,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    if (refused := _require_dev_extra("demo")) is not None:
        return refused
    from operator_engine.demo import demo_main

    return demo_main(args.workdir, args.data_port)


def cmd_dev(args: argparse.Namespace) -> int:
    if (refused := _require_dev_extra("dev")) is not None:
        return refused
    from operator_engine.demo import dev_main

    return dev_main(args.workdir, args.data_port, args.control_plane)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="operator-engine",
        description="Runs Ocean Protocol Compute-to-Data workflows on Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run the operator against the current kubeconfig or in-cluster config",
        description="Runs the operator (kopf run --standalone). Extra options go to kopf.",
    )
    run.add_argument("kopf_args", nargs=argparse.REMAINDER, help="options passed to `kopf run`")
    run.set_defaults(handler=cmd_run)

    render = commands.add_parser(
        "render",
        help="print the manifests the operator would create for a Workflow",
        description="Prints every manifest the operator would create for the Workflow in "
        "FILE, in creation order, without a cluster.",
    )
    render.add_argument("file", metavar="FILE", help="a WorkFlow YAML file, or - for standard input")
    render.add_argument("-o", "--output", metavar="DIR", help="write one file per manifest into DIR")
    render.set_defaults(handler=cmd_render)

    check = commands.add_parser("check-config", help="validate the environment and print the compute environment")
    check.set_defaults(handler=cmd_check_config)

    for name, summary in (
        ("configure", "the configure pod: fetch the inputs and the algorithm into /data"),
        ("publish", "the publish pod: upload outputs and logs, report their URLs"),
    ):
        pod = commands.add_parser(name, help=summary, description=summary + " (settings from the environment)")
        pod.add_argument("pod_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        pod.set_defaults(handler=cmd_pod, pod=name)

    local_note = (
        "Pods run as local processes on this machine, without containers or isolation: for trying and developing only."
    )
    demo = commands.add_parser(
        "demo",
        help="run the sample workflow end to end on an embedded cluster",
        description="Starts an embedded cluster and the operator, runs "
        "k8s_install/workflow-1.yaml on a small local dataset, prints the "
        "progress and the result; exits 0 if it succeeded. " + local_note,
    )
    dev = commands.add_parser(
        "dev",
        help="keep an embedded cluster with the operator up, for kubectl",
        description="Starts an embedded cluster, the operator and the demo data server, "
        "prints a kubeconfig for kubectl, and runs until Ctrl-C. " + local_note,
    )
    for sub, handler in ((demo, cmd_demo), (dev, cmd_dev)):
        sub.add_argument(
            "--workdir",
            metavar="DIR",
            help="folder for volumes, pods, results and logs (default: a new temporary folder)",
        )
        sub.add_argument(
            "--data-port",
            type=int,
            default=8765,
            metavar="PORT",
            help="port of the demo data server on 127.0.0.1 (default 8765, the port the sample Workflow names)",
        )
        sub.set_defaults(handler=handler)
    dev.add_argument(
        "--control-plane",
        choices=("embedded", "real"),
        default="embedded",
        help="embedded (default): the project's own API server, starts at once; real: etcd, "
        "kube-apiserver, kube-controller-manager and kube-scheduler built by "
        "scripts/control-plane.sh (or KUBEBUILDER_ASSETS), a node that runs pods as local "
        "processes, and the operator as its ServiceAccount",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from operator_engine.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        return _fail(f"configuration error: {'; '.join(exc.problems)}", EXIT_BAD_CONFIG)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
