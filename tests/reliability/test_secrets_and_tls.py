"""Secrets never leak, and TLS is verified on every path.

Secret scan: after a successful run (several token refreshes, faults whose exceptions are logged,
the CJA check) and a failing one (an ingestion failure), the client secret and every access token
the emulator issued must appear nowhere: not in the task logs (the driver's whole output, where
``dag.test`` does not even mask secrets, so the bar is "never written", not "masked"), nor anywhere in
the metadata database (XComs, rendered template fields, trigger payloads, task history, audit log,
serialized DAGs... every cell of every table, decompressed when compressed), nor in Airflow's log
folder. Any token the emulator could have issued is also caught by its fixed JWT header.

TLS: the package's source holds no way to turn verification off, and each client path (requests,
aiohttp in triggers, psycopg for Query Service) refuses the emulator's certificate without its CA
bundle.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import sqlite3
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import logical_date

PACKAGE = Path(__file__).resolve().parents[2] / "airflow_cja_audiences"
EMULATOR_PACKAGE = Path(__file__).resolve().parents[2] / "aep-emulator" / "aep_emulator"
# The emulator's token header (tokens.py): every token it issues starts with this segment.
_HEADER = (
    base64.urlsafe_b64encode(
        json.dumps(
            {"alg": "HS256", "typ": "JWT", "kid": "emulator-key-at-1", "itt": "at"}, separators=(",", ":")
        ).encode()
    )
    .rstrip(b"=")
    .decode()
)


def metadata_cells() -> Iterator[tuple[str, str]]:
    """(table.column, text) of every non-empty cell of the session's SQLite metadata DB."""
    db = sqlite3.connect(Path(os.environ["AIRFLOW_HOME"]) / "airflow.db")
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            cursor = db.execute(f'SELECT * FROM "{table}"')
            columns = [c[0] for c in cursor.description]
            for row in cursor:
                for column, value in zip(columns, row):
                    if isinstance(value, bytes):
                        try:
                            value = zlib.decompress(value)
                        except zlib.error:
                            pass
                        value = value.decode("utf-8", errors="replace")
                    if value not in (None, ""):
                        yield f"{table}.{column}", str(value)
    finally:
        db.close()


def find_secrets(places: dict[str, str], secrets: list[str]) -> list[str]:
    """Where any of ``secrets`` (or any emulator token) occurs: ``place: what``."""
    hits = []
    for place, text in places.items():
        for secret in secrets:
            if secret in text:
                hits.append(f"{place}: {secret[:12]}...")
        if _HEADER in text:
            hits.append(f"{place}: an emulator access token")
    return hits


@pytest.mark.slow
def test_no_secret_or_token_in_logs_xcoms_templates_or_errors(make_pipeline, emu, connection, figures):
    cja = emu.admin.state()["cja"]
    pipeline = make_pipeline(
        "secrets", cja_connection_id=cja["connections"][0]["id"], cja_data_view_id=cja["dataViews"][0]["id"]
    )
    emu.admin.knobs(token_lifetime=4.0)
    try:
        emu.admin.set_faults(
            [
                {"route": r, "kind": k, "probability": p}
                for r, k, p in (
                    ("ims.token", "500", 0.2),
                    ("catalog.list_datasets", "reset", 0.2),
                    ("ingestion.put_file", "500", 0.2),
                    ("segmentation.get_export_job", "503", 0.2),
                    ("query_service.query", "reset", 0.1),
                )
            ],
            seed=3,
        )
        good = pipeline.run(logical_date(days_ago=1))
        emu.admin.clear_faults()
        emu.admin.knobs(ingestion_failures=1)
        bad = pipeline.run(logical_date())
    finally:
        emu.admin.knobs(token_lifetime=86399.0)
    assert good.state == "success", good.log[-5000:]
    # The failure lands on whichever batch (snapshot or events) completes first.
    assert bad.state == "failed" and "failed" in (bad.tasks["publish_snapshot"], bad.tasks["publish_events"])
    assert "Internal error while processing the batch" in bad.log
    tokens = emu.admin.tokens()
    assert len(tokens) >= 3 and sum(good.retries.values()) > 0  # refreshes happened, errors were logged
    assert "Obtained an IMS access token" in good.log and "Traceback" in bad.log  # the logs are the real ones
    places = {"task log of the successful run": good.log, "task log of the failing run": bad.log}
    cells = list(metadata_cells())
    tables = {place.split(".")[0] for place, _ in cells}
    assert {"xcom", "rendered_task_instance_fields", "task_instance"} <= tables
    assert any(pipeline.dag_id in text for place, text in cells if place.startswith("xcom.")), (
        "no XCom scanned"
    )
    places.update({f"metadata DB {place}": text for place, text in cells})
    for path in (Path(os.environ["AIRFLOW_HOME"]) / "logs").rglob("*"):
        if path.is_file():
            places[str(path)] = path.read_text(errors="replace")
    hits = find_secrets(places, [emu.credentials.client_secret, *tokens])
    assert hits == [], hits
    figures.record(
        "secrets",
        "successful run (faults, 3+ token refreshes, CJA check) and failing run",
        f"0 hits for the client secret and {len(tokens)} access tokens in {len(places)} places "
        f"(task logs, {len(cells)} metadata DB cells)",
        seconds=good.seconds + bad.seconds,
        retries=dict(good.retries),
    )


# ------------------------------------------------------------------ TLS

INSECURE = [
    r"verify\s*=\s*False",
    r"CERT_NONE",
    r"check_hostname\s*=\s*False",
    r"_create_unverified_context",
    r"ssl\s*=\s*False",
    r"disable_warnings",
    r"InsecureRequestWarning",
    r"PYTHONHTTPSVERIFY",
    r"CURL_CA_BUNDLE",
]
# PostgreSQL modes that skip certificate checks. The emulator's server may name them (it answers
# connection_parameters as Query Service does, and says which modes it accepts); clients may not.
WEAK_SSLMODE = r"sslmode\W+(disable|allow|prefer|require)\b"


def test_the_package_has_no_way_to_turn_tls_verification_off():
    # The provider and the emulator (its own distribution since issue 13; the server may name weak modes).
    def insecure(path: Path, line: str) -> bool:
        patterns = INSECURE if path.is_relative_to(EMULATOR_PACKAGE) else [*INSECURE, WEAK_SSLMODE]
        return any(re.search(pattern, line) for pattern in patterns) and not line.lstrip().startswith("#")

    paths = [*PACKAGE.rglob("*.py"), *EMULATOR_PACKAGE.rglob("*.py")]
    assert any(p.is_relative_to(EMULATOR_PACKAGE) for p in paths), (
        f"no emulator module under {EMULATOR_PACKAGE}"
    )
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{n}: {line.strip()}"
        for path in paths
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if insecure(path, line)
    ]
    assert offenders == [], offenders


def test_every_client_path_refuses_the_certificate_without_the_ca_bundle(emu, connection, fast_retries):
    from airflow_cja_audiences.errors import AepConfigError
    from airflow_cja_audiences.hooks.catalog import CatalogHook
    from airflow_cja_audiences.hooks.platform import AdobePlatformHook
    from airflow_cja_audiences.hooks.query_service import QueryServiceError, QueryServiceHook

    trusted = AdobePlatformHook(**fast_retries)
    trusted.get_access_token()  # cached per process: the Query Service check below needs no REST call
    connection(ca_bundle=None)  # the system trust store, which does not know the emulator's CA
    with pytest.raises(AepConfigError, match="TLS verification failed.*ca_bundle"):
        CatalogHook(**fast_retries).find_datasets_by_name("x")

    async def triggerer_path() -> None:
        hook = CatalogHook(**fast_retries)
        async with hook.async_session():
            await hook.aget_batch("0" * 32)

    with pytest.raises(AepConfigError, match="TLS verification failed"):
        asyncio.run(triggerer_path())
    with pytest.raises(QueryServiceError, match="certificate verify failed"):
        QueryServiceHook(platform_hook=AdobePlatformHook(max_attempts=1)).query_all("SELECT 1")
    assert QueryServiceHook().connection.extra_dejson["sslmode"] == "verify-full"
