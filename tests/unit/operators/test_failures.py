"""What a task retry cannot fix fails at once (``AirflowFailException``, the typed AEP error chained);
what it can fix (a wait's deadline, throttling, a dropped connection) is raised as is and retried.

The operators run with stand-in hooks (``op._hooks``), so each case is exact and fast; the same
behaviour against the emulator is in ``tests/dags/test_operator_retries.py``.
"""

from __future__ import annotations

import time
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_cja_audiences.errors import (
    AepConfigError,
    AepObjectFailedError,
    AepTransportError,
    AepWaitError,
    AepWaitTimeoutError,
    is_permanent,
)
from airflow_cja_audiences.hooks.catalog import CatalogHook
from airflow_cja_audiences.hooks.ingestion import BatchIngestionHook
from airflow_cja_audiences.hooks.segmentation import SegmentationHook
from airflow_cja_audiences.models import Batch, ExportJob
from airflow_cja_audiences.operators.base import validate_event
from airflow_cja_audiences.operators.export import ExportAudiencesOperator
from airflow_cja_audiences.operators.publish import PublishBatchOperator
from airflow_cja_audiences.runs import BatchLabel


def _context() -> dict[str, Any]:
    return {
        "ti": SimpleNamespace(try_number=1, xcom_push=lambda **_: None),
        "run_id": "manual__t",
        "task_state_store": None,
        "params": {},
        "dag_run": SimpleNamespace(start_date=None),
    }


# ------------------------------------------------------------------------------- trigger events


@pytest.mark.parametrize(
    "event, error, permanent",
    [
        (
            {"status": "timeout", "message": "still PROCESSING", "state": "PROCESSING"},
            AepWaitTimeoutError,
            False,
        ),
        ({"status": "error", "message": "HTTP 401", "permanent": True}, AepWaitError, True),
        ({"status": "error", "message": "connection reset", "permanent": False}, AepWaitError, False),
        ({"status": "error", "message": "an older trigger's event"}, AepWaitError, False),
        ({"status": "failed", "message": "FAILED"}, AepObjectFailedError, False),
    ],
)
def test_events_not_accepted_raise_the_typed_wait_error(event, error, permanent):
    with pytest.raises(error, match=event["message"]) as info:
        validate_event(event, what="export job 7")
    assert is_permanent(info.value) is permanent


@pytest.mark.parametrize("event", [None, {}, {"status": "done"}])
def test_unusable_events_are_a_plain_failure(event):
    with pytest.raises(AirflowException, match="export job 7") as info:
        validate_event(event, what="export job 7")
    assert not isinstance(info.value, AirflowFailException)


def test_a_resumed_task_fails_fast_on_a_permanent_trigger_error_and_retries_a_transient_one():
    op = ExportAudiencesOperator(task_id="export", dataset_id="ds", audience_ids=["a"], deferrable=True)
    with pytest.raises(AirflowFailException, match="export: .*HTTP 401.*not retried") as info:
        op.resume_execution(
            "execute_complete",
            {"event": {"status": "error", "message": "HTTP 401", "permanent": True}},
            _context(),
        )
    assert isinstance(info.value.__cause__, AepWaitError)
    with pytest.raises(AepWaitTimeoutError):
        op.resume_execution(
            "execute_complete", {"event": {"status": "timeout", "message": "still NEW"}}, _context()
        )


# ------------------------------------------------------------------------------- export


class _Segmentation(SegmentationHook):
    def __init__(self, statuses: list[str], batch_id: str | None = "01BATCH") -> None:
        self.statuses, self.batch_id, self.retry_counts = statuses, batch_id, {}

    def _job(self, job_id: int) -> ExportJob:
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return ExportJob.model_validate(
            {
                "id": job_id,
                "status": status,
                "errors": [{"code": "E1", "msg": "boom"}],
                "destination": {"datasetId": "ds", "batchId": self.batch_id},
            }
        )

    def get_export_job(self, job_id: int) -> ExportJob:
        return self._job(job_id)

    def create_export_job(self, request: Any, **_: Any) -> ExportJob:
        return self._job(42)

    def export_job_ids(self, request: Any, **_: Any) -> set[int]:
        return set()

    @property
    def settings(self) -> Any:
        return SimpleNamespace(ui_url="https://ui.example", sandbox="prod")


class _Catalog(CatalogHook):
    def __init__(self, statuses: list[str]) -> None:
        self.statuses, self.retry_counts = statuses, {}

    def get_batch(self, batch_id: str) -> Batch:
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return Batch.model_validate({"id": batch_id, "status": status})


def _export(segmentation: _Segmentation, catalog: _Catalog, wait: float = 5.0) -> ExportAudiencesOperator:
    op = ExportAudiencesOperator(
        task_id="export",
        dataset_id="ds",
        audience_ids=["a"],
        deferrable=False,
        poll_interval=0.01,
        wait_timeout=timedelta(seconds=wait),
    )
    op._hooks = {SegmentationHook: segmentation, CatalogHook: catalog}
    return op


def test_export_succeeds_after_waiting_for_job_and_batch():
    result = _export(
        _Segmentation(["NEW", "PROCESSING", "SUCCEEDED"]), _Catalog(["processing", "success"])
    ).execute(_context())
    assert result["export_job_id"] == 42 and result["export_batch_id"] == "01BATCH"


def test_export_batch_wait_has_a_deadline_now():
    """Before, a non-deferrable export waited for its batch without any deadline."""
    op = _export(_Segmentation(["SUCCEEDED"]), _Catalog(["processing"]), wait=0.05)
    started = time.monotonic()
    with pytest.raises(AepWaitTimeoutError, match="batch 01BATCH is still processing") as info:
        op.execute(_context())
    assert time.monotonic() - started < 5 and not is_permanent(info.value)  # retried: a retry re-attaches


def test_a_failed_export_job_is_retried_since_a_retry_starts_a_new_one():
    with pytest.raises(AepObjectFailedError, match="export job 42 ended FAILED: E1: boom") as info:
        _export(_Segmentation(["FAILED"]), _Catalog(["success"])).execute(_context())
    assert not is_permanent(info.value)


def test_a_job_without_its_batch_id_is_a_bad_answer_not_a_config_error():
    from airflow_cja_audiences.errors import AepResponseError

    with pytest.raises(AepResponseError, match="without a destination batch id"):
        _export(_Segmentation(["SUCCEEDED"], batch_id=None), _Catalog(["success"])).execute(_context())


# ------------------------------------------------------------------------------- publish


class _Ingestion(BatchIngestionHook):
    def __init__(self, statuses: list[str], failed_records: int = 0) -> None:
        self.statuses, self.failed_records, self.actions, self.retry_counts = statuses, failed_records, [], {}

    def get_batch(self, batch_id: str) -> Batch:
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return Batch.model_validate(
            {
                "id": batch_id,
                "status": status,
                "externalId": "x",
                "metrics": {"failedRecordCount": self.failed_records},
                "errors": [{"code": "106", "description": "Dataset file is empty"}],
            }
        )

    def list_batches(self, dataset_id: str, **_: Any) -> list[Batch]:
        return []

    def batch_action(self, batch_id: str, action: str) -> None:
        self.actions.append((batch_id, action))

    def get_row_errors(self, batch_id: str, limit: int = 20) -> list[dict[str, Any]]:
        return [{"_errors": [{"message": "personID is missing"}]}]

    @property
    def settings(self) -> Any:
        return SimpleNamespace(ui_url="https://ui.example", sandbox="prod")


def _publish(
    ingestion: _Ingestion, wait: float = 5.0, external_id: str | None = None
) -> PublishBatchOperator:
    label = BatchLabel.for_run(job_id="j", kind="snapshot", export_batch_id="01EXPORT", run_id="manual__t")
    op = PublishBatchOperator(
        task_id="publish",
        dataset_id="ds",
        batch_id="01NEW",
        external_id=external_id or label.external_id,
        load_results=[{"records": 3}],
        poll_interval=0.01,
        wait_timeout=timedelta(seconds=wait),
        deferrable=False,
    )
    op._hooks = {BatchIngestionHook: ingestion}
    return op


def test_publish_of_a_failed_batch_fails_without_retries():
    ingestion = _Ingestion(["loading", "processing", "failed"])
    with pytest.raises(
        AirflowFailException, match="batch 01NEW failed.*personID is missing.*not retried"
    ) as info:
        _publish(ingestion).execute(_context())
    assert isinstance(info.value.__cause__, AepObjectFailedError) and info.value.__cause__.permanent
    assert "clear the whole DAG run" in str(info.value)
    assert ("01NEW", "COMPLETE") in ingestion.actions


def test_publish_wait_timeout_is_retried():
    with pytest.raises(AepWaitTimeoutError, match="batch 01NEW is still processing"):
        _publish(_Ingestion(["loading", "processing"]), wait=0.05).execute(_context())


def test_publish_with_a_bad_label_is_a_config_error_not_retried():
    with pytest.raises(AirflowFailException, match="external_id 'nope' is not a batch label") as info:
        _publish(_Ingestion(["loading"]), external_id="nope").execute(_context())
    assert isinstance(info.value.__cause__, AepConfigError)


def test_a_dropped_connection_is_left_to_the_task_retries():
    class Dropping(_Ingestion):
        def get_batch(self, batch_id: str) -> Batch:
            raise AepTransportError("GET https://platform.adobe.io/x: connection reset", ambiguous=True)

    with pytest.raises(AepTransportError):
        _publish(Dropping(["loading"])).execute(_context())
