"""The pipeline decision, on its own: status + observed Jobs -> the next step."""

from __future__ import annotations

from typing import Any

import pytest

from operator_engine.pipeline import JobView, Step, admission, decide, is_terminal

NOW = "2026-11-26T12:00:00Z"
DONE = JobView(exists=True, succeeded=True)
RUNNING = JobView(exists=True)


def failed(exit_code: int | None = 1, reason: str | None = "BackoffLimitExceeded", message: Any = None) -> JobView:
    return JobView(exists=True, failed=True, exit_code=exit_code, reason=reason, message=message)


def step(
    code: int,
    jobs: dict[str, JobView] | None = None,
    *,
    stop: bool = False,
    filtering: bool = False,
    outcome: dict[str, Any] | None = None,
    overdue: bool = False,
    lingering: frozenset[str] = frozenset(),
) -> Step:
    status: dict[str, Any] = {"statusCode": code}
    if outcome is not None:
        status["outcome"] = outcome
    return decide(
        status, jobs or {}, stop_requested=stop, filtering=filtering, now=NOW, overdue=overdue, lingering=lingering
    )


def test_admitted_workflow_gets_its_volumes_and_configure_job():
    result = step(10)
    assert result.create == ["setup", "configure"]
    assert result.status["statusCode"] == 20


def test_running_configure_job_means_wait():
    assert not step(20, {"configure": RUNNING})


def test_configure_success_reports_provisioning_success():
    assert step(20, {"configure": DONE}).status["statusCode"] == 30


def test_provisioned_workflow_starts_its_algorithm():
    result = step(30)
    assert result.create == ["algorithm"] and result.status["statusCode"] == 40
    assert result.status["algorithmStarted"] == NOW


@pytest.mark.parametrize("code", [31, 32])
def test_configure_failure_keeps_its_code_skips_the_algorithm_and_publishes_logs(code):
    result = step(20, {"configure": failed(message={"statusCode": code, "message": "input 0: HTTP 404"})})
    assert result.create == ["publish"]
    assert result.status["statusCode"] == 60
    assert result.status["outcome"] == {"phase": "Failed", "statusCode": code, "message": "input 0: HTTP 404"}


def test_configure_failure_without_a_message_is_judged_by_exit_code():
    result = step(20, {"configure": failed(exit_code=137, message="Killed")})
    assert result.status["outcome"]["statusCode"] == 31
    assert "exit code 137" in result.status["outcome"]["message"]


def test_algorithm_success_goes_to_publish_without_filter():
    result = step(40, {"algorithm": DONE})
    assert result.create == ["publish"] and result.status["statusCode"] == 60


def test_algorithm_success_goes_to_filter_when_filtering():
    result = step(40, {"algorithm": DONE}, filtering=True)
    assert result.create == ["filter"] and result.status["statusCode"] == 50


def test_algorithm_failure_names_its_exit_code():
    result = step(40, {"algorithm": failed(exit_code=3)})
    assert result.status["outcome"] == {"phase": "Failed", "message": "the algorithm failed with exit code 3"}
    assert result.create == ["publish"]


def test_deadline_exceeded_is_a_timeout_with_stopreq_2():
    result = step(40, {"algorithm": failed(exit_code=None, reason="DeadlineExceeded")})
    assert result.status["outcome"]["phase"] == "TimedOut" and result.status["outcome"]["stopreq"] == 2


def test_overdue_algorithm_is_deleted_by_the_backstop():
    result = step(40, {"algorithm": RUNNING}, overdue=True)
    assert result.delete == ["algorithm"] and result.status["outcome"]["phase"] == "TimedOut"


def test_stop_request_deletes_the_running_algorithm_and_waits_before_publishing():
    result = step(40, {"algorithm": RUNNING}, stop=True, lingering=frozenset({"algorithm"}))
    assert result.delete == ["algorithm"] and result.create == [], "publish waits for the algorithm's pods"
    assert result.status["statusCode"] == 60
    assert result.status["outcome"] == {"phase": "Stopped", "stopreq": 1, "message": "stopped on request"}


def test_stop_request_never_starts_a_reader_in_the_same_step_even_before_pods_are_seen():
    # The pods observed before the deletion are about to be killed: never trust the old observation.
    for filtering in (False, True):
        result = step(40, {"algorithm": RUNNING}, stop=True, filtering=filtering)
        assert result.delete == ["algorithm"] and result.create == [], filtering


def test_overdue_algorithm_waits_for_its_pods_before_the_filter():
    result = step(40, {"algorithm": RUNNING}, overdue=True, filtering=True)
    assert result.delete == ["algorithm"] and result.create == [] and result.status["statusCode"] == 50


def test_stop_request_during_configure_deletes_it_and_waits_before_publishing_logs():
    result = step(20, {"configure": RUNNING}, stop=True)
    assert result.delete == ["configure"] and result.create == []
    assert result.status["outcome"]["phase"] == "Stopped" and result.status["statusCode"] == 60


@pytest.mark.parametrize(
    "code, reader, jobs, writer",
    [
        (50, "filter", {}, "algorithm"),
        (60, "publish", {}, "algorithm"),
        (60, "publish", {"filter": DONE}, "filter"),
        (60, "publish", {}, "configure"),
    ],
)
def test_no_reader_starts_while_a_writer_pod_may_run(code, reader, jobs, writer):
    deleting = JobView(exists=True, failed=True, deleting=True)
    waiting = step(code, {**jobs, writer: deleting}, outcome={}, lingering=frozenset({writer}))
    assert waiting.create == [] and waiting.delete == [], "its Job is being deleted already: just wait"
    assert step(code, {**jobs, writer: deleting}, outcome={}).create == [reader], "pods gone: the reader starts"


def test_a_writer_whose_job_ended_but_whose_pod_runs_is_deleted_in_the_foreground():
    # Job controllers before Kubernetes 1.31 mark a Job past its deadline Failed while its pod still stops.
    timed_out = failed(exit_code=None, reason="DeadlineExceeded")
    result = step(40, {"algorithm": timed_out}, lingering=frozenset({"algorithm"}))
    assert result.create == [] and result.delete == ["algorithm"]
    assert result.status["outcome"]["phase"] == "TimedOut"
    assert step(40, {"algorithm": timed_out}).create == ["publish"]


def test_filter_end_waits_for_its_own_pod_before_publishing():
    result = step(50, {"filter": DONE}, outcome={}, lingering=frozenset({"filter"}))
    assert result.status["statusCode"] == 60 and result.create == [] and result.delete == ["filter"]


def test_the_running_stage_itself_is_not_held_back():
    assert step(60, {"publish": RUNNING}, outcome={}, lingering=frozenset({"publish"})) == Step()
    assert step(30, {}, lingering=frozenset({"configure"})).create == ["algorithm"]


def test_finished_algorithm_wins_over_a_late_stop_request():
    result = step(40, {"algorithm": DONE}, stop=True)
    assert "outcome" not in result.status and result.create == ["publish"]


def test_algorithm_job_deleted_by_someone_else_fails_the_workflow():
    assert step(40, {}).status["outcome"]["phase"] == "Failed"


@pytest.mark.parametrize("code, component", [(20, "configure"), (50, "filter"), (60, "publish")])
def test_a_lost_job_of_a_repeatable_stage_is_created_again(code, component):
    assert step(code, {}).create == [component]


def test_filter_end_goes_to_publish():
    result = step(50, {"filter": DONE}, outcome={})
    assert result.create == ["publish"] and result.status["statusCode"] == 60


def test_filter_failure_fails_a_successful_workflow_and_withholds_its_outputs():
    result = step(50, {"filter": failed(exit_code=2)}, outcome={})
    assert result.status["outcome"] == {
        "phase": "Failed",
        "withholdOutputs": True,
        "message": "the filter stage failed with exit code 2; outputs withheld",
    }


def test_filter_failure_after_an_algorithm_failure_keeps_its_message_and_withholds_outputs():
    result = step(50, {"filter": failed(exit_code=2)}, outcome={"phase": "Failed", "message": "exit code 3"})
    assert result.status["outcome"] == {"phase": "Failed", "message": "exit code 3", "withholdOutputs": True}


def test_publish_success_copies_result_urls_and_ends_succeeded():
    urls = {"algologUrl": "a", "configlogUrl": "c", "publishlogUrl": "p", "outputsUrl": ["o"]}
    result = step(60, {"publish": JobView(exists=True, succeeded=True, exit_code=0, message=urls)}, outcome={})
    assert result.status == {
        "statusCode": 70,
        "statusText": "Job completed",
        "phase": "Succeeded",
        "stopreq": 0,
        "dateFinished": NOW,
        **urls,
    }
    assert is_terminal(result.status)


def test_publish_end_keeps_a_provisioning_failure_code():
    result = step(60, {"publish": DONE}, outcome={"phase": "Failed", "statusCode": 32, "message": "404"})
    assert result.status["statusCode"] == 32 and result.status["phase"] == "Failed"


def test_publish_failure_fails_the_workflow_with_its_message():
    result = step(60, {"publish": failed(message={"message": "S3 refused"})}, outcome={})
    assert result.status["phase"] == "Failed" and result.status["message"] == "S3 refused"


def test_publish_after_stop_ends_stopped():
    result = step(60, {"publish": DONE}, outcome={"phase": "Stopped", "stopreq": 1, "message": "stopped"})
    assert (result.status["statusCode"], result.status["phase"], result.status["stopreq"]) == (70, "Stopped", 1)


def _wf(name: str, created: str, phase: str | None, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "creationTimestamp": created}
    if deleting:
        meta["deletionTimestamp"] = created
    return {"metadata": meta, "status": {"phase": phase, "statusCode": 1 if phase == "Queued" else 70} if phase else {}}


def test_admission_takes_the_oldest_queued_up_to_free_slots():
    workflows = [
        _wf("c", "2026-01-01T00:00:02Z", "Queued"),
        _wf("a", "2026-01-01T00:00:01Z", "Running"),
        _wf("b", "2026-01-01T00:00:03Z", "Queued"),
        _wf("z", "2026-01-01T00:00:01Z", "Queued"),
    ]
    assert admission(workflows, max_jobs=3) == ["z", "c"]


def test_admission_breaks_same_second_ties_by_name():
    workflows = [_wf(n, "2026-01-01T00:00:00Z", "Queued") for n in ("wf-2", "wf-0", "wf-1")]
    assert admission(workflows, max_jobs=2) == ["wf-0", "wf-1"]


def test_admission_admits_none_when_full_and_frees_a_deleted_slot():
    full = [_wf("a", "t1", "Running"), _wf("b", "t2", "Queued")]
    assert admission(full, max_jobs=1) == []
    assert admission([_wf("a", "t1", "Running", deleting=True), _wf("b", "t2", "Queued")], max_jobs=1) == ["b"]


def test_terminal_workflows_do_not_count():
    workflows = [_wf("a", "t1", "Succeeded"), _wf("b", "t2", "Failed"), _wf("c", "t3", "Queued")]
    assert admission(workflows, max_jobs=1) == ["c"]


def test_admission_never_overtakes_an_older_workflow_not_yet_checked():
    workflows = [_wf("wf-1", "2026-01-01T00:00:00Z", "Queued"), _wf("wf-0", "2026-01-01T00:00:00Z", None)]
    assert admission(workflows, max_jobs=2) == []
    workflows[1]["status"] = {"phase": "Queued", "statusCode": 1}
    assert admission(workflows, max_jobs=2) == ["wf-0", "wf-1"]
