"""The provider as Airflow sees it: registered, and the connection testable from the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from airflow_cja_audiences import DEFAULT_CONN_ID, get_provider_info

AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def _airflow(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [AIRFLOW, *args], env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=120
    )


def test_providers_list_shows_the_package():
    result = _airflow("providers", "list", "--output", "json")
    assert result.returncode == 0, result.stderr
    providers = {p["package_name"]: p for p in json.loads(result.stdout)}
    assert "airflow-cja-audiences" in providers


def test_connection_form_is_declarative():
    conn_type = get_provider_info()["connection-types"][0]
    fields = conn_type["conn-fields"]
    assert conn_type["connection-type"] == "adobe_experience_platform"
    assert {
        "org_id",
        "sandbox",
        "scopes",
        "ims_url",
        "platform_url",
        "cja_url",
        "query_service_host",
        "query_service_port",
        "ca_bundle",
        "timeout",
        "call_deadline",
        "max_response_bytes",
        "max_pages",
    } <= set(fields)
    from airflow_cja_audiences.hooks.platform import AdobePlatformHook

    assert set(fields) - {"org_id"} <= set(AdobePlatformHook._EXTRAS)  # every form field is read
    assert all(f["label"] for f in fields.values())
    assert conn_type["ui-field-behaviour"]["relabeling"] == {
        "login": "Client ID",
        "password": "Client secret",
    }


def test_connections_test_against_the_emulator(emu, adobe_conn):
    env = {
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        f"AIRFLOW_CONN_{DEFAULT_CONN_ID.upper()}": json.dumps(adobe_conn),
    }
    result = _airflow("connections", "test", DEFAULT_CONN_ID, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Connection success!" in result.stdout
    assert emu.credentials.client_secret not in result.stdout + result.stderr
    bad = {**adobe_conn, "password": "not-the-secret"}
    result = _airflow(
        "connections",
        "test",
        DEFAULT_CONN_ID,
        env={**env, f"AIRFLOW_CONN_{DEFAULT_CONN_ID.upper()}": json.dumps(bad)},
    )
    assert "invalid_client" in result.stdout + result.stderr
