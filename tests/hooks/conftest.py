"""Hooks against a real emulator process over HTTPS: one emulator per session, reset after each test."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from emulator_fixture import RunningEmulator, start_subprocess

from airflow_cja_audiences import DEFAULT_CONN_ID
from airflow_cja_audiences.emulator.connection import airflow_connection
from airflow_cja_audiences.hooks.platform import clear_token_cache


@pytest.fixture(scope="session")
def emu() -> Iterator[RunningEmulator]:
    with start_subprocess(profiles=600, pg=True, args=["--export-job-seconds", "0.3", "--batch-seconds", "0.2"]) \
            as running:
        yield running


@pytest.fixture(autouse=True)
def adobe_conn(emu: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    conn = airflow_connection(emu.ready, emu.credentials.client_secret)
    monkeypatch.setenv(f"AIRFLOW_CONN_{DEFAULT_CONN_ID.upper()}", json.dumps(conn))
    clear_token_cache()
    yield conn
    clear_token_cache()
    emu.admin.clear_faults()
    emu.admin.reset()


@pytest.fixture
def fast_retries() -> dict:
    """Hook parameters that keep retry waits short (Retry-After is still honoured)."""
    return {"initial_retry_wait": 0.05, "max_retry_wait": 2.0}
