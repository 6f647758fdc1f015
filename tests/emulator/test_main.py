"""The CLI as other suites use it: ready line and file, TLS via the CA bundle, Query Service, clean stop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import psycopg
import pytest

from aep_emulator.server import READY_PREFIX

from emulator_fixture import start_subprocess
from emulator_testkit import Aep, iso


@pytest.fixture(scope="module")
def cli_emulator():
    with start_subprocess(profiles=300, pg=True, args=["--sandbox", "prod", "--sandbox", "dev"]) as emu:
        yield emu


def test_ready_file_and_endpoints(cli_emulator):
    emu = cli_emulator
    assert set(emu.ready) >= {
        "base_url",
        "pg_host",
        "pg_port",
        "ca_bundle",
        "client_id",
        "org_id",
        "sandbox",
        "sandboxes",
        "tenant",
        "pid",
    }
    assert emu.ready["sandboxes"] == ["prod", "dev"] and emu.base_url.startswith("https://127.0.0.1:")
    api = emu.api()
    assert api.request("GET", "/health").json() == {"status": "ok"}
    params = api.call("GET", "/data/foundation/query/connection_parameters", sandbox="dev").json()
    assert (params["host"], params["port"], params["dbName"]) == (emu.pg_host, emu.pg_port, "dev:all")
    assert params["username"] == emu.credentials.org_id and params["token"] == api.token()
    api.close()


def test_query_service_accepts_only_this_emulators_tokens(cli_emulator):
    emu = cli_emulator
    api = emu.api()
    common = {
        "host": emu.pg_host,
        "port": emu.pg_port,
        "user": emu.credentials.org_id,
        "sslmode": "verify-full",
        "sslrootcert": emu.ca_bundle,
        "gssencmode": "disable",
        "connect_timeout": 10,
    }
    with psycopg.connect(dbname="prod:all", password=api.token(), **common) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    for dbname, password in (("prod:all", "not-a-token"), ("nosuchbox:all", api.token())):
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(dbname=dbname, password=password, **common)
    api.close()


def test_stdout_ready_line_and_sigterm():
    process = subprocess.Popen(
        [sys.executable, "-m", "aep_emulator", "--port", "0", "--profiles", "50", "--log-level", "WARNING"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith(READY_PREFIX), line + process.stderr.read()
        info = json.loads(line[len(READY_PREFIX) :])
        assert info["pg_port"] is None and info["ca_bundle"].endswith("ca.pem")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        assert process.stdout.read() == ""  # exactly one line on stdout
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_bad_settings_exit_with_a_message():
    result = subprocess.run(
        [sys.executable, "-m", "aep_emulator", "--tenant", "_bad"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "tenant" in result.stderr


def test_exported_batch_is_queryable_over_the_postgres_wire(cli_emulator):
    emu, api = cli_emulator, cli_emulator.api()
    aep = Aep(emu, api)
    audiences = [a["id"] for a in aep.audiences()]
    dataset = aep.union_dataset("Queried export")
    table = aep.ok(api.call("GET", f"/data/foundation/catalog/dataSets/{dataset}"))[dataset]["tags"][
        "adobe/pqs/table"
    ][0]
    first = aep.export(dataset, [{"segmentId": audiences[0]}], fields="_demoemea.identification.core.email")
    second = aep.export(dataset, [{"segmentId": audiences[1]}], fields="_demoemea.identification.core.email")
    batch = second["destination"]["batchId"]
    sql = (
        f"SELECT personID, key AS audienceId, value.status FROM (SELECT _demoemea.identification.core.email "
        f"AS personID, explode(segmentMembership.ups) FROM {table} WHERE _acp_batchid = %s) "
        f"WHERE key = %s AND value.status IN ('realized', 'existing')"
    )
    with emu.pg_connect(api.token()) as conn:
        total = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        rows = conn.execute(sql, (batch, audiences[1])).fetchall()
    assert (
        total
        == first["metrics"]["totalExportedProfileCounter"] + second["metrics"]["totalExportedProfileCounter"]
    )
    truth = {
        (r["email"], r["status"])
        for r in emu.admin.snapshot([audiences[1]], at=iso(second["creationTime"] // 1000))
    }
    assert {(person, status) for person, _, status in rows} == truth
    api.close()
