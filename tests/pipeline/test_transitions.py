"""Every status transition outside the stages, on its own: what the cluster holds -> the next step.

Queueing, admission, rejection, a stop while queued, the endings the API
server or a bug force, and the conditions each status carries.
"""

from __future__ import annotations

from typing import Any

from operator_engine.facts import STATUS_TEXT, StatusCode
from operator_engine.pipeline import (
    JobView,
    View,
    conditions,
    internal_error,
    next_step,
    refused,
)

NOW = "2026-11-26T12:00:00Z"
LATER = "2026-11-26T12:05:00Z"
CREATED = "2026-11-26T11:59:58Z"


def view(status: dict[str, Any] | None = None, **fields: Any) -> View:
    return View(status=status or {}, created=CREATED, generation=1, **fields)


def states(result: list[dict[str, Any]]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in result}


def queued_status() -> dict[str, Any]:
    status = next_step(view(), NOW).status
    return status


def test_a_new_workflow_gets_the_finalizer_and_is_queued_with_code_1():
    step = next_step(view(owner="0xabc", agreement_id="0x1"), NOW)
    assert step.finalizer
    assert step.create == [] and step.delete == []
    assert step.status["statusCode"] == 1 and step.status["statusText"] == "Warming up"
    assert step.status["phase"] == "Queued" and step.status["stopreq"] == 0
    assert step.status["dateCreated"] == CREATED
    assert (step.status["owner"], step.status["agreementId"]) == ("0xabc", "0x1")
    assert step.event and step.event[0] == "Queued"
    assert not step.waits, "queueing needs no cluster change: admission may follow at once"


def test_a_clamp_is_said_in_the_queued_message():
    step = next_step(view(notes=("compute.maxtime 9000s exceeds", "another")), NOW)
    assert step.status["message"] == "compute.maxtime 9000s exceeds; another"


def test_a_queued_workflow_waits_until_admission_picks_it():
    assert not next_step(view(queued_status()), NOW)


def test_admission_starts_a_queued_workflow_with_code_10_and_carries_on_at_once():
    step = next_step(view(queued_status(), admitted=True), LATER)
    assert step.status["statusCode"] == 10 and step.status["phase"] == "Running"
    assert step.status["dateStarted"] == LATER
    assert step.event and step.event[0] == "Started"
    assert not step.waits, "admission is a pure hop: the volumes and configure Job follow in the same call"
    then = next_step(view({**queued_status(), **step.status}), LATER)
    assert then.create == ["setup", "configure"] and then.waits


def test_admission_of_a_workflow_no_longer_queued_does_nothing():
    running = {**queued_status(), "statusCode": 1, "phase": "Running"}
    assert not next_step(view(running, admitted=True), LATER)


def test_a_stop_request_while_queued_ends_it_stopped_before_admission():
    for admitted in (False, True):
        step = next_step(view(queued_status(), stop_requested=True, admitted=admitted), LATER)
        assert step.status["statusCode"] == 70 and step.status["phase"] == "Stopped"
        assert step.status["stopreq"] == 1 and step.status["dateFinished"] == LATER
        assert step.status["message"] == "stop requested while queued"
        assert step.create == [] and step.waits


def test_an_invalid_workflow_ends_failed_naming_the_field_and_creates_nothing():
    for status in ({}, queued_status(), {"statusCode": 40, "phase": "Running", "dateStarted": NOW}):
        step = next_step(view(status, problem="spec.metadata.stages[0].algorithm.container.image: required"), NOW)
        assert step.status["statusCode"] == 70 and step.status["phase"] == "Failed"
        assert step.status["message"] == (
            "invalid Workflow: spec.metadata.stages[0].algorithm.container.image: required"
        )
        assert step.create == [] and step.delete == [] and not step.finalizer
        assert step.event and step.event[0] == "Rejected"
        failed = {c["type"]: c for c in step.status["conditions"]}["Failed"]
        assert failed["status"] == "True" and failed["reason"] == "Rejected"


def test_a_rejected_workflow_dates_its_creation():
    assert next_step(view(problem="x: bad"), NOW).status["dateCreated"] == CREATED


def test_a_terminal_workflow_has_no_next_step_even_if_invalid_now():
    final = {"statusCode": 70, "phase": "Succeeded", "dateFinished": NOW}
    assert not next_step(view(final, problem="x: bad", stop_requested=True), LATER)


def test_a_permanent_refusal_ends_the_workflow_failed_with_the_api_servers_reason():
    running = {"statusCode": 20, "phase": "Running", "dateStarted": NOW}
    step = refused(view(running), "422 Job is forbidden by policy", LATER)
    assert step.status["statusCode"] == 70 and step.status["phase"] == "Failed"
    assert step.status["stopreq"] == 0 and step.status["dateFinished"] == LATER
    assert step.status["message"] == "the API server refused a request: 422 Job is forbidden by policy"
    assert states(step.status["conditions"]) == {
        "Admitted": "True",
        "Running": "False",
        "Succeeded": "False",
        "Failed": "True",
    }


def test_an_internal_error_ends_it_failed_without_the_details():
    step = internal_error(view({}), "KeyError", NOW)
    assert step.status["phase"] == "Failed" and step.status["statusCode"] == 70
    assert step.status["message"].startswith("internal error (KeyError)")
    assert step.status["dateCreated"] == CREATED
    assert {c["type"]: c["reason"] for c in step.status["conditions"]}["Failed"] == "InternalError"


def test_an_internal_error_after_the_end_leaves_the_ending_as_it_is():
    assert not internal_error(view({"statusCode": 70, "phase": "Stopped", "dateFinished": NOW}), "KeyError", LATER)


def test_every_status_code_has_its_text_and_codes_are_plain_numbers():
    assert [int(c) for c in StatusCode] == [1, 10, 20, 30, 31, 32, 40, 50, 60, 70]
    assert set(STATUS_TEXT) == {int(c) for c in StatusCode}
    status = next_step(view(), NOW).status
    assert type(status["statusCode"]) is int


def test_conditions_say_the_current_state_with_the_observed_generation():
    queued = queued_status()
    assert states(queued["conditions"]) == {
        "Admitted": "False",
        "Running": "False",
        "Succeeded": "False",
        "Failed": "False",
    }
    assert all(c["observedGeneration"] == 1 for c in queued["conditions"])
    assert all({"type", "status", "reason", "message", "lastTransitionTime"} <= c.keys() for c in queued["conditions"])
    started = next_step(View(status=queued, created=CREATED, generation=2, admitted=True), LATER).status
    by_type = {c["type"]: c for c in started["conditions"]}
    assert states(started["conditions"])["Admitted"] == "True" and by_type["Running"]["status"] == "True"
    assert all(c["observedGeneration"] == 2 for c in started["conditions"])


def test_a_condition_keeps_its_transition_time_until_its_status_changes():
    queued = queued_status()
    started = next_step(view(queued, admitted=True), LATER).status
    before = {c["type"]: c for c in queued["conditions"]}
    after = {c["type"]: c for c in started["conditions"]}
    assert after["Admitted"]["lastTransitionTime"] == LATER  # False -> True
    assert after["Succeeded"]["lastTransitionTime"] == before["Succeeded"]["lastTransitionTime"] == NOW  # still False
    configuring = next_step(view({**queued, **started}), "2026-11-26T12:06:00Z").status
    running = {c["type"]: c for c in configuring["conditions"]}["Running"]
    assert running["lastTransitionTime"] == LATER and running["reason"] == "Configuring"


def test_a_successful_end_sets_succeeded_and_clears_running():
    status = {"statusCode": 60, "phase": "Running", "dateStarted": NOW, "statusText": "Publishing results"}
    step = next_step(view(status, jobs={"publish": JobView(exists=True, succeeded=True)}), LATER)
    assert step.status["phase"] == "Succeeded"
    assert states(step.status["conditions"]) == {
        "Admitted": "True",
        "Running": "False",
        "Succeeded": "True",
        "Failed": "False",
    }


def test_conditions_of_a_timed_out_workflow_say_failed_with_the_phase_as_reason():
    result = conditions(
        [], {"statusCode": 70, "phase": "TimedOut", "dateFinished": NOW, "dateStarted": NOW}, generation=3, now=NOW
    )
    failed = {c["type"]: c for c in result}["Failed"]
    assert failed["status"] == "True" and failed["reason"] == "TimedOut"


def test_pure_hops_do_not_wait_and_job_steps_do():
    provisioned = {"statusCode": 20, "phase": "Running", "dateStarted": NOW}
    hop = next_step(view(provisioned, jobs={"configure": JobView(exists=True, succeeded=True)}), LATER)
    assert hop.status["statusCode"] == 30 and not hop.waits
    algorithm = next_step(view({**provisioned, **hop.status}), LATER)
    assert algorithm.create == ["algorithm"] and algorithm.waits
