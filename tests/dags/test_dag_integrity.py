"""The DAG folder imports cleanly and the generated DAGs have the shape the pipeline needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_cja_audiences.config import JobsFile
from airflow_cja_audiences.dag_factory import build_dag

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "cja_audiences__luma_loyalty" in dagbag.dag_ids


def test_dag_shape(dagbag):
    dag = dagbag.dags["cja_audiences__luma_loyalty"]
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert {"force_replace", "publish_snapshot", "events_interval_start", "events_interval_end"} <= set(dag.params)
    tasks = {t.task_id: t for t in dag.tasks}
    assert tasks["export_audiences"].deferrable and tasks["publish_snapshot"].deferrable
    assert tasks["load_snapshot"].pool == "cja_audiences_query_service"
    assert [str(a.uri) for a in tasks["report"].outlets] == ["aep://default/cja-audiences/luma_loyalty"]
    assert tasks["report"].trigger_rule == "none_failed"
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable"


def test_dag_without_events_or_schedule():
    job = JobsFile.model_validate({"jobs": [{"job_id": "manual_only", "schedule": None, "publish_events": False,
                                             "audiences": [{"id": "a-1"}],
                                             "identity": {"field": "_{tenant}.identification.core.email"}}]}).jobs[0]
    dag = build_dag(job)
    assert type(dag.timetable).__name__ == "NullTimetable"
    assert not any(t.task_id.endswith("_events") for t in dag.tasks)


def test_bad_config_names_the_field(tmp_path):
    from airflow_cja_audiences.dag_factory import dags_from_file

    bad = tmp_path / "jobs.yaml"
    bad.write_text("jobs:\n  - job_id: x\n    audiences:\n      - id: \"a'; DROP TABLE t; --\"\n"
                   "    identity:\n      field: _{tenant}.identification.core.email\n")
    with pytest.raises(ValueError, match=r"jobs\.0\.audiences\.0\.id") as info:
        dags_from_file(bad)
    assert str(bad) in str(info.value)
    bad.write_text("jobs: [unclosed")
    with pytest.raises(ValueError, match="cannot be parsed"):
        dags_from_file(bad)
