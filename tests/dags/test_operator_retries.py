"""Each pipeline step run twice (a retry after the first try did its work) converges: no duplicate
datasets, schemas, field groups, descriptors, export jobs or live batches.

And what a retry cannot fix (bad config, refused credentials, an unknown resource, a load task cleared
after its run published, an unreachable Query Service found by the first task) fails at once, before
anything is written where it can be, while transient errors are left to the task's retries.

The operators run directly (no scheduler) with a small stand-in for the task context: an XCom
sink, the run id, and a ``task_state_store`` that survives between the "tries" as Airflow's does.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from airflow_cja_audiences import DEFAULT_CONN_ID
from airflow_cja_audiences.config import RefreshJob
from airflow_cja_audiences.operators.export import ExportAudiencesOperator
from airflow_cja_audiences.operators.load import LoadPartitionOperator, PrepareLoadOperator
from airflow_cja_audiences.operators.publish import PublishBatchOperator
from airflow_cja_audiences.operators.setup import EnsureCjaDatasetOperator, EnsureExportDatasetOperator

from task_context import (
    TENANT,
    FakeStore,
    ensure_export_dataset,
    ensure_profile_dataset,
    export_operator,
    load_arguments,
    prod_state,
    refresh_job,
    task_context,
)


def _context(store: FakeStore | None = None, try_number: int = 1, run_id: str = "manual__retry-test") -> dict:
    return task_context(store, try_number, run_id)


def _named(emu, kind: str, name: str) -> list:
    objects = prod_state(emu)[kind]
    items = objects.values() if isinstance(objects, dict) else objects
    return [o for o in items if (o.get("name") or o.get("title")) == name]


def _job(audiences: list[str], **extra) -> RefreshJob:
    return refresh_job("retries", audiences, **extra)


def _export(emu, job: RefreshJob, dataset_id: str, store: FakeStore | None = None, try_number: int = 1):
    op = export_operator(job, dataset_id)
    return op, op.execute(_context(store, try_number))


def test_setup_steps_run_twice_create_once(emu):
    job = _job(["a-1"])
    names = job.names
    export_op = EnsureExportDatasetOperator(task_id="x", dataset_name=names.export_dataset)
    first, second = export_op.execute(_context()), export_op.execute(_context(try_number=2))
    assert first == second and len(_named(emu, "datasets", names.export_dataset)) == 1
    cja_op = EnsureCjaDatasetOperator(
        task_id="y",
        kind="profile",
        tenant=TENANT,
        dataset_name=names.profile_dataset,
        schema_title=names.profile_schema,
        field_group_title=names.field_group,
    )
    first, second = cja_op.execute(_context()), cja_op.execute(_context(try_number=2))
    assert first == second
    state = prod_state(emu)
    assert len(_named(emu, "datasets", names.profile_dataset)) == 1
    assert sum(1 for s in state["schemas"] if s.get("title") == names.profile_schema) == 1
    assert sum(1 for g in state["fieldGroups"] if g.get("title") == names.field_group) == 1
    assert sum(1 for d in state["descriptors"] if d.get("xdm:sourceSchema") == first["schema_id"]) == 1


def test_export_retry_reattaches_instead_of_exporting_twice(emu, audiences):
    job = _job(audiences)
    dataset = ensure_export_dataset(job)
    store = FakeStore()
    op, _ = _export(emu, job, dataset["dataset_id"], store)  # warm-up: a finished export forgets its job
    jobs_before = len(prod_state(emu)["exportJobs"])

    # Try 1 dies right after creating the job (the id is stored), try 2 must re-attach.
    from airflow_cja_audiences.hooks.segmentation import SegmentationHook

    hook = SegmentationHook()
    created = op._attach_or_create(_context(store), hook, op._request())
    _, result = _export(emu, job, dataset["dataset_id"], store, try_number=2)
    assert result["export_job_id"] == created.id
    # Try 1 dies between the POST and storing the id: try 2 finds the job by what it asked for.
    store.clear()
    store.set("export_create_started_ms", int(datetime.now(timezone.utc).timestamp() * 1000))
    lost = hook.create_export_job(op._request(), created_after_ms=0)
    _, result = _export(emu, job, dataset["dataset_id"], store, try_number=2)
    assert result["export_job_id"] == lost.id
    assert len(prod_state(emu)["exportJobs"]) == jobs_before + 2  # two exports, never a third
    # A new run (first try, empty store) exports afresh instead of taking an earlier run's job.
    _, fresh = _export(emu, job, dataset["dataset_id"], FakeStore())
    assert fresh["export_job_id"] not in (created.id, lost.id)


def test_export_of_an_unknown_field_fails_naming_it_and_its_batch(emu, audiences):
    """Realistic mode (as Adobe's use-case doc says): the job is accepted and SUCCEEDS, its batch
    fails; the task fails naming the batch and the field, never reading an empty export."""
    from airflow_cja_audiences.errors import AepObjectFailedError

    job = _job(audiences)
    dataset = ensure_export_dataset(job)
    op = ExportAudiencesOperator(
        task_id="export",
        dataset_id=dataset["dataset_id"],
        audience_ids=audiences[:1],
        fields=[f"_{TENANT}.identification.core.nope"],
        poll_interval=0.1,
        deferrable=False,
    )
    # Typed (a failed export is retried: the retry starts a new job); the base operator decides.
    with pytest.raises(AepObjectFailedError, match=r"SUCCEEDED but its batch \w+ is failed.*core\.nope"):
        op.execute(_context(FakeStore()))


def test_batch_wait_resumes_without_the_defers_kwargs(emu, audiences):
    """``dag.test()`` resumes a deferred task with the event alone (the defer's kwargs are lost): the
    export task still finds its job, from the state store or by the batch it waited for."""
    job = _job(audiences)
    dataset = ensure_export_dataset(job)
    op, done = _export(emu, job, dataset["dataset_id"])
    event = {"status": "success", "batch_id": done["export_batch_id"], "batch_status": "success"}
    stored = FakeStore(export_job_id=done["export_job_id"])
    assert op.batch_complete(_context(stored), event=event)["export_job_id"] == done["export_job_id"]
    assert op.batch_complete(_context(None), event=event)["export_job_id"] == done["export_job_id"]


def _arguments(job: RefreshJob, export: dict, dataset_id: str, audiences: list[str]) -> dict:
    return load_arguments(
        job,
        export_batch_id=export["export_batch_id"],
        table_name=export["table_name"],
        dataset_id=dataset_id,
        audiences=audiences,
    )


def _load_operator(
    job: RefreshJob, export: dict, dataset_id: str, audiences: list[str], batch_id: str, partition: dict
) -> LoadPartitionOperator:
    """The load of ``partition`` into ``batch_id``, as the DAG maps it."""
    return LoadPartitionOperator(
        task_id="load",
        batch_id=batch_id,
        partition=partition,
        **_arguments(job, export, dataset_id, audiences),
    )


def _load_all(job: RefreshJob, export: dict, dataset_id: str, audiences: list[str], *, try_number: int = 1):
    ctx = _context(try_number=try_number)
    prepare = PrepareLoadOperator(task_id="prepare", **_arguments(job, export, dataset_id, audiences))
    partitions = prepare.execute(ctx)
    batch_id = ctx["ti"].xcoms["batch_id"]
    results = [
        _load_operator(job, export, dataset_id, audiences, batch_id, p).execute(_context())
        for p in partitions
    ]
    return ctx["ti"].xcoms, results


def _snapshot_export(emu, job: RefreshJob) -> dict:
    dataset = ensure_export_dataset(job)
    _, result = _export(emu, job, dataset["dataset_id"], FakeStore())
    return {**result, "table_name": dataset["table_name"]}


def test_prepare_load_publish_retried_leave_one_live_snapshot(emu, audiences):
    job = _job(audiences, query_partitioning="rows", max_rows_per_query=100)
    export = _snapshot_export(emu, job)
    dataset_id = ensure_profile_dataset(job)
    pushed, results = _load_all(job, export, dataset_id, audiences)
    again, results_again = _load_all(job, export, dataset_id, audiences, try_number=2)
    assert again["batch_id"] == pushed["batch_id"]  # the open batch is found by its label
    assert results_again == results and len(results) > 1
    publish = PublishBatchOperator(
        task_id="publish",
        dataset_id=dataset_id,
        batch_id=pushed["batch_id"],
        external_id=pushed["external_id"],
        load_results=results,
        shrink_guard=0.5,
        poll_interval=0.1,
        deferrable=False,
    )
    first = publish.execute(_context())
    second = publish.execute(_context(try_number=2))
    live = [
        b
        for b in prod_state(emu)["batches"].values()
        if b["status"] == "success" and any(o.get("id") == dataset_id for o in b.get("relatedObjects", []))
    ]
    assert [b["id"] for b in live] == [pushed["batch_id"]] and first["records"] == second["records"]
    records = emu.admin.dataset_records(dataset_id)
    truth = {r["email"] for r in emu.admin.snapshot(audiences, ["realized", "existing"])}
    assert sorted(r["personID"] for r in records) == sorted(truth)
    assert sum(r["files"] for r in results) == len(
        emu.admin.state()["sandboxes"]["prod"]["batches"][pushed["batch_id"]]["files"]
    )  # the retry replaced its files rather than adding to them


def test_partition_cut_at_the_row_cap_is_split(audiences, monkeypatch):
    """An emulator with a 150-row cap cuts results silently (as production does at 50,000); a job
    whose partitions are too big for it still loads every membership, by splitting them."""
    from emulator_fixture import connected_subprocess

    with connected_subprocess(
        monkeypatch.setenv, profiles=400, pg=True, realistic=True, args=["--qs-max-rows", "150"]
    ) as small:
        job = _job(audiences, query_partitioning="rows", max_rows_per_query=140, query_service_row_limit=150)
        export = _snapshot_export(small, job)
        dataset_id = ensure_profile_dataset(job)
        pushed, results = _load_all(job, export, dataset_id, audiences)
        assert pushed["memberships"] > 150
        assert sum(r["rows"] for r in results) == pushed["memberships"]
        # The whole result as one partition is certainly cut at 150 rows: it must be split until it fits.
        whole = _load_operator(
            job, export, dataset_id, audiences, pushed["batch_id"], {"modulus": 1, "remainder": 0}
        ).execute(_context())
        assert whole["splits"] >= 1 and whole["rows"] == pushed["memberships"]


def test_time_partitions_lift_the_row_cap_and_a_scan_timeout_fails_with_advice(audiences, monkeypatch):
    """Partitioning by time: one LIMIT 0 query reads past the (lowered) row cap, no split; when a scan
    alone outlasts Query Service's time limit, the load fails at once saying why splitting cannot help;
    a plan beyond Airflow's max_map_length fails in prepare, before any batch is opened."""
    from airflow.sdk.exceptions import AirflowFailException

    from emulator_fixture import connected_subprocess

    args = [
        "--qs-max-rows",
        "150",
        "--qs-timeout-seconds",
        "2",
        "--export-job-seconds",
        "0.2",
        "--batch-seconds",
        "0.1",
    ]
    with connected_subprocess(monkeypatch.setenv, profiles=400, pg=True, args=args) as small:
        job = _job(audiences)
        assert job.query_partitioning == "time"
        export = _snapshot_export(small, job)
        dataset_id = ensure_profile_dataset(job)
        small.admin.scans("DELETE")
        pushed, results = _load_all(job, export, dataset_id, audiences)
        assert pushed["memberships"] > 150 and len(results) == 1 and results[0]["splits"] == 0
        assert results[0]["rows"] == pushed["memberships"]
        scans = small.admin.scans()
        # the export read check (rows the batch filter finds vs the export job's count) + one read for
        # every count prepare needs (totals, per-audience, changes) + the one partition query
        assert scans["scans"] == 3, scans
        load = _load_operator(job, export, dataset_id, audiences, pushed["batch_id"], results[0]["partition"])
        small.admin.scans("POST", seconds_per_query=30)
        try:
            with pytest.raises(AirflowFailException, match="smaller partitions cannot help") as info:
                load.execute(_context())
            assert "too many rows" not in str(info.value) and "time limit" in str(info.value)
        finally:
            small.admin.scans("POST", seconds_per_query=0)
        monkeypatch.setenv("AIRFLOW__CORE__MAX_MAP_LENGTH", "1")
        rows_job = _job(
            audiences, query_partitioning="rows", max_rows_per_query=100
        )  # > 150 rows: 2+ partitions
        batches_before = len(prod_state(small)["batches"])
        with pytest.raises(AirflowFailException, match="max_map_length") as info:
            _load_all(rows_job, export, dataset_id, audiences, try_number=1)
        assert "AIRFLOW__CORE__MAX_MAP_LENGTH=" in str(info.value)
        assert len(prod_state(small)["batches"]) == batches_before  # failed before opening a batch


# ------------------------------------------------------------------ what a retry cannot fix fails at once


def test_cleared_load_task_of_a_published_run_fails_fast(emu, audiences):
    """Clearing one load_* task after its run published the batch: a clear failure at once, saying to
    re-run the whole DAG run, instead of retrying an upload AEP refuses; the live batch is untouched."""
    from airflow.sdk.exceptions import AirflowFailException

    job = _job(audiences, query_partitioning="rows", max_rows_per_query=100)
    export = _snapshot_export(emu, job)
    dataset_id = ensure_profile_dataset(job)
    pushed, results = _load_all(job, export, dataset_id, audiences)
    PublishBatchOperator(
        task_id="publish",
        dataset_id=dataset_id,
        batch_id=pushed["batch_id"],
        external_id=pushed["external_id"],
        load_results=results,
        poll_interval=0.1,
        deferrable=False,
    ).execute(_context())
    files_before = len(prod_state(emu)["batches"][pushed["batch_id"]]["files"])
    cleared = _load_operator(job, export, dataset_id, audiences, pushed["batch_id"], results[0]["partition"])
    with pytest.raises(AirflowFailException, match="clear the whole DAG run") as info:
        cleared.execute(_context(try_number=1, run_id="scheduled__old-run"))
    assert pushed["batch_id"] in str(info.value) and "'success'" in str(info.value)
    assert len(prod_state(emu)["batches"][pushed["batch_id"]]["files"]) == files_before
    assert prod_state(emu)["batches"][pushed["batch_id"]]["status"] == "success"


def _resolve(audiences: list[dict], **kwargs):
    from airflow_cja_audiences.operators.setup import ResolveAudiencesOperator

    return ResolveAudiencesOperator(
        task_id="resolve_audiences",
        audiences=audiences,
        identity_field="_{tenant}.identification.core.email",
        **kwargs,
    )


def test_permanent_errors_fail_without_retries_transient_ones_retry(emu, audiences, adobe_conn, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_cja_audiences.errors import AepAuthError, AepConfigError, AepNotFoundError, AepServerError
    from airflow_cja_audiences.hooks.platform import clear_token_cache

    # An unknown audience: the configuration is wrong.
    with pytest.raises(AirflowFailException, match="not retried") as info:
        _resolve([{"id": audiences[0]}, {"id": "00000000-0000-4000-8000-000000000000"}]).execute(_context())
    assert isinstance(info.value.__cause__, AepConfigError) and "audiences[1].id" in str(info.value)

    # A deferred task resumed into a call AEP answers 404: failed at once too.
    op = ExportAudiencesOperator(
        task_id="export", dataset_id="ds", audience_ids=[audiences[0]], deferrable=True
    )
    with pytest.raises(AirflowFailException) as info:
        op.resume_execution(
            "execute_complete", {"event": {"status": "success", "job_id": 987654321}}, _context()
        )
    assert isinstance(info.value.__cause__, AepNotFoundError)

    # A server error that outlasts the hook's own retries: left to the task's retries.
    emu.admin.set_faults([{"route": "schema_registry.stats", "kind": "503"}])
    hook_params = {"max_attempts": 2, "initial_retry_wait": 0.01, "max_retry_wait": 0.05}
    with pytest.raises(AepServerError):
        _resolve([{"id": audiences[0]}], hook_params=hook_params).execute(_context())
    emu.admin.clear_faults()

    # Refused credentials (after the one token refresh): failed at once, and the secret is not in the message.
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{DEFAULT_CONN_ID.upper()}", json.dumps({**adobe_conn, "password": "wrong-secret"})
    )
    clear_token_cache()
    with pytest.raises(AirflowFailException, match="credentials or permissions") as info:
        _resolve([{"id": audiences[0]}]).execute(_context())
    assert isinstance(info.value.__cause__, AepAuthError) and "wrong-secret" not in str(info.value)
    clear_token_cache()


def test_blocked_query_service_port_fails_resolve_before_any_write(emu, audiences, adobe_conn, monkeypatch):
    import socket

    from airflow_cja_audiences.hooks.query_service import QueryServiceError

    with socket.socket() as s:  # a port nobody listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    extra = {**adobe_conn["extra"], "query_service_port": closed_port}
    monkeypatch.setenv(f"AIRFLOW_CONN_{DEFAULT_CONN_ID.upper()}", json.dumps({**adobe_conn, "extra": extra}))
    before = {k: v for k, v in emu.admin.state().items() if k in ("sandboxes", "cja", "tables")}
    with pytest.raises(
        QueryServiceError, match=f"cannot connect to Query Service at 127.0.0.1:{closed_port}"
    ) as info:
        _resolve([{"id": audiences[0]}]).execute(_context())
    assert "is the port reachable" in str(info.value)
    assert {k: v for k, v in emu.admin.state().items() if k in ("sandboxes", "cja", "tables")} == before
    # the check is the first task's: without it, resolve alone passes
    assert _resolve([{"id": audiences[0]}], check_query_service=False).execute(_context())[
        "audience_ids"
    ] == [audiences[0]]


def test_a_name_that_renders_invalid_fails_at_once(emu):
    """In a user's own DAG a name may be a template: what it renders to is validated like the config."""
    from airflow.sdk.exceptions import AirflowFailException

    op = EnsureExportDatasetOperator(task_id="x", dataset_name="{{ params.name }}")
    op.render_template_fields({"params": {"name": "Profiles\x00"}})
    with pytest.raises(AirflowFailException, match="dataset_name as rendered"):
        op.execute(_context())
    assert not _named(emu, "datasets", "Profiles\x00")
