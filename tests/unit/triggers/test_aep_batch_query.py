"""BatchQueryTrigger (server path) against the emulator's Query Service batch queries (real HTTPS, aiohttp)."""

from __future__ import annotations

import asyncio
import importlib
import json
import time

import pytest

from airflow_cja_audiences import xdm
from airflow_cja_audiences.config import OutputFields
from airflow_cja_audiences.hooks.batch_query import BatchQueryHook
from airflow_cja_audiences.hooks.catalog import CatalogHook
from airflow_cja_audiences.hooks.schema_registry import SchemaRegistryHook
from airflow_cja_audiences.models import PROFILE_CLASS
from airflow_cja_audiences.triggers.aep import BatchQueryTrigger


def _table(emu) -> str:
    """A CJA profile dataset (the schema the pipeline creates) and its Query Service table."""
    tenant = emu.credentials.tenant
    registry = SchemaRegistryHook()
    group, _ = registry.ensure_field_group(
        xdm.profile_field_group("Trigger fields", tenant, OutputFields()), tenant
    )
    schema, _ = registry.ensure_schema(xdm.schema_body("Trigger schema", PROFILE_CLASS, [group.id]))
    dataset, _ = CatalogHook().ensure_dataset("Trigger batch query", schema_id=schema.id)
    assert dataset.table_name
    return dataset.table_name


async def _first_event(trigger: BatchQueryTrigger) -> dict:
    return (await asyncio.wait_for(trigger.run().__anext__(), timeout=60)).payload


def test_serialize_round_trip() -> None:
    trigger = BatchQueryTrigger(
        query_id="q-1",
        cancel_on_kill=False,
        sandbox="dev",
        poll_interval=2.5,
        deadline=123.0,
        started_at=100.0,
        hook_params={"max_attempts": 3},
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_cja_audiences.triggers.aep.BatchQueryTrigger"
    json.dumps(kwargs)
    module, name = classpath.rsplit(".", 1)
    assert getattr(importlib.import_module(module), name)(**kwargs).serialize() == (classpath, kwargs)


@pytest.mark.asyncio
async def test_success(emu) -> None:
    table = _table(emu)
    hook = BatchQueryHook()
    query = hook.create_query(
        f"INSERT INTO {table} SELECT 'a@example.com' AS personID",
        name="trigger-ok",
        created_after_ms=int(time.time() * 1000) - 60_000,
    )
    assert hook.find_query("trigger-ok", created_after_ms=0).id == query.id  # how a retry re-attaches
    event = await _first_event(
        BatchQueryTrigger(query_id=query.id, poll_interval=0.1, deadline=time.time() + 60)
    )
    assert event["status"] == "success" and event["query_state"] == "SUCCESS" and event["rows"] == 1


@pytest.mark.asyncio
async def test_bad_sql_fails_with_the_reason(emu) -> None:
    query = BatchQueryHook().create_query(
        f"INSERT INTO {_table(emu)} SELECT nope FROM missing_table", name="trigger-bad", created_after_ms=0
    )
    event = await _first_event(
        BatchQueryTrigger(query_id=query.id, poll_interval=0.1, deadline=time.time() + 60)
    )
    assert event["status"] == "failed" and event["query_state"] == "FAILED"
    assert "42P01" in event["message"] and "missing_table" in event["message"]
    assert (
        BatchQueryHook().find_query("trigger-bad", created_after_ms=0) is None
    )  # a failed query is not reused


@pytest.mark.asyncio
async def test_unknown_query_is_an_error_event(emu) -> None:
    event = await _first_event(
        BatchQueryTrigger(
            query_id="00000000-0000-0000-0000-000000000000", poll_interval=0.1, deadline=time.time() + 30
        )
    )
    assert event["status"] == "error" and "batch query 00000000" in event["message"]
