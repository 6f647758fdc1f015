"""``commands.classify``: what each statement a client sends is, by sqlglot's PostgreSQL parser with
the keyword fallbacks the module documents. No server needed: the grammar is read on its own."""

from __future__ import annotations

import pytest

from aep_emulator.query_service import commands as cmd
from aep_emulator.query_service.errors import QueryServiceError


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("  -- nothing\n", cmd.Empty()),
        ("SELECT 1", cmd.Query()),
        ("/* c */ with a as (select 1) select * from a", cmd.Query()),
        ("(SELECT 1)", cmd.Query()),
        ("VALUES (1)", cmd.Query()),
        # Query Service SQL the PostgreSQL parser rejects is still a query (the translator reads Spark).
        ("SELECT `a` FROM t LATERAL VIEW explode(x) v AS y", cmd.Query()),
        ("SELECT typname FROM pg_catalog.pg_type WHERE typname = 'hstore'", cmd.Query(catalog=True)),
        ("SELECT * FROM pg_cursors", cmd.Query(catalog=True)),
        ("SELECT x FROM `t` JOIN information_schema.tables", cmd.Query(catalog=True)),
        ("SELECT pg_catalog.version()", cmd.Query()),
        ("BEGIN", cmd.Begin()),
        ("begin isolation level read committed", cmd.Begin()),
        ("START TRANSACTION READ ONLY", cmd.Begin()),
        ("COMMIT", cmd.Commit()),
        ("END", cmd.Commit()),
        ("ROLLBACK", cmd.Rollback()),
        ("ABORT", cmd.Rollback()),
        ("ROLLBACK TO SAVEPOINT Sp1", cmd.Rollback("sp1")),
        ('ROLLBACK TRANSACTION TO "Sp"', cmd.Rollback("Sp")),
        ("SAVEPOINT sp1", cmd.Savepoint("sp1")),
        ("RELEASE SAVEPOINT sp1", cmd.Release("sp1")),
        ('RELEASE "A"', cmd.Release("A")),
        ("SET search_path TO public", cmd.SetVar("search_path", "public")),
        ("SET SESSION TimeZone = 'UTC'", cmd.SetVar("timezone", "UTC")),
        ("SET LOCAL statement_timeout = 5", cmd.SetVar("statement_timeout", "5", local=True)),
        ("SET extra_float_digits = -3", cmd.SetVar("extra_float_digits", "-3")),
        ("SET application_name = 'it''s'", cmd.SetVar("application_name", "it's")),
        ("SET auto_to_json = true", cmd.SetVar("auto_to_json", "true")),
        # Values sqlglot would rewrite or misread are taken as written.
        ("SET auto_to_json = TRUE", cmd.SetVar("auto_to_json", "TRUE")),
        ("SET statement_timeout TO 10s", cmd.SetVar("statement_timeout", "10s")),
        ("SET x TO DEFAULT", cmd.SetVar("x", None)),
        ("SET TIME ZONE 'Europe/Paris'", cmd.SetVar("timezone", "Europe/Paris")),
        ("SET datestyle TO ISO, MDY", cmd.SetVar("datestyle", "ISO, MDY")),
        ("SET TRANSACTION ISOLATION LEVEL READ COMMITTED", cmd.SetIgnored()),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", cmd.SetIgnored()),
        ("RESET ALL", cmd.Reset("all")),
        ("RESET TimeZone", cmd.Reset("timezone")),
        ("SHOW TABLES", cmd.Show("tables")),
        ("SHOW transaction  isolation level", cmd.Show("transaction isolation level")),
        ('SHOW "TimeZone"', cmd.Show('"timezone"')),
        ("DISCARD ALL", cmd.Discard()),
        (
            'DECLARE "C" BINARY NO SCROLL CURSOR WITH HOLD FOR SELECT 1',
            cmd.Declare("C", "SELECT 1", binary=True, holdable=True),
        ),
        ("DECLARE c CURSOR FOR SELECT 2", cmd.Declare("c", "SELECT 2", binary=False, holdable=False)),
        ("FETCH 10 FROM c", cmd.Fetch(False, "10", "c")),
        ("FETCH forward  all IN c", cmd.Fetch(False, "FORWARD ALL", "c")),
        ("FETCH c", cmd.Fetch(False, "NEXT", "c")),
        ("MOVE ABSOLUTE 3 c", cmd.Fetch(True, "ABSOLUTE 3", "c")),
        ("CLOSE c", cmd.Close("c")),
        ("CLOSE ALL", cmd.Close("ALL")),
        ("PREPARE p (int, TEXT) AS SELECT $1", cmd.Prepare("p", ("int", "text"), "SELECT $1")),
        ("EXECUTE p (1, 'a')", cmd.Execute("p", "1, 'a'")),
        ("EXECUTE p", cmd.Execute("p", None)),
        ("DEALLOCATE p", cmd.Deallocate("p")),
        ("DEALLOCATE PREPARE ALL", cmd.Deallocate("ALL")),
        ("EXPLAIN ANALYZE SELECT 1", cmd.Explain("SELECT 1")),
    ],
)
def test_classify(sql, expected):
    assert cmd.classify(sql) == expected


@pytest.mark.parametrize(
    ("sql", "sqlstate", "message"),
    [
        ("CREATE TABLE x (a int)", "0A000", "CREATE statements are not supported"),
        ("INSERT INTO x VALUES (1)", "0A000", "INSERT statements"),
        ("WITH a AS (SELECT 1) INSERT INTO x SELECT * FROM a", "0A000", "WITH statements"),
        ("LISTEN foo", "0A000", "LISTEN statements"),
        ("VACUUM", "0A000", "VACUUM statements"),
        ("DO $$ begin end $$", "0A000", "DO statements"),
        ("DECLARE c SCROLL CURSOR FOR SELECT 1", "0A000", "SCROLL cursors"),
        ("SELEC 1", "42601", 'near "SELEC"'),
        ("SAVEPOINT", "42601", "syntax error in SAVEPOINT"),
        ("DECLARE c FOR SELECT 1", "42601", "DECLARE CURSOR"),
        ("FETCH 1 FROM c d", "42601", "FETCH/MOVE"),
        ("PREPARE p SELECT 1", "42601", "PREPARE"),
        ("SET nothing", "42601", "syntax error in SET"),
    ],
)
def test_refusals(sql, sqlstate, message):
    with pytest.raises(QueryServiceError, match=message) as caught:
        cmd.classify(sql)
    assert caught.value.sqlstate == sqlstate


def test_only_commit_and_rollback_are_transaction_control():
    control = [
        s
        for s in ("COMMIT", "ROLLBACK", "BEGIN", "SAVEPOINT a")
        if isinstance(cmd.classify(s), cmd.TRANSACTION_CONTROL)
    ]
    assert control == ["COMMIT", "ROLLBACK"]


@pytest.mark.parametrize(
    ("direction", "position", "skip", "count"),
    [
        ("NEXT", 4, 0, 1),
        ("FORWARD ALL", 4, 0, None),
        ("ABSOLUTE 3", 0, 2, 1),
        ("ABSOLUTE 3", 5, None, 1),  # backwards: a NO SCROLL cursor refuses
        ("RELATIVE 2", 0, 1, 1),
        ("10", 0, 0, 10),
        ("-1", 0, None, -1),
        ("PRIOR", 3, None, 0),
    ],
)
def test_fetch_plan(direction, position, skip, count):
    plan_skip, plan_count = cmd.fetch_plan(direction)
    assert (plan_skip(position), plan_count) == (skip, count)


def test_select_list_names_of_a_catalog_query():
    assert cmd.select_list_names("SELECT oid, typname AS name FROM pg_type") == ["oid", "name"]
    assert cmd.select_list_names("SELECT FROM WHERE") == ["?column?"]
