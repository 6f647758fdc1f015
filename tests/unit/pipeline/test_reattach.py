"""pipeline.reattach: a retried export task finds the job its earlier try started, never another run's."""

from __future__ import annotations

import pytest
from unit.pipeline.fakes import Segmentation, Store, export_job

from airflow_cja_audiences.errors import AepError
from airflow_cja_audiences.models import ExportJobRequest
from airflow_cja_audiences.pipeline import reattach

REQUEST = ExportJobRequest(dataset_id="ds", segment_ids=("aud-1",))
NOW = 1_800_000_000_000
FIRST = reattach.TryContext(try_number=1, run_start_ms=NOW - 60_000)
RETRY = reattach.TryContext(try_number=2, run_start_ms=NOW - 60_000)


def test_first_try_creates_and_remembers_what_existed_before():
    earlier_run = export_job(7, "SUCCEEDED")
    jobs, store = Segmentation(earlier_run), Store()
    job = reattach.attach_or_create(jobs, store, REQUEST, FIRST, now_ms=NOW)
    assert jobs.created == [job.id] and jobs.find_calls == []  # a first try never looks
    assert store == {
        reattach.STATE_EARLIER_JOBS: [7],
        reattach.STATE_STARTED_MS: NOW,
        reattach.STATE_JOB_ID: job.id,
    }


def test_retry_re_attaches_to_the_stored_job():
    jobs = Segmentation(export_job(42, "PROCESSING"))
    job = reattach.attach_or_create(jobs, Store({reattach.STATE_JOB_ID: 42}), REQUEST, RETRY, now_ms=NOW)
    assert job.id == 42 and jobs.created == []


def test_retry_starts_a_new_job_when_the_stored_one_failed():
    jobs = Segmentation(export_job(42, "FAILED"))
    job = reattach.attach_or_create(jobs, Store({reattach.STATE_JOB_ID: 42}), REQUEST, RETRY, now_ms=NOW)
    assert job.id != 42 and jobs.created == [job.id]


def test_lost_create_answer_is_found_by_request_excluding_the_jobs_that_existed_before():
    ours, earlier = export_job(9, "PROCESSING"), export_job(7, "SUCCEEDED")
    jobs = Segmentation(earlier, ours)
    store = Store({reattach.STATE_STARTED_MS: NOW - 5_000, reattach.STATE_EARLIER_JOBS: [7]})
    job = reattach.attach_or_create(jobs, store, REQUEST, RETRY, now_ms=NOW)
    assert job.id == 9 and jobs.created == []
    assert jobs.find_calls == [(NOW - 5_000 - reattach.CLOCK_SKEW_MS, frozenset({7}))]
    assert store[reattach.STATE_JOB_ID] == 9


def test_without_a_store_a_retry_looks_from_the_run_start():
    jobs = Segmentation(export_job(9, "PROCESSING"))
    assert reattach.attach_or_create(jobs, None, REQUEST, RETRY, now_ms=NOW).id == 9
    assert jobs.find_calls == [(NOW - 60_000 - reattach.CLOCK_SKEW_MS, frozenset())]


def test_job_of_batch_prefers_the_stored_id_then_the_job_naming_the_batch():
    named = export_job(5, "SUCCEEDED", destination={"batchId": "B1"})
    jobs = Segmentation(export_job(6, "SUCCEEDED"), named)
    assert reattach.job_of_batch(jobs, Store({reattach.STATE_JOB_ID: 6}), "B1").id == 6
    assert reattach.job_of_batch(jobs, Store(), "B1").id == 5
    with pytest.raises(AepError, match="no SUCCEEDED export job names batch 'B2'"):
        reattach.job_of_batch(jobs, None, "B2")


def test_forget_clears_every_key():
    store = Store(dict.fromkeys(reattach.STATE_KEYS, 1) | {"unrelated": 2})
    reattach.forget(store)
    assert store == {"unrelated": 2}
    reattach.forget(None)  # no store: nothing to do
