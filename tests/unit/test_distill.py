"""The server path's SQL builds the same records as the client path's transform.

Both run on the same export-shaped table: the client path's rows query (``sql.membership_sql``) is
translated and run, and its rows go through ``transform``; the server path's ``INSERT INTO`` select
is translated and run by the same Spark -> DuckDB translation the Query Service emulator uses, and
its rows are taken as JSON the way the emulator writes a batch query's batch. The edge cases are the
transform's: a person with several profiles (a repeated audience: the first row wins), names with
quotes, commas, backslashes and non-ASCII text, person ids that need escaping, unidentified and empty
person ids, statuses that are not members.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import duckdb
import pytest

from aep_emulator import synthetic
from aep_emulator.query_service.translate import Translator
from airflow_cja_audiences import distill, sql
from airflow_cja_audiences.config import RefreshJob
from airflow_cja_audiences.transform import RecordSpec, iter_json_lines, stable_id

TENANT = "demoemea"
BATCH = "01JEXPORTBATCH0000000000001"
AUDIENCES = {"aud-1": 'Fans "of" the, club', "aud-2": "Käufer \\ Über €", "aud-3": "plain"}


class _Ctx:
    drop_system_columns = True

    def __init__(self, db: duckdb.DuckDBPyConnection) -> None:
        self.db = db

    def describe(self, query: str) -> list[tuple[str, Any]]:
        return [(d[0], d[1]) for d in self.db.execute(query).description]

    def tables(self) -> Mapping[str, str]:
        return {"export": "export"}

    def session_function(self, name: str, args: Sequence[str]) -> str | None:
        return None


PROFILES = [  # (email, {audience: (status, time)}, batch)
    (
        "ann@example.com",
        {"aud-1": ("realized", "2026-03-01 10:00:00"), "aud-2": ("existing", "2026-02-01 00:00:00")},
        BATCH,
    ),
    (
        "ann@example.com",
        {"aud-1": ("existing", "2026-01-01 09:00:00"), "aud-3": ("realized", "2026-03-02 00:00:00")},
        BATCH,
    ),
    ('bob "the" \\builder', {"aud-2": ("realized", "2026-03-01 00:00:00")}, BATCH),
    ("carl@example.com", {"aud-1": ("exited", "2026-03-01 00:00:00")}, BATCH),  # not a member
    ("dora@example.com", {"aud-3": ("existing", "2026-03-01 00:00:00")}, "01JOTHERBATCH00000000000001"),
    # Only in another export (events that read several): a new entry, and a row ann's export shows alike.
    ("eve@example.com", {"aud-2": ("realized", "2026-03-01 12:00:00")}, "01JOTHERBATCH00000000000001"),
    ("ann@example.com", {"aud-1": ("realized", "2026-03-01 10:00:00")}, "01JOTHERBATCH00000000000001"),
    (None, {"aud-1": ("realized", "2026-03-01 00:00:00")}, BATCH),  # unidentified
    ("", {"aud-1": ("realized", "2026-03-01 00:00:00")}, BATCH),  # empty id: skipped by both paths
    (
        "émile@example.com",
        {"aud-3": ("existing", "2026-03-01 00:00:00"), "aud-9": ("realized", "2026-03-01 00:00:00")},
        BATCH,
    ),  # aud-9 is not the job's
]


@pytest.fixture(scope="module")
def db() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(
        f"CREATE TABLE export (_demoemea STRUCT(identification STRUCT(core STRUCT(email VARCHAR))), "
        f"segmentMembership {synthetic.SEGMENT_MEMBERSHIP_TYPE}, _acp_batchid VARCHAR, "
        f"_acp_system_metadata {synthetic.SYSTEM_METADATA_TYPE})"
    )
    membership_type = re.search(r"MAP\(VARCHAR, (.*)\)\)$", synthetic.SEGMENT_MEMBERSHIP_TYPE)[1]  # type: ignore[index]
    for email, memberships, batch in PROFILES:
        keys = list(memberships)
        values = [{"status": s, "lastQualificationTime": t} for s, t in memberships.values()]
        con.execute(
            f"INSERT INTO export SELECT {{'identification': {{'core': {{'email': ?}}}}}}, "
            f"{{'ups': MAP(?::VARCHAR[], ?::{membership_type}[])}}, ?, "
            f"{{'acp_sourceBatchId': ?, 'commitBatchId': ?, 'ingestTime': 0}}",
            [email, keys, values, batch, batch, batch],
        )
    return con


def _job(layout: str, **extra: Any) -> RefreshJob:
    return RefreshJob.model_validate(
        {
            "job_id": "distill_job",
            "audiences": [{"id": a} for a in AUDIENCES],
            "identity": {"field": "_{tenant}.identification.core.email"},
            "layout": layout,
            **extra,
        }
    )


def _client_records(db: duckdb.DuckDBPyConnection, job: RefreshJob) -> list[dict]:
    q = sql.build_membership_query(job, table="export", batch_id=BATCH, tenant=TENANT)
    translated = Translator().translate(sql.membership_sql(q), _Ctx(db))
    rows = db.execute(translated.sql).fetchall()
    spec = RecordSpec.from_job(job, tenant=TENANT, audience_names=AUDIENCES)
    return [json.loads(line) for line in iter_json_lines(rows, spec)]


def _server_records(db: duckdb.DuckDBPyConnection, job: RefreshJob) -> list[dict]:
    q = sql.build_membership_query(job, table="export", batch_id=BATCH, tenant=TENANT)
    statement = distill.snapshot_insert_sql(
        q,
        target_table="cja_profiles",
        job_id=job.job_id,
        tenant=TENANT,
        audience_names=AUDIENCES,
        layout=job.layout,
        fields=job.output,
    )
    return _inserted(db, statement, "cja_profiles")


def _inserted(db: duckdb.DuckDBPyConnection, statement: str, table: str) -> list[dict]:
    """The records ``INSERT INTO table SELECT ...`` writes, as JSON (as the emulator writes them)."""
    head, select = statement.split("\n", 1)
    assert head == f"INSERT INTO {table}"
    translated = Translator().translate(select, _Ctx(db))
    return [
        json.loads(line) for (line,) in db.execute(f"SELECT to_json(r) FROM ({translated.sql}) r").fetchall()
    ]


def _by_id(records: list[dict]) -> dict[str, dict]:
    out = {r["_id"]: r for r in records}
    assert len(out) == len(records), "duplicate _id"
    return out


@pytest.mark.parametrize("layout", ["per_person", "per_membership"])
def test_server_records_equal_client_records(db: duckdb.DuckDBPyConnection, layout: str) -> None:
    job = _job(layout)
    client, server = _by_id(_client_records(db, job)), _by_id(_server_records(db, job))
    assert client and server == client
    people = {r["personID"] for r in server.values()}
    assert people == {"ann@example.com", 'bob "the" \\builder', "émile@example.com"}


def test_first_row_wins_and_names_survive(db: duckdb.DuckDBPyConnection) -> None:
    ann = next(r for r in _server_records(db, _job("per_person")) if r["personID"] == "ann@example.com")
    members = ann[f"_{TENANT}"]["audienceMembership"]
    assert [m["audienceMembershipId"] for m in members] == ["aud-1", "aud-2", "aud-3"]
    assert members[0]["lastQualificationTime"] == "2026-01-01T09:00:00Z"  # the earlier of ann's two rows
    assert ann[f"_{TENANT}"]["audienceMembershipNames"] == ",".join(
        AUDIENCES[a] for a in ("aud-1", "aud-2", "aud-3")
    )


def test_custom_output_fields(db: duckdb.DuckDBPyConnection) -> None:
    job = _job(
        "per_person",
        output={
            "memberships": "segs",
            "audience_id": "segId",
            "audience_ids": "segIds",
            "audience_names": "segNames",
            "audience_name": "segName",
            "status": "st",
            "qualification_time": "at",
        },
    )
    assert _by_id(_server_records(db, job)) == _by_id(_client_records(db, job))


def test_refuses_what_it_cannot_write_safely() -> None:
    job = _job("per_person")
    q = sql.build_membership_query(job, table="export", batch_id=BATCH, tenant=TENANT)
    ok = {"target_table": "cja_profiles", "job_id": job.job_id, "tenant": TENANT, "audience_names": AUDIENCES}
    with pytest.raises(ValueError, match="target table"):
        distill.snapshot_insert_sql(q, **{**ok, "target_table": "x; DROP TABLE y"})
    with pytest.raises(ValueError, match="no name for audience ids"):
        distill.snapshot_insert_sql(q, **{**ok, "audience_names": {"aud-1": "x"}})
    with pytest.raises(ValueError, match="layout"):
        distill.snapshot_insert_sql(q, **ok, layout="events")
    with pytest.raises(ValueError, match="lone surrogate"):
        distill.snapshot_insert_sql(q, **{**ok, "audience_names": {**AUDIENCES, "aud-1": "\ud800"}})
    statement = distill.snapshot_insert_sql(
        q, **{**ok, "audience_names": {**AUDIENCES, "aud-1": "x' OR '1'='1"}}
    )
    assert "OR '1'='1" not in statement  # names go in as hex, never as quoted text
    assert distill.text_literal("", "name") == "''"


# -- change events ------------------------------------------------------------------------------

OTHER = "01JOTHERBATCH00000000000001"
WINDOW = sql.TimeWindow("2026-03-01T00:00:00Z", "2026-03-02T00:00:00Z")


def _client_events(db: duckdb.DuckDBPyConnection, job: RefreshJob, sources: list[str] | None) -> list[dict]:
    q = sql.build_membership_query(job, table="export", batch_id=BATCH, tenant=TENANT)
    translated = Translator().translate(sql.events_sql(q, WINDOW, sources=sources), _Ctx(db))
    rows = db.execute(translated.sql).fetchall()
    spec = RecordSpec.from_job(job, tenant=TENANT, audience_names=AUDIENCES, events=True)
    return [json.loads(line) for line in iter_json_lines(rows, spec)]


def _server_events(db: duckdb.DuckDBPyConnection, job: RefreshJob, sources: list[str] | None) -> list[dict]:
    q = sql.build_membership_query(job, table="export", batch_id=BATCH, tenant=TENANT)
    statement = distill.events_insert_sql(
        q,
        WINDOW,
        sources,
        target_table="cja_events",
        job_id=job.job_id,
        tenant=TENANT,
        audience_names=AUDIENCES,
        fields=job.output,
    )
    return _inserted(db, statement, "cja_events")


@pytest.mark.parametrize("sources", [None, [BATCH, OTHER]])
def test_server_events_equal_client_events(db: duckdb.DuckDBPyConnection, sources: list[str] | None) -> None:
    job = _job("per_person")
    client, server = _by_id(_client_events(db, job, sources)), _by_id(_server_events(db, job, sources))
    assert server == client
    # In the window: bob's and the empty id's realized aud-2/aud-1 (the empty one skipped), carl's exit;
    # ann's realized aud-1 at 10:00 is in it too, her aud-3 (03-02) is not. `existing` rows are no events.
    seen = {(r[f"_{TENANT}"]["personID"], r[f"_{TENANT}"]["audienceMembershipId"]) for r in server.values()}
    assert seen == {
        ("ann@example.com", "aud-1"),
        ('bob "the" \\builder', "aud-2"),
        ("carl@example.com", "aud-1"),
        *([("eve@example.com", "aud-2")] if sources else []),
    }
    carl = next(r for r in server.values() if r[f"_{TENANT}"]["personID"] == "carl@example.com")
    assert carl["timestamp"] == "2026-03-01T00:00:00Z"
    assert carl[f"_{TENANT}"]["audienceEventType"] == "exited"
    assert carl["_id"] == stable_id(job.job_id, "carl@example.com", "aud-1", "exited", "2026-03-01T00:00:00Z")


def test_server_events_read_every_source(db: duckdb.DuckDBPyConnection) -> None:
    """eve's entry is only in another export: only a run that reads it has her event; ann's entry,
    which both exports show, is one event (one _id), not two."""
    job = _job("per_person")
    only_this = [r[f"_{TENANT}"]["personID"] for r in _server_events(db, job, None)]
    both = [r[f"_{TENANT}"]["personID"] for r in _server_events(db, job, [BATCH, OTHER])]
    assert "eve@example.com" not in only_this
    assert sorted(both) == sorted([*only_this, "eve@example.com"])
    assert both.count("ann@example.com") == 1
    assert "dora@example.com" not in both  # existing: no event


def test_events_refuse_what_they_cannot_write_safely() -> None:
    job = _job("per_person")
    q = sql.build_membership_query(job, table="export", batch_id=BATCH, tenant=TENANT)
    ok = {"target_table": "cja_events", "job_id": job.job_id, "tenant": TENANT, "audience_names": AUDIENCES}
    with pytest.raises(ValueError, match="target table"):
        distill.events_insert_sql(q, WINDOW, None, **{**ok, "target_table": "x y"})
    with pytest.raises(ValueError, match="source batch id"):
        distill.events_insert_sql(q, WINDOW, ["'; DROP"], **ok)
    with pytest.raises(ValueError, match="no name for audience ids"):
        distill.events_insert_sql(q, WINDOW, None, **{**ok, "audience_names": {"aud-1": "x"}})
    with pytest.raises(ValueError, match="window"):
        distill.events_insert_sql(q, "2026-03-01", None, **ok)  # type: ignore[arg-type]
