"""Fixtures for the emulator's own tests: one in-process emulator (HTTPS) shared by the session,
reset after every test, and an ``aep`` helper that drives it through the real REST API."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Under --import-mode=importlib test directories are not on sys.path: add tests/ (emulator_fixture)
# and this directory (emulator_testkit; a unique name, unlike "conftest").
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from emulator_fixture import ApiClient, RunningEmulator, start_in_process  # noqa: E402
from emulator_testkit import Aep, settings  # noqa: E402


@pytest.fixture(scope="session")
def emu() -> Iterator[RunningEmulator]:
    with start_in_process(settings()) as running:
        yield running


@pytest.fixture(autouse=True)
def _reset(emu: RunningEmulator) -> Iterator[None]:
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
