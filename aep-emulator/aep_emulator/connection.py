"""The Airflow connection that points this package's hooks at a running emulator (no Airflow import).

Used by ``make demo``, docker-compose and the tests, so all of them configure the same way a user
would for real Adobe: only base URLs, the Query Service endpoint and the CA bundle differ.
"""

from __future__ import annotations

import json
from typing import Any

CONN_TYPE = "adobe_experience_platform"


def airflow_connection(
    ready: dict[str, Any],
    client_secret: str,
    *,
    sandbox: str | None = None,
    public_base_url: str | None = None,
) -> dict[str, Any]:
    """Connection dict (``AIRFLOW_CONN_<ID>`` JSON form) for the emulator described by ``ready``.

    ``ready`` is the JSON the emulator prints when it serves (``AEP emulator ready: {...}``).
    ``public_base_url`` replaces ``base_url`` when clients reach the emulator under another name
    (e.g. a docker-compose service name).
    """
    base = (public_base_url or ready["base_url"]).rstrip("/")
    extra: dict[str, Any] = {
        "org_id": ready["org_id"],
        "sandbox": sandbox or ready["sandbox"],
        "ims_url": base,
        "platform_url": base,
        "cja_url": base,
        "ui_url": f"{base}/emulator/ui",
    }
    if ready.get("ca_bundle"):
        extra["ca_bundle"] = ready["ca_bundle"]
    if ready.get("pg_port"):
        extra["query_service_host"] = ready.get("pg_host") or "127.0.0.1"
        extra["query_service_port"] = int(ready["pg_port"])
    return {"conn_type": CONN_TYPE, "login": ready["client_id"], "password": client_secret, "extra": extra}


def airflow_connection_env(
    conn_id: str, ready: dict[str, Any], client_secret: str, **kwargs: Any
) -> dict[str, str]:
    """``{"AIRFLOW_CONN_<ID>": json}`` for an environment."""
    return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(airflow_connection(ready, client_secret, **kwargs))}
