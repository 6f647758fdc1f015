"""pipeline.setup: earlier snapshots' exports, a dataset shared with another job, the tenant, the run plan."""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
from unit.pipeline.fakes import Segmentation, batch, export_job, snapshot_label

from airflow_cja_audiences.errors import AepConfigError, AepError, is_permanent
from airflow_cja_audiences.models import Dataset
from airflow_cja_audiences.pipeline import setup
from airflow_cja_audiences.pipeline.refusals import SharedDatasetError

NOW = 1_800_000_000_000


class _Catalog:
    def __init__(self, *batches, dataset=True):
        self.batches, self.dataset = list(batches), dataset

    def find_dataset(self, name):
        return Dataset.model_validate({"id": "ds", "name": name}) if self.dataset else None

    def list_batches(self, dataset_id, *, created_after_ms=None, max_items=10_000):
        return self.batches


def _created(b, ms):
    return b.model_copy(update={"created": ms})


def test_previous_exports_reads_the_audiences_of_the_job_snapshots_exports():
    catalog = _Catalog(
        _created(batch("s2", "success", snapshot_label(export_batch_id="E2")), NOW - 1000),
        _created(batch("s1", "inactive", snapshot_label(export_batch_id="E1")), NOW - 2000),
        _created(batch("x", "success", snapshot_label(job_id="other", export_batch_id="EX")), NOW),
        _created(batch("f", "failed", snapshot_label(export_batch_id="EF")), NOW),
    )
    jobs = Segmentation(
        export_job(
            2,
            destination={"batchId": "E2"},
            creationTime=NOW - 1500,
            filter={"segments": [{"segmentId": "a"}]},
        ),
        export_job(
            1,
            destination={"batchId": "E1"},
            creationTime=NOW - 2500,
            filter={"segments": [{"segmentId": "a"}, {"segmentId": "b"}]},
        ),
    )
    found = setup.previous_exports(catalog, jobs, dataset_name="Profiles", job_id="job", now_ms=NOW)
    assert found.snapshots == 2
    assert found.audience_ids == {"a": 2, "b": 1}  # the latest export that listed each
    assert found.first_exported_ms == {"a": NOW - 2000, "b": NOW - 2000}
    assert (
        setup.previous_exports(
            _Catalog(dataset=False), jobs, dataset_name="P", job_id="job", now_ms=NOW
        ).snapshots
        == 0
    )


def test_refuse_other_jobs():
    setup.refuse_other_jobs(_Catalog(batch("a", "success", snapshot_label())), "ds", "Shared", "job")
    with pytest.raises(SharedDatasetError, match=r"holds live batches of job\(s\) other") as err:
        setup.refuse_other_jobs(
            _Catalog(batch("o", "success", snapshot_label(job_id="other"))), "ds", "Shared", "job"
        )
    assert is_permanent(err.value)


def test_check_resolved_refuses_an_id_that_is_not_one():
    setup.check_resolved([SimpleNamespace(id="4d4c6a59-2b4d-4bbd-9aa4-7c3b3f54d2e1")])
    with pytest.raises(AepError, match="not one"):
        setup.check_resolved([SimpleNamespace(id="x' OR 1=1 --")])


class _Registry:
    sandbox = "prod"

    def __init__(self, answer):
        self.answer = answer

    def get_tenant_id(self):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_check_tenant():
    setup.check_tenant(_Registry("acme"), "acme")
    setup.check_tenant(_Registry(AepError("no tenant")), "acme")  # nothing to compare with
    with pytest.raises(AepConfigError, match="'acme' is not the tenant of sandbox 'prod'.*'other'"):
        setup.check_tenant(_Registry("other"), "acme")


def test_plan_this_run_reads_the_form_and_names_a_bad_field():
    now = datetime(2026, 11, 5, tzinfo=timezone.utc)
    start, end = datetime(2026, 11, 3, tzinfo=timezone.utc), datetime(2026, 11, 4, tzinfo=timezone.utc)
    plan = setup.plan_this_run(
        params={}, data_interval=(start, end), run_type="scheduled", publish_events=True, now=now
    )
    assert plan.snapshot and plan.events
    backfill = setup.plan_this_run(
        params={}, data_interval=(start, end), run_type="backfill", publish_events=True, now=now
    )
    assert not backfill.snapshot and backfill.events
    with pytest.raises(ValueError, match="events_interval_end is required"):
        setup.plan_this_run(
            params={"events_interval_start": "2026-11-01"},
            data_interval=(None, None),
            run_type="manual",
            publish_events=True,
            now=now,
        )
    with pytest.raises(ValueError, match="events_interval_start 'soon' is not an ISO 8601"):
        setup.plan_this_run(
            params={"events_interval_start": "soon", "events_interval_end": "2026-11-02"},
            data_interval=(None, None),
            run_type="manual",
            publish_events=True,
            now=now,
        )
    assert setup.instant("2026-11-01T00:00:00", "x").tzinfo is timezone.utc
    assert setup.run_type_name("DagRunType.SCHEDULED") == "scheduled"
