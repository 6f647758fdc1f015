"""QueryServiceHook and the SQL builder against the emulator: export, read back, compare with ground truth.

This is the recipe's path end to end (export job -> Query Service over TLS) with its mistakes
corrected, checked against the emulator's ground truth rather than against itself.
"""

from __future__ import annotations

import threading
import time

import psycopg2
import pytest

from airflow_cja_audiences import sql
from airflow_cja_audiences.config import RefreshJob
from airflow_cja_audiences.hooks.catalog import CatalogHook
from airflow_cja_audiences.hooks.query_service import QueryServiceHook
from airflow_cja_audiences.hooks.segmentation import SegmentationHook
from airflow_cja_audiences.models import PROFILE_UNION_ALT_ID, ExportJobRequest

EMAIL = "_demoemea.identification.core.email"


def _export(audience_ids: list[str], statuses=("realized", "existing")) -> tuple[str, str]:
    """Run one export job; return (table name, batch id)."""
    dataset, _ = CatalogHook().ensure_dataset("QS export", schema_id=PROFILE_UNION_ALT_ID)
    hook = SegmentationHook()
    request = ExportJobRequest(
        dataset_id=dataset.id, segment_ids=tuple(audience_ids), statuses=tuple(statuses), fields=(EMAIL,)
    )
    job = hook.create_export_job(request, created_after_ms=int(time.time() * 1000) - 1000)
    deadline = time.monotonic() + 60
    while not (job := hook.get_export_job(job.id)).is_terminal:
        assert time.monotonic() < deadline, "export job did not finish"
        time.sleep(0.1)
    assert job.status == "SUCCEEDED"
    return dataset.table_name, job.destination.batch_id


def _job(audience_ids: list[str], **overrides) -> RefreshJob:
    return RefreshJob.model_validate(
        {
            "job_id": "qs_test",
            "audiences": [{"id": a} for a in audience_ids],
            "identity": {"field": "_{tenant}.identification.core.email"},
            "tenant": "demoemea",
            **overrides,
        }
    )


def _truth(emu, audience_ids: list[str]) -> set[tuple[str, str, str, str]]:
    return {
        (r["email"], r["audience_id"], r["status"], r["last_qualification_time"])
        for r in emu.admin.snapshot(audience_ids, ["realized", "existing"])
    }


@pytest.fixture
def audiences(emu) -> list[str]:
    return [a["id"] for a in emu.admin.state()["audiences"]]


def test_builder_query_through_query_service_hook_equals_ground_truth(emu, audiences):
    wanted = audiences[:3]
    table, batch_id = _export(wanted)
    _export(audiences[3:5])  # a later export in the same dataset must not leak into this read
    q = sql.build_membership_query(_job(wanted), table=table, batch_id=batch_id)
    hook = QueryServiceHook()
    rows = [tuple(r) for batch in hook.stream(sql.membership_sql(q), batch_size=97) for r in batch]
    assert set(rows) == _truth(emu, wanted) and len(rows) == len(set(rows))
    assert rows == sorted(rows, key=lambda r: (r[0], r[1], r[3], r[2]))  # grouped by person, total order
    ((memberships, identified),) = hook.query_all(sql.count_sql(q))
    assert memberships == identified == len(rows)


def test_partitioned_read_returns_every_membership_once(emu, audiences):
    wanted = audiences[:5]
    table, batch_id = _export(wanted)
    q = sql.build_membership_query(_job(wanted), table=table, batch_id=batch_id)
    hook = QueryServiceHook()
    ((count, _),) = hook.query_all(sql.count_sql(q))
    parts = sql.plan_partitions(count, max_rows=max(1, count // 7))
    assert len(parts) >= 7
    seen: list[tuple] = []
    for part in parts:
        seen += [tuple(r) for batch in hook.stream(sql.membership_sql(q, part)) for r in batch]
    assert len(seen) == len(set(seen)) == count
    assert set(seen) == _truth(emu, wanted)


def test_recipe_query_corrected_runs_through_psycopg2(emu, audiences):
    """Adobe's recipe SQL with its mistakes fixed (both ids quoted, realized+existing, batch filter)."""
    a1, a2 = audiences[0], audiences[1]
    table, batch_id = _export([a1, a2])
    platform = QueryServiceHook().platform
    s = platform.settings
    recipe = (
        f"SELECT ROW_NUMBER() OVER (ORDER BY key)::text as _id, personID, key as audienceMembershipId "
        f"FROM (SELECT {EMAIL} AS personID, explode(segmentMembership.ups) FROM {table} "
        f"WHERE _acp_batchid = '{batch_id}') "
        f"WHERE value.status IN ('realized', 'existing') AND (key = '{a1}' OR key = '{a2}')"
    )
    with (
        psycopg2.connect(
            host=s.query_service_host,
            port=s.query_service_port,
            dbname=f"{s.sandbox}:all",
            user=s.org_id,
            password=platform.get_access_token(),
            sslmode="verify-full",
            sslrootcert=s.ca_bundle,
        ) as conn,
        conn.cursor() as cur,
    ):
        cur.execute(recipe)
        rows = cur.fetchall()
    assert {(r[1], r[2]) for r in rows} == {(e, a) for e, a, _, _ in _truth(emu, [a1, a2])}
    assert sorted(int(r[0]) for r in rows) == list(range(1, len(rows) + 1))


def test_too_many_rows_are_cut_like_production_and_partitions_fit(audiences, monkeypatch):
    """With the row limit lowered to 150, the whole read is silently cut at 150 rows (production's
    implicit LIMIT); hash partitions of at most 100 rows read everything."""
    from emulator_fixture import connected_subprocess

    with connected_subprocess(
        monkeypatch.setenv,
        profiles=600,
        pg=True,
        args=["--qs-max-rows", "150", "--export-job-seconds", "0.2"],
    ):
        table, batch_id = _export(audiences[:5])
        q = sql.build_membership_query(_job(audiences[:5]), table=table, batch_id=batch_id)
        hook = QueryServiceHook()
        ((count, _),) = hook.query_all(sql.count_sql(q))
        assert count > 150
        assert sum(len(b) for b in hook.stream(sql.membership_sql(q))) == 150  # cut, no error
        total = 0
        for part in sql.plan_partitions(count, max_rows=100):
            total += sum(len(b) for b in hook.stream(sql.membership_sql(q, part)))
        assert total == count


def test_row_cap_and_timeout_are_both_53400_and_told_apart(audiences, monkeypatch):
    """Query Service uses 53400 for its row cap and its 10-minute limit: the hook says which by the
    server's message (not by the statement it quotes, which ends with LIMIT 0)."""
    from airflow_cja_audiences.hooks.query_service import QueryServiceError

    from emulator_fixture import connected_subprocess

    args = [
        "--qs-max-rows",
        "150",
        "--qs-over-limit",
        "error",
        "--qs-timeout-seconds",
        "1.5",
        "--export-job-seconds",
        "0.2",
    ]
    with connected_subprocess(monkeypatch.setenv, profiles=600, pg=True, args=args) as small:
        table, batch_id = _export(audiences[:5])
        q = sql.build_membership_query(_job(audiences[:5]), table=table, batch_id=batch_id)
        hook = QueryServiceHook()
        with pytest.raises(QueryServiceError) as cap:
            list(hook.stream(sql.membership_sql(q)))
        assert (cap.value.is_limit, cap.value.limit_kind) == (True, "rows"), str(cap.value)
        ((count, _),) = hook.query_all(sql.count_sql(q))
        assert sum(len(b) for b in hook.stream(sql.lift_row_cap(sql.membership_sql(q)))) == count > 150
        small.admin.scans("POST", seconds_per_query=30)  # every scan now outlasts the 1.5 s limit
        with pytest.raises(QueryServiceError) as timeout:
            list(hook.stream(sql.lift_row_cap(sql.membership_sql(q))))
        assert (timeout.value.is_limit, timeout.value.limit_kind) == (True, "timeout"), str(timeout.value)
        assert small.admin.scans()["scans"] >= 3


def test_change_counts_between_two_exports_equal_ground_truth(emu, audiences):
    """Per audience between two exports, counted by Query Service: members; entered (and those of
    them AEP no longer shows as realized); exited (proven by an exited status); untraced (absent)."""
    wanted = audiences[:4]
    everything = ("realized", "existing", "exited")
    _, first_batch = _export(wanted, everything)
    before = _truth(emu, wanted)
    emu.admin.advance_clock(3 * 86_400)
    try:
        table, second_batch = _export(wanted, everything)
        after = _truth(emu, wanted)
        exited_now = {(r["email"], r["audience_id"]) for r in emu.admin.snapshot(wanted, ["exited"])}
    finally:
        emu.admin.advance_clock(-3 * 86_400)
    q = sql.build_membership_query(_job(wanted), table=table, batch_id=second_batch)
    hook = QueryServiceHook()
    # snapshot_counts_sql's columns from members on; events_read_sql's untimed entries of the pair
    got = {
        r[0]: tuple(int(x) for x in r[3:]) for r in hook.query_all(sql.snapshot_counts_sql(q, first_batch))
    }
    window = sql.TimeWindow("2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z")
    untimed = {
        r[0]: int(r[5])
        for r in hook.query_all(sql.events_read_sql(q, window, [second_batch], (first_batch, second_batch)))
    }
    old = {(e, a) for e, a, _, _ in before}
    new = {(e, a) for e, a, _, _ in after}
    status_now = {(e, a): s for e, a, s, _ in after}

    def per(audience: str, pairs: set) -> int:
        return sum(1 for _, x in pairs if x == audience)

    expected = {
        a: (
            per(a, new),
            per(a, new - old),
            per(a, {p for p in new - old if status_now[p] == "existing"}),
            per(a, (old - new) & exited_now),
            per(a, (old - new) - exited_now),
        )
        for a in wanted
    }
    assert {a: got.get(a, (0, 0, 0, 0, 0)) for a in wanted} == expected
    assert {a: untimed.get(a, 0) for a in wanted} == {a: v[2] for a, v in expected.items()}
    assert any(v[1] and v[3] for v in expected.values())  # the clock move really changed memberships
    assert any(v[2] for v in expected.values())  # and 3 days turn some entries existing: untimed


def test_query_service_faults_hold_fail_or_drop_a_statement(emu):
    """The emulator's Query Service faults (route query_service.query) as a PostgreSQL client sees them."""
    from airflow_cja_audiences.hooks.platform import AdobePlatformHook
    from airflow_cja_audiences.hooks.query_service import QueryServiceError

    hook = QueryServiceHook(platform_hook=AdobePlatformHook(max_attempts=1))  # see each failure as it is
    emu.admin.set_faults([{"route": "QUERY SELECT 2", "kind": "503", "times": 1}])
    with pytest.raises(QueryServiceError) as failed:
        hook.query_all("SELECT 2")
    assert (
        failed.value.sqlstate == "57P03" and failed.value.transient and hook.query_all("SELECT 2") == [(2,)]
    )
    emu.admin.set_faults([{"route": "query_service.query", "kind": "reset", "times": 1}])
    with pytest.raises(QueryServiceError, match="closed|EOF|connection") as dropped:
        hook.query_all("SELECT 3")
    assert dropped.value.transient
    emu.admin.set_faults([{"route": "query_service.query", "kind": "latency", "seconds": 60, "times": 1}])
    started = time.monotonic()
    held = threading.Thread(target=lambda: hook.query_all("SELECT 4"))
    held.start()
    while emu.admin.stats()["routes"]["query_service.query"].get("inFlight") != 1:
        assert time.monotonic() - started < 30, "the statement was not held"
        time.sleep(0.05)
    emu.admin.clear_faults()  # releases the held statement at once
    held.join(timeout=30)
    assert not held.is_alive() and time.monotonic() - started < 30
    assert "inFlight" not in emu.admin.stats()["routes"]["query_service.query"]


def test_unmodified_postgres_hook_reads_the_export(emu, audiences, monkeypatch):
    """A plain PostgresHook (psycopg 3) with a postgres connection: user = org, password = a token."""
    import json

    from airflow.providers.postgres.hooks.postgres import PostgresHook

    wanted = audiences[:2]
    table, batch_id = _export(wanted)
    platform = QueryServiceHook().platform
    s = platform.settings
    monkeypatch.setenv(
        "AIRFLOW_CONN_AEP_QUERY_SERVICE",
        json.dumps(
            {
                "conn_type": "postgres",
                "host": s.query_service_host,
                "port": s.query_service_port,
                "login": s.org_id,
                "password": platform.get_access_token(),
                "schema": f"{s.sandbox}:all",
                "extra": {"sslmode": "verify-full", "sslrootcert": s.ca_bundle},
            }
        ),
    )
    q = sql.build_membership_query(_job(wanted), table=table, batch_id=batch_id)
    rows = PostgresHook(postgres_conn_id="aep_query_service").get_records(sql.membership_sql(q))
    assert {tuple(r) for r in rows} == _truth(emu, wanted)


def test_transient_query_service_errors_are_retried_on_a_new_connection(emu, audiences, fast_retries):
    """A dropped connection or a busy Query Service costs a retry (counted per route), not a failure;
    a wrong statement is not retried."""
    from airflow_cja_audiences.hooks.platform import AdobePlatformHook
    from airflow_cja_audiences.hooks.query_service import QueryServiceError

    table, batch_id = _export(audiences[:2])
    platform = AdobePlatformHook(**fast_retries)
    hook = QueryServiceHook(platform_hook=platform)
    q = sql.build_membership_query(_job(audiences[:2]), table=table, batch_id=batch_id)
    partition = sql.Partition(1, 0)
    expected = [tuple(r) for batch in hook.stream(sql.membership_sql(q, partition)) for r in batch]
    emu.admin.set_faults(
        [{"route": "query_service.query", "kind": kind, "times": 1} for kind in ("503", "reset")]
    )
    assert hook.query_all(sql.count_sql(q))[0][0] == len(expected)
    emu.admin.set_faults([{"route": "QUERY .*FETCH.*", "kind": "reset", "times": 1}])  # mid-stream
    rows = hook.retrying(
        lambda: [tuple(r) for batch in hook.stream(sql.membership_sql(q, partition)) for r in batch]
    )
    assert rows == expected
    assert platform.retry_counts["query_service.query"] == 3
    with pytest.raises(QueryServiceError) as wrong:
        hook.query_all("SELECT no_such_column FROM no_such_table")
    assert not wrong.value.transient and platform.retry_counts["query_service.query"] == 3


# ------------------------------------------------------------------ the connection test checks Query Service too


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_test_runs_select_1_on_query_service(emu):
    from airflow_cja_audiences.hooks.platform import AdobePlatformHook

    ok, message = QueryServiceHook().test_connection()
    assert ok and "answered SELECT 1" in message, message
    ok, message = AdobePlatformHook().test_connection()
    assert ok and "answered SELECT 1" in message and emu.credentials.org_id in message, message


def test_connection_test_fails_when_query_service_is_unreachable(emu, adobe_conn, monkeypatch):
    import json

    from airflow_cja_audiences import DEFAULT_CONN_ID
    from airflow_cja_audiences.hooks.platform import AdobePlatformHook

    port = _closed_port()
    extra = {**adobe_conn["extra"], "query_service_port": port}
    monkeypatch.setenv(f"AIRFLOW_CONN_{DEFAULT_CONN_ID.upper()}", json.dumps({**adobe_conn, "extra": extra}))
    ok, message = AdobePlatformHook().test_connection()
    assert not ok
    assert f"Query Service did not: cannot connect to Query Service at 127.0.0.1:{port}" in message
    assert "Connected" not in message and adobe_conn["password"] not in message


def test_untrusted_query_service_certificate_is_permanent(emu, adobe_conn, monkeypatch, tmp_path):
    """TLS stays verified: a CA bundle that does not sign Query Service's certificate fails the check as
    permanent (no retry can fix it), naming ca_bundle."""

    from airflow_cja_audiences.hooks.platform import AdobePlatformHook
    from airflow_cja_audiences.hooks.query_service import QueryServiceError

    platform = AdobePlatformHook()
    platform.get_access_token()  # with the right CA, then point Query Service at a CA that signs nothing of ours
    import certifi

    settings = platform.settings.model_copy(update={"ca_bundle": certifi.where()})
    monkeypatch.setattr(type(platform), "settings", property(lambda self: settings), raising=False)
    with pytest.raises(QueryServiceError) as info:
        QueryServiceHook(platform_hook=platform, connect_timeout=5).check()
    assert info.value.permanent and not info.value.transient
    assert "ca_bundle" in str(info.value)


def test_refused_query_service_login_is_permanent(emu, monkeypatch):
    from airflow_cja_audiences.hooks.platform import AdobePlatformHook
    from airflow_cja_audiences.hooks.query_service import QueryServiceError

    platform = AdobePlatformHook()
    monkeypatch.setattr(platform, "get_access_token", lambda *a, **k: "not-a-token-Adobe-issued")
    with pytest.raises(QueryServiceError) as info:
        QueryServiceHook(platform_hook=platform, connect_timeout=5).check()
    assert info.value.permanent and not info.value.transient, str(info.value)
    assert "Query Service permissions" in str(info.value) and "not-a-token" not in str(info.value)


@pytest.mark.parametrize(
    "message, transient, permanent",
    [
        ("SSL SYSCALL error: EOF detected", True, False),
        ("SSL error: unexpected eof while reading", True, False),
        ("server closed the connection unexpectedly", True, False),
        ('connection to server at "h", port 80 failed: Connection refused', True, False),
        ("SSL error: certificate verify failed", False, True),
        ('connection to server failed: FATAL:  password authentication failed for user "x"', False, True),
        ('connection to server failed: FATAL:  database "nope:all" does not exist', False, True),
        ("connection to server failed: FATAL:  sorry, too many clients already", True, False),
        # Query Service's org-wide session cap: its text names no credential, and a free slot fixes it.
        (
            (
                'connection to server at "h", port 80 failed: FATAL:  Session Limit Reached\nDETAIL:  5 of the '
                "organization's 5 concurrent Query Service sessions are in use"
            ),
            True,
            False,
        ),
    ],
)
def test_driver_errors_without_sqlstate_are_classified(message, transient, permanent):
    from airflow_cja_audiences.hooks.query_service import _wrap

    OperationalError = type("OperationalError", (Exception,), {"__module__": "psycopg"})
    error = _wrap(OperationalError(message), "SELECT 1")
    assert (error.transient, error.permanent) == (transient, permanent), message


def test_a_failing_cursor_close_does_not_hide_what_happened(monkeypatch):
    """A server-side cursor is closed on a connection that may just have dropped: that second error must
    not replace the first (a row limit to split on, a drop to retry)."""
    from airflow_cja_audiences.hooks.query_service import QueryServiceError

    OperationalError = type("OperationalError", (Exception,), {"__module__": "psycopg"})
    ProgramLimitExceeded = type(
        "ProgramLimitExceeded", (Exception,), {"__module__": "psycopg", "sqlstate": "53400"}
    )

    class Cursor:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            raise OperationalError("consuming input failed: SSL connection has been closed unexpectedly")

        def execute(self, sql):
            raise ProgramLimitExceeded("result exceeds 50000 rows")

    class Conn:
        def cursor(self, name=None):
            return Cursor()

        def close(self):
            pass

    hook = QueryServiceHook()
    monkeypatch.setattr(hook, "get_conn", lambda: Conn())
    with pytest.raises(QueryServiceError) as info:
        list(hook.stream("SELECT 1", prefetch=0))
    assert info.value.is_limit, str(info.value)


# ------------------------------------------------------------------ the org's concurrent session limit


def _other_client_sessions(emu, n: int) -> list:
    """``n`` sessions held by another client of the same org (a person in a SQL editor, say)."""
    from airflow_cja_audiences.hooks.platform import AdobePlatformHook

    platform = AdobePlatformHook()
    s = platform.settings
    return [
        psycopg2.connect(
            host=emu.pg_host,
            port=emu.pg_port,
            user=s.org_id,
            password=platform.get_access_token(),
            dbname=f"{s.sandbox}:all",
            sslmode="verify-full",
            sslrootcert=s.ca_bundle,
        )
        for _ in range(n)
    ]


def test_session_limit_taken_by_another_client_is_waited_out_not_failed(emu, audiences, fast_retries):
    """Realistic mode's 5 sessions per org, all held by another client: the hook's query is refused
    ("Session Limit Reached"), retried with backoff as transient (counted), and succeeds once the other
    client frees a session; the connection check waits the same way instead of failing."""
    from airflow_cja_audiences.hooks.platform import AdobePlatformHook
    from airflow_cja_audiences.hooks.query_service import ROUTE

    table, batch_id = _export(audiences[:2])
    q = sql.build_membership_query(_job(audiences[:2]), table=table, batch_id=batch_id)
    expected = QueryServiceHook().query_all(sql.count_sql(q))
    emu.admin.knobs(qs_max_sessions=5)
    others = _other_client_sessions(emu, 5)
    try:
        with pytest.raises(psycopg2.OperationalError, match="Session Limit Reached"):
            _other_client_sessions(emu, 1)
        for work in ("query", "check"):
            platform = AdobePlatformHook(**fast_retries)
            hook = QueryServiceHook(platform_hook=platform)
            result: dict = {}

            def run(work=work, hook=hook, result=result) -> None:
                try:
                    result["value"] = hook.query_all(sql.count_sql(q)) if work == "query" else hook.check()
                except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                    result["error"] = exc

            thread = threading.Thread(target=run)
            thread.start()
            deadline = time.monotonic() + 30
            while (
                platform.retry_counts[ROUTE] < 1
            ):  # refused at least once while the other client holds all 5
                assert time.monotonic() < deadline and thread.is_alive(), result
                time.sleep(0.02)
            others.pop().close()  # the other client frees one session
            thread.join(timeout=60)
            assert "error" not in result, result
            assert result["value"] == expected if work == "query" else "answered SELECT 1" in result["value"]
            others += _other_client_sessions(emu, 1)  # and takes it again for the next round
    finally:
        for conn in others:
            conn.close()


def test_more_clients_than_sessions_all_finish(emu, audiences, fast_retries):
    """Eight hook clients read partitions at once while another client holds all 5 sessions of the org:
    every one is refused and waits with backoff; once the other client keeps only 2, the eight share
    the 3 free sessions and every partition is read exactly once."""
    from concurrent.futures import ThreadPoolExecutor

    from airflow_cja_audiences.hooks.platform import AdobePlatformHook
    from airflow_cja_audiences.hooks.query_service import ROUTE

    wanted = audiences[:4]
    table, batch_id = _export(wanted)
    q = sql.build_membership_query(_job(wanted), table=table, batch_id=batch_id)
    ((count, _),) = QueryServiceHook().query_all(sql.count_sql(q))
    parts = sql.plan_partitions(count, max_rows=max(1, count // 8))
    assert len(parts) >= 8
    emu.admin.knobs(qs_max_sessions=5)
    others = _other_client_sessions(emu, 5)
    platforms = [AdobePlatformHook(max_attempts=20, **fast_retries) for _ in parts]

    def read(i: int) -> list[tuple]:
        hook = QueryServiceHook(platform_hook=platforms[i])
        return hook.retrying(
            lambda: [tuple(r) for b in hook.stream(sql.membership_sql(q, parts[i])) for r in b]
        )

    try:
        with ThreadPoolExecutor(max_workers=len(parts)) as pool:
            futures = [pool.submit(read, i) for i in range(len(parts))]
            deadline = time.monotonic() + 30
            while not all(p.retry_counts[ROUTE] for p in platforms):  # every client refused at least once
                assert time.monotonic() < deadline and not any(f.done() for f in futures)
                time.sleep(0.02)
            for conn in others[2:]:
                conn.close()
            results = [f.result(timeout=120) for f in futures]
    finally:
        for conn in others:
            conn.close()
    rows = [r for part in results for r in part]
    assert len(rows) == len(set(rows)) == count


# ------------------------------------------------------------------ physical and logical export batches


def test_distinct_physical_batch_ids_read_by_the_logical_one(emu, audiences):
    """Realistic mode: the export job reports the logical batch; filtering on it
    (``_acp_system_metadata.acp_sourceBatchId``, the default batch_id_column) reads the ground truth,
    while ``_acp_batchid`` (the physical batch) with the same id reads nothing - and says nothing."""
    emu.admin.knobs(distinct_batch_ids=True)
    wanted = audiences[:3]
    table, batch_id = _export(wanted)
    hook = QueryServiceHook()
    q = sql.build_membership_query(_job(wanted), table=table, batch_id=batch_id)
    rows = [tuple(r) for batch in hook.stream(sql.membership_sql(q)) for r in batch]
    assert set(rows) == _truth(emu, wanted) and rows
    physical = hook.query_all(
        f"SELECT DISTINCT _acp_batchid FROM {table} "
        f"WHERE _acp_system_metadata.acp_sourceBatchId = '{batch_id}'"
    )
    assert len(physical) == 1 and physical[0][0] != batch_id
    wrong = sql.build_membership_query(
        _job(wanted, batch_id_column="_acp_batchid"), table=table, batch_id=batch_id
    )
    assert hook.query_all(sql.count_sql(wrong)) == [(0, 0)]
    assert [r for batch in hook.stream(sql.membership_sql(wrong)) for r in batch] == []
