"""ExportJobTrigger and BatchTrigger with pytest-asyncio against the emulator (real HTTPS, aiohttp)."""

from __future__ import annotations

import asyncio
import importlib
import json
import time

import pytest

from airflow_cja_audiences.hooks.catalog import CatalogHook
from airflow_cja_audiences.hooks.ingestion import BatchIngestionHook
from airflow_cja_audiences.hooks.segmentation import SegmentationHook
from airflow_cja_audiences.models import PROFILE_UNION_ALT_ID, ExportJobRequest
from airflow_cja_audiences.triggers.aep import BatchTrigger, ExportJobTrigger


def _start_export(emu) -> int:
    audience = emu.admin.state()["audiences"][0]["id"]
    dataset, _ = CatalogHook().ensure_dataset("Trigger export", schema_id=PROFILE_UNION_ALT_ID)
    request = ExportJobRequest(dataset_id=dataset.id, segment_ids=(audience,))
    return SegmentationHook().create_export_job(request, created_after_ms=int(time.time() * 1000) - 1000).id


async def _first_event(trigger) -> dict:
    return (await asyncio.wait_for(trigger.run().__anext__(), timeout=60)).payload


def test_serialize_round_trip():
    trigger = ExportJobTrigger(
        job_id=7,
        sandbox="dev",
        poll_interval=2.5,
        deadline=123.0,
        started_at=100.0,
        hook_params={"max_attempts": 3},
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_cja_audiences.triggers.aep.ExportJobTrigger"
    json.dumps(kwargs)  # plain JSON: nothing the task runner's serde could choke on
    module, name = classpath.rsplit(".", 1)
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    batch = BatchTrigger(batch_id="b1", abort_on_kill=True, poll_interval=1)
    classpath, kwargs = batch.serialize()
    assert kwargs["batch_id"] == "b1" and kwargs["abort_on_kill"] is True
    assert BatchTrigger(**kwargs).serialize() == (classpath, kwargs)


@pytest.mark.asyncio
async def test_export_job_success(emu):
    job_id = _start_export(emu)
    event = await _first_event(ExportJobTrigger(job_id=job_id, poll_interval=0.1, deadline=time.time() + 60))
    assert event["status"] == "success" and event["job_status"] == "SUCCEEDED"
    assert event["job_id"] == job_id and event["batch_id"]


@pytest.mark.asyncio
async def test_export_job_failure(emu):
    emu.admin.knobs(export_job_failures=1)
    job_id = _start_export(emu)
    event = await _first_event(ExportJobTrigger(job_id=job_id, poll_interval=0.1, deadline=time.time() + 60))
    assert event["status"] == "failed" and event["job_status"] == "FAILED"
    assert event["message"] and event["message"] != "no error details"


@pytest.mark.asyncio
async def test_export_job_timeout(emu):
    seconds = emu.admin.knobs()["export_job_seconds"]
    emu.admin.knobs(export_job_seconds=30)
    try:
        job_id = _start_export(emu)
        started = time.monotonic()
        event = await _first_event(
            ExportJobTrigger(job_id=job_id, poll_interval=5, deadline=time.time() + 0.5)
        )
        assert event["status"] == "timeout" and "deadline" in event["message"]
        assert time.monotonic() - started < 3  # the sleep is cut at the deadline, not a full poll interval
    finally:
        emu.admin.knobs(export_job_seconds=seconds)


@pytest.mark.asyncio
async def test_export_job_still_running_keeps_polling(emu):
    seconds = emu.admin.knobs()["export_job_seconds"]
    emu.admin.knobs(export_job_seconds=30)
    try:
        job_id = _start_export(emu)
        before = emu.admin.stats()
        task = asyncio.create_task(ExportJobTrigger(job_id=job_id, poll_interval=0.2).run().__anext__())
        await asyncio.sleep(1.0)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        polls = _count(emu.admin.stats(), "segmentation.get_export_job") - _count(
            before, "segmentation.get_export_job"
        )
        assert 3 <= polls <= 7  # bounded by the poll interval
    finally:
        emu.admin.knobs(export_job_seconds=seconds)


def _count(stats: dict, route: str) -> int:
    return int(stats["routes"].get(route, {}).get("requests", 0))


@pytest.mark.asyncio
async def test_unknown_job_is_an_error_event(emu):
    event = await _first_event(ExportJobTrigger(job_id=987654, poll_interval=0.1))
    assert event["status"] == "error" and "404" in event["message"]
    assert (
        event["permanent"] is True
    )  # the resumed task fails without retries (operators.base.validate_event)


@pytest.mark.asyncio
async def test_an_error_a_retry_may_fix_is_not_marked_permanent(emu):
    job_id = _start_export(emu)
    emu.admin.set_faults([{"route": "segmentation.get_export_job", "kind": "503", "times": 5}])
    trigger = ExportJobTrigger(
        job_id=job_id,
        poll_interval=0.1,
        hook_params={"max_attempts": 2, "initial_retry_wait": 0.01, "max_retry_wait": 0.05},
    )
    event = await _first_event(trigger)
    assert event["status"] == "error" and "503" in event["message"] and event["permanent"] is False


@pytest.mark.asyncio
async def test_transient_faults_are_retried_in_the_trigger(emu):
    job_id = _start_export(emu)
    emu.admin.set_faults(
        [
            {"route": "segmentation.get_export_job", "kind": "503", "times": 2},
            {"route": "segmentation.get_export_job", "kind": "reset", "times": 1},
        ]
    )
    trigger = ExportJobTrigger(job_id=job_id, poll_interval=0.1, hook_params={"initial_retry_wait": 0.05})
    event = await _first_event(trigger)
    assert event["status"] == "success"


@pytest.mark.asyncio
async def test_waits_of_one_loop_share_one_http_session_until_the_last_ends(emu):
    from airflow_cja_audiences.hooks import platform

    job_id = _start_export(emu)
    first, second = SegmentationHook(), SegmentationHook()
    async with first.async_session():
        shared = first._aiohttp_session
        async with second.async_session():
            assert second._aiohttp_session is shared
            assert (
                (await first.aget_export_job(job_id)).id
                == (await second.aget_export_job(job_id)).id
                == job_id
            )
        assert not shared.closed, "closed while a hook still used it"
    assert shared.closed and not platform._SHARED_SESSIONS
    async with first.async_session():  # a later wait opens a new one
        assert first._aiohttp_session is not shared and not first._aiohttp_session.closed

    triggers = [
        ExportJobTrigger(job_id=_start_export(emu), poll_interval=0.1, deadline=time.time() + 60)
        for _ in range(5)
    ]
    events = await asyncio.gather(*(_first_event(t) for t in triggers))
    assert [e["status"] for e in events] == ["success"] * 5
    assert not platform._SHARED_SESSIONS, "the last trigger to end must close the shared session"


@pytest.mark.asyncio
async def test_on_kill_cancels_the_export_job(emu):
    seconds = emu.admin.knobs()["export_job_seconds"]
    emu.admin.knobs(export_job_seconds=30)
    try:
        job_id = _start_export(emu)
        await ExportJobTrigger(job_id=job_id).on_kill()
        status = SegmentationHook().get_export_job(job_id).status
        assert status in ("FAILED", "CANCELLED")
    finally:
        emu.admin.knobs(export_job_seconds=seconds)


@pytest.mark.asyncio
async def test_batch_trigger_success_and_failure(emu, tmp_path):
    from airflow_cja_audiences import xdm
    from airflow_cja_audiences.config import OutputFields
    from airflow_cja_audiences.hooks.schema_registry import SchemaRegistryHook
    from airflow_cja_audiences.models import PROFILE_CLASS

    registry = SchemaRegistryHook()
    group, _ = registry.ensure_field_group(
        xdm.profile_field_group("Trig group", "demoemea", OutputFields()), "demoemea"
    )
    schema, _ = registry.ensure_schema(xdm.schema_body("Trig schema", PROFILE_CLASS, [group.id]))
    dataset, _ = CatalogHook().ensure_dataset("Trig dataset", schema_id=schema.id)
    hook = BatchIngestionHook()
    outcomes = {}
    for name, record in (
        ("good", {"_id": "1", "personID": "a@example.com"}),
        ("bad", {"_id": "2", "personID": "b@example.com", "unknownField": 1}),
    ):
        batch = hook.create_batch(dataset.id, external_id=f"trigger:{name}")
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(record) + "\n")
        hook.upload_file(batch.id, dataset.id, f"{name}.json", path)
        hook.complete_batch(batch.id)
        outcomes[name] = await _first_event(BatchTrigger(batch_id=batch.id, poll_interval=0.1))
    assert outcomes["good"]["status"] == "success" and outcomes["good"]["records"] == 1
    assert outcomes["bad"]["status"] == "failed" and outcomes["bad"]["failed_records"] == 1
