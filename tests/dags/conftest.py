"""DAG tests run against the emulator (``airflow_db`` and ``dags_folder`` are in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def emu(realistic_emu):
    """This suite runs against the emulator in realistic mode (tests/conftest.py ``realistic_emu``)."""
    return realistic_emu


@pytest.fixture(autouse=True)
def _adobe(adobe_conn):
    yield


@pytest.fixture
def audiences(emu) -> list[str]:
    """The ids of the emulator's first three audiences (the operator-level tests select these)."""
    return [a["id"] for a in emu.admin.state()["audiences"][:3]]
