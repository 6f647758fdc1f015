"""pipeline.distill: a retried server-path task finds its query; an events query that lost its claim."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from unit.pipeline.fakes import Ingestion, Queries, Query, batch, events_label

from airflow_cja_audiences.errors import AepError, is_permanent
from airflow_cja_audiences.pipeline import distill

NOW = datetime(2026, 11, 5, tzinfo=timezone.utc)
NOW_MS = int(NOW.timestamp() * 1000)
MINE = events_label("2026-11-02T00:00:00Z", "2026-11-03T00:00:00Z", run_id="r1")
THEIRS = events_label("2026-11-02T12:00:00Z", "2026-11-04T00:00:00Z", run_id="r2")


def _written(batch_id: str, query_id: str, status: str = "success", label=None, created: int = 0):
    found = batch(batch_id, status, label)
    return found.model_copy(
        update={"related_objects": [{"type": "query", "id": query_id}], "created": created}
    )


def test_query_id_and_batch_written_by_follow_catalog_links():
    mine, other = _written("b1", "q1"), batch("b2")
    assert distill.query_id_of(mine) == "q1" and distill.query_id_of(other) is None
    assert distill.batch_written_by([other, mine], Query("q1")).id == "b1"
    with pytest.raises(AepError, match="0 batches of the dataset link to it"):
        distill.batch_written_by([other], Query("q1"))


def test_a_retry_waits_for_its_query_unless_the_batch_it_wrote_is_no_longer_live():
    name = MINE.external_id
    since = distill.reattach_since_ms(NOW)
    assert since == NOW_MS - 2 * 24 * 3600 * 1000
    assert distill.attach(Queries(), Ingestion(), "ds", name, since_ms=since) is None
    running = Queries(Query("q1", "IN_PROGRESS", name))
    assert distill.attach(running, Ingestion(), "ds", name, since_ms=since).id == "q1"
    done = Queries(Query("q1", "SUCCESS", name))
    assert distill.attach(done, Ingestion(_written("b1", "q1")), "ds", name, since_ms=since).id == "q1"
    reverted = Ingestion(_written("b1", "q1", status="inactive"))
    assert distill.attach(done, reverted, "ds", name, since_ms=since) is None
    assert distill.attach(done, Ingestion(), "ds", name, since_ms=since) is None  # no batch tied to it


def _claim(queries, ingestion, query, external_id=MINE.external_id, replaced=()):
    return distill.claim_query(
        queries,
        ingestion,
        "ds",
        query,
        external_id=external_id,
        replaced=replaced,
        labels=None,
        cancel=queries.cancel_query,
        now=NOW,
    )


def test_the_first_query_goes_on():
    mine = Query("q1", name=MINE.external_id, created=NOW_MS - 5000)
    queries = Queries(mine, Query("q2", name=THEIRS.external_id, created=NOW_MS - 1000))
    assert _claim(queries, Ingestion(), mine) is mine
    assert queries.cancelled == []


def test_a_query_overtaken_by_a_live_batch_is_cancelled_and_its_batch_reverted():
    mine = Query("q1", name=MINE.external_id, created=NOW_MS - 5000)
    queries = Queries(mine)
    went_live = batch("theirs", "success", THEIRS).model_copy(update={"created": NOW_MS - 4000})
    # The query finished before the cancel reached it: its batch is live and must go.
    mine.state = "SUCCESS"
    ingestion = Ingestion(went_live, _written("b1", "q1"))
    with pytest.raises(distill.ClaimLostError) as lost:
        _claim(queries, ingestion, mine)
    message = str(lost.value)
    assert message.startswith("events batch theirs [2026-11-02T12:00:00Z, 2026-11-04T00:00:00Z) went live")
    assert f"events batch query q1 [{MINE.scope}] is cancelled" in message
    assert message.endswith("to plan again (nothing of this run is live).")
    assert is_permanent(lost.value)
    assert queries.cancelled == ["q1"] and ingestion.reverted == ["b1"]
    # The same live batch, replaced by this run's plan: no conflict.
    assert _claim(Queries(mine), Ingestion(went_live), mine, replaced=["theirs"]) is mine


def test_a_name_that_is_no_batch_label_is_refused():
    with pytest.raises(distill.ClaimLostError, match="'x' is not a batch label of this package"):
        _claim(Queries(), Ingestion(), Query("q1"), external_id="x")


def test_a_refused_statement_is_told_by_its_sqlstate_class():
    assert distill.refused_statement([{"code": "42601", "message": "syntax error"}])
    assert distill.refused_statement([{"code": "0A000"}, "not a dict"])
    assert not distill.refused_statement([{"code": "53400"}, {"message": "no code"}])
