"""ExportJobSensor and BatchSensor, poke mode and deferrable, against the emulator (real HTTPS).

What each must do: return the object's summary when it succeeded; fail without retries
(``AirflowFailException``, the typed cause chained) when it failed, was reverted, or the look-up
cannot succeed (an unknown id); leave what a retry may fix (a 503 outlasting the hook's retries) to
the task's retries; fail with ``AirflowSensorTimeout`` at its deadline in both modes.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from airflow.sdk.exceptions import AirflowFailException, AirflowSensorTimeout, TaskDeferred

from airflow_cja_audiences.errors import AepNotFoundError, AepObjectFailedError, AepServerError, AepWaitError
from airflow_cja_audiences.hooks.catalog import CatalogHook
from airflow_cja_audiences.hooks.ingestion import BatchIngestionHook
from airflow_cja_audiences.hooks.segmentation import SegmentationHook
from airflow_cja_audiences.models import PROFILE_UNION_ALT_ID, ExportJob, ExportJobRequest
from airflow_cja_audiences.sensors.aep import BatchSensor, ExportJobSensor
from airflow_cja_audiences.triggers.aep import BatchTrigger, ExportJobTrigger

FAST = {"poke_interval": 0.1, "timeout": 30}
FEW_RETRIES = {"max_attempts": 2, "initial_retry_wait": 0.01, "max_retry_wait": 0.05}


def _context() -> dict:
    return {"ti": SimpleNamespace(try_number=1), "run_id": "manual__sensor", "params": {}}


def _dataset_id() -> str:
    dataset, _ = CatalogHook().ensure_dataset("Sensor export", schema_id=PROFILE_UNION_ALT_ID)
    return dataset.id


def _start_export(emu) -> int:
    audience = emu.admin.state()["audiences"][0]["id"]
    request = ExportJobRequest(dataset_id=_dataset_id(), segment_ids=(audience,))
    return SegmentationHook().create_export_job(request, created_after_ms=int(time.time() * 1000) - 1000).id


def _finished_export(emu) -> ExportJob:
    job_id = _start_export(emu)
    return SegmentationHook().wait_for_export_job(job_id, deadline=time.time() + 30, poll_interval=0.1)


# ------------------------------------------------------------------------------- poke mode


def test_export_job_sensor_returns_the_job_summary(emu):
    job_id = _start_export(emu)
    result = ExportJobSensor(task_id="wait_export", job_id=str(job_id), deferrable=False, **FAST).execute(
        _context()
    )
    job = SegmentationHook().get_export_job(job_id)
    assert job.is_success
    assert result == {
        "job_id": job_id,
        "batch_id": job.destination.batch_id,
        "exported_profiles": job.exported_profiles,
    }
    assert result["batch_id"] and result["exported_profiles"] > 0


def test_failed_export_job_fails_the_sensor_without_retries(emu):
    emu.admin.knobs(export_job_failures=1)
    job_id = _start_export(emu)
    sensor = ExportJobSensor(task_id="wait_export", job_id=job_id, deferrable=False, **FAST)
    with pytest.raises(AirflowFailException, match=f"export job {job_id} ended FAILED.*not retried") as info:
        sensor.execute(_context())
    assert isinstance(info.value.__cause__, AepObjectFailedError)
    assert "a retry would find it so again" in str(info.value)


def test_unknown_export_job_fails_at_once(emu):
    sensor = ExportJobSensor(task_id="wait_export", job_id=987654, deferrable=False, **FAST)
    with pytest.raises(AirflowFailException, match="HTTP 404") as info:
        sensor.execute(_context())
    assert isinstance(info.value.__cause__, AepNotFoundError)


def test_server_errors_outlasting_the_hook_retries_are_left_to_the_task_retries(emu):
    job_id = _start_export(emu)
    emu.admin.set_faults([{"route": "segmentation.get_export_job", "kind": "503", "times": 5}])
    sensor = ExportJobSensor(
        task_id="wait_export", job_id=job_id, deferrable=False, hook_params=FEW_RETRIES, **FAST
    )
    with pytest.raises(AepServerError):
        sensor.execute(_context())


def _published_batch(tmp_path) -> str:
    """A batch of one record, completed: ``success`` (the emulator's ingestion, as in AEP)."""
    import json

    from airflow_cja_audiences import xdm
    from airflow_cja_audiences.config import OutputFields
    from airflow_cja_audiences.hooks.schema_registry import SchemaRegistryHook
    from airflow_cja_audiences.models import PROFILE_CLASS

    registry = SchemaRegistryHook()
    group, _ = registry.ensure_field_group(
        xdm.profile_field_group("Sensor group", "demoemea", OutputFields()), "demoemea"
    )
    schema, _ = registry.ensure_schema(xdm.schema_body("Sensor schema", PROFILE_CLASS, [group.id]))
    dataset, _ = CatalogHook().ensure_dataset("Sensor dataset", schema_id=schema.id)
    ingestion = BatchIngestionHook()
    batch = ingestion.create_batch(dataset.id, external_id="sensor:published")
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"_id": "1", "personID": "a@example.com"}) + "\n")
    ingestion.upload_file(batch.id, dataset.id, "one.json", path)
    ingestion.complete_batch(batch.id)
    return batch.id


def test_batch_sensor_success_then_reverted(emu, tmp_path):
    batch_id = _published_batch(tmp_path)
    result = BatchSensor(task_id="wait_batch", batch_id=batch_id, deferrable=False, **FAST).execute(
        _context()
    )
    assert result == {"batch_id": batch_id, "batch_status": "success", "records": 1, "failed_records": 0}
    BatchIngestionHook().revert_batch(batch_id)
    with pytest.raises(AirflowFailException, match=f"batch {batch_id} is inactive \\(reverted or deleted\\)"):
        BatchSensor(task_id="wait_batch", batch_id=batch_id, deferrable=False, **FAST).execute(_context())


def test_export_batch_sensor(emu):
    batch_id = _finished_export(emu).destination.batch_id
    result = BatchSensor(task_id="wait_batch", batch_id=batch_id, deferrable=False, **FAST).execute(
        _context()
    )
    assert result["batch_id"] == batch_id and result["batch_status"] == "success" and result["records"] > 0


def test_batch_sensor_aborted_batch_fails_and_open_batch_times_out(emu):
    ingestion = BatchIngestionHook()
    open_batch = ingestion.create_batch(_dataset_id(), external_id="sensor:open")
    started = time.monotonic()
    with pytest.raises(AirflowSensorTimeout):
        BatchSensor(
            task_id="wait_batch", batch_id=open_batch.id, deferrable=False, poke_interval=0.1, timeout=0.5
        ).execute(_context())
    assert time.monotonic() - started < 10
    ingestion.abort_batch(open_batch.id)
    with pytest.raises(AirflowFailException, match="is aborted") as info:
        BatchSensor(task_id="wait_batch", batch_id=open_batch.id, deferrable=False, **FAST).execute(
            _context()
        )
    assert info.value.__cause__.state == "aborted"


# ------------------------------------------------------------------------------- deferrable


def test_deferrable_sensor_returns_at_once_when_already_done(emu):
    job = _finished_export(emu)
    sensor = ExportJobSensor(task_id="wait_export", job_id=job.id, deferrable=True, **FAST)
    assert sensor.execute(_context())["batch_id"] == job.destination.batch_id  # no TaskDeferred


def test_deferrable_sensor_defers_with_a_deadline(emu):
    seconds = emu.admin.knobs()["export_job_seconds"]
    emu.admin.knobs(export_job_seconds=30)
    try:
        job_id = _start_export(emu)
        with pytest.raises(TaskDeferred) as info:
            ExportJobSensor(
                task_id="wait_export", job_id=job_id, deferrable=True, poke_interval=2, timeout=600
            ).execute(_context())
    finally:
        emu.admin.knobs(export_job_seconds=seconds)
    trigger = info.value.trigger
    assert isinstance(trigger, ExportJobTrigger) and trigger.job_id == job_id and trigger.poll_interval == 2
    assert time.time() + 590 < trigger.deadline <= time.time() + 600
    assert info.value.method_name == "execute_complete"

    open_batch = BatchIngestionHook().create_batch(_dataset_id(), external_id="sensor:deferred")
    with pytest.raises(TaskDeferred) as info:
        BatchSensor(task_id="wait_batch", batch_id=open_batch.id, deferrable=True, **FAST).execute(_context())
    assert isinstance(info.value.trigger, BatchTrigger) and info.value.trigger.deadline is not None


def test_deferred_sensor_events():
    sensor = BatchSensor(task_id="wait_batch", batch_id="b1", deferrable=True, **FAST)
    done = {
        "status": "success",
        "batch_id": "b1",
        "batch_status": "success",
        "records": 3,
        "failed_records": 0,
        "message": "no error details",
        "elapsed_seconds": 1.0,
    }
    assert sensor.execute_complete(_context(), done) == {k: v for k, v in done.items() if k != "status"}
    with pytest.raises(AirflowFailException, match="batch b1 ended failed: 106: empty file") as info:
        sensor.execute_complete(
            _context(), {"status": "failed", "batch_status": "failed", "message": "106: empty file"}
        )
    assert isinstance(info.value.__cause__, AepObjectFailedError)
    with pytest.raises(AirflowSensorTimeout, match="still processing"):
        sensor.execute_complete(_context(), {"status": "timeout", "message": "batch b1 still processing"})
    with pytest.raises(AirflowFailException, match="HTTP 403") as info:
        sensor.execute_complete(_context(), {"status": "error", "message": "HTTP 403", "permanent": True})
    assert isinstance(info.value.__cause__, AepWaitError)
    with pytest.raises(AepWaitError, match="connection reset"):  # transient: the task's retries
        sensor.execute_complete(
            _context(), {"status": "error", "message": "connection reset", "permanent": False}
        )
