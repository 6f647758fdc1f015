"""DAG tests run against the emulator (``airflow_db`` and ``dags_folder`` are in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _adobe(adobe_conn):
    yield
