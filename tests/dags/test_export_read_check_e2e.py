"""Realistic mode's Query Service side, end to end with ``dag.test()`` against the emulator.

With distinct physical and logical export batch ids (rows carry the job's batch id in
``_acp_system_metadata.acp_sourceBatchId``, and a physical batch of their own in ``_acp_batchid``)
and the org's Query Service sessions capped at 5:

* a job reading by the logical batch (the default ``batch_id_column``) publishes exactly the ground
  truth;
* a job whose filter names the physical column reads nothing. Without the export read check that run
  *succeeds* and publishes an empty snapshot (shown first, as the control); with it, ``check_export_read``
  fails naming the export job, the expected and the read counts, no ``prepare_*`` runs, and no batch is
  ever created in the CJA profile dataset (Catalog). ``PrepareLoadOperator`` used on its own checks
  the same way.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest

from aep_emulator.realistic_qs import REALISTIC_QUERY_SERVICE

from dag_runs import interval_end
from dag_runs import job as make_job

pytestmark = pytest.mark.slow
EMAIL = "personID"


def _run(dag, logical_date) -> tuple[str, dict[str, str], dict[str, dict]]:
    """Run the DAG; (state, {task id: state}, {task id: return value})."""
    from sqlalchemy import select

    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dag_run = dag.test(logical_date=logical_date)
    with create_session() as session:
        tasks = {
            ti.task_id: str(ti.state)
            for ti in session.scalars(
                select(TaskInstance).where(
                    TaskInstance.dag_id == dag.dag_id, TaskInstance.run_id == dag_run.run_id
                )
            )
        }
        values = {}
        for row in session.execute(
            select(XComModel.task_id, XComModel.key, XComModel.value).where(
                XComModel.dag_id == dag.dag_id, XComModel.run_id == dag_run.run_id
            )
        ):
            values.setdefault(row.task_id, {})[row.key] = XComModel.deserialize_value(
                SimpleNamespace(value=row.value)
            )
    return str(dag_run.state), tasks, values


def _prod(emu) -> dict:
    return emu.admin.state()["sandboxes"]["prod"]


def _dataset_id(emu, name: str) -> str:
    [found] = [i for i, d in _prod(emu)["datasets"].items() if d["name"] == name]
    return found


def _batches_of(emu, dataset_id: str) -> list[dict]:
    return [
        b
        for b in _prod(emu)["batches"].values()
        if any(o.get("id") == dataset_id for o in b.get("relatedObjects", []))
    ]


def _truth(emu, audiences: list[str]) -> dict[str, set[tuple]]:
    out: dict[str, set[tuple]] = defaultdict(set)
    for row in emu.admin.snapshot(audiences, ["realized", "existing"]):
        out[row["email"]].add((row["audience_id"], row["status"], row["last_qualification_time"]))
    return dict(out)


def _snapshot(emu, dataset_id: str, tenant: str) -> dict[str, set[tuple]]:
    return {
        r[EMAIL]: {
            (m["audienceMembershipId"], m["status"], m["lastQualificationTime"])
            for m in r[f"_{tenant}"]["audienceMembership"]
        }
        for r in emu.admin.dataset_records(dataset_id)
    }


def test_realistic_query_service_reads_the_logical_batch_and_refuses_an_empty_read(
    emu, airflow_db, dags_folder, monkeypatch
):
    from airflow.sdk.exceptions import AirflowException

    from airflow_cja_audiences.operators.load import CheckExportReadOperator, PrepareLoadOperator

    emu.admin.knobs(**REALISTIC_QUERY_SERVICE)
    audiences = [a["id"] for a in emu.admin.state()["audiences"][:2]]
    tenant = emu.credentials.tenant
    truth = _truth(emu, audiences)
    assert truth

    # 1. The default batch column (the logical batch the export job reports): exactly the ground truth.
    right = make_job(audiences, job_id="realqs_right", publish_events=False)
    state, tasks, _ = _run(dags_folder(right), interval_end(0))
    assert state == "success", tasks
    assert _snapshot(emu, _dataset_id(emu, right.names.profile_dataset), tenant) == _truth(emu, audiences)

    # 2. The physical column: the control run without the check succeeds and publishes nothing at all.
    wrong = make_job(audiences, job_id="realqs_wrong", publish_events=False, batch_id_column="_acp_batchid")
    dag = dags_folder(wrong)
    with monkeypatch.context() as m:
        m.setattr(CheckExportReadOperator, "check_export_read", lambda self, q, job_id: None)
        state, tasks, _ = _run(dag, interval_end(1))
    assert state == "success", tasks  # what the check exists for: silently empty
    profile_ds = _dataset_id(emu, wrong.names.profile_dataset)
    assert _snapshot(emu, profile_ds, tenant) == {} != _truth(emu, audiences)
    assert _batches_of(emu, profile_ds) == []

    # 3. With the check: check_export_read fails, nothing downstream prepares, loads or publishes, no
    # batch is created.
    state, tasks, xcoms = _run(dag, interval_end(0))
    assert state == "failed"
    assert tasks["check_export_read"] == "failed", tasks
    assert tasks["prepare_snapshot"] != "success", tasks
    assert "success" not in (tasks.get("load_snapshot"), tasks["publish_snapshot"]), tasks
    assert _batches_of(emu, profile_ds) == []

    # The message names the export job, what it wrote and what the read found; the same from the DAG's
    # check and from a PrepareLoadOperator used on its own (it checks unless told a check ran).
    export = xcoms["export_audiences"]
    [job] = [j for j in _prod(emu)["exportJobs"] if j["id"] == export["export_job_id"]]
    reads = {
        "tenant": tenant,
        "table_name": xcoms["ensure_export_dataset"]["table_name"],
        "export_batch_id": export["export_batch_id"],
        "export_job_id": export["export_job_id"],
        "audiences": xcoms["resolve_audiences"]["audiences"],
        "job": wrong.model_dump(mode="json"),
    }
    exported = export["exported_profiles"]
    assert exported and job["metrics"]["totalExportedProfileCounter"] == exported
    for op in (
        CheckExportReadOperator(task_id="check_export_read", **reads),
        PrepareLoadOperator(task_id="prepare_snapshot", kind="snapshot", dataset_id=profile_ds, **reads),
    ):
        with pytest.raises(AirflowException) as info:
            op.execute({"ti": SimpleNamespace(xcom_push=lambda **kw: None), "run_id": "manual__check"})
        message = str(info.value)
        for part in (
            f"export job {export['export_job_id']}",
            f"batch {export['export_batch_id']}",
            "shows 0 rows",
            f"wrote {exported}",
            "_acp_batchid",
            "Nothing published",
        ):
            assert part in message, (op.task_id, part, message)
    assert _batches_of(emu, profile_ds) == []
