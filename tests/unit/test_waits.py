"""The waitable AEP objects' status types and the one synchronous wait (a fake clock, no sleeping)."""

from __future__ import annotations

import logging
import math

import pytest

from airflow_cja_audiences.errors import AepConfigError, AepWaitTimeoutError, is_permanent
from airflow_cja_audiences.models import (
    BATCH_STATUS,
    EXPORT_JOB_STATUS,
    Batch,
    BatchStatus,
    ExportJob,
    ExportJobStatus,
)
from airflow_cja_audiences.waits import wait_until_terminal


@pytest.mark.parametrize(
    "raw, outcome",
    [
        ("NEW", None),
        ("PROCESSING", None),
        ("SUCCEEDED", "success"),
        ("succeeded", "success"),
        ("FAILED", "failed"),
        ("CANCELLED", "failed"),
        ("QUEUED", None),
        ("", None),
    ],
)
def test_export_job_outcomes(raw, outcome):
    # A status Adobe may add later (QUEUED here) reads as still running, never as an end.
    assert EXPORT_JOB_STATUS.outcome(raw) == outcome
    job = ExportJob.model_validate({"id": 1, "status": raw})
    assert job.outcome == outcome
    assert job.is_terminal is (outcome is not None)
    assert job.is_success is (outcome == "success") and job.is_failed is (outcome == "failed")


@pytest.mark.parametrize(
    "raw, outcome",
    [
        ("loading", None),
        ("processing", None),
        ("staging", None),
        ("retrying", None),
        ("success", "success"),
        ("Active", "success"),
        ("failed", "failed"),
        ("failure", "failed"),
        ("aborted", "failed"),
        ("abandoned", "failed"),
        ("stalled", "failed"),
        ("inactive", "gone"),
        ("DELETED", "gone"),
        ("archived", None),
    ],
)
def test_batch_outcomes(raw, outcome):
    batch = Batch.model_validate({"id": "b", "status": raw})
    assert batch.outcome == outcome == BATCH_STATUS.outcome(raw)
    assert batch.is_terminal is (outcome is not None)
    assert batch.is_gone is (outcome == "gone")
    assert batch.is_open is (raw == "loading")


def test_status_values_are_adobes_spelling():
    assert str(ExportJobStatus.SUCCEEDED) == "SUCCEEDED" and f"{BatchStatus.ACTIVE}" == "active"
    assert Batch.SUCCESS == {"success", "active"} and Batch.GONE == {"inactive", "deleted"}
    assert Batch.FAILED == {"failed", "failure", "aborted", "abandoned", "stalled"}
    # every known status is in at most one of the three sets
    for status_type in (EXPORT_JOB_STATUS, BATCH_STATUS):
        sets = (status_type.success, status_type.failed, status_type.gone)
        assert sum(len(s) for s in sets) == len(frozenset().union(*sets))


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


def _fetcher(statuses: list[str], clock: _Clock):
    seen: list[float] = []

    def fetch() -> Batch:
        seen.append(clock.now)
        return Batch.model_validate(
            {"id": "b1", "status": statuses.pop(0) if len(statuses) > 1 else statuses[0]}
        )

    return fetch, seen


def test_waits_until_terminal_and_returns_the_object(caplog):
    clock = _Clock()
    fetch, seen = _fetcher(["loading", "processing", "processing", "success"], clock)
    with caplog.at_level(logging.INFO, logger="airflow_cja_audiences.waits"):
        batch = wait_until_terminal(
            fetch,
            status_type=BATCH_STATUS,
            what="batch b1",
            deadline=clock.now + 100,
            poll_interval=5,
            clock=clock,
            sleep=clock.sleep,
        )
    assert batch.status == "success" and len(seen) == 4 and clock.sleeps == [5, 5, 5]
    assert "batch b1 is success after 15 s" in caplog.text
    assert caplog.text.count("is processing") == 1  # logged on change, not on every poll


def test_unknown_status_keeps_waiting_until_the_deadline_then_times_out():
    clock = _Clock()
    fetch, seen = _fetcher(["archived"], clock)
    with pytest.raises(AepWaitTimeoutError, match="batch b1 is still archived after 12 s") as info:
        wait_until_terminal(
            fetch,
            status_type=BATCH_STATUS,
            what="batch b1",
            deadline=clock.now + 12,
            poll_interval=5,
            clock=clock,
            sleep=clock.sleep,
        )
    # polls at 0, 5, 10 and exactly at the deadline (12), never after it
    assert [t - 1_000 for t in seen] == [0, 5, 10, 12]
    assert info.value.state == "archived" and not is_permanent(info.value)  # a task retry waits again


def test_first_object_saves_a_request_and_a_terminal_one_returns_at_once():
    clock = _Clock()
    fetch, seen = _fetcher(["success"], clock)
    done = Batch.model_validate({"id": "b1", "status": "failed"})
    assert (
        wait_until_terminal(
            fetch,
            status_type=BATCH_STATUS,
            what="b",
            deadline=clock.now,
            poll_interval=1,
            first=done,
            clock=clock,
            sleep=clock.sleep,
        )
        is done
    )
    assert seen == [] and clock.sleeps == []


def test_deadline_is_required_and_checked():
    clock = _Clock()
    fetch, _ = _fetcher(["loading"], clock)
    with pytest.raises(TypeError, match="deadline"):
        wait_until_terminal(fetch, status_type=BATCH_STATUS, what="b", poll_interval=1)  # type: ignore[call-arg]
    for bad in (None, math.inf, math.nan, "soon", True):
        with pytest.raises(AepConfigError, match="deadline must be a finite epoch time"):
            wait_until_terminal(fetch, status_type=BATCH_STATUS, what="b", deadline=bad, poll_interval=1)
    for bad in (0, -1, math.inf, None):
        with pytest.raises(AepConfigError, match="poll_interval must be"):
            wait_until_terminal(
                fetch, status_type=BATCH_STATUS, what="b", deadline=clock.now, poll_interval=bad
            )
