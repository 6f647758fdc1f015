"""pipeline.exported: a finished export job's verdict, its destination batch, the export task's result."""

from __future__ import annotations

import pytest
from unit.pipeline.fakes import EXPORT, export_job

from airflow_cja_audiences.errors import AepError, AepObjectFailedError, AepResponseError, is_permanent
from airflow_cja_audiences.pipeline import exported


def test_a_succeeded_job_yields_its_checked_batch():
    job = export_job(1, destination={"batchId": EXPORT, "datasetId": "exports"})
    assert exported.destination_batch_id(job) == EXPORT


def test_a_failed_job_is_retried_a_job_without_a_usable_batch_is_an_answer_error():
    with pytest.raises(AepObjectFailedError, match="export job 1 ended FAILED") as err:
        exported.destination_batch_id(export_job(1, "FAILED"))
    assert not is_permanent(err.value)  # the retry starts a new job
    with pytest.raises(AepResponseError, match="without a destination batch id"):
        exported.destination_batch_id(export_job(1))
    with pytest.raises(AepError, match="not one"):
        exported.destination_batch_id(export_job(1, destination={"batchId": "x'; DROP"}))


def test_export_result_or_the_batch_failure():
    job = export_job(1, destination={"batchId": EXPORT}, metrics={"totalExportedProfileCounter": 12})
    assert exported.export_result(job, batch_ok=True, batch_status="success", errors="", dataset_id="ds") == {
        "export_job_id": 1,
        "export_batch_id": EXPORT,
        "export_dataset_id": "ds",
        "exported_profiles": 12,
    }
    with pytest.raises(AepObjectFailedError, match="but its batch .* is failed: boom"):
        exported.export_result(job, batch_ok=False, batch_status="failed", errors="boom", dataset_id="ds")
