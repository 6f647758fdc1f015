"""What ``prepare_*`` pushes must be readable by the tasks that template it.

Airflow 3 reads a stored ``None`` XCom as "never pushed": a downstream template that references it
(``publish_*.batch_id``, ``abort_open_batches.batch_ids``) fails with XComNotFound. That broke every
manual run without an events interval (``prepare_events`` disabled) and every backfill run
(``prepare_snapshot`` disabled) on a real scheduler; ``dag.test()`` runs with both kinds enabled
never reached it. Found by the distributed Celery test.
"""

from __future__ import annotations

from typing import Any

import pytest

from airflow.sdk.definitions.xcom_arg import XComArg

from airflow_cja_audiences.config import RefreshJob
from airflow_cja_audiences.dag_factory import build_dag
from airflow_cja_audiences.operators.load import PrepareLoadOperator


class _RecordingTi:
    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def _job() -> RefreshJob:
    return RefreshJob.model_validate(
        {
            "job_id": "xcoms",
            "schedule": "0 2 * * *",
            "audiences": [{"id": "aud-1"}],
            "identity": {"field": "_{tenant}.identification.core.email", "namespace": "Email"},
        }
    )


def _keys_templated_from(dag, task_id: str) -> set[str]:
    """The XCom keys of ``task_id`` that other tasks' template fields reference."""
    keys = set()
    for task in dag.tasks:
        for field in task.template_fields:
            for operator, key in XComArg.iter_xcom_references(getattr(task, field, None)):
                if operator.task_id == task_id:
                    keys.add(key)
    return keys


@pytest.mark.parametrize("kind", ["snapshot", "events"])
def test_disabled_prepare_pushes_every_templated_key_as_a_value(kind):
    job = _job()
    dag = build_dag(job)
    templated = _keys_templated_from(dag, f"prepare_{kind}") - {"return_value"}
    assert {"batch_id", "external_id"} <= templated  # what publish_* and abort_open_batches read

    operator = PrepareLoadOperator(
        task_id=f"prepare_{kind}",
        job=job.model_dump(mode="json"),
        kind=kind,
        tenant="acme",
        table_name="t",
        export_batch_id="01EQ1C48TR4GD4FE7NH2522TCQ",
        audiences=[{"id": "aud-1"}],
        dataset_id="d",
        enabled=False,
    )
    ti = _RecordingTi()
    assert operator.execute({"ti": ti, "run_id": "backfill__x"}) == []
    missing = {key for key in templated if ti.pushed.get(key, None) is None}
    assert not missing, f"pushed as None (Airflow reads that as not pushed): {missing}"
    assert ti.pushed["batch_id"] == ""  # "no batch": publish_* skips or publishes nothing
