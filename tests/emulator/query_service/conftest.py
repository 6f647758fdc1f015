"""Fixtures for the Query Service emulator tests: a private CA, export-shaped DuckDB tables, servers.

The tables have exactly the export schema of docs/ARCHITECTURE.md (tenant ``demoemea``) and hold
several export batches, so the batch filter matters. The small table is built from Python data
(:data:`SMALL_ROWS`), which is what the tests compute their expected results from.
"""

from __future__ import annotations

import datetime as dt
import random
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import duckdb
import pytest

from aep_emulator import tls as emulator_tls
from aep_emulator.exports import table_ddl
from aep_emulator.query_service.server import QueryServiceServer

TENANT = "demoemea"
SMALL_TABLE = "segment_export_job_dataset_for_cja"
BIG_TABLE = "big_export_dataset"
TOKEN = "test-ims-token"
DATABASE = "prod:all"
USER = "ACME0000000000000000@AdobeOrg"
AUDIENCES = ("aud-1", "aud-2", "aud-3")
STATUSES = ("realized", "existing", "exited")
BATCHES = (("01HBATCH0001", "src-batch-1"), ("01HBATCH0002", "src-batch-2"), ("01HBATCH0003", "src-batch-3"))
BIG_PROFILES = 250_000  # two member audiences each: 500,000 memberships
BIG_BATCH = ("01HBIGBATCH", "src-big")

EXPORT_COLUMNS = table_ddl(TENANT)  # the emulator's own export-table schema (docs/ARCHITECTURE.md)


@dataclass(frozen=True)
class Membership:
    batch: str  # _acp_batchid
    source_batch: str  # _acp_system_metadata.acp_sourceBatchId
    email: str | None
    audience: str
    status: str
    qualified: dt.datetime


def _small_profiles() -> list[dict[str, Any]]:
    """Seeded profiles over three batches: names with quotes and commas, NULL emails, empty maps."""
    rng = random.Random(20260117)
    profiles = []
    for batch, source in BATCHES:
        for i in range(120):
            email = None if i % 17 == 5 else f"user{i:03d}@example.com"
            ups: dict[str, dict[str, Any]] = {}
            if i % 11 != 3:  # every 11th profile has no memberships at all (empty map)
                for audience in rng.sample(AUDIENCES, rng.randint(1, 3)):
                    ups[audience] = {
                        "status": rng.choice(STATUSES),
                        "lastQualificationTime": dt.datetime(2026, 11, 1)
                        + dt.timedelta(minutes=rng.randint(0, 40000)),
                        "version": str(rng.randint(1, 5)),
                        "validUntil": None,
                    }
            profiles.append(
                _profile(
                    i,
                    email,
                    ups,
                    batch=batch,
                    source=source,
                    first="Jo, Jr." if i % 7 == 0 else f"First{i}",
                    last="O'Brien" if i % 5 == 0 else f"Last{i}",
                    identity_map=True,
                )
            )
    return profiles


def _profile(
    i: int,
    email: str | None,
    ups: dict[str, dict[str, Any]],
    *,
    batch: str,
    source: str,
    first: str,
    last: str,
    identity_map: bool,
) -> dict[str, Any]:
    """One row of an export table: profile ``i`` with ``email`` (None: no identity) and its memberships."""
    return {
        "identityMap": {"Email": [{"id": email, "primary": True, "authenticatedState": "authenticated"}]}
        if email and identity_map
        else {},
        f"_{TENANT}": {
            "identification": {
                "core": {"email": email, "ecid": f"ecid-{i}", "crmId": None, "phoneNumber": None}
            }
        },
        "person": {"name": {"firstName": first, "lastName": last}, "gender": None},
        "personalEmail": {"address": email},
        "segmentMembership": {"ups": ups},
        "_acp_batchid": batch,
        "_acp_system_metadata": {"acp_sourceBatchId": source},
    }


SMALL_ROWS = _small_profiles()

FOLD_TABLE = "events_fold_export"
#: An untimed pair's earlier and later export, and one more source export (of the same persons).
FOLD_BATCHES = ("01HFOLD0001", "01HFOLD0002", "01HFOLD0003")
#: Times around the window [2026-11-10, 2026-11-20) the fold test uses: out, on both bounds, within
#: (two in one second: the event time is formatted to the second).
FOLD_TIMES = tuple(
    dt.datetime(2026, 11, 10) + d
    for d in (
        dt.timedelta(days=-1),
        dt.timedelta(0),
        dt.timedelta(days=3),
        dt.timedelta(days=5, microseconds=250_000),
        dt.timedelta(days=5, microseconds=750_000),
        dt.timedelta(days=10),
    )
)


def _fold_profiles() -> list[dict[str, Any]]:
    """Few persons, few times and statuses, so that the same event shows in several exports (the
    third repeats the second for even persons), NULL persons share events, and persons enter
    between the first two exports without a realized status."""
    rng = random.Random(20261206)
    profiles: list[dict[str, Any]] = []
    later: dict[int, dict[str, dict[str, Any]]] = {}
    for batch in FOLD_BATCHES:
        for i in range(48):
            email = None if i % 12 in (1, 4) else f"fold{i:02d}@example.com"
            if batch == FOLD_BATCHES[2] and i % 2 == 0:
                ups = later[i]
            else:
                ups = {
                    audience: {
                        "status": rng.choice(STATUSES),
                        "lastQualificationTime": rng.choice(FOLD_TIMES),
                        "version": "1",
                        "validUntil": None,
                    }
                    for audience in rng.sample((*AUDIENCES, "aud-9"), rng.randint(0, 3))
                }
            if email is None and batch != FOLD_BATCHES[2]:
                # the NULL person "enters" aud-3 untimed (its flags must be ignored)
                if batch == FOLD_BATCHES[0]:
                    ups.pop("aud-3", None)
                else:
                    ups["aud-3"] = {
                        "status": "existing",
                        "lastQualificationTime": FOLD_TIMES[2],
                        "version": "1",
                        "validUntil": None,
                    }
            if batch == FOLD_BATCHES[1]:
                later[i] = ups
            profiles.append(
                _profile(
                    i, email, ups, batch=batch, source=batch, first=f"F{i}", last=f"L{i}", identity_map=False
                )
            )
    return profiles


FOLD_ROWS = _fold_profiles()
MAP_FIELDS = frozenset({"identityMap", "ups"})


def memberships() -> list[Membership]:
    """Every (profile, audience) membership of the small table, flattened in Python."""
    out = []
    for row in SMALL_ROWS:
        email = row[f"_{TENANT}"]["identification"]["core"]["email"]
        for audience, m in row["segmentMembership"]["ups"].items():
            out.append(
                Membership(
                    row["_acp_batchid"],
                    row["_acp_system_metadata"]["acp_sourceBatchId"],
                    email,
                    audience,
                    m["status"],
                    m["lastQualificationTime"],
                )
            )
    return out


def sql_literal(value: Any, *, as_map: bool = False) -> str:
    """DuckDB literal of a Python value (dicts are structs, or maps where the schema has maps)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dt.datetime):
        return f"TIMESTAMP '{value.isoformat(sep=' ')}'"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, list):
        return "[" + ", ".join(sql_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        if as_map:
            return "MAP {" + ", ".join(f"{sql_literal(k)}: {sql_literal(v)}" for k, v in value.items()) + "}"
        return (
            "{"
            + ", ".join(
                f"{sql_literal(k)}: {sql_literal(v, as_map=k in MAP_FIELDS)}" for k, v in value.items()
            )
            + "}"
        )
    raise TypeError(type(value))


def _create_small(
    db: duckdb.DuckDBPyConnection, table: str = SMALL_TABLE, rows: list[dict[str, Any]] = SMALL_ROWS
) -> None:
    db.execute(f"CREATE TABLE {table} ({EXPORT_COLUMNS})")
    values = ",\n".join(
        "(" + ", ".join(sql_literal(row[c], as_map=c in MAP_FIELDS) for c in row) + ")" for row in rows
    )
    db.execute(f"INSERT INTO {table} VALUES {values}")


def big_email(i: int) -> str:
    return f"p{i:06d}@example.com"


def _create_big(db: duckdb.DuckDBPyConnection) -> None:
    """250,000 profiles, each member of aud-A and aud-B; every 10th has also exited aud-C."""
    membership = (
        "STRUCT(status VARCHAR, lastQualificationTime TIMESTAMP, version VARCHAR, validUntil TIMESTAMP)"
    )
    db.execute(f"CREATE TABLE {BIG_TABLE} ({EXPORT_COLUMNS})")
    db.execute(f"""
        INSERT INTO {BIG_TABLE}
        SELECT
            MAP {{'Email': [{{'id': printf('p%06d@example.com', i), 'primary': true,
                              'authenticatedState': 'authenticated'}}]}},
            {{'identification': {{'core': {{'email': printf('p%06d@example.com', i), 'ecid': 'e' || i,
                                           'crmId': NULL, 'phoneNumber': NULL}}}}}},
            {{'name': {{'firstName': 'F' || i, 'lastName': 'L' || i}}, 'gender': NULL}},
            {{'address': printf('p%06d@example.com', i)}},
            {{'ups': map_from_entries(
                [{{'key': 'aud-A', 'value': CAST({{'status': CASE WHEN i % 2 = 0 THEN 'realized' ELSE 'existing' END,
                    'lastQualificationTime': TIMESTAMP '2026-11-20 00:00:00' + to_seconds(i), 'version': '1',
                    'validUntil': NULL}} AS {membership})}},
                 {{'key': 'aud-B', 'value': CAST({{'status': 'existing',
                    'lastQualificationTime': TIMESTAMP '2026-11-21 00:00:00', 'version': '2',
                    'validUntil': NULL}} AS {membership})}}]
                || CASE WHEN i % 10 = 0 THEN [{{'key': 'aud-C', 'value': CAST({{'status': 'exited',
                    'lastQualificationTime': TIMESTAMP '2026-11-22 00:00:00', 'version': '1',
                    'validUntil': NULL}} AS {membership})}}] ELSE [] END)}},
            '{BIG_BATCH[0]}',
            {{'acp_sourceBatchId': '{BIG_BATCH[1]}'}}
        FROM range({BIG_PROFILES}) r(i)
    """)


@pytest.fixture(scope="session")
def database() -> Iterator[duckdb.DuckDBPyConnection]:
    db = duckdb.connect()
    _create_small(db)
    _create_small(db, FOLD_TABLE, FOLD_ROWS)
    _create_big(db)
    # An internal table the REST side might keep: it must not be readable through Query Service.
    db.execute("CREATE TABLE emulator_internal_state AS SELECT 'secret' AS value")
    yield db
    db.close()


TABLES = [
    {
        "name": SMALL_TABLE,
        "dataSetId": "6500000000000000000000a1",
        "dataSet": "CJA audience export",
        "description": "profiles exported for CJA",
    },
    {
        "name": FOLD_TABLE,
        "dataSetId": "6500000000000000000000c3",
        "dataSet": "Events fold export",
        "description": "exports whose events repeat",
    },
    {
        "name": BIG_TABLE,
        "dataSetId": "6500000000000000000000b2",
        "dataSet": "Big export",
        "description": None,
    },
]


def authenticate(user: str, password: str, database: str) -> None:
    if password != TOKEN:
        raise PermissionError("Invalid authentication token")
    if database != DATABASE:
        raise PermissionError(f"No tables found for dbName {database}")


@dataclass(frozen=True)
class Tls:
    ca: Path
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A private CA and a server certificate for 127.0.0.1/localhost (clients verify it): the
    emulator's own ``tls.generate`` (trustme), so these tests exercise the certificates it serves."""
    files = emulator_tls.generate(tmp_path_factory.mktemp("qs-tls"), [])
    return Tls(files.ca_bundle, files.cert, files.key)


def start_server(database: duckdb.DuckDBPyConnection, tls: Tls, **limits: Any) -> QueryServiceServer:
    server = QueryServiceServer(
        host="127.0.0.1",
        port=0,
        ssl_context=tls.server_context(),
        connect=database.cursor,
        authenticate=authenticate,
        list_tables=lambda: TABLES,
        **limits,
    )
    server.start()
    return server


@pytest.fixture(scope="session")
def server(database: duckdb.DuckDBPyConnection, tls: Tls) -> Iterator[QueryServiceServer]:
    srv = start_server(database, tls)
    yield srv
    srv.stop()


def dsn_for(server: QueryServiceServer, tls: Tls) -> dict[str, Any]:
    """libpq keywords for a server: full certificate verification against the test CA."""
    return {
        "host": "127.0.0.1",
        "port": server.port,
        "user": USER,
        "password": TOKEN,
        "dbname": DATABASE,
        "sslmode": "verify-full",
        "sslrootcert": str(tls.ca),
    }


@pytest.fixture(scope="session")
def dsn(server: QueryServiceServer, tls: Tls) -> dict[str, Any]:
    return dsn_for(server, tls)


@pytest.fixture(scope="session")
def qs() -> SimpleNamespace:
    """This module's constants and helpers for the test modules (conftest is not importable)."""
    return SimpleNamespace(
        TENANT=TENANT,
        SMALL_TABLE=SMALL_TABLE,
        BIG_TABLE=BIG_TABLE,
        TOKEN=TOKEN,
        DATABASE=DATABASE,
        USER=USER,
        AUDIENCES=AUDIENCES,
        BATCHES=BATCHES,
        FOLD_TABLE=FOLD_TABLE,
        FOLD_BATCHES=FOLD_BATCHES,
        FOLD_ROWS=FOLD_ROWS,
        BIG_PROFILES=BIG_PROFILES,
        BIG_BATCH=BIG_BATCH,
        TABLES=TABLES,
        SMALL_ROWS=SMALL_ROWS,
        memberships=memberships,
        big_email=big_email,
        start_server=start_server,
        dsn_for=dsn_for,
    )
