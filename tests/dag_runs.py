"""Run the refresh DAG of a job with ``dag.test()`` against the emulator (helpers for tests/dags)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow_cja_audiences.config import RefreshJob


def job(audience_ids: list[str], **overrides) -> RefreshJob:
    return RefreshJob.model_validate(
        {
            "job_id": "e2e",
            "schedule": "0 2 * * *",
            "poll_interval_seconds": 1,
            "retries": 0,
            "audiences": [{"id": a} for a in audience_ids],
            "identity": {"field": "_{tenant}.identification.core.email", "namespace": "Email"},
            **overrides,
        }
    )


def run(dag, logical_date: datetime, **conf) -> tuple[str, dict]:
    """Run the DAG; return (state, report) with the report read from the report task's XCom."""
    from sqlalchemy import select

    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dag_run = dag.test(logical_date=logical_date, run_conf=conf or None)
    with create_session() as session:
        raw = session.scalar(
            select(XComModel.value).where(
                XComModel.dag_id == dag.dag_id,
                XComModel.run_id == dag_run.run_id,
                XComModel.task_id == "report",
                XComModel.key == "return_value",
            )
        )
    report = XComModel.deserialize_value(type("X", (), {"value": raw})()) if raw is not None else {}
    return str(dag_run.state), report


def interval_end(days_ago: int) -> datetime:
    end = datetime.now(timezone.utc).replace(hour=2, minute=0, second=0, microsecond=0)
    if end > datetime.now(timezone.utc):
        end -= timedelta(days=1)
    return end - timedelta(days=days_ago)
