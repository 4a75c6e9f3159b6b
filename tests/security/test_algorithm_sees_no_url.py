"""docs/SECURITY.md §1: the algorithm never sees where the data came from.

Every shape of Workflow, with URLs carrying credentials and tokens in every
place operator-service may put them, is rendered under every configuration;
nothing the algorithm or filter pod can read (mounts, env with references
resolved, command, args) holds any of those URLs or any part of them, in any
encoding. The configure pod, which fetches, still gets them: that proves the
search below finds what is there.
"""

from __future__ import annotations

from typing import Any

import pytest

from operator_engine import config as config_module
from operator_engine.model import parse_workflow
from operator_engine.render import Renderer, load_checked_config

from .readable import readable_by
from .workflows import CONFIGURATIONS, MARKERS, URLS, encodings, workflows

WORKFLOWS = workflows()
NEEDLES = {form: needle for needle in URLS + MARKERS for form in encodings(needle)}


def rendered(shape: str, configuration: str) -> list[dict[str, Any]]:
    renderer = Renderer(config_module.load(CONFIGURATIONS[configuration]))
    return [child.manifest for child in renderer.render(parse_workflow(WORKFLOWS[shape]))]


def job(children: list[dict[str, Any]], component: str) -> dict[str, Any]:
    return next(c for c in children if c["kind"] == "Job" and c["metadata"]["labels"]["component"] == component)


def leaks(texts: list[str]) -> set[str]:
    """The URLs (or parts) whose encoding appears in `texts`."""
    return {needle for text in texts for form, needle in NEEDLES.items() if form in text}


@pytest.mark.parametrize("configuration", sorted(CONFIGURATIONS))
@pytest.mark.parametrize("shape", sorted(WORKFLOWS))
def test_algorithm_and_filter_pods_read_no_input_or_algorithm_url(shape, configuration):
    children = rendered(shape, configuration)
    components = ["algorithm", "publish"] + (
        ["filter"] if "FILTERING_CONTAINER" in CONFIGURATIONS[configuration] else []
    )
    for component in components:
        found = leaks(readable_by(job(children, component), children))
        assert not found, f"{shape}/{configuration}: the {component} pod can read {sorted(found)}"


@pytest.mark.parametrize("shape", sorted(WORKFLOWS))
def test_the_configure_pod_alone_reads_the_whole_document(shape):
    children = rendered(shape, "everything")
    assert leaks(readable_by(job(children, "configure"), children))  # the search finds what is there


def test_the_redacted_document_keeps_the_dids_and_the_container():
    children = rendered("service-remote", "defaults")
    algorithm = job(children, "algorithm")
    texts = readable_by(algorithm, children)
    import json

    documents = [json.loads(t) for t in texts if t.lstrip().startswith('{"jobId"') or t.startswith('{\n  "jobId"')]
    assert documents, "the algorithm pod gets a /workflow.json"
    stage = documents[0]["stages"][0]
    assert [i["id"] for i in stage["input"]] == [
        "did:op:8d1b4d73e7af4634958f071ab8dfe7ab0df14019755e444090fd392c8ec9c3f4",
        "did:op:remote1",
    ]
    assert stage["algorithm"] == {
        "id": "did:op:algoremote",
        "container": {"image": "python", "tag": "3.11-slim", "entrypoint": "python $ALGO"},
    }


def test_every_needle_encoding_is_found_when_present():
    """The search bites: each encoding of a URL, put where a pod reads, is reported."""
    for form, needle in NEEDLES.items():
        assert needle in leaks([f"prefix {form} suffix"])


@pytest.mark.parametrize(
    "edit",
    [
        ("_job.yaml.j2", "            items: {{ document_items | j }}\n", ""),
        (
            "job-algorithm.yaml.j2",
            "{% block mounts %}\n",
            "{% block mounts %}\n            - {name: whole, mountPath: /doc}\n",
        ),
    ],
    ids=["no-items", "extra-volume"],
)
def test_templates_that_give_the_algorithm_the_whole_document_are_refused_at_start(tmp_path, edit):
    import shutil

    folder = tmp_path / "templates"
    shutil.copytree(config_module.PACKAGED_TEMPLATES_DIR, folder)
    name, old, new = edit
    text = (folder / name).read_text()
    assert old in text
    if name == "job-algorithm.yaml.j2":  # a second volume on the whole ConfigMap
        skeleton = (
            (folder / "_job.yaml.j2")
            .read_text()
            .replace(
                "      volumes:\n",
                "      volumes:\n        - name: whole\n          configMap:\n"
                "            name: {{ names.configmap | j }}\n",
                1,
            )
        )
        (folder / "_job.yaml.j2").write_text(skeleton)
    (folder / name).write_text(text.replace(old, new, 1))
    with pytest.raises(config_module.ConfigError) as raised:
        load_checked_config({"TEMPLATES_DIR": str(folder)})
    message = str(raised.value)
    assert "TEMPLATES_DIR" in message and "job-algorithm.yaml.j2" in message and "whole workflow document" in message


def test_templates_that_do_not_render_stop_the_operator_with_one_line(tmp_path):
    import shutil

    folder = tmp_path / "templates"
    shutil.copytree(config_module.PACKAGED_TEMPLATES_DIR, folder)
    text = (folder / "job-filter.yaml.j2").read_text()
    assert "{% endblock %}" in text
    (folder / "job-filter.yaml.j2").write_text(
        text.replace("{% endblock %}", "            - {name: x, mountPath: {{ no_such_value | j }}}\n{% endblock %}")
    )
    with pytest.raises(config_module.ConfigError, match="TEMPLATES_DIR=.*the templates do not render: 'no_such_value'"):
        load_checked_config({"TEMPLATES_DIR": str(folder)})
