"""Crash matrix: the process running a task is SIGKILLed in the middle of each step, and the task's
Airflow retry converges: nothing duplicated, exactly one live snapshot equal to the ground truth,
no partial batch ever visible, and the previous snapshot live until the new one succeeded.

How a kill lands inside a step, without sleeping: a latency fault holds the step's request (or
Query Service statement) in the emulator; the test waits until the emulator reports it in flight,
checks what is visible at that moment, SIGKILLs the driver process that runs the task (no
``finally``, no ``on_kill``), releases the held request (it is then processed or fails as it would
for a client that vanished), waits until the emulator has finished it, and resumes the run: the
killed task instance is failed the way the scheduler fails a task whose process died, and retried
as its next try in a new process (see ``driver.py``).

The kill points after setup run as one chain of runs of one job (each run replaces the previous
snapshot), so each starts from a live snapshot; ``make test`` runs three of them (a create, a load,
a replace), the figures script (``CJA_RELIABILITY_FULL=1``) all, and the setup points. Events are
not published by this job, so every held route belongs to the snapshot path (the events path runs
the same operators).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from aep_truth import JobView
from harness import FULL, Pipeline, logical_date, pick, poll
from reliability_checks import assert_converged, duplicates, export_jobs_of

pytestmark = pytest.mark.slow

HOLD_SECONDS = 120  # long enough never to end by itself: the test releases it


@dataclass(frozen=True)
class KillPoint:
    step: str
    tasks: tuple[str, ...]  # the task instance the kill must hit (one of; some run in the same round)
    route: str  # the emulator route name whose request is held (stats are per route name)
    rule: Callable[[str | None], dict]  # the holding rule, given the live snapshot batch id (or None)
    published: bool = False  # the new snapshot is already live when the kill lands


def _hold(route: str) -> Callable[[str | None], dict]:
    return lambda live_batch: {"route": route}


# Each on the first run of a job of its own (afterwards the objects exist and are only looked up).
SETUP_POINTS = [
    KillPoint(
        "setup: creating a dataset",
        ("ensure_export_dataset", "ensure_profile_dataset"),
        "catalog.create_dataset",
        _hold("catalog.create_dataset"),
    ),
    KillPoint(
        "setup: creating the CJA schema",
        ("ensure_profile_dataset",),
        "schema_registry.create_schemas",
        _hold("schema_registry.create_schemas"),
    ),
]
# Successive runs of one job, each starting with a live snapshot to protect.
RUN_POINTS = [
    KillPoint(
        "export: creating the export job",
        ("export_audiences",),
        "segmentation.create_export_job",
        _hold("segmentation.create_export_job"),
    ),
    KillPoint(
        "export: waiting for the job",
        ("export_audiences",),
        "segmentation.get_export_job",
        _hold("segmentation.get_export_job"),
    ),
    KillPoint(
        "load: partition query",
        ("load_snapshot[0]",),
        "query_service.query",
        _hold(r"QUERY .*SELECT personID, key AS audienceId, value.status AS status.*"),
    ),
    KillPoint(
        "load: uploading the file", ("load_snapshot[0]",), "ingestion.put_file", _hold("ingestion.put_file")
    ),
    KillPoint(
        "publish: completing the batch",
        ("publish_snapshot",),
        "ingestion.complete_batch",
        _hold("ingestion.complete_batch"),
    ),
    # No "reverting the replaced snapshot" point any more: the new batch replaces the live one by batch
    # replay, so AEP swaps them in one step when it succeeds and publish sends no REVERT for it.
]
# make test: one point of each kind of step (create, load, publish); the figures script runs all.
QUICK = {"export: creating the export job", "load: uploading the file", "publish: completing the batch"}


def _view(pipeline: Pipeline, emu) -> JobView:
    return JobView(emu, pipeline.job.job_id, [a.id for a in pipeline.job.audiences], emu.credentials.tenant)


def _live_snapshot(view: JobView, pipeline: Pipeline) -> list:
    return view.live_batches(view.dataset_id(pipeline.job.names.profile_dataset), "snapshot")


def _in_flight(emu, route: str) -> int:
    return emu.admin.stats()["routes"].get(route, {}).get("inFlight", 0)


def kill_and_retry(pipeline: Pipeline, emu, point: KillPoint, when, figures, exports_before: int) -> None:
    """One kill point: hold the step's request, check what is visible, kill, release, retry, check."""
    view = _view(pipeline, emu)
    previous = _live_snapshot(view, pipeline) if exports_before else []
    emu.admin.set_faults(
        [
            {
                **point.rule(previous[0].id if previous else None),
                "kind": "latency",
                "seconds": HOLD_SECONDS,
                "times": 1,
            }
        ]
    )
    driver = pipeline.start(when)
    poll(
        lambda: _in_flight(emu, point.route) or driver.popen.poll() is not None,
        timeout=120,
        what=f"the held {point.route} request",
    )
    assert driver.popen.poll() is None, (
        f"{point.step}: the run ended before the kill point:\n{driver.log()[-5000:]}"
    )
    if previous and not point.published:  # at the crash: the previous snapshot, alone and whole
        assert [b.id for b in _live_snapshot(view, pipeline)] == [previous[0].id]
        assert view.snapshot_records(
            view.dataset_id(pipeline.job.names.profile_dataset)
        ) == view.truth_snapshot(previous[0].observed_at)
    killed = driver.kill()
    emu.admin.clear_faults()  # the held request goes on as it would for a client that vanished
    poll(lambda: not _in_flight(emu, point.route), timeout=60, what=f"the released {point.route} request")
    resumed = pipeline.resume(when)
    assert len(resumed.killed) == 1 and resumed.killed[0] in point.tasks, (
        f"{point.step}: killed {resumed.killed}"
    )
    (task,) = resumed.killed
    assert resumed.state == "success", f"{point.step}: the retry did not converge:\n{resumed.log[-6000:]}"
    tries = pipeline.try_numbers(resumed.run_id)
    assert tries[task] == 2, f"{point.step}: {tries}"
    assert_converged(view, pipeline.job)
    assert not any(duplicates(emu).values()), f"{point.step}: {duplicates(emu)}"
    assert len(export_jobs_of(emu, pipeline.job)) == exports_before + 1, (
        f"{point.step}: an export job was repeated"
    )
    visible = (
        "first run: nothing published before"
        if not previous
        else "new snapshot live, old one still live until the retry reverted it"
        if point.published
        else "previous snapshot live and whole until the new one succeeded"
    )
    figures.record(
        "crashes",
        point.step,
        f"converged; 1 live snapshot = ground truth; no duplicates; {visible}",
        seconds=killed.seconds + resumed.seconds,
        retries=dict(resumed.retries),
        killed_task=task,
        held=point.route,
        retry_try=tries[task],
    )


@pytest.mark.skipif(not FULL, reason="figures script only (CJA_RELIABILITY_FULL=1)")
@pytest.mark.parametrize("point", SETUP_POINTS, ids=lambda p: p.step)
def test_a_task_killed_while_creating_converges_on_retry(point, make_pipeline, emu, figures):
    pipeline = make_pipeline("crash_setup", publish_events=False)
    kill_and_retry(pipeline, emu, point, logical_date(), figures, exports_before=0)


def test_a_task_killed_in_any_later_step_converges_on_retry(make_pipeline, emu, figures):
    points = pick(RUN_POINTS, lambda p: p.step in QUICK)
    pipeline = make_pipeline("crash", publish_events=False)
    first = pipeline.run(logical_date(days_ago=len(points)))
    assert first.state == "success", first.log[-5000:]
    for index, point in enumerate(points):
        kill_and_retry(
            pipeline,
            emu,
            point,
            logical_date(days_ago=len(points) - 1 - index),
            figures,
            exports_before=1 + index,
        )
