"""Fixtures for the emulator's own tests: one in-process emulator (HTTPS) shared by the session,
reset after every test, and an ``aep`` helper that drives it through the real REST API."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

# tests/ (emulator_fixture) and this folder (emulator_testkit) are on pytest's pythonpath (pyproject.toml).
from emulator_fixture import ApiClient, RunningEmulator, start_in_process
from emulator_testkit import Aep, settings


@pytest.fixture(scope="session")
def emu() -> Iterator[RunningEmulator]:
    with start_in_process(settings()) as running:
        yield running


@pytest.fixture(autouse=True)
def _reset(request: pytest.FixtureRequest) -> Iterator[None]:
    """Reset the session emulator after each test that used it (query_service/'s server tests run a
    Query Service server of their own and never start it)."""
    if "emu" not in request.fixturenames:
        yield
        return
    emu: RunningEmulator = request.getfixturevalue("emu")
    yield
    emu.admin.reset()


@pytest.fixture
def api(emu: RunningEmulator) -> Iterator[ApiClient]:
    client = emu.api()
    yield client
    client.close()


@pytest.fixture
def aep(emu: RunningEmulator, api: ApiClient) -> Aep:
    return Aep(emu, api)
