"""Values from a Workflow can never change the structure of a manifest.

Every field a Workflow author controls that reaches a manifest is filled with
hostile text; each manifest must have the same set of keys as with a plain
value, and the value must arrive unchanged where it belongs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from operator_engine.model import parse_workflow
from operator_engine.render import Renderer, yaml_safe_json

HOSTILE = {
    "yaml-mapping": "plain\nkind: Pod\nmetadata: {name: evil}",
    "yaml-document": "x\n---\napiVersion: v1\nkind: Secret",
    "flow": "{a: 1, b: [2, 3]}",
    "jinja": "{{ config }}{% for x in range(3) %}{{ x }}{% endfor %}{# c #}",
    "quotes": "'\"\\'\\\"\\\\\"'",
    "newlines": "a\r\nb\rc\n\n  d: e",
    "anchors": "&a *a !!python/object:os.system ['ls'] %YAML 1.2",
    "long": "L" * 60_000,  # just under the 64 KiB ceiling on spec.secret
    "non-ascii": "zürich – 東京 – ß – \u2028 – \u0085 – \ufeff – 😀🚀 – \x7f",
    "json-escapes": "\\ud83d\\ude00 \\u0000 \\n",
    "controls": "\t\x01\x1b[31m\x08",
}

# Where each field lands: (field setter, extractor of the value from the rendered children).
FieldSetter = Callable[[dict[str, Any], str], None]


def _stage(body: dict[str, Any]) -> dict[str, Any]:
    return body["spec"]["metadata"]["stages"][0]


def _document(children: list[Any]) -> dict[str, Any]:
    return json.loads(children[0].manifest["data"]["workflow.json"])


def _algorithm_container(children: list[Any]) -> dict[str, Any]:
    job = next(c.manifest for c in children if c.step == "algorithm")
    return job["spec"]["template"]["spec"]["containers"][0]


FIELDS: dict[str, tuple[FieldSetter, Callable[[list[Any]], Any]]] = {
    "secret": (
        lambda b, v: b["spec"].__setitem__("secret", v),
        lambda ch: next(c.manifest for c in ch if c.kind == "Secret")["stringData"]["secret"],
    ),
    "entrypoint": (
        lambda b, v: _stage(b)["algorithm"]["container"].__setitem__("entrypoint", v),
        lambda ch: _algorithm_container(ch)["command"][-1],
    ),
    "rawcode": (
        lambda b, v: _stage(b)["algorithm"].__setitem__("rawcode", v),
        lambda ch: _document(ch)["stages"][0]["algorithm"]["rawcode"],
    ),
    "output-field": (
        lambda b, v: _stage(b)["output"].__setitem__("metadataUri", v),
        lambda ch: _document(ch)["stages"][0]["output"]["metadataUri"],
    ),
    "unknown-key": (lambda b, v: _stage(b).__setitem__(v[:200] or "k", v), lambda ch: _document(ch)["stages"][0]),
    "stage-type": (
        lambda b, v: _stage(b).__setitem__("stageType", v),
        lambda ch: _document(ch)["stages"][0]["stageType"],
    ),
    "compute-namespace": (
        lambda b, v: _stage(b)["compute"].__setitem__("namespace", v),
        lambda ch: _document(ch)["stages"][0]["compute"]["namespace"],
    ),
    "input-ddo": (
        lambda b, v: _stage(b)["input"][0].__setitem__("ddo", {"name": v}),
        lambda ch: _document(ch)["stages"][0]["input"][0]["ddo"]["name"],
    ),
}

# Constrained fields reach manifests too; their hostile values are the legal ones that look dangerous.
CONSTRAINED = {
    "input-url": (
        lambda b, v: _stage(b)["input"][0].__setitem__("url", [v]),
        lambda ch: _document(ch)["stages"][0]["input"][0]["url"][0],
        "http://h/{{7*7}}'\"?a=b:%20c&d=---#{%x%}",
    ),
    "algorithm-url": (
        lambda b, v: _stage(b)["algorithm"].__setitem__("url", v),
        lambda ch: _document(ch)["stages"][0]["algorithm"]["url"][0],
        "https://h:8080/a:b/{c}/\"d\"?e='f'",
    ),
    "input-did": (
        lambda b, v: _stage(b)["input"][0].__setitem__("id", v),
        lambda ch: json.loads(next(e["value"] for e in _algorithm_container(ch)["env"] if e["name"] == "DIDS"))[0],
        "did:example:a%7B%7Bb%7D%7D:c.d-e_f",
    ),
    "algorithm-did": (
        lambda b, v: _stage(b)["algorithm"].__setitem__("id", v),
        lambda ch: next(e["value"] for e in _algorithm_container(ch)["env"] if e["name"] == "TRANSFORMATION_DID"),
        "did:example:%3A%0A%22:x",
    ),
}


def key_paths(node: Any, prefix: str = "") -> set[str]:
    """The structure of a manifest: every key path, with list positions."""
    paths = {prefix}
    if isinstance(node, dict):
        for key, value in node.items():
            paths |= key_paths(value, f"{prefix}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            paths |= key_paths(value, f"{prefix}[{index}]")
    return paths


def structure(children: list[Any]) -> list[tuple[str, set[str]]]:
    return [(c.name, key_paths(c.manifest)) for c in children]


def render_with(body: dict[str, Any], make_config: Any) -> list[Any]:
    return Renderer(make_config(FILTERING_CONTAINER="oceanprotocol/filter:1")).render(parse_workflow(body))


@pytest.mark.parametrize("field", sorted(FIELDS))
@pytest.mark.parametrize("hostile", sorted(HOSTILE))
def test_hostile_value_keeps_structure_and_arrives_unchanged(field, hostile, sample_body, make_config):
    setter, extract = FIELDS[field]
    value = HOSTILE[hostile]
    plain_body = json.loads(json.dumps(sample_body))
    hostile_body = json.loads(json.dumps(sample_body))
    setter(plain_body, "plain")
    setter(hostile_body, value)
    plain, rendered = render_with(plain_body, make_config), render_with(hostile_body, make_config)
    if field == "unknown-key":  # the key itself is the hostile part: only the document's content changes
        assert extract(rendered)[value[:200] or "k"] == value
        plain_shape = [s for s in structure(plain) if s[0] != "workflow-1"]
        assert plain_shape == [s for s in structure(rendered) if s[0] != "workflow-1"]
        return
    assert structure(plain) == structure(rendered)
    assert extract(plain) == "plain" or field == "entrypoint"
    assert extract(rendered) == value


@pytest.mark.parametrize("field", sorted(CONSTRAINED))
def test_legal_but_tricky_value_keeps_structure_and_arrives_unchanged(field, sample_body, make_config):
    setter, extract, value = CONSTRAINED[field]
    plain_body = json.loads(json.dumps(sample_body))
    tricky_body = json.loads(json.dumps(sample_body))
    setter(tricky_body, value)
    assert structure(render_with(plain_body, make_config)) == structure(render_with(tricky_body, make_config))
    assert extract(render_with(tricky_body, make_config)) == value


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
        max_leaves=12,
    )
)
def test_yaml_safe_json_reads_back_as_the_same_value(value):
    text = yaml_safe_json(value)
    assert yaml.safe_load(f"key: {text}\nafter: 1\n") == {"key": value, "after": 1}
    assert yaml.load(f"- {text}\n", Loader=yaml.CSafeLoader) == [value]


def test_yaml_safe_json_handles_keys_longer_than_yaml_simple_key_limit():
    value = {"Ṱ̺̺̕o͞" * 300: None, "k" * 5000: ["v"]}
    assert yaml.safe_load(f"key: {yaml_safe_json(value)}\n") == {"key": value}
