"""Bad-input catalogue: every case fails before anything is written to AEP, with a message naming the
field, and the emulator's state is unchanged; or, where the input is legitimate (an audience nobody
is in), the run ends as documented.

Two places catch bad input. The jobs file is validated when the DAG file is parsed (the scheduler's
DagBag): a bad value in a job replaces that job's DAG by a placeholder showing the error (naming the
file, the job and the field) that cannot write anything; a broken file is an import error naming it.
What only AEP can tell (unknown audience, sandbox, credentials, identity field, tenant, trigger-form
values) is checked by ``resolve_audiences``/``plan_run``, which only read; every task that writes
runs after them. The emulator's state (datasets, batches, export jobs, schemas, field groups,
descriptors, CJA objects) is compared before and after each case.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness import FULL, logical_date, pick

pytestmark = pytest.mark.slow

EMAIL = "_{tenant}.identification.core.email"
UUID_NOT_IN_AEP = "00000000-0000-4000-8000-000000000000"
TOO_LONG = "N" * 300


def _job(audiences: list[dict], **overrides: Any) -> dict:
    return {
        "job_id": "badinput",
        "schedule": "0 2 * * *",
        "retries": 0,
        "poll_interval_seconds": 1,
        "api_retries": {"max_attempts": 3, "initial_wait_seconds": 0.05, "max_wait_seconds": 1},
        "audiences": audiences,
        "identity": {"field": EMAIL, "namespace": "Email"},
        **overrides,
    }


def _aep_state(emu) -> dict:
    """What a run could have written (the clock and token counters move on by themselves)."""
    state = emu.admin.state()
    return {key: state[key] for key in ("sandboxes", "cja", "tables")}


# ------------------------------------------------------------------ rejected when the DAG file is parsed


@dataclass(frozen=True)
class ConfigCase:
    name: str
    change: Callable[[dict], None]  # edits a valid job dict in place
    field: str  # what the error must name (pydantic's location, e.g. "audiences.0.id")


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def change(job: dict) -> None:
        *parents, last = path.split(".")
        node: Any = job
        for part in parents:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return change


CONFIG_CASES = [
    ConfigCase("malformed audience id", _set("audiences.0.id", "not an id!"), "audiences.0.id"),
    ConfigCase("SQL injection in an audience id", _set("audiences.0.id", "x' OR '1'='1"), "audiences.0.id"),
    ConfigCase(
        "statement break in an audience id", _set("audiences.0.id", "abc; DELETE FROM t"), "audiences.0.id"
    ),
    ConfigCase(
        "path traversal in an audience id", _set("audiences.0.id", "../../export/jobs"), "audiences.0.id"
    ),
    ConfigCase("empty audience list", _set("audiences", []), "audiences"),
    ConfigCase(
        "the same audience twice", lambda j: j["audiences"].append(dict(j["audiences"][0])), "audiences"
    ),
    ConfigCase(
        "an audience with both id and name", _set("audiences.0.name", "Cart abandoners"), "audiences.0"
    ),
    ConfigCase(
        "an audience with neither id nor name", _set("audiences.0", {"display_name": "x"}), "audiences.0"
    ),
    ConfigCase(
        "oversize display name (300 chars)",
        _set("audiences.0.display_name", TOO_LONG),
        "audiences.0.display_name",
    ),
    ConfigCase(
        "control character in a display name",
        _set("audiences.0.display_name", "Gold\x1b[31m"),
        "audiences.0.display_name",
    ),
    ConfigCase(
        "bidi override (U+202E) in a display name",
        _set("audiences.0.display_name", "Gold\u202e"),
        "audiences.0.display_name",
    ),
    ConfigCase(
        "injection in the identity field", _set("identity.field", EMAIL + ") OR (1=1"), "identity.field"
    ),
    ConfigCase(
        "SQL in the identity field", _set("identity.field", "1; DROP TABLE audience_export"), "identity.field"
    ),
    ConfigCase(
        "injection in the identity namespace", _set("identity.namespace", "Email'; --"), "identity.namespace"
    ),
    ConfigCase("injection in the tenant", _set("tenant", "acme; DROP"), "tenant"),
    ConfigCase("empty tenant", _set("tenant", ""), "tenant"),
    ConfigCase("path in the sandbox", _set("sandbox", "prod/../dev"), "sandbox"),
    ConfigCase("header injection in the sandbox", _set("sandbox", "prod\r\nx-api-key: stolen"), "sandbox"),
    ConfigCase("path in the job id", _set("job_id", "../other"), "job_id"),
    ConfigCase("injection in the merge policy id", _set("merge_policy_id", "p' --"), "merge_policy_id"),
    ConfigCase(
        "injection in the CJA connection id", _set("cja_connection_id", "dg_x'; --"), "cja_connection_id"
    ),
    ConfigCase(
        "injection in the CJA data view id", _set("cja_data_view_id", "dv_1/../../x"), "cja_data_view_id"
    ),
    ConfigCase(
        "injection in an output field name", _set("output.memberships", "a.b; --"), "output.memberships"
    ),
    ConfigCase(
        "NUL byte in a dataset name",
        _set("naming.profile_dataset", "Profiles\x00x"),
        "naming.profile_dataset",
    ),
    ConfigCase(
        "oversize dataset name (300 chars)",
        _set("naming.profile_dataset", TOO_LONG),
        "naming.profile_dataset",
    ),
    ConfigCase(
        "newline in the schema title", _set("naming.profile_schema", "Profiles\nx"), "naming.profile_schema"
    ),
    ConfigCase("control character in the description", _set("description", "report\x07"), "description"),
    ConfigCase("path in the connection id", _set("conn_id", "../adobe"), "conn_id"),
    ConfigCase(
        "injection in the pool name", _set("query_service_pool", "pool; rm -rf /"), "query_service_pool"
    ),
    ConfigCase(
        "an unknown batch id column", _set("batch_id_column", "1=1 OR _acp_batchid"), "batch_id_column"
    ),
    ConfigCase("an unknown membership status", _set("statuses", ["realized", "exited' --"]), "statuses"),
    ConfigCase("a misspelt setting", _set("audience", []), "audience"),
]


def _write_jobs(content: bytes, monkeypatch) -> Path:
    path = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) / "jobs.json"
    path.write_bytes(content)
    monkeypatch.setenv("CJA_AUDIENCES_CONFIG", str(path))
    return path


def _import_errors() -> str:
    """What the DAG processor reports for the DAG folder: its import errors (a broken file) and the errors
    shown by the placeholder DAGs of invalid jobs (the DAG page's doc; the other jobs' DAGs are built)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    shown = [dag.doc_md for dag in bag.dags.values() if "config-error" in dag.tags]
    return "\n".join([*bag.import_errors.values(), *shown])


def test_config_cases_are_rejected_when_the_dag_file_is_parsed(
    emu, dags_folder, audience_ids, monkeypatch, figures
):
    assert len(CONFIG_CASES) + len(RUN_CASES) + 1 >= 25
    dags_folder  # writes the DAG file into the session's DAG folder
    valid = _job([{"id": audience_ids[0], "display_name": "Gold"}, {"id": audience_ids[1]}])
    _write_jobs(json.dumps({"jobs": [valid]}).encode(), monkeypatch)
    assert _import_errors() == "", "the valid job must parse"
    before = _aep_state(emu)
    for case in CONFIG_CASES:
        job = json.loads(json.dumps(valid))
        case.change(job)
        path = _write_jobs(json.dumps({"jobs": [job]}).encode(), monkeypatch)
        started = time.monotonic()
        errors = _import_errors()
        assert str(path) in errors, f"{case.name}: no import error naming the file:\n{errors}"
        location = "jobs.0." + case.field
        assert location in errors, f"{case.name}: the error does not name {location}:\n{errors}"
        figures.record(
            "bad input",
            case.name,
            f"DAG import error naming {case.field}",
            seconds=time.monotonic() - started,
            where="jobs file (DAG parse)",
        )
    path = _write_jobs(b'{"jobs": [{"job_id": "caf\xe9"}]}', monkeypatch)  # Latin-1, not UTF-8
    errors = _import_errors()
    assert str(path) in errors and "not valid UTF-8 at byte" in errors, errors
    figures.record(
        "bad input",
        "jobs file not in UTF-8",
        "DAG import error naming the file and the byte",
        where="jobs file (DAG parse)",
    )
    assert _aep_state(emu) == before


# ------------------------------------------------------------------ rejected by the run, before any write


@dataclass(frozen=True)
class RunCase:
    name: str
    audiences: Callable[[list[str]], list[dict]]  # from the emulator's audience ids
    expect: tuple[str, ...]  # every one must appear in the failing task's log
    failed_task: str = "resolve_audiences"
    job: dict = field(default_factory=dict)
    connection: dict = field(default_factory=dict)  # changes to the Adobe connection
    conf: dict | None = None


def _first(ids: list[str]) -> list[dict]:
    return [{"id": ids[0]}]


RUN_CASES = [
    RunCase(
        "unknown audience id",
        lambda ids: [{"id": ids[0]}, {"id": UUID_NOT_IN_AEP}],
        ("audiences[1].id", UUID_NOT_IN_AEP),
    ),
    RunCase("unknown audience name", lambda ids: [{"name": "No such audience"}], ("audiences[0].name",)),
    RunCase(
        "SQL injection as an audience name",
        lambda ids: [{"name": "Gold' OR '1'='1"}],
        ("audiences[0].name", "Gold' OR '1'='1"),
    ),
    RunCase(
        "one audience by id and by name",
        lambda ids: [{"id": ids[0]}, {"name": "Luma - Gold members"}],
        ("selected twice",),
    ),
    RunCase(
        "identity field not in the profile schema",
        _first,
        ("identity.field", "loyaltyId"),
        job={"identity": {"field": "_{tenant}.identification.core.loyaltyId"}},
    ),
    RunCase("wrong tenant", _first, ("tenant", "acme"), job={"tenant": "acme"}),
    RunCase("unknown sandbox (job)", _first, ("sandbox", "nosuchsandbox"), job={"sandbox": "nosuchsandbox"}),
    RunCase(
        "unknown sandbox (connection)",
        _first,
        ("sandbox", "nosuchsandbox"),
        connection={"sandbox": "nosuchsandbox"},
    ),
    RunCase("wrong client secret", _first, ("client secret", "401"), connection={"password": "wrong-secret"}),
    RunCase("wrong client id", _first, ("client", "40"), connection={"login": "someone-else"}),
    RunCase("missing client secret", _first, ("password (Client secret)",), connection={"password": ""}),
    RunCase(
        "wrong IMS org", _first, ("org", "403"), connection={"org_id": "NOTMYORG000000000000000@AdobeOrg"}
    ),
    RunCase(
        "no CA bundle for a private CA (TLS stays verified)",
        _first,
        ("TLS verification failed", "ca_bundle"),
        connection={"ca_bundle": None},
    ),
    RunCase(
        "events interval that is not a date",
        _first,
        ("events_interval_start", "yesterday"),
        failed_task="plan_run",
        conf={"events_interval_start": "yesterday", "events_interval_end": "today"},
    ),
]


# make test: one case per source of truth (Segmentation, Schema Registry, IMS, the trigger form).
QUICK = {"unknown audience id", "wrong tenant", "wrong client secret", "events interval that is not a date"}


@pytest.mark.parametrize("case", pick(RUN_CASES, lambda c: c.name in QUICK), ids=lambda c: c.name)
def test_run_cases_fail_before_any_write_naming_the_field(
    case, make_pipeline, emu, connection, audience_ids, figures
):
    job = _job(case.audiences(audience_ids), **case.job)
    pipeline = make_pipeline(**job)
    if case.connection:
        conn = dict(case.connection)
        connection(login=conn.pop("login", None), password=conn.pop("password", None), **conn)
    before = _aep_state(emu)
    outcome = pipeline.run(logical_date(), conf=case.conf)
    assert outcome.state == "failed", f"{case.name}: the run did not fail"
    assert outcome.tasks[case.failed_task] == "failed", f"{case.name}: {outcome.tasks}"
    log = outcome.task_log(case.failed_task)
    missing = [text for text in case.expect if text.lower() not in log.lower()]
    assert not missing, f"{case.name}: the failure does not mention {missing}:\n{log[-4000:]}"
    assert outcome.tasks["abort_open_batches"] in ("success", "skipped"), outcome.tasks
    assert _aep_state(emu) == before, f"{case.name}: something was written to AEP"
    figures.record(
        "bad input",
        case.name,
        f"{case.failed_task} failed naming {case.expect[0]!r}; AEP unchanged",
        seconds=outcome.seconds,
        retries=dict(outcome.retries),
        where="run (before any write)",
    )


def test_every_task_that_writes_waits_for_validation(make_pipeline):
    """The DAG's shape behind the run cases: only the two validating steps run without upstream."""
    dag = make_pipeline("shape").dag
    validating = {"resolve_audiences", "plan_run"}
    for task in dag.tasks:
        if task.task_id not in validating:
            assert validating <= task.get_flat_relative_ids(upstream=True), f"{task.task_id} may run first"


# ------------------------------------------------------------------ legitimate: an audience nobody is in

ZERO_MEMBERS = "Lapsed VIP - archive"  # the emulator's built-in audience that nobody qualifies for


@pytest.mark.skipif(not FULL, reason="figures script only (CJA_RELIABILITY_FULL=1)")
def test_zero_member_audiences_end_as_documented(make_pipeline, emu, audience_ids, figures):
    """An audience nobody is in is no error: it is reported with 0 members. When every audience of the
    job is empty, the run succeeds and publishes no snapshot batch (nothing to publish)."""
    from aep_truth import JobView
    from reliability_checks import assert_converged

    empty = next(a["id"] for a in emu.admin.state()["audiences"] if a["name"] == ZERO_MEMBERS)
    assert emu.admin.snapshot([empty]) == []
    mixed = make_pipeline("zero_mixed", audiences=[{"id": audience_ids[0]}, {"id": empty}])
    outcome = mixed.run(logical_date())
    assert outcome.state == "success", outcome.log[-5000:]
    assert_converged(JobView(emu, "zero_mixed", [audience_ids[0], empty], emu.credentials.tenant), mixed.job)
    members = {row["id"]: row["members"] for row in mixed.xcom(outcome.run_id, "report")["audiences"]}
    assert members[empty] == 0 and members[audience_ids[0]] > 0
    figures.record(
        "bad input",
        "a zero-member audience next to others",
        "success; reported with 0 members",
        seconds=outcome.seconds,
        where="run (legitimate)",
    )

    alone = make_pipeline("zero_only", audiences=[{"id": empty}])
    outcome = alone.run(logical_date())
    assert outcome.state == "success", outcome.log[-5000:]
    assert "Nothing to publish (0 records)" in outcome.task_log("publish_snapshot")
    view = JobView(emu, "zero_only", [empty], emu.credentials.tenant)
    assert view.live_batches(view.dataset_id(alone.job.names.profile_dataset), "snapshot") == []
    report = alone.xcom(outcome.run_id, "report")
    assert [row["members"] for row in report["audiences"]] == [0]
    figures.record(
        "bad input",
        "only zero-member audiences",
        "success; nothing published (0 records)",
        seconds=outcome.seconds,
        where="run (legitimate)",
    )
