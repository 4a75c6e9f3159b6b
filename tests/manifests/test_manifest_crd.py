"""The WorkFlow CRD: names, printer columns, and a structural schema that
accepts real Workflows and rejects bad ones."""

import copy

import pytest

from ._support import (
    WORKFLOW_SAMPLE,
    crd,
    crd_openapi_schema,
    crd_version,
    find_doc,
    is_custom,
    load_docs,
    workflow_validator,
)

STATUS_CODES = [1, 10, 20, 30, 31, 32, 40, 50, 60, 70]


def sample_workflow():
    return copy.deepcopy(find_doc(WORKFLOW_SAMPLE, "WorkFlow"))


def errors(doc):
    return list(workflow_validator().iter_errors(doc))


def full_status():
    return {
        "statusCode": 70,
        "statusText": "Job completed",
        "stopreq": 0,
        "phase": "Succeeded",
        "message": "",
        "dateCreated": "2024-05-01T10:00:00Z",
        "dateStarted": "2024-05-01T10:00:05Z",
        "dateFinished": "2024-05-01T10:03:00Z",
        "algologUrl": "ipfs://QmAlgoLog",
        "configlogUrl": "ipfs://QmConfigLog",
        "publishlogUrl": "ipfs://QmPublishLog",
        "outputsUrl": ["ipfs://QmOut1", "ipfs://QmOut2"],
        "owner": "0xabc",
        "agreementId": "0x123",
        "conditions": [
            {
                "type": "Succeeded",
                "status": "True",
                "reason": "JobCompleted",
                "message": "done",
                "lastTransitionTime": "2024-05-01T10:03:00Z",
            }
        ],
        "kopf": {"progress": {}},
        "notifiedStart": True,
        "notifications": {"start": "delivered", "stop": "gave up after 12 attempts: HTTP 503"},
        "notifying": {"stop": "5c5a3710-9d41-4ec4-9dcc-c35c52844385:stop"},
    }


def test_crd_names_group_and_scope():
    spec = crd()["spec"]
    assert crd()["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd()["metadata"]["name"] == "workflows.oceanprotocol.com"
    assert spec["group"] == "oceanprotocol.com"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "WorkFlow",
        "listKind": "WorkFlowList",
        "plural": "workflows",
        "singular": "workflow",
        "shortNames": ["wf"],
    }


def test_crd_serves_and_stores_only_v1alpha():
    versions = crd()["spec"]["versions"]
    assert [v["name"] for v in versions] == ["v1alpha"]
    assert versions[0]["served"] is True and versions[0]["storage"] is True


def test_crd_has_status_subresource():
    assert crd_version()["subresources"] == {"status": {}}


def test_crd_printer_columns_show_status_code_phase_and_age():
    columns = {c["name"]: c for c in crd_version()["additionalPrinterColumns"]}
    assert columns["Status"]["jsonPath"] == ".status.statusText"
    assert columns["Code"]["jsonPath"] == ".status.statusCode"
    assert columns["Code"]["type"] == "integer"
    assert columns["Phase"]["jsonPath"] == ".status.phase"
    assert columns["Age"] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def test_crd_printer_columns_point_at_declared_status_fields():
    status_props = crd_openapi_schema()["properties"]["status"]["properties"]
    for column in crd_version()["additionalPrinterColumns"]:
        path = column["jsonPath"]
        if path.startswith(".status."):
            assert path.removeprefix(".status.") in status_props, path


def _walk(node, path="$"):
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")


def test_crd_schema_is_structural_every_node_has_a_type():
    for path, node in _walk(crd_openapi_schema()):
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path
        assert not ("properties" in node and "additionalProperties" in node), path


def test_crd_status_code_enum_lists_exactly_the_contract_codes():
    status = crd_openapi_schema()["properties"]["status"]
    assert status["properties"]["statusCode"]["enum"] == STATUS_CODES


def test_crd_preserves_unknown_fields_in_spec_metadata_and_status():
    props = crd_openapi_schema()["properties"]
    assert props["spec"]["properties"]["metadata"]["x-kubernetes-preserve-unknown-fields"] is True
    assert props["status"]["x-kubernetes-preserve-unknown-fields"] is True


def test_sample_workflow_file_holds_only_workflows():
    docs = load_docs(WORKFLOW_SAMPLE)
    assert docs and all(is_custom(d) for d in docs)


def test_sample_workflow_validates_against_crd_schema():
    for doc in load_docs(WORKFLOW_SAMPLE):
        assert errors(doc) == []


def test_workflow_with_full_status_and_bookkeeping_fields_validates():
    wf = sample_workflow()
    wf["spec"]["stopRequested"] = True
    wf["status"] = full_status()
    assert errors(wf) == []


def test_every_contract_status_code_is_accepted():
    for code in STATUS_CODES:
        wf = sample_workflow()
        wf["status"] = {"statusCode": code}
        assert errors(wf) == [], code


def test_legacy_workflow_document_shape_is_preserved():
    wf = sample_workflow()
    wf["spec"]["metadata"] = {
        "service": [
            {
                "type": "Metadata",
                "attributes": {
                    "workflow": {
                        "stages": [{"index": 0, "requirements": {"container": {"image": "openjdk", "tag": "14-jdk"}}}]
                    }
                },
            }
        ]
    }
    assert errors(wf) == []


@pytest.mark.parametrize(
    "field,value",
    [
        ("statusCode", 99),
        ("statusCode", "70"),
        ("stopreq", 3),
        ("phase", "Done"),
        ("outputsUrl", "ipfs://QmNotAList"),
        ("conditions", [{"type": "Ready", "status": "Maybe"}]),
        ("notifications", {"start": True}),
        ("notifying", "uid:start"),
    ],
)
def test_invalid_status_value_is_rejected(field, value):
    wf = sample_workflow()
    wf["status"] = {field: value}
    assert errors(wf), (field, value)


def test_status_date_that_is_not_rfc3339_is_rejected():
    import jsonschema

    if "date-time" not in jsonschema.Draft202012Validator.FORMAT_CHECKER.checkers:
        pytest.skip("no date-time format checker installed (rfc3339-validator)")
    wf = sample_workflow()
    wf["status"] = {"dateFinished": "yesterday"}
    assert errors(wf)


def test_string_stop_requested_is_rejected():
    wf = sample_workflow()
    wf["spec"]["stopRequested"] = "yes"
    assert errors(wf)


def test_workflow_without_spec_metadata_is_rejected():
    wf = sample_workflow()
    del wf["spec"]["metadata"]
    assert errors(wf)


def test_workflow_without_spec_is_rejected():
    wf = sample_workflow()
    del wf["spec"]
    assert errors(wf)


def test_unknown_spec_field_is_rejected():
    wf = sample_workflow()
    wf["spec"]["stopRequestd"] = True
    assert errors(wf)


def test_non_string_secret_is_rejected():
    wf = sample_workflow()
    wf["spec"]["secret"] = {"value": "s3cret"}
    assert errors(wf)


def _statuses_the_operator_writes():
    """Every status a run through the pipeline writes: each stage, each kind of ending, the bookkeeping."""
    from operator_engine.pipeline import JobView, View, internal_error, next_step, refused

    now = "2026-11-26T12:00:00Z"
    done, failed = JobView(exists=True, succeeded=True), JobView(exists=True, failed=True, exit_code=3)
    jobs = {"configure": done, "algorithm": failed, "filter": failed, "publish": failed}
    status: dict = {}
    written = []
    for admitted in (False, True, False, False, False, False, False, False):
        view = View(
            status=status, created=now, generation=1, admitted=admitted, filtering=True, jobs=jobs, notes=("n",)
        )
        step = next_step(view, now)
        if step.status:
            written.append(step.status)
            status = {**status, **step.status}
    blank = View(status={}, created=now, generation=1)
    written += [
        next_step(View(status={}, problem="x: bad"), now).status,
        next_step(View(status=written[0], stop_requested=True), now).status,
        refused(blank, "422 no", now).status,
        internal_error(blank, "KeyError", now).status,
        {"cleanedUp": True, "notifications": {"start": "delivered", "stop": "gave up after 3 attempts: HTTP 503"}},
    ]
    assert status.get("dateFinished"), status  # the run above reached its end
    return written


def test_every_status_field_the_operator_writes_is_declared():
    schema = crd_openapi_schema()["properties"]["status"]
    declared = schema["properties"]
    condition_fields = declared["conditions"]["items"]["properties"]
    undeclared = set()
    for status in _statuses_the_operator_writes():
        undeclared |= {f"status.{k}" for k in status if k not in declared}
        for condition in status.get("conditions", []):
            undeclared |= {f"status.conditions[].{k}" for k in condition if k not in condition_fields}
        for key in status.get("outcome") or {}:
            if key not in declared["outcome"]["properties"]:
                undeclared.add(f"status.outcome.{key}")
        doc = sample_workflow()
        doc["status"] = {k: v for k, v in status.items() if v is not None}  # a merge patch's null deletes
        assert errors(doc) == [], status
    assert not undeclared, sorted(undeclared)
