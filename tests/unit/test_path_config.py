"""The job setting ``path`` (client | server): default, validation naming the field, and the DAG it builds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_cja_audiences.config import RefreshJob, read_jobs_file

EMAIL = "_{tenant}.identification.core.email"


def _job(job_id: str, **extra) -> dict:
    return {"job_id": job_id, "audiences": [{"id": f"{job_id}-aud"}], "identity": {"field": EMAIL}, **extra}


def test_default_is_the_client_path() -> None:
    job = RefreshJob.model_validate(_job("a"))
    assert job.path == "client" and job.batch_query_timeout_minutes == 180


@pytest.mark.parametrize("value", ["serverside", "", None, 1, "SERVER"])
def test_bad_path_names_file_job_and_field(tmp_path: Path, value) -> None:
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps({"jobs": [_job("good", path="server"), _job("bad", path=value)]}))
    result = read_jobs_file(path)
    assert [(j.job_id, j.path) for j in result.jobs] == [("good", "server")]
    (error,) = result.errors
    assert (
        error.job_id == "bad" and "jobs.1.path" in error.message and "'client' or 'server'" in error.message
    )


@pytest.mark.parametrize("minutes", [0, 24 * 60 + 1])
def test_batch_query_timeout_is_bounded(tmp_path: Path, minutes: int) -> None:
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps({"jobs": [_job("bad", path="server", batch_query_timeout_minutes=minutes)]}))
    (error,) = read_jobs_file(path).errors
    assert "batch_query_timeout_minutes" in error.message


def test_server_path_dag_writes_with_a_batch_query() -> None:
    from airflow_cja_audiences.dag_factory import build_dag

    client = build_dag(RefreshJob.model_validate(_job("c")))
    server = build_dag(RefreshJob.model_validate(_job("s", path="server")))
    assert "load_snapshot" in client.task_dict and "distill_snapshot" not in client.task_dict
    assert "distill_snapshot" in server.task_dict and "load_snapshot" not in server.task_dict
    assert "load_events" in client.task_dict and "distill_events" not in client.task_dict
    assert "distill_events" in server.task_dict and "load_events" not in server.task_dict
    for kind in ("snapshot", "events"):
        distill = server.task_dict[f"distill_{kind}"]
        assert distill.kind == kind
        assert distill.downstream_task_ids >= {f"publish_{kind}"}
        assert f"prepare_{kind}" in distill.upstream_task_ids
        assert distill.deferrable is True
        # prepare opens no batch on the server path: the batch query writes it
        assert server.task_dict[f"prepare_{kind}"].open_batch is False
