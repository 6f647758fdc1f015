"""Run the provider's operators directly (no scheduler) against the emulator: a small stand-in for
Airflow's task context, the job they are built from, and the pipeline's steps as the DAG wires them
(helpers for tests/dags).

The stand-in holds what the operators read: ``ti`` (try number, an XCom sink), ``run_id``,
``task_state_store`` (kept between "tries" by the caller, as Airflow keeps it between a task's
tries), ``params`` and ``dag_run`` (start date and run type).
"""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

from airflow_cja_audiences.config import RefreshJob
from airflow_cja_audiences.operators.export import ExportAudiencesOperator
from airflow_cja_audiences.operators.setup import EnsureCjaDatasetOperator, EnsureExportDatasetOperator

#: The emulator's tenant (its default; tests/emulator_fixture.py starts it with no --tenant).
TENANT = "demoemea"


class FakeTI:
    """The task instance: its try number and the XComs it pushed (``xcoms``)."""

    def __init__(self, try_number: int = 1) -> None:
        self.try_number = try_number
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value


class FakeStore(dict):
    """``task_state_store``: what a task keeps across its tries (``set`` / ``delete`` as Airflow's)."""

    def set(self, key: str, value: Any, **_: Any) -> None:
        self[key] = value

    def delete(self, key: str) -> None:
        self.pop(key, None)


def task_context(
    store: FakeStore | None = None,
    try_number: int = 1,
    run_id: str = "manual__operator-test",
    run_type: str = "manual",
) -> dict[str, Any]:
    """A task context for one try; ``store`` None is a task without a state store."""
    return {
        "ti": FakeTI(try_number),
        "run_id": run_id,
        "task_state_store": store,
        "params": {},
        "dag_run": SimpleNamespace(start_date=datetime.now(timezone.utc), run_type=run_type),
    }


def refresh_job(job_id: str, audiences: list[str], **extra: Any) -> RefreshJob:
    """A job selecting ``audiences`` by id, identified by email, in the emulator's tenant; its
    datasets, schemas and field groups are named after ``job_id`` (one per test module)."""
    return RefreshJob.model_validate(
        {
            "job_id": job_id,
            "audiences": [{"id": a} for a in audiences],
            "identity": {"field": "_{tenant}.identification.core.email"},
            "tenant": TENANT,
            **extra,
        }
    )


def prod_state(emu) -> dict[str, Any]:
    """The emulator's ``prod`` sandbox as its admin API shows it (datasets, batches, schemas, ...)."""
    return emu.admin.state()["sandboxes"]["prod"]


def ensure_export_dataset(job: RefreshJob) -> dict[str, Any]:
    """The job's export dataset (``ensure_export_dataset``'s result: ``dataset_id``, ``table_name``)."""
    return EnsureExportDatasetOperator(task_id="x", dataset_name=job.names.export_dataset).execute(
        task_context()
    )


def ensure_profile_dataset(job: RefreshJob) -> str:
    """The job's CJA profile dataset (with its schema and field group); returns its id."""
    names = job.names
    return EnsureCjaDatasetOperator(
        task_id="c",
        kind="profile",
        tenant=TENANT,
        dataset_name=names.profile_dataset,
        schema_title=names.profile_schema,
        field_group_title=names.field_group,
    ).execute(task_context())["dataset_id"]


def export_operator(job: RefreshJob, dataset_id: str) -> ExportAudiencesOperator:
    """The export of the job's audiences (its identity field only) into ``dataset_id``; waits in the
    task (not deferred), polling fast."""
    return ExportAudiencesOperator(
        task_id="export",
        dataset_id=dataset_id,
        audience_ids=[a.id for a in job.audiences],
        fields=[job.identity_path(TENANT)],
        poll_interval=0.1,
        deferrable=False,
    )


def load_arguments(
    job: RefreshJob, *, export_batch_id: str, table_name: str, dataset_id: str, audiences: list[str]
) -> dict[str, Any]:
    """What ``prepare_snapshot`` and its ``load_*`` tasks share: the snapshot of ``export_batch_id``
    (read from ``table_name``) loaded into the CJA dataset ``dataset_id``."""
    return {
        "job": job.model_dump(mode="json"),
        "kind": "snapshot",
        "tenant": TENANT,
        "table_name": table_name,
        "export_batch_id": export_batch_id,
        "dataset_id": dataset_id,
        "audiences": [{"id": a, "name": f"Audience {a[:4]}"} for a in audiences],
    }
