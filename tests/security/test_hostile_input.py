"""One bad Workflow never stops the others: hostile input ends in a validation error, never a crash.

Whatever a Workflow holds, parse -> render has two outcomes only: manifests
(that the Kubernetes client can serialize) or `InvalidWorkflow`, whose message
is one line naming the field. The CLI reads files a person (or an attacker)
wrote: deep nesting, alias bombs, duplicate keys and broken Unicode get one
line on stderr and exit 2, never a traceback, in bounded time and memory.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operator_engine import cli
from operator_engine import config as config_module
from operator_engine.model import MAX_NESTING, InvalidWorkflow, parse_workflow
from operator_engine.render import Renderer, to_yaml_stream

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = yaml.safe_load((ROOT / "k8s_install" / "workflow-1.yaml").read_text())
DDO_SAMPLE = yaml.safe_load((ROOT / "tests" / "fixtures" / "workflow-ddo-2019.yaml").read_text())
RENDERER = Renderer(config_module.load({}))
DDO_SERVICE = "spec.metadata.service[1]"


def outcome(body: Any) -> str:
    """'rendered' or the validation message; anything else raised is the bug this file looks for."""
    try:
        children = RENDERER.render(parse_workflow(body))
    except InvalidWorkflow as exc:
        message = str(exc)
        assert message and "\n" not in message and "\r" not in message, f"not one line: {message!r}"
        return message
    for child in children:  # what the kubernetes client and `render` do with them next
        json.dumps(child.manifest, allow_nan=False)
    to_yaml_stream([c.manifest for c in children])
    return "rendered"


def nested(depth: int, leaf: Any = "x", key: str | None = "a") -> Any:
    value = leaf
    for _ in range(depth):
        value = {key: value} if key is not None else [value]
    return value


def with_value(body: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """A copy of `body` with the subtree at `path` replaced by `value`."""
    body = copy.deepcopy(body)
    target = body
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return body


STAGE = ("spec", "metadata", "stages", 0)
DDO_STAGE = ("spec", "metadata", "service", 1, "attributes", "workflow", "stages", 0)

# (body, path, value, the field the message must name): each crashed on the main branch before this file.
CRASHES: dict[str, tuple[dict[str, Any], tuple[Any, ...], Any, str]] = {
    "deep-output": (SAMPLE, STAGE + ("output", "deep"), nested(300), "spec.metadata.stages[0].output.deep.a"),
    "deep-list-in-unknown-field": (
        SAMPLE,
        STAGE + ("extra",),
        nested(5000, key=None),
        "spec.metadata.stages[0].extra[0]",
    ),
    "deep-input-ddo": (SAMPLE, STAGE + ("input", 0, "ddo"), nested(257), "spec.metadata.stages[0].input[0].ddo"),
    "just-too-deep": (SAMPLE, STAGE + ("output",), nested(MAX_NESTING), "spec.metadata.stages[0].output"),
    "ddo-attributes-list": (DDO_SAMPLE, DDO_STAGE[:5], ["workflow"], f"{DDO_SERVICE}.attributes"),
    "ddo-attributes-string": (DDO_SAMPLE, DDO_STAGE[:5], "workflow", f"{DDO_SERVICE}.attributes"),
    "ddo-attributes-number": (DDO_SAMPLE, DDO_STAGE[:5], 7, f"{DDO_SERVICE}.attributes"),
    "ddo-attributes-bool": (DDO_SAMPLE, DDO_STAGE[:5], True, f"{DDO_SERVICE}.attributes"),
    "ddo-workflow-list": (DDO_SAMPLE, DDO_STAGE[:6], [], f"{DDO_SERVICE}.attributes.workflow"),
    "ddo-deep": (DDO_SAMPLE, DDO_STAGE + ("output", "x"), nested(400), f"{DDO_SERVICE}.attributes.workflow"),
    "huge-int-in-output": (SAMPLE, STAGE + ("output", "n"), 10**5000, "spec.metadata.stages[0].output.n"),
    "huge-maxtime": (SAMPLE, STAGE + ("compute", "maxtime"), 10**5000, "spec.metadata.stages[0].compute.maxtime"),
    "lone-surrogate": (SAMPLE, STAGE + ("output", "s"), "a\ud800b", "spec.metadata.stages[0].output.s"),
    "lone-surrogate-key": (SAMPLE, STAGE + ("output",), {"\udfff": 1}, "spec.metadata.stages[0].output"),
    "date-from-yaml": (
        SAMPLE,
        ("spec", "metadata", "created"),
        __import__("datetime").date(2019, 4, 9),
        "spec.metadata.created",
    ),
    "bytes": (SAMPLE, STAGE + ("algorithm", "rawcode"), b"print(1)", "spec.metadata.stages[0].algorithm.rawcode"),
    "namespace-number": (SAMPLE, ("metadata", "namespace"), 5, "metadata.namespace"),
    "uid-list": (SAMPLE, ("metadata", "uid"), ["u"], "metadata.uid"),
}


@pytest.mark.parametrize("case", list(CRASHES))
def test_input_that_crashed_the_model_is_a_validation_error_naming_the_field(case: str) -> None:
    body, path, value, field = CRASHES[case]
    message = outcome(with_value(body, path, value))
    assert message != "rendered", case
    assert message.startswith(field) or f"; {field}" in message, f"does not name {field}: {message[:300]}"
    assert len(message) < 1000, message


@pytest.mark.parametrize(
    "value, words",
    [
        (math.nan, "finite"),
        (math.inf, "finite"),
        (-math.inf, "finite"),
        ({5: "x"}, "keys must be strings"),
        ({(1, 2): "x"}, "keys must be strings"),
        ({"a\nkind: Pod": {"b": nested(100)}}, "nested deeper"),
    ],
)
def test_values_json_cannot_carry_are_refused(value: Any, words: str) -> None:
    message = outcome(with_value(SAMPLE, STAGE + ("output", "v"), value))
    assert words in message, message


LONG = "did:op:" + "a" * 100_000


@pytest.mark.parametrize(
    "path",
    [
        STAGE + ("output", "long"),
        STAGE + ("input", 0, "id"),
        STAGE + ("algorithm", "container", "image"),
        STAGE + ("algorithm", "container", "tag"),
        STAGE + ("algorithm", "url"),
        STAGE + ("compute", "namespace"),
        ("spec", "secret"),
        ("metadata", "name"),
        ("metadata", "labels", "workflow"),
        DDO_STAGE + ("transformation", "id"),
    ],
    ids=lambda p: ".".join(map(str, p[-2:])),
)
def test_a_very_long_string_anywhere_renders_or_is_refused(path: tuple[Any, ...]) -> None:
    outcome(with_value(DDO_SAMPLE if path[:4] == DDO_STAGE[:4] else SAMPLE, path, LONG))
    key_path = path[:-1] + (LONG,)
    if isinstance(path[-2], str):  # the same string as a key
        outcome(with_value(DDO_SAMPLE if path[:4] == DDO_STAGE[:4] else SAMPLE, key_path, "x"))


def test_a_workflow_at_the_nesting_limit_still_renders() -> None:
    # The stage's output sits at level 6 (workflow, spec, metadata, stages, [0], output).
    assert outcome(with_value(SAMPLE, STAGE + ("output", "v"), nested(MAX_NESTING - 7))) == "rendered"


# ---------------------------------------------------------------- property tests

KEYS = st.text(max_size=6) | st.sampled_from(
    [
        "stages",
        "service",
        "type",
        "Metadata",
        "attributes",
        "workflow",
        "id",
        "image",
        "url",
        "input",
        "algorithm",
        "container",
    ]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63 - 2, max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["did:op:1", "python:3.11", "https://h/x", "Metadata", "", "\ud800"])
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS | st.integers(), inner, max_size=4),
    max_leaves=25,
)
DEEP = st.builds(nested, st.integers(min_value=MAX_NESTING - 10, max_value=2000), JSON, st.sampled_from(["a", None]))
ANY = JSON | DEEP


def subtree_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            paths += subtree_paths(child, prefix + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            paths += subtree_paths(child, prefix + (index,))
    return paths


SAMPLE_PATHS = [(SAMPLE, p) for p in subtree_paths(SAMPLE)] + [(DDO_SAMPLE, p) for p in subtree_paths(DDO_SAMPLE)]
PROPERTY = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@PROPERTY
@given(st.sampled_from(SAMPLE_PATHS), ANY)
def test_a_real_payload_with_any_subtree_replaced_renders_or_is_refused(target: Any, value: Any) -> None:
    body, path = target
    outcome(with_value(body, path, value))


@PROPERTY
@given(ANY)
def test_any_json_document_as_the_workflow_renders_or_is_refused(document: Any) -> None:
    outcome(document)
    outcome(
        {"apiVersion": "oceanprotocol.com/v1alpha", "kind": "WorkFlow", "metadata": {"name": "w"}, "spec": document}
    )
    outcome({"metadata": {"name": "w"}, "spec": {"metadata": document}})
    outcome(
        {"metadata": {"name": "w"}, "spec": {"metadata": {"service": [{"type": "Metadata", "attributes": document}]}}}
    )


# ---------------------------------------------------------------- the command line


def render_file(tmp_path: Path, content: str | bytes, name: str = "w.yaml") -> subprocess.CompletedProcess[str]:
    """`operator-engine render FILE` as a process, with a deadline: a bomb must fail fast, not hang the suite."""
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    env = {k: v for k, v in os.environ.items() if k not in config_module.VARIABLE_NAMES}
    return subprocess.run(
        [sys.executable, "-m", "operator_engine", "render", str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


def one_line_exit_2(result: subprocess.CompletedProcess[str], *words: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("operator-engine: "), result.stderr[-2000:]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


SAMPLE_TEXT = (ROOT / "k8s_install" / "workflow-1.yaml").read_text()
BILLION_LAUGHS = "\n".join(
    ['lol0: &lol0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    + [f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * 9)}]" for i in range(1, 10)]
)

CLI_CASES: dict[str, tuple[str | bytes, tuple[str, ...]]] = {
    "deep-flow-yaml": ("[" * 100_000 + "]" * 100_000, ("nested deeper",)),
    "deep-json": ('{"kind": "WorkFlow", "spec": ' + '{"a": ' * 50_000 + "1" + "}" * 50_001, ("nested deeper",)),
    "deep-block-yaml": ("".join(f"{' ' * i}a:\n" for i in range(2000)) + " " * 2000 + "b: 1\n", ("nested deeper",)),
    "billion-laughs": (SAMPLE_TEXT + "\n" + BILLION_LAUGHS + "\n", ("aliases expand",)),
    "billion-laughs-in-spec": (
        SAMPLE_TEXT.replace("spec:\n", "spec:\n  bomb:\n    " + BILLION_LAUGHS.replace("\n", "\n    ") + "\n", 1),
        ("aliases expand",),
    ),
    "recursive-alias": (SAMPLE_TEXT + "\nloop: &loop [*loop]\n", ("refers to the node that contains it",)),
    "duplicate-key": (
        SAMPLE_TEXT.replace("kind: WorkFlow", "kind: WorkFlow\nkind: WorkFlow", 1),
        ("duplicate key 'kind'",),
    ),
    "duplicate-key-in-spec": (SAMPLE_TEXT.replace("spec:\n", "spec:\n  secret: a\n", 1), ("duplicate key 'secret'",)),
    "duplicate-key-in-json": (
        '{"kind": "WorkFlow", "metadata": {"name": "a", "name": "b"}}',
        ("duplicate key 'name'",),
    ),
    "invalid-utf8": (SAMPLE_TEXT.encode() + b"\nx: \xff\xfe\xc3\x28\n", ("not UTF-8",)),
    "utf8-encoded-surrogate": (SAMPLE_TEXT.encode() + b"\nx: \xed\xa0\x80\n", ("not UTF-8",)),
    "escaped-lone-surrogate": (
        SAMPLE_TEXT.replace("spec:\n", 'spec:\n  note: "\\ud800"\n', 1),
        ("spec.note", "lone surrogate"),
    ),
    "escaped-lone-surrogate-in-name": (
        SAMPLE_TEXT.replace("name: workflow-1", 'name: "w\\udc00\\n"', 1),
        ("metadata.name",),
    ),
    "larger-than-the-api-server-accepts": (SAMPLE_TEXT + "\n# " + "x" * (3 * 1024 * 1024) + "\n", ("3 MiB",)),
    "yaml-nan": (SAMPLE_TEXT.replace("spec:\n", "spec:\n  n: .nan\n", 1), ("spec.n", "finite")),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_render_answers_hostile_files_with_one_line_and_exit_2(case: str, tmp_path: Path) -> None:
    content, words = CLI_CASES[case]
    one_line_exit_2(render_file(tmp_path, content, "w.json" if "json" in case else "w.yaml"), *words)


def test_cli_keeps_yaml_timestamps_as_the_strings_written(tmp_path: Path) -> None:
    """kubectl sends an unquoted date as the string written; `render` must agree, not crash on a datetime."""
    text = SAMPLE_TEXT.replace("spec:\n", "spec:\n  created: 2019-04-09T19:02:11Z\n", 1)
    body = cli.read_workflow_file(str(_write(tmp_path, text)))
    assert body["spec"]["created"] == "2019-04-09T19:02:11Z"
    assert render_file(tmp_path, text).returncode == 0


def test_cli_accepts_aliases_of_a_reasonable_size(tmp_path: Path) -> None:
    text = SAMPLE_TEXT.replace("spec:\n", "spec:\n  shared: &s {a: 1}\n  again: *s\n", 1)
    assert cli.read_workflow_file(str(_write(tmp_path, text)))["spec"]["again"] == {"a": 1}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "in.yaml"
    path.write_text(text)
    return path
