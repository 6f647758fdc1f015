"""Remote failures: AEP says no. Each case ends as documented (README, "When a run fails"), with AEP's
own reason in the failing task's log, and the previous snapshot live and whole.

One job publishes a snapshot first; then each case is a new run with one failure injected (the
emulator's knobs: the next export job FAILED, the next export batch failed behind a SUCCEEDED job,
the next ingestion batch failed, the next one "success" with a rejected record), or with an input
that shrinks the snapshot beyond the guard. Task retries are off, so each run shows the failure
itself; what a retry or a re-run does next is in the message (and the crash/fault suites).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from aep_truth import JobView
from harness import FULL, Pipeline, logical_date, pick
from reliability_checks import export_jobs_of

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Failure:
    name: str
    knobs: dict  # emulator knobs for this run
    task: str  # the task that must fail
    reasons: tuple[str, ...]  # in that task's log: what AEP said, and what to do
    new_batch_status: str | None = None  # the run's own snapshot batch afterwards (None: none created)
    conf: dict = field(default_factory=dict)
    # The new batch replaced the previous snapshot by batch replay when it succeeded: it stays live,
    # less its failed records (reverting it too would leave no snapshot at all).
    replaced: bool = False


FAILURES = [
    Failure(
        "export job FAILED",
        {"export_job_failures": 1},
        "export_audiences",
        (
            "ended FAILED",
            "Export job failed (failure injected by the emulator)",
            "request id",
            "clear this task to start a new export",
        ),
    ),
    Failure(
        "export job SUCCEEDED but its batch failed",
        {"export_batch_failures": 1},
        "export_audiences",
        ("SUCCEEDED but its batch", "Batch failed while writing to the dataset", "Monitoring > Batches"),
    ),
    Failure(
        "ingestion batch failed",
        {"ingestion_failures": 1},
        "publish_snapshot",
        ("Internal error while processing the batch", "The previous data is untouched"),
        new_batch_status="failed",
    ),
    Failure(
        "ingestion batch success with a failed record (partial)",
        {"partial_ingestion_failures": 1},
        "publish_snapshot",
        (
            "with 1 failed records",
            "record rejected",
            "by batch replay",
            "the 1 failed records are missing from it",
            "trigger a new run",
        ),
        new_batch_status="success",
        replaced=True,
    ),
]


# make test: one export failure and one ingestion failure (with the shrink guard, below).
QUICK = {"export job FAILED", "ingestion batch success with a failed record (partial)"}


def _view(pipeline: Pipeline, emu) -> JobView:
    return JobView(emu, pipeline.job.job_id, [a.id for a in pipeline.job.audiences], emu.credentials.tenant)


def _snapshot_batches(emu, pipeline: Pipeline) -> dict[str, str]:
    """Batch id -> status of every snapshot batch of the job's profile dataset."""
    from airflow_cja_audiences.runs import BatchLabel

    state = emu.admin.state()["sandboxes"]["prod"]
    return {
        b["id"]: b["status"]
        for b in state["batches"].values()
        if (label := BatchLabel.parse(b.get("externalId")))
        and label.job_id == pipeline.job.job_id
        and label.kind == "snapshot"
    }


def _assert_previous_intact(view: JobView, pipeline: Pipeline, live_id: str, observed_at: str) -> None:
    dataset = view.dataset_id(pipeline.job.names.profile_dataset)
    assert [b.id for b in view.live_batches(dataset, "snapshot")] == [live_id], (
        "the previous snapshot was replaced"
    )
    assert view.snapshot_records(dataset) == view.truth_snapshot(observed_at), "the previous snapshot changed"


def _assert_replaced_less_one_person(view: JobView, pipeline: Pipeline, old_id: str, new_id: str):
    dataset = view.dataset_id(pipeline.job.names.profile_dataset)
    (now_live,) = view.live_batches(dataset, "snapshot")
    assert now_live.id == new_id != old_id, "the replay batch is not the live snapshot"
    records, truth = view.snapshot_records(dataset), view.truth_snapshot(now_live.observed_at)
    assert len(truth) - len(records) == 1, "exactly the rejected record's person is missing"
    assert all(truth.get(person) == memberships for person, memberships in records.items())
    return now_live


def test_remote_failures_end_as_documented_and_keep_the_snapshot(make_pipeline, emu, audience_ids, figures):
    pipeline = make_pipeline("remote", publish_events=False, retries=0)
    view = _view(pipeline, emu)
    failures = pick(FAILURES, lambda f: f.name in QUICK)
    days = len(failures) + 4
    first = pipeline.run(logical_date(days_ago=days))
    assert first.state == "success", first.log[-5000:]
    (live,) = view.live_batches(view.dataset_id(pipeline.job.names.profile_dataset), "snapshot")
    for index, failure in enumerate(failures, start=1):
        before = _snapshot_batches(emu, pipeline)
        emu.admin.knobs(**failure.knobs)
        outcome = pipeline.run(logical_date(days_ago=days - index), conf=failure.conf or None)
        assert outcome.state == "failed", f"{failure.name}: the run did not fail"
        assert outcome.tasks[failure.task] == "failed", f"{failure.name}: {outcome.tasks}"
        log = outcome.task_log(failure.task)
        missing = [reason for reason in failure.reasons if reason not in log]
        assert not missing, f"{failure.name}: the log lacks {missing}:\n{log[-4000:]}"
        new = {b: s for b, s in _snapshot_batches(emu, pipeline).items() if b not in before}
        assert list(new.values()) == ([failure.new_batch_status] if failure.new_batch_status else []), new
        if failure.replaced:
            live = _assert_replaced_less_one_person(view, pipeline, live.id, next(iter(new)))
            figures.record(
                "remote failures",
                failure.name,
                f"{failure.task} failed with AEP's reason; the batch "
                f"replaced the previous snapshot by replay and stays live less its failed record",
                seconds=outcome.seconds,
                retries=dict(outcome.retries),
            )
            continue
        _assert_previous_intact(view, pipeline, live.id, live.observed_at)
        figures.record(
            "remote failures",
            failure.name,
            f"{failure.task} failed with AEP's reason; previous snapshot live and whole"
            + (f"; new batch {failure.new_batch_status}" if failure.new_batch_status else ""),
            seconds=outcome.seconds,
            retries=dict(outcome.retries),
        )

    if FULL:  # with one task retry, a FAILED export is followed by a new export job, and the run succeeds
        retrying = make_pipeline("remote", publish_events=False, retries=1)
        emu.admin.knobs(export_job_failures=1)
        recovered = retrying.run(logical_date(days_ago=3))
        assert recovered.state == "success", recovered.log[-5000:]
        assert retrying.try_numbers(recovered.run_id)["export_audiences"] == 2
        assert [j["status"] for j in export_jobs_of(emu, retrying.job)][-2:] == ["FAILED", "SUCCEEDED"]
        (live,) = view.live_batches(view.dataset_id(pipeline.job.names.profile_dataset), "snapshot")
        figures.record(
            "remote failures",
            "export job FAILED, with one task retry",
            "success: the retry started a new export job (FAILED, then SUCCEEDED)",
            seconds=recovered.seconds,
            retries=dict(recovered.retries),
        )

    # The shrink guard: the same job, now over its smallest audience only (far fewer people).
    profile_dataset = view.dataset_id(pipeline.job.names.profile_dataset)
    live_records = view.snapshot_records(profile_dataset)  # the partial case's snapshot lacks one person
    smaller = make_pipeline("remote", publish_events=False, retries=0, audiences=[{"id": audience_ids[0]}])
    before = _snapshot_batches(emu, smaller)
    guarded = smaller.run(logical_date(days_ago=2))
    assert guarded.state == "failed" and guarded.tasks["publish_snapshot"] == "failed", guarded.tasks
    log = guarded.task_log("publish_snapshot")
    assert "shrink guard" in log and "force_replace=true" in log and "The live snapshot is kept" in log, log[
        -3000:
    ]
    assert [b.id for b in view.live_batches(profile_dataset, "snapshot")] == [live.id], (
        "the snapshot was replaced"
    )
    assert view.snapshot_records(profile_dataset) == live_records, "the live snapshot changed"
    new = {b: s for b, s in _snapshot_batches(emu, smaller).items() if b not in before}
    assert list(new.values()) == ["aborted"], f"the refused batch must be aborted, not left open: {new}"
    figures.record(
        "remote failures",
        "shrink guard tripped (snapshot would lose > 50%)",
        "publish_snapshot failed (no retry); new batch aborted; previous snapshot live and whole",
        seconds=guarded.seconds,
        retries=dict(guarded.retries),
    )

    if not FULL:
        return
    forced = smaller.run(logical_date(days_ago=1), conf={"force_replace": True})
    assert forced.state == "success", forced.log[-5000:]
    assert "forced, replacing anyway" in forced.task_log("publish_snapshot")
    smaller_view = _view(smaller, emu)
    dataset = smaller_view.dataset_id(smaller.job.names.profile_dataset)
    (now_live,) = smaller_view.live_batches(dataset, "snapshot")
    assert now_live.id != live.id
    assert smaller_view.snapshot_records(dataset) == smaller_view.truth_snapshot(now_live.observed_at)
    figures.record(
        "remote failures",
        "shrink guard, run again with force_replace=true",
        "success; the smaller snapshot replaced the old one",
        seconds=forced.seconds,
        retries=dict(forced.retries),
    )
