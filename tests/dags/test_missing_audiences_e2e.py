"""An audience deleted or renamed in AEP does not stop the others; a mistyped one fails before any write.

The refresh DAG runs with ``dag.test()`` against the emulator (as in test_refresh_e2e.py):

1. a job of two audiences selected by name runs once;
2. one is deleted in AEP: the next run succeeds, refreshes the other, publishes a snapshot that no
   longer lists the deleted one, and its report lists it as missing in AEP;
3. the other is renamed in AEP: the next run still succeeds and refreshes it under its new name
   (the deleted one is still recognised from the job's earlier snapshots, not taken for a typo).

A name with a typo fails the resolve step on its first try, naming the field and suggesting the
intended name, and nothing is written to AEP.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from airflow_cja_audiences.config import RefreshJob

pytestmark = pytest.mark.slow
EMAIL = "personID"


def _job(audiences: list[dict], job_id: str, **overrides) -> RefreshJob:
    return RefreshJob.model_validate(
        {
            "job_id": job_id,
            "schedule": "0 2 * * *",
            "poll_interval_seconds": 1,
            "retries": 0,
            "audiences": audiences,
            "identity": {"field": "_{tenant}.identification.core.email", "namespace": "Email"},
            **overrides,
        }
    )


def _run(dag, logical_date: datetime) -> tuple[str, dict, dict, dict]:
    """Run the DAG; return (state, report, resolve's return value, {task id: (state, try number)})."""
    from sqlalchemy import select

    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dag_run = dag.test(logical_date=logical_date)
    values = {}
    with create_session() as session:
        for task_id in ("report", "resolve_audiences"):
            raw = session.scalar(
                select(XComModel.value).where(
                    XComModel.dag_id == dag.dag_id,
                    XComModel.run_id == dag_run.run_id,
                    XComModel.task_id == task_id,
                    XComModel.key == "return_value",
                )
            )
            values[task_id] = (
                XComModel.deserialize_value(SimpleNamespace(value=raw)) if raw is not None else {}
            )
        tasks = {
            ti.task_id: (str(ti.state), ti.try_number)
            for ti in session.scalars(
                select(TaskInstance).where(
                    TaskInstance.dag_id == dag.dag_id, TaskInstance.run_id == dag_run.run_id
                )
            )
        }
    return str(dag_run.state), values["report"], values["resolve_audiences"], tasks


def _prod(emu) -> dict:
    return emu.admin.state()["sandboxes"]["prod"]


def _dataset_id(emu, name: str) -> str:
    [dataset_id] = [i for i, d in _prod(emu)["datasets"].items() if d["name"] == name]
    return dataset_id


def _snapshot(emu, dataset_id: str, tenant: str) -> dict[str, set[tuple]]:
    """person -> {(audience id, audience name, status, last qualification time)} of the live snapshot."""
    out: dict[str, set[tuple]] = {}
    for record in emu.admin.dataset_records(dataset_id):
        assert record[EMAIL] not in out, "a person appears in two live records"
        out[record[EMAIL]] = {
            (m["audienceMembershipId"], m["audienceMembershipName"], m["status"], m["lastQualificationTime"])
            for m in record[f"_{tenant}"]["audienceMembership"]
        }
    return out


def _truth(emu, names: dict[str, str]) -> dict[str, set[tuple]]:
    """The ground-truth snapshot of ``{audience id: name}``."""
    truth: dict[str, set[tuple]] = defaultdict(set)
    for row in emu.admin.snapshot(list(names), ["realized", "existing"]):
        truth[row["email"]].add(
            (row["audience_id"], names[row["audience_id"]], row["status"], row["last_qualification_time"])
        )
    return dict(truth)


def _day(days_ago: int) -> datetime:
    end = datetime.now(timezone.utc).replace(hour=2, minute=0, second=0, microsecond=0)
    if end > datetime.now(timezone.utc):
        end -= timedelta(days=1)
    return end - timedelta(days=days_ago)


def test_deleted_and_renamed_audiences_do_not_stop_the_others(emu, airflow_db, dags_folder, capfd):
    ids = {a["name"]: a["id"] for a in emu.admin.state()["audiences"]}
    cart, gold = ids["Cart abandoners"], ids["Luma - Gold members"]
    job = _job([{"name": "Cart abandoners"}, {"name": "Luma - Gold members"}], "missing_e2e")
    dag = dags_folder(job)
    tenant = emu.credentials.tenant

    state, report, resolved, _ = _run(dag, _day(2))
    assert state == "success", report
    profile_ds = _dataset_id(emu, job.names.profile_dataset)
    assert _snapshot(emu, profile_ds, tenant) == _truth(
        emu, {cart: "Cart abandoners", gold: "Luma - Gold members"}
    )
    assert resolved["missing_audiences"] == [] and report["missing_in_aep"] == []

    # 2. Gold is deleted in AEP: the run refreshes Cart abandoners alone and says what happened to Gold.
    emu.admin.delete_audience(gold)
    capfd.readouterr()
    state, report, resolved, tasks = _run(dag, _day(1))
    assert state == "success", (tasks, report)
    warnings = [line for line in capfd.readouterr().out.splitlines() if "was DELETED in AEP" in line]
    assert len(warnings) == 1 and "[warning" in warnings[0] and gold in warnings[0], warnings
    assert "'Luma - Gold members'" in warnings[0], warnings
    assert resolved["audience_ids"] == [cart]
    [missing] = resolved["missing_audiences"]
    assert (missing["id"], missing["name"], missing["reason"]) == (gold, "Luma - Gold members", "deleted")
    assert missing["field"] == "audiences[1].name" and gold in missing["detail"]
    snapshot = _snapshot(emu, profile_ds, tenant)
    assert snapshot == _truth(emu, {cart: "Cart abandoners"}) and snapshot
    assert not any(m[0] == gold for memberships in snapshot.values() for m in memberships)
    assert [row["id"] for row in report["audiences"]] == [cart]
    [row] = report["missing_in_aep"]
    assert (row["id"], row["reason"]) == (gold, "deleted") and "no longer lists them" in row["members"]

    # 3. Cart abandoners is renamed: still refreshed (same id, new name); Gold still known as deleted.
    emu.admin.rename_audience(cart, "Cart abandoners (EU)")
    state, report, resolved, tasks = _run(dag, _day(0))
    assert state == "success", (tasks, report)
    assert resolved["audience_ids"] == [cart]
    assert [(m["id"], m["reason"], m.get("new_name")) for m in resolved["missing_audiences"]] == [
        (cart, "renamed", "Cart abandoners (EU)"),
        (gold, "deleted", None),
    ]
    assert _snapshot(emu, profile_ds, tenant) == _truth(emu, {cart: "Cart abandoners (EU)"})
    assert {row["reason"] for row in report["missing_in_aep"]} == {"renamed", "deleted"}


def test_mistyped_name_fails_on_its_first_try_before_anything_is_written(emu, airflow_db, dags_folder):
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_cja_audiences.operators.setup import ResolveAudiencesOperator

    audiences = [{"name": "Cart abandoners"}, {"name": "Luma - Gold membres"}]
    job = _job(audiences, "typo_e2e", retries=2, retry_delay_seconds=0)
    dag = dags_folder(job)
    before = {k: v for k, v in emu.admin.state().items() if k in ("sandboxes", "cja", "tables")}
    state, _, _, tasks = _run(dag, _day(0))
    assert state == "failed"
    assert tasks["resolve_audiences"] == ("failed", 1), tasks  # no retry: retrying cannot fix a typo
    assert {k: v for k, v in emu.admin.state().items() if k in ("sandboxes", "cja", "tables")} == before

    resolve = ResolveAudiencesOperator(
        task_id="resolve",
        audiences=audiences,
        identity_field=job.identity.field,
        job_id=job.job_id,
        profile_dataset_name=job.names.profile_dataset,
    )
    with pytest.raises(AirflowFailException) as info:
        resolve.execute({})
    message = str(info.value)
    assert "audiences[1].name" in message and "did you mean 'Luma - Gold members'" in message
    assert "audiences[0]" not in message
