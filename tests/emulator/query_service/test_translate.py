"""The Spark SQL dialect Query Service receives, checked against results computed in Python."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import Counter
from typing import Any

import psycopg2
import pytest

from aep_emulator.query_service.errors import QueryServiceError
from aep_emulator.query_service.translate import (
    Translator,
    java_to_strftime,
    split_statements,
)

# Verbatim from Adobe's "Ingest and use Experience Platform audiences" use case (with ids filled in).
RECIPE_SQL = """SELECT ROW_NUMBER() OVER (ORDER BY key)::text AS _id, personID, key AS audienceMembershipId
FROM (
   SELECT _demoemea.identification.core.email AS personID, explode(segmentMembership.ups)
   FROM segment_export_job_dataset_for_cja
)
WHERE value.status = 'realized' AND (key = 'aud-1' OR key = 'aud-2')"""


@pytest.fixture(scope="module")
def cur(dsn: dict[str, Any]) -> Any:
    conn = psycopg2.connect(**dsn)
    conn.autocommit = True
    yield conn.cursor()
    conn.close()


def test_recipe_query_runs_unchanged(cur: Any, qs: Any) -> None:
    expected = Counter(
        (m.email, m.audience)
        for m in qs.memberships()
        if m.status == "realized" and m.audience in ("aud-1", "aud-2")
    )
    cur.execute(RECIPE_SQL)
    rows = cur.fetchall()
    assert [c.name for c in cur.description] == ["_id", "personID", "audienceMembershipId"]
    assert Counter((person, audience) for _, person, audience in rows) == expected
    # ROW_NUMBER() OVER (ORDER BY key)::text: ids 1..n as text, in audience order (ties in any order)
    by_id = sorted(rows, key=lambda r: int(r[0]))
    assert [r[0] for r in by_id] == [str(i) for i in range(1, len(rows) + 1)]
    assert [r[2] for r in by_id] == sorted(r[2] for r in rows)


@pytest.mark.parametrize(
    "batch_filter", ["_acp_batchid = '{batch}'", "_acp_system_metadata.acp_sourceBatchId = '{source}'"]
)
def test_corrected_recipe_reads_one_batch_and_all_member_statuses(
    cur: Any, qs: Any, batch_filter: str
) -> None:
    batch, source = qs.BATCHES[2]
    sql = f"""SELECT personID, key AS audienceId, value.status
              FROM (SELECT _demoemea.identification.core.email AS personID, explode(segmentMembership.ups)
                    FROM segment_export_job_dataset_for_cja
                    WHERE {batch_filter.format(batch=batch, source=source)})
              WHERE value.status IN ('realized', 'existing') AND key IN ('aud-1', 'aud-2')"""
    expected = Counter(
        (m.email, m.audience, m.status)
        for m in qs.memberships()
        if m.batch == batch and m.status in ("realized", "existing") and m.audience in ("aud-1", "aud-2")
    )
    cur.execute(sql)
    assert Counter(cur.fetchall()) == expected
    assert expected  # the data has such members, so the comparison means something


def test_pipeline_sql_builder_queries(cur: Any, qs: Any) -> None:
    """The queries airflow_cja_audiences.sql builds run and partition the members exactly."""
    from airflow_cja_audiences import sql as qsql

    batch, source = qs.BATCHES[1]
    query = qsql.MembershipQuery(
        table=qs.SMALL_TABLE,
        person_field=f"_{qs.TENANT}.identification.core.email",
        audience_ids=("aud-1", "aud-3"),
        batch_id=source,
    )
    members = [
        m
        for m in qs.memberships()
        if m.source_batch == source
        and m.email is not None
        and m.audience in ("aud-1", "aud-3")
        and m.status in ("realized", "existing")
    ]
    expected = sorted(
        (m.email, m.audience, m.status, m.qualified.strftime("%Y-%m-%dT%H:%M:%SZ")) for m in members
    )
    cur.execute(qsql.membership_sql(query))
    assert cur.fetchall() == expected  # ORDER BY makes the order total
    parts = []
    for partition in qsql.plan_partitions(len(expected), 20):
        cur.execute(qsql.membership_sql(query, partition))
        parts.extend(cur.fetchall())
    assert sorted(parts) == expected
    window = qsql.TimeWindow("2026-11-10T00:00:00Z", "2026-11-20T00:00:00Z")

    def events(sources: set[str]) -> list[tuple]:  # realized = entered, exited = exited; existing is no event
        return sorted(
            {
                (m.email, m.audience, m.status, m.qualified.strftime("%Y-%m-%dT%H:%M:%SZ"))
                for m in qs.memberships()
                if m.source_batch in sources
                and m.email is not None
                and m.audience in ("aud-1", "aud-3")
                and m.status in ("realized", "exited")
                and dt.datetime(2026, 11, 10) <= m.qualified < dt.datetime(2026, 11, 20)
            },
            key=lambda r: (r[0], r[1], r[3], r[2]),
        )  # the query's ORDER BY

    cur.execute(qsql.events_sql(query, window))
    assert cur.fetchall() == events({source})
    both = [s for _, s in qs.BATCHES[:2]]
    cur.execute(qsql.events_sql(query, window, sources=both))  # what both exports show, once
    assert cur.fetchall() == events(set(both)) and len(events(set(both))) >= len(events({source}))
    cur.execute(qsql.count_sql(query, window=window, sources=both))
    assert cur.fetchone()[1] == len(events(set(both)))


def test_quotes_backslashes_and_postgres_casts(cur: Any) -> None:
    cur.execute("SELECT 'it''s', %s, %s", ("O'Brien \\ co", "a''b"))
    assert cur.fetchone() == ("it's", "O'Brien \\ co", "a''b")
    cur.execute(
        "SELECT '12'::int + 1, 3::string, 4::text, CAST('5' AS bigint), '1.5'::double, "
        "date_format(\"2026-01-02 03:04:05\", \"yyyy-MM-dd'T'HH:mm:ss'Z' EEE\")"
    )
    assert cur.fetchone() == (13, "3", "4", 5, 1.5, "2026-01-02T03:04:05Z Fri")


def test_generators_lateral_views_and_size(cur: Any, qs: Any) -> None:
    table = qs.SMALL_TABLE
    n_profiles = len(qs.SMALL_ROWS)
    empty = sum(1 for r in qs.SMALL_ROWS if not r["segmentMembership"]["ups"])
    total = len(qs.memberships())
    cur.execute(f"SELECT count(*) FROM (SELECT explode_outer(segmentMembership.ups) FROM {table})")
    assert cur.fetchone() == (total + empty,)  # explode_outer keeps empty maps as a NULL row
    cur.execute(
        f"SELECT count(*), count(k) FROM {table} LATERAL VIEW OUTER explode(segmentMembership.ups) e AS k, v"
    )
    assert cur.fetchone() == (total + empty, total)
    cur.execute(
        f"SELECT count(*) FROM {table} LATERAL VIEW explode(segmentMembership.ups) e AS k, v "
        "WHERE v.status = 'exited'"
    )
    assert cur.fetchone() == (sum(1 for m in qs.memberships() if m.status == "exited"),)
    cur.execute(
        f"SELECT sum(size(segmentMembership.ups)), min(size(identityMap)), "
        f"min(size(identityMap['Email'])) FROM {table}"
    )
    assert cur.fetchone() == (total, 0, -1)  # size(NULL) is -1 as in Spark
    cur.execute(
        f"SELECT pos, col FROM (SELECT posexplode(map_keys(segmentMembership.ups)) FROM {table}) "
        "WHERE pos = 0"
    )
    assert len(cur.fetchall()) == n_profiles - empty
    cur.execute(
        f"SELECT id, `primary` FROM (SELECT inline(ids) FROM (SELECT explode(identityMap) AS (ns, ids) "
        f"FROM {table})) ORDER BY id LIMIT 1"
    )
    assert cur.fetchone() == ("user000@example.com", True)
    cur.execute("SELECT explode(array(10, 20)) AS x, 'a'")
    assert cur.fetchall() == [(10, "a"), (20, "a")]


def test_struct_paths_map_lookups_and_functions(cur: Any, qs: Any) -> None:
    table = qs.SMALL_TABLE
    row = next(r for r in qs.SMALL_ROWS if "aud-1" in r["segmentMembership"]["ups"])
    email = row[f"_{qs.TENANT}"]["identification"]["core"]["email"]
    cur.execute(
        f"SELECT segmentMembership.ups['aud-1'].status, person.name.lastName, "
        f"segmentMembership['ups']['aud-1'].version FROM {table} "
        f"WHERE _{qs.TENANT}.identification.core.email = %s AND _acp_batchid = %s",
        (email, row["_acp_batchid"]),
    )
    membership = row["segmentMembership"]["ups"]["aud-1"]
    assert cur.fetchone() == (membership["status"], row["person"]["name"]["lastName"], membership["version"])
    cur.execute(
        "SELECT sha2('abc', 256), concat('a', 'b'), concat('a', NULL), array_join(array('x', 'y'), '-'), "
        "to_json(named_struct('a', 1, 'b', CAST(NULL AS STRING), 't', TIMESTAMP '2026-01-02 03:04:05')), "
        "size(collect_list(x)), count(*) FROM (SELECT explode(array(1, NULL, 3)) AS x)"
    )
    assert cur.fetchone() == (
        hashlib.sha256(b"abc").hexdigest(),
        "ab",
        None,
        "x-y",
        '{"a":1,"t":"2026-01-02T03:04:05.000Z"}',
        2,
        3,
    )


def test_hash_pmod_buckets_are_non_negative_and_cover_everything(cur: Any, qs: Any) -> None:
    table = qs.SMALL_TABLE
    cur.execute(
        f"SELECT min(hash(_acp_batchid || _demoemea.identification.core.ecid)), "
        f"min(pmod(hash(_demoemea.identification.core.ecid), 7)), "
        f"max(pmod(hash(_demoemea.identification.core.ecid), 7)) FROM {table}"
    )
    lowest_hash, low, high = cur.fetchone()
    assert lowest_hash < 0  # hash() is signed like Spark's, so pmod() is what keeps buckets >= 0
    assert 0 <= low <= high < 7
    seen = Counter()
    for bucket in range(7):
        cur.execute(
            f"SELECT _acp_batchid, _demoemea.identification.core.ecid FROM {table} "
            f"WHERE pmod(hash(_demoemea.identification.core.ecid), 7) = {bucket}"
        )
        seen.update(cur.fetchall())
    assert sum(seen.values()) == len(qs.SMALL_ROWS) and set(seen.values()) == {1}


def test_system_columns_hidden_from_star_unless_asked(dsn: dict[str, Any], qs: Any) -> None:
    visible = ["identityMap", f"_{qs.TENANT}", "person", "personalEmail", "segmentMembership"]
    with psycopg2.connect(**dsn) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT * FROM {qs.SMALL_TABLE} WHERE _acp_batchid = %s LIMIT 1", (qs.BATCHES[0][0],))
        assert [c.name for c in cur.description] == visible
        cur.execute(
            f"SELECT t.* FROM {qs.SMALL_TABLE} t WHERE _acp_system_metadata.acp_sourceBatchId = %s",
            (qs.BATCHES[0][1],),
        )
        assert [c.name for c in cur.description] == visible and len(cur.fetchall()) == 120
        cur.execute("set drop_system_columns=false")
        cur.execute(f"SELECT * FROM {qs.SMALL_TABLE} LIMIT 1")
        assert [c.name for c in cur.description] == visible + ["_acp_batchid", "_acp_system_metadata"]


def test_complex_columns_as_tuple_text_or_json(dsn: dict[str, Any], qs: Any) -> None:
    row = next(
        r
        for r in qs.SMALL_ROWS
        if r["person"]["name"]["firstName"] == "Jo, Jr."
        and r["person"]["name"]["lastName"] == "O'Brien"
        and r["segmentMembership"]["ups"]
    )
    email = row[f"_{qs.TENANT}"]["identification"]["core"]["email"]
    sql = (
        f"SELECT person, identityMap, segmentMembership FROM {qs.SMALL_TABLE} "
        f"WHERE _demoemea.identification.core.email = %s AND _acp_batchid = %s"
    )
    with psycopg2.connect(**dsn) as conn, conn.cursor() as cur:
        cur.execute(sql, (email, row["_acp_batchid"]))
        person, identity, _ = cur.fetchone()
        assert [c.type_code for c in cur.description] == [25, 25, 25]
        # Query Service's composite text: nested values quoted, NULL spelled out, booleans t/f
        assert person == '("("Jo, Jr.",O\'Brien)",NULL)'
        assert identity == f'[Email -> "{{({email},t,authenticated)}}"]'
        cur.execute("SET auto_to_json=true")
        cur.execute(sql, (email, row["_acp_batchid"]))
        person, identity, membership = (json.loads(v) for v in cur.fetchone())
    assert person == {"name": {"firstName": "Jo, Jr.", "lastName": "O'Brien"}}  # NULL fields left out
    assert identity == {"Email": [{"id": email, "primary": True, "authenticatedState": "authenticated"}]}
    assert membership == {
        "ups": {
            k: {
                "status": m["status"],
                "version": m["version"],
                "lastQualificationTime": m["lastQualificationTime"].strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            }
            for k, m in row["segmentMembership"]["ups"].items()
        }
    }


def test_show_tables(cur: Any, qs: Any) -> None:
    cur.execute("SHOW TABLES")
    assert [c.name for c in cur.description] == ["name", "dataSetId", "dataSet", "description", "resolved"]
    assert cur.fetchall() == sorted(
        (t["name"], t["dataSetId"], t["dataSet"], t["description"] or "", "false") for t in qs.TABLES
    )


# --- translator units (no server) ---------------------------------------------------------


class _Ctx:
    drop_system_columns = True

    def __init__(self, db: Any) -> None:
        self.db = db
        self.describes = 0

    def describe(self, sql: str) -> list[tuple[str, Any]]:
        self.describes += 1
        cur = self.db.cursor()
        cur.execute(sql)
        return [(d[0], d[1]) for d in cur.description]

    def tables(self) -> dict[str, str]:
        return {"segment_export_job_dataset_for_cja": "segment_export_job_dataset_for_cja"}

    def session_function(self, name: str, args: Any) -> str | None:
        return {"version": "PostgreSQL 9.6.0", "current_schema": "public"}.get(name)


def test_translations_are_cached(database: Any) -> None:
    ctx = _Ctx(database)
    translator = Translator()
    first = translator.translate(RECIPE_SQL, ctx)
    probes = ctx.describes
    assert probes >= 1  # explode() needed a LIMIT 0 type probe
    assert translator.translate(RECIPE_SQL, ctx) is first
    assert ctx.describes == probes
    assert "UNNEST(MAP_KEYS(" in first.sql and "explode" not in first.sql.lower()


def test_generator_errors_name_the_problem(database: Any) -> None:
    translator = Translator()
    with pytest.raises(QueryServiceError) as info:
        translator.translate(
            "SELECT explode(_acp_batchid) FROM segment_export_job_dataset_for_cja", _Ctx(database)
        )
    assert info.value.sqlstate == "42804" and "array or a map" in info.value.message
    with pytest.raises(QueryServiceError) as info:
        translator.translate(
            "SELECT explode(segmentMembership.ups) AS k FROM segment_export_job_dataset_for_cja",
            _Ctx(database),
        )
    assert "expected 2 aliases" in info.value.message


def test_split_statements_and_java_patterns() -> None:
    assert split_statements("select 1; select ';' ; -- c;\n select $$a;b$$; /* ; */ ;") == [
        "select 1",
        "select ';'",
        "-- c;\n select $$a;b$$",
    ]
    assert java_to_strftime("yyyy-MM-dd'T'HH:mm:ss'Z'") == "%Y-%m-%dT%H:%M:%SZ"
    assert java_to_strftime("dd/MM/yy HH:mm:ss.SSS 'o''clock'") == "%d/%m/%y %H:%M:%S.%g o'clock"
    with pytest.raises(QueryServiceError):
        java_to_strftime("QQQ")


def test_prepare_folded_counts_equal_the_statements_they_replace(cur: Any, qs: Any) -> None:
    """prepare reads each export once: the folded per-audience statements give exactly the numbers of
    count_sql, change_counts_sql, unidentified_counts_sql and event_counts_sql (NULL persons included)."""
    from airflow_cja_audiences import sql as qsql

    (_, old), (_, new) = qs.BATCHES[0], qs.BATCHES[1]
    query = qsql.MembershipQuery(
        table=qs.SMALL_TABLE,
        person_field=f"_{qs.TENANT}.identification.core.email",
        audience_ids=("aud-1", "aud-2", "aud-3"),
        batch_id=new,
    )
    assert any(m.email is None and m.source_batch == new for m in qs.memberships())  # the case that matters
    for previous in (old, None):
        cur.execute(qsql.snapshot_counts_sql(query, previous))
        folded = cur.fetchall()
        cur.execute(qsql.count_sql(query))
        total, identified = cur.fetchone()
        assert (sum(r[1] for r in folded), sum(r[2] for r in folded)) == (total, identified)
        assert total > identified > 0
        cur.execute(change_counts_sql(query, previous))
        assert [(r[0], *r[3:]) for r in folded] == cur.fetchall()
        cur.execute(unidentified_counts_sql(query))
        assert {r[0]: r[1] - r[2] for r in folded if r[1] > r[2]} == dict(cur.fetchall())
    window = qsql.TimeWindow("2026-11-10T00:00:00Z", "2026-11-20T00:00:00Z")
    for sources in ([new], [old, new]):
        cur.execute(event_totals_sql(query, window, sources))
        folded = cur.fetchall()
        assert folded
        cur.execute(qsql.count_sql(query, window=window, sources=sources))
        assert (sum(r[2] for r in folded), sum(r[3] for r in folded)) == cur.fetchone()
        cur.execute(event_counts_sql(query, window, sources))
        assert [(a, e, n) for a, e, _, n in folded if n] == cur.fetchall()


def test_prepare_events_reads_events_and_untimed_entries_in_one_statement(cur: Any, qs: Any) -> None:
    """sql.events_read_sql gives per audience exactly event_totals_sql's numbers for the sources and
    change_counts_sql's untimed entries for the pair, whether the pair's batches are sources or not,
    and without a pair: on exports whose events repeat, with NULL persons and times on the bounds."""
    from airflow_cja_audiences import sql as qsql

    earlier, later, other = qs.FOLD_BATCHES
    query = qsql.MembershipQuery(
        table=qs.FOLD_TABLE,
        person_field=f"_{qs.TENANT}.identification.core.email",
        audience_ids=("aud-1", "aud-2", "aud-3"),
        batch_id=later,
    )
    window = qsql.TimeWindow("2026-11-10T00:00:00Z", "2026-11-20T00:00:00Z")

    def rows(text: str) -> list[tuple[Any, ...]]:
        cur.execute(text)
        return [tuple(r) for r in cur.fetchall()]

    def reference(sources: list[str], pair: tuple[str, str] | None) -> dict[str, tuple[int, ...]]:
        found: dict[str, list[int]] = {a: [0] * 5 for a in query.audience_ids}
        for audience, event, memberships, identified in rows(event_totals_sql(query, window, sources)):
            at = 0 if event == "entered" else 2
            found[audience][at : at + 2] = [memberships, identified]
        if pair is not None:
            for row in rows(change_counts_sql(query, pair[0], batch_id=pair[1])):
                found[row[0]][4] = row[3]
        return {a: tuple(n) for a, n in found.items()}

    cases: list[tuple[list[str], tuple[str, str] | None]] = [
        ([later, other], (earlier, later)),  # the steady state: the earlier export is no source
        ([other], (earlier, later)),  # neither of the pair is a source
        ([earlier, later, other], (earlier, later)),
        ([later, other], None),
        ([later], (other, later)),
    ]
    untimed = 0
    for sources, pair in cases:
        folded = rows(qsql.events_read_sql(query, window, sources, pair))
        assert [c.name for c in cur.description] == list(qsql.EVENTS_READ_COLUMNS)
        got = {r[0]: tuple(int(n) for n in r[1:]) for r in folded}
        got = {a: got.get(a, (0,) * 5) for a in query.audience_ids}
        assert got == reference(sources, pair), (sources, pair)
        untimed += sum(n[4] for n in got.values())
        if pair is None:
            assert all(n[4] == 0 for n in got.values())
    assert untimed > 0  # the pair has entries it cannot date

    # The data has what makes the fold hard: events both sources show, events of NULL persons,
    # rows out of the window, and entries between the pair that are in sources as well.
    both = rows(event_totals_sql(query, window, [later, other]))
    alone = rows(event_totals_sql(query, window, [later])) + rows(event_totals_sql(query, window, [other]))
    assert sum(r[2] for r in both) < sum(r[2] for r in alone)
    assert sum(r[2] for r in both) > sum(r[3] for r in both)
    assert any(
        not window.start <= m["lastQualificationTime"].isoformat() + "Z" < window.end
        for row in qs.FOLD_ROWS
        for m in row["segmentMembership"]["ups"].values()
    )

    def unidentified(batch: str, audience: str) -> set[str]:
        return {
            row["segmentMembership"]["ups"][audience]["status"]
            for row in qs.FOLD_ROWS
            if row["_acp_batchid"] == batch
            and row[f"_{qs.TENANT}"]["identification"]["core"]["email"] is None
            and audience in row["segmentMembership"]["ups"]
        }

    # the NULL person "enters" aud-3 without a realized status: not an untimed entry of anyone
    assert not unidentified(earlier, "aud-3") and unidentified(later, "aud-3") == {"existing"}


# The separate statements prepare ran before it read the export once (sql.snapshot_counts_sql and
# sql.events_read_sql replaced them): kept here as the reference the folded statements must equal.


def event_totals_sql(q: Any, window: Any, sources: list[str] | None = None) -> str:
    """Per audience and event type (``entered``/``exited``): the distinct change rows of ``sources``
    in ``window`` (``memberships``; NULL persons alike) and those with a person id (``identified``)."""
    from airflow_cja_audiences import sql as qsql

    val = qsql._values(q, qsql.Partition())
    event = "CASE WHEN status = 'exited' THEN 'exited' ELSE 'entered' END"
    return (
        f"SELECT audienceId, {event} AS event, count(*) AS memberships, count(personID) AS identified\n"
        f"FROM (\n"
        f"SELECT DISTINCT personID, key AS audienceId, value.status AS status,\n"
        f"       {qsql.iso_utc('value.lastQualificationTime')} AS qualificationTime\n"
        f"FROM (\n"
        f"    SELECT {val['person']} AS personID, explode(segmentMembership.ups)\n"
        f"    FROM {val['table']}\n"
        f"    WHERE {qsql._batches_filter(q, sources)}\n"
        f")\n"
        f"WHERE key IN ({val['audience_ids']})\n"
        f"  AND value.status IN ('realized', 'exited')\n"
        f"  AND " + "\n  AND ".join(window.conditions()) + "\n"
        f")\n"
        f"GROUP BY audienceId, {event}\n"
        f"ORDER BY audienceId, event"
    )


def change_counts_sql(q: Any, previous_batch_id: str | None, *, batch_id: str | None = None) -> str:
    """Per audience, between the exports ``previous_batch_id`` and ``batch_id`` (default: this run's),
    persons with an id only: members now; entered (members now, not before), entered_untimed (of
    them, not realized now); exited (members before, exited now); untraced (members before, absent)."""
    from airflow_cja_audiences import sql as qsql

    val = qsql._values(q, qsql.Partition())
    new = qsql.quote_literal(batch_id or q.batch_id, "batch id")
    old = qsql.quote_literal(previous_batch_id, "batch id") if previous_batch_id else None
    member, realized, exited = f"status IN ({val['statuses']})", "status = 'realized'", "status = 'exited'"

    def flag(batch: str | None, condition: str) -> str:
        return f"max(CASE WHEN batchId = {batch} AND {condition} THEN 1 ELSE 0 END)" if batch else "0"

    changes = (
        ("entered", "in_new = 1 AND in_old = 0"),
        ("entered_untimed", "in_new = 1 AND in_old = 0 AND realized_new = 0"),
        ("exited", "in_new = 0 AND in_old = 1 AND exited_new = 1"),
        ("untraced", "in_new = 0 AND in_old = 1 AND exited_new = 0"),
    )
    return (
        "SELECT audienceId, sum(in_new) AS members,\n"
        + ",\n".join(f"       sum(CASE WHEN {cond} THEN 1 ELSE 0 END) AS {name}" for name, cond in changes)
        + "\n"
        f"FROM (\n"
        f"    SELECT personID, audienceId,\n"
        f"           {flag(new, member)} AS in_new,\n"
        f"           {flag(new, realized)} AS realized_new,\n"
        f"           {flag(new, exited)} AS exited_new,\n"
        f"           {flag(old, member)} AS in_old\n"
        f"    FROM (\n"
        f"        SELECT personID, batchId, key AS audienceId, value.status AS status\n"
        f"        FROM (\n"
        f"            SELECT {val['person']} AS personID, {q.batch_id_column} AS batchId, "
        f"explode(segmentMembership.ups)\n"
        f"            FROM {val['table']}\n"
        f"            WHERE {q.batch_id_column} IN ({', '.join(b for b in (new, old) if b)})\n"
        f"              AND {q.person_field} IS NOT NULL\n"
        f"        )\n"
        f"        WHERE key IN ({val['audience_ids']})\n"
        f"    )\n"
        f"    GROUP BY personID, audienceId\n"
        f")\n"
        f"GROUP BY audienceId\n"
        f"ORDER BY audienceId"
    )


def unidentified_counts_sql(q: Any) -> str:
    """Per audience: members in this run's export without the identity field (CJA cannot use them)."""
    if q.template is not None:
        raise ValueError("change counts use the built-in SQL; they are not available with a template")
    from airflow_cja_audiences import sql as qsql

    val = qsql._values(q, qsql.Partition())
    return (
        f"SELECT key AS audienceId, count(*) AS unidentified\n"
        f"FROM (\n"
        f"    SELECT explode(segmentMembership.ups)\n"
        f"    FROM {val['table']}\n"
        f"    WHERE {val['batch_filter']}\n"
        f"      AND {q.person_field} IS NULL\n"
        f")\n"
        f"WHERE key IN ({val['audience_ids']})\n"
        f"  AND value.status IN ({val['statuses']})\n"
        f"GROUP BY key\n"
        f"ORDER BY audienceId"
    )


def event_counts_sql(q: Any, window: Any, sources: list[str] | None = None) -> str:
    """Per audience and event type (``entered``/``exited``): how many change events
    :func:`events_sql` publishes for the window (the same distinct rows)."""
    from airflow_cja_audiences import sql as qsql

    if not isinstance(window, qsql.TimeWindow):
        raise ValueError(f"window must be a TimeWindow, got {type(window).__name__}")
    rows = qsql._select(
        q,
        qsql.EVENT_STATUSES,
        qsql.Partition(),
        window.conditions(),
        rows=True,
        sources=sources,
        distinct=True,
        order=False,
    )
    event = f"CASE WHEN {qsql.ROW_COLUMNS[2]} = {qsql.quote_literal(qsql.EXITED, 'status')} THEN 'exited' ELSE 'entered' END"
    return (
        f"SELECT {qsql.ROW_COLUMNS[1]}, {event} AS event, count(*) AS n\n"
        f"FROM (\n{rows}\n)\n"
        f"GROUP BY {qsql.ROW_COLUMNS[1]}, {event}\n"
        f"ORDER BY {qsql.ROW_COLUMNS[1]}, event"
    )
