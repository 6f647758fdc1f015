"""The batch query model and how the server path finds the batch a query wrote (pure, no HTTP)."""

from __future__ import annotations

import pytest

from airflow_cja_audiences.errors import AepError, AepWaitTimeoutError
from airflow_cja_audiences.hooks.batch_query import BatchQuery, BatchQueryHook, batch_written_by, query_id_of
from airflow_cja_audiences.models import Batch


def _batch(batch_id: str, query_id: str | None = None, **extra) -> Batch:
    related = [{"type": "dataSet", "id": "ds1"}] + ([{"type": "query", "id": query_id}] if query_id else [])
    return Batch.model_validate({"id": batch_id, "status": "success", "relatedObjects": related, **extra})


def _query(state: str = "SUCCESS", **extra) -> BatchQuery:
    return BatchQuery.model_validate(
        {
            "id": "q1",
            "state": state,
            "request": {"name": "label"},
            "created": "2026-12-06T08:00:00.000Z",
            "updated": "2026-12-06T08:01:00.000Z",
            **extra,
        }
    )


def test_states() -> None:
    assert _query().is_success and _query().is_terminal
    for state in ("FAILED", "KILLED", "TIMEOUT"):
        assert _query(state).is_terminal and not _query(state).is_success
    for state in ("SUBMITTED", "IN_PROGRESS"):
        assert not _query(state).is_terminal
    assert _query("in_progress").status == "in_progress" and not _query("in_progress").is_terminal
    assert _query("success").is_success  # Adobe's case varies: matched case-insensitively
    assert not _query("QUEUED_SOMEDAY").is_terminal  # a state Adobe adds later reads as still running
    assert _query().name == "label" and _query().created_ms() == 1796544000000
    failed = _query("FAILED", errors=[{"code": "42P01", "message": "no table"}])
    assert failed.error_summary() == "42P01: no table"


def test_the_linked_batch_is_the_querys() -> None:
    mine, other = _batch("b1", "q1", created=1796544010000), _batch("b2", "q0")
    assert query_id_of(mine) == "q1" and query_id_of(_batch("b3")) is None
    assert batch_written_by([other, mine], _query()).id == "b1"


@pytest.mark.parametrize(
    "batches", [[], [_batch("b1", created=1796544010000)], [_batch("b1", "q1"), _batch("b2", "q1")]]
)
def test_no_guessing_when_catalog_does_not_tell(batches) -> None:
    with pytest.raises(AepError, match="cannot tell which batch query q1 wrote"):
        batch_written_by(batches, _query())


class _Answers:
    """``get_query`` answering the given states in turn (the last one repeats)."""

    def __init__(self, *states: str) -> None:
        self.states, self.calls = list(states), 0

    def __call__(self, query_id: str) -> BatchQuery:
        self.calls += 1
        return _query(self.states.pop(0) if len(self.states) > 1 else self.states[0])


def _hook(monkeypatch, answers: _Answers) -> BatchQueryHook:
    hook = BatchQueryHook.__new__(BatchQueryHook)  # no connection needed: only get_query is called
    monkeypatch.setattr(hook, "get_query", answers, raising=False)
    return hook


def test_the_synchronous_wait_reads_the_shared_status_type_until_the_query_ends(monkeypatch) -> None:
    import time

    answers = _Answers("SUBMITTED", "IN_PROGRESS", "SUCCESS")
    done = _hook(monkeypatch, answers).wait_for_query("q1", deadline=time.time() + 60, poll_interval=0.01)
    assert done.is_success and answers.calls == 3


def test_the_synchronous_wait_has_a_deadline(monkeypatch) -> None:
    import time

    answers = _Answers("IN_PROGRESS")
    with pytest.raises(AepWaitTimeoutError, match="batch query q1 is still IN_PROGRESS"):
        _hook(monkeypatch, answers).wait_for_query("q1", deadline=time.time() - 1, poll_interval=0.01)
    assert answers.calls == 1
