"""The DAG folder imports cleanly and the generated DAGs have the shape the pipeline needs."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

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
    assert {"force_replace", "publish_snapshot", "events_interval_start", "events_interval_end"} <= set(
        dag.params
    )
    tasks = {t.task_id: t for t in dag.tasks}
    assert tasks["export_audiences"].deferrable and tasks["publish_snapshot"].deferrable
    assert tasks["load_snapshot"].pool == "cja_audiences_query_service"
    assert [str(a.uri) for a in tasks["report"].outlets] == ["aep://default/cja-audiences/luma_loyalty"]
    assert tasks["report"].trigger_rule == "none_failed"
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable"
    # Overlapping runs (scheduled, manual, backfill) must not both create a dataset or schema: AEP
    # accepts duplicate names, and later runs refuse them (seen in tests/compose when two runs raced).
    ensure = [t for t in tasks if t.startswith("ensure_")]
    assert sorted(ensure) == ["ensure_event_dataset", "ensure_export_dataset", "ensure_profile_dataset"]
    assert all(tasks[t].max_active_tis_per_dag == 1 for t in ensure)
    # The export read check (a full scan of the export) runs once, before both prepares, not in each.
    for kind in ("snapshot", "events"):
        prepare = tasks[f"prepare_{kind}"]
        assert "check_export_read" in prepare.upstream_task_ids and prepare.check_export is False
    assert {"export_audiences", "ensure_export_dataset"} <= tasks["check_export_read"].upstream_task_ids


def test_params_are_the_dags_and_reach_every_task(dagbag):
    """The DAG holds the trigger form's params, the tasks no copies (building and serializing those copies
    cost most of a DAG's parse time); at run time Airflow merges them into each task's context."""
    from airflow.sdk.definitions.param import process_params

    dag = dagbag.dags["cja_audiences__luma_loyalty"]
    assert set(dag.params) == {
        "force_replace",
        "publish_snapshot",
        "events_interval_start",
        "events_interval_end",
    }
    for task in dag.tasks:
        assert not task.params, task.task_id
        params = process_params(dag, task, {"force_replace": True}, suppress_exception=False)
        assert params["force_replace"] is True and params["publish_snapshot"] is True


def test_dag_without_events_or_schedule():
    job = JobsFile.model_validate(
        {
            "jobs": [
                {
                    "job_id": "manual_only",
                    "schedule": None,
                    "publish_events": False,
                    "audiences": [{"id": "a-1"}],
                    "identity": {"field": "_{tenant}.identification.core.email"},
                }
            ]
        }
    ).jobs[0]
    dag = build_dag(job)
    assert type(dag.timetable).__name__ == "NullTimetable"
    assert not any(t.task_id.endswith("_events") for t in dag.tasks)


def test_bad_config_names_the_field(tmp_path):
    from airflow_cja_audiences.dag_factory import dags_from_file

    bad = tmp_path / "jobs.yaml"
    bad.write_text(
        'jobs:\n  - job_id: x\n    audiences:\n      - id: "a\'; DROP TABLE t; --"\n'
        "    identity:\n      field: _{tenant}.identification.core.email\n"
    )
    dags = dags_from_file(bad)
    assert list(dags) == ["cja_audiences__x"]
    assert "config-error" in dags["cja_audiences__x"].tags
    assert "jobs.0.audiences.0.id" in dags["cja_audiences__x"].description
    bad.write_text("jobs: [unclosed")
    with pytest.raises(ValueError, match="cannot be parsed") as info:
        dags_from_file(bad)
    assert str(bad) in str(info.value)


GOOD_JOB = {"audiences": [{"id": "a-1"}], "identity": {"field": "_{tenant}.identification.core.email"}}


def _folder_with_jobs(tmp_path, monkeypatch, jobs):
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "cja_audiences.py").write_text((DAGS / "cja_audiences.py").read_text())
    config = folder / "cja_audiences.json"
    config.write_text(json.dumps({"jobs": jobs}))
    monkeypatch.setenv("CJA_AUDIENCES_CONFIG", str(config))
    return folder, config


def test_a_broken_job_does_not_hide_the_others(tmp_path, monkeypatch):
    """What the UI shows: the DAG processor's DagBag has no import error, the valid jobs' DAGs and, for the
    broken job, a DAG under its id whose serialized description and doc (what the DAG list and the DAG
    page show) name the file, the job and the field; running it fails at once with the same message."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.exceptions import AirflowFailException
    from airflow.serialization.serialized_objects import DagSerialization

    folder, config = _folder_with_jobs(
        tmp_path,
        monkeypatch,
        [
            {"job_id": "first", **GOOD_JOB},
            {"job_id": "nightly", **GOOD_JOB, "schedule": "0 25 * * *"},
            {"job_id": "last", **GOOD_JOB},
        ],
    )
    bag = DagBag(dag_folder=str(folder))
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == {"cja_audiences__first", "cja_audiences__nightly", "cja_audiences__last"}
    assert len(bag.dags["cja_audiences__first"].tasks) > 10
    placeholder = bag.dags["cja_audiences__nightly"]
    serialized = DagSerialization.to_dict(placeholder)["dag"]
    for shown in (serialized["description"], serialized["doc_md"]):
        assert "jobs.1.schedule" in shown and "job #1 ('nightly')" in shown and config.name in shown
    assert serialized.get("timetable", {}).get("__type", "").endswith("NullTimetable")
    (task,) = placeholder.tasks
    with pytest.raises(AirflowFailException, match="jobs.1.schedule") as info:
        task.execute({})
    assert str(config) in str(info.value)


def test_a_broken_file_is_an_import_error_naming_it(tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    folder, config = _folder_with_jobs(
        tmp_path, monkeypatch, [{"job_id": f"j{i}", **GOOD_JOB} for i in range(1001)]
    )
    bag = DagBag(dag_folder=str(folder))
    (error,) = bag.import_errors.values()
    assert str(config) in error and "more than the 1000" in error
    assert bag.dag_ids == []


SECRET = "s3cret-client-value"


def test_config_strings_are_data_not_templates():
    """A display name that is a Jinja expression stays that text (the client secret is not rendered into
    CJA records), and an AEP audience name with "{{" is no template error; the same context does render
    an ordinary template field, so the check can fail."""
    job = JobsFile.model_validate(
        {
            "jobs": [
                {
                    "job_id": "templ",
                    "audiences": [
                        {
                            "id": "a-1",
                            "display_name": "{{ conn.adobe_experience_platform_default.password }}",
                        },
                        {"name": "Gold {{ members"},
                    ],
                    "naming": {"profile_dataset": "{{ 7 * 6 }} profiles"},
                    "identity": {"field": "_{tenant}.identification.core.email"},
                }
            ]
        }
    ).jobs[0]
    dag = build_dag(job)
    context = {
        "conn": SimpleNamespace(adobe_experience_platform_default=SimpleNamespace(password=SECRET)),
        "params": {},
        "ti": SimpleNamespace(xcom_pull=lambda **_: "demoemea"),
    }
    resolve = dag.get_task("resolve_audiences")
    resolve.render_template_fields(context)
    assert resolve.audiences == [
        {"id": "a-1", "display_name": "{{ conn.adobe_experience_platform_default.password }}"},
        {"name": "Gold {{ members"},
    ]
    profile = dag.get_task("ensure_profile_dataset")
    profile.tenant = "demoemea"  # an XComArg otherwise
    profile.render_template_fields(context)
    assert profile.dataset_name == "{{ 7 * 6 }} profiles"
    control = dag.get_task("ensure_export_dataset")
    control.sandbox = "{{ conn.adobe_experience_platform_default.password }}"
    control.render_template_fields(context)
    assert control.sandbox == SECRET  # an ordinary template field is rendered with this context
