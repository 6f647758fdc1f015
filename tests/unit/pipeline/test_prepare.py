"""pipeline.prepare: a reverted export or an empty identity field stops a load before it writes."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import pytest
from unit.pipeline.fakes import EXPORT, Ingestion, batch, export_job, snapshot_label

from airflow_cja_audiences import scanplan
from airflow_cja_audiences.config import RefreshJob
from airflow_cja_audiences.errors import AepError, is_permanent
from airflow_cja_audiences.pipeline import prepare
from airflow_cja_audiences.pipeline.refusals import ClosedBatchError, ExportGoneError, IdentityFieldEmptyError

JOB = {
    "job_id": "job",
    "audiences": [{"id": "aud-1"}],
    "identity": {"field": "_{tenant}.identification.core.email"},
}


def test_a_live_export_passes_and_a_reverted_one_is_refused_naming_who_and_retention():
    prepare.require_live_export(Ingestion(batch(EXPORT, "success")), EXPORT, "snapshot", 7)
    gone = batch(EXPORT, "inactive").model_copy(update={"updated": 1_800_000_000_000})
    with pytest.raises(ExportGoneError, match=r"is 'inactive' .* export_retention_days \(7\)") as err:
        prepare.require_live_export(Ingestion(gone), EXPORT, "snapshot", 7)
    assert is_permanent(err.value) and "publish an empty snapshot" in str(err.value)
    with pytest.raises(ExportGoneError, match="keeps its exports"):
        prepare.require_live_export(Ingestion(gone), EXPORT, "events", None)


def test_no_person_id_at_all_is_refused_some_missing_only_warns(caplog):
    with pytest.raises(IdentityFieldEmptyError, match="empty in all 5 exported memberships"):
        prepare.check_identified(5, 0, person_field="_acme.email", export_batch_id=EXPORT)
    with caplog.at_level(logging.WARNING):
        prepare.check_identified(5, 3, person_field="_acme.email", export_batch_id=EXPORT)
    assert "2 of 5 memberships have no _acme.email" in caplog.text
    prepare.check_identified(0, 0, person_field="_acme.email", export_batch_id=EXPORT)  # empty audiences


def test_checked_batch_id_refuses_what_cannot_go_into_a_url():
    with pytest.raises(AepError, match="not one"):
        prepare.checked_batch_id("../etc")


def test_plan_by_rows_and_by_time():
    by_rows = RefreshJob.model_validate({**JOB, "query_partitioning": "rows", "max_rows_per_query": 1000})
    assert len(prepare.plan_partitions(by_rows, "snapshot", 2500, 1.0, max_map_length=1024)) == 3
    by_time = RefreshJob.model_validate(JOB)
    assert prepare.plan_partitions(by_time, "snapshot", 10, 0.1, max_map_length=1024)
    with pytest.raises(scanplan.PlanError):
        prepare.plan_partitions(by_rows, "snapshot", 10_000, 1.0, max_map_length=2)


def test_target_batch_replays_the_live_snapshot_and_falls_back_when_refused():
    ingestion = Ingestion()
    created = prepare.create_target_batch(ingestion, "ds", snapshot_label(), ["old"])
    assert created.replay == {"predecessors": ["old"], "reason": "replace"}
    ingestion.refuse_replay = True
    prepare.create_target_batch(ingestion, "ds", snapshot_label(), ["old"])
    assert [c["replay"] for c in ingestion.created] == [["old"], None]


def _export(job_id: int, batch_id: str, at: datetime, audiences=("aud-1",), dataset="exports", timed=False):
    segments = [{"segmentId": a, **({"segmentQualificationTime": {}} if timed else {})} for a in audiences]
    return export_job(
        job_id,
        destination={"datasetId": dataset, "batchId": batch_id},
        creationTime=int(at.timestamp() * 1000),
        filter={"segments": segments},
    )


def test_export_history_reads_lazily_and_only_the_job_export_dataset():
    t = lambda day: datetime(2026, 11, day, tzinfo=timezone.utc)  # noqa: E731
    jobs = [
        _export(3, "B3", t(3), timed=True),
        _export(9, "X", t(3), dataset="elsewhere"),
        _export(2, "B2", t(2)),
        _export(1, "B1", t(1)),
    ]
    opened = []
    history = prepare.ExportHistory(lambda: opened.append(1) or iter(jobs), "exports")
    assert opened == []
    assert [r.batch_id for r in history.since(t(3))] == ["B3", "B2"]  # stops at the first full export before
    assert history.find("B1").segment_ids == ("aud-1",)
    assert history.find("X") is None and opened == [1]
    assert prepare.ExportHistory(lambda: iter(jobs), "").find("B1") is None


def test_snapshot_counts_mark_new_audiences_and_cover_both_exports():
    t = datetime(2026, 11, 1, tzinfo=timezone.utc)
    exports = prepare.ExportHistory(
        lambda: iter([_export(2, EXPORT, t), _export(1, "PREV", t, audiences=("aud-1",))]), "exports"
    )
    previous = [batch("live", "success", snapshot_label(export_batch_id="PREV"))]
    statements = []

    def query_all(text):
        statements.append(text)
        # memberships, identified, members, entered, entered_untimed, exited, untraced
        return [("aud-1", 9, 5, 5, 2, 1, 1, 0), ("aud-2", 3, 3, 3, 0, 0, 0, 0)]

    from airflow_cja_audiences import sql

    q = sql.build_membership_query(
        RefreshJob.model_validate(JOB),
        table="t",
        batch_id=EXPORT,
        tenant="acme",
        audience_ids=["aud-1", "aud-2"],
    )
    read = prepare.read_snapshot(
        query_all, q, previous=previous, labels=lambda b: None, export_batch_id=EXPORT
    )
    assert (read.total, read.identified, read.previous_export) == (12, 8, "PREV")
    found = prepare.snapshot_counts(read, ["aud-1", "aud-2"], exports=exports, export_batch_id=EXPORT)
    assert found.counts["aud-1"] == {
        "members": 5,
        "entered": 2,
        "entered_untimed": 1,
        "exited": 1,
        "untraced": 0,
        "unidentified": 4,
        "new": False,
    }
    assert found.counts["aud-2"]["new"] is True and found.counts["aud-2"]["entered"] is None
    assert found.coverage["from_batch_id"] == "PREV" and found.coverage["to_batch_id"] == EXPORT
    assert len(statements) == 1 and "PREV" in statements[0]  # one read of both exports


def test_a_load_into_a_batch_no_longer_open_is_refused():
    prepare.require_open_batch(Ingestion(batch("b", "loading")), "b")
    with pytest.raises(ClosedBatchError, match="batch b of this run is 'success', no longer open"):
        prepare.require_open_batch(Ingestion(batch("b", "success")), "b")


@pytest.mark.parametrize(("value", "parsed"), [(None, None), ("", None), ("None", None), ("42", 42), (7, 7)])
def test_export_job_id_from_a_template(value, parsed):
    assert prepare.export_job_id(value) == parsed


def test_export_job_id_that_is_not_one_is_a_config_error():
    from airflow_cja_audiences.errors import AepConfigError

    with pytest.raises(AepConfigError, match="export_job_id 'abc' is not an export job id"):
        prepare.export_job_id("abc")


def test_expected_rows_from_the_job_else_from_its_catalog_batch():
    from unit.pipeline.fakes import Segmentation

    counted = Segmentation(export_job(1, metrics={"totalExportedProfileCounter": 12}), export_job(2))
    catalog = Ingestion(batch(EXPORT, "success", records=9))
    opened = []

    def cat():
        opened.append("catalog")
        return catalog

    got = prepare.expected_export_rows(1, EXPORT, jobs=lambda: counted, catalog=cat)
    assert (got.rows, opened) == (12, [])  # the catalog is not even asked
    assert prepare.expected_export_rows(2, EXPORT, jobs=lambda: counted, catalog=cat).rows == 9
    assert prepare.expected_export_rows(None, EXPORT, jobs=lambda: 1 / 0, catalog=cat).rows == 9
