"""Hostile-server suite: the hooks and triggers against a local HTTPS server that misbehaves.

One site per session (the server impersonating IMS and Platform, a second HTTPS host and a plain
HTTP host as redirect targets); each test gets it reset, with the default Adobe connection pointed
at it (TLS verified through the site's CA bundle) and an empty token cache.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from server import HostileSite, start_site  # this folder is on pytest's pythonpath (pyproject.toml)


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileSite]:
    running = start_site(tmp_path_factory.mktemp("hostile-tls"))
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def connect(site: HostileSite, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., dict[str, Any]]]:
    """``connect(**extras)`` points the default Adobe connection at the hostile site (done once with no
    extras for every test); returns the connection dict."""
    from airflow_cja_audiences import DEFAULT_CONN_ID
    from airflow_cja_audiences.hooks.platform import clear_token_cache

    def point(**extra: Any) -> dict[str, Any]:
        conn = site.connection(**extra)
        monkeypatch.setenv(f"AIRFLOW_CONN_{DEFAULT_CONN_ID.upper()}", json.dumps(conn))
        clear_token_cache()
        return conn

    site.reset()
    point()
    yield point
    site.reset()
    clear_token_cache()
