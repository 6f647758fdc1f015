"""Triggers against the shared emulator process over HTTPS (fixtures in tests/conftest.py)."""

import pytest


@pytest.fixture(autouse=True)
def _adobe(adobe_conn):
    yield
