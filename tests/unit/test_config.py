"""The jobs file as a hostile input: bounded size, alias expansion, job count and error text; the
schedule checked when the file is read; one invalid job reported next to the valid ones."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from airflow_cja_audiences import config
from airflow_cja_audiences.config import RefreshJob, load_jobs_file, read_jobs_file

EMAIL = "_{tenant}.identification.core.email"


def _job(job_id: str, **extra) -> dict:
    return {"job_id": job_id, "audiences": [{"id": f"{job_id}-aud"}], "identity": {"field": EMAIL}, **extra}


def _write(tmp_path: Path, data, name: str = "jobs.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


# A 9-level "billion laughs": ~600 bytes of YAML that expand to 9**9 (387 million) strings.
ALIAS_BOMB = (
    "\n".join(
        ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
        + [f"{c}: &{c} [{','.join('*' + p for _ in range(9))}]" for p, c in zip("abcdefgh", "bcdefghi")]
        + ["jobs: *i"]
    )
    + "\n"
)


def test_alias_bomb_fails_fast_and_small(tmp_path):
    path = _write(tmp_path, ALIAS_BOMB, "jobs.yaml")
    assert len(ALIAS_BOMB) < 700
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="aliases expand the document to more than") as info:
            read_jobs_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(path) in str(info.value)
    assert peak < 20 * 1024 * 1024, f"reading the bomb peaked at {peak / 1e6:.0f} MB"
    assert len(str(info.value)) < 1000


def test_recursive_alias_is_refused(tmp_path):
    path = _write(tmp_path, "jobs: &j [*j]\n", "jobs.yaml")
    with pytest.raises(ValueError, match="recursive"):
        read_jobs_file(path)


def test_moderate_aliases_are_fine(tmp_path):
    text = (
        "common: &identity {field: '_{tenant}.identification.core.email'}\n"
        "jobs:\n"
        "  - {job_id: one, audiences: [{id: a-1}], identity: *identity}\n"
        "  - {job_id: two, audiences: [{id: a-2}], identity: *identity}\n"
    )
    # 'common' is not a key of the jobs file: anchors must live inside a job or be repeated
    with pytest.raises(ValueError, match="unknown top-level keys"):
        read_jobs_file(_write(tmp_path, text, "jobs.yaml"))
    text = (
        "jobs:\n"
        "  - {job_id: one, audiences: [{id: a-1}], identity: &identity {field: '_{tenant}.identification.core.email'}}\n"
        "  - {job_id: two, audiences: [{id: a-2}], identity: *identity}\n"
    )
    result = read_jobs_file(_write(tmp_path, text, "jobs.yaml"))
    assert [j.job_id for j in result.jobs] == ["one", "two"] and result.errors == []


def test_file_size_is_capped(tmp_path):
    path = tmp_path / "jobs.json"
    path.write_bytes(b" " * (config.MAX_FILE_BYTES + 1))
    with pytest.raises(ValueError, match="larger than 4 MiB") as info:
        read_jobs_file(path)
    assert str(path) in str(info.value)


def test_job_count_is_capped(tmp_path):
    path = _write(tmp_path, {"jobs": [_job(f"j{i}") for i in range(config.MAX_JOBS + 1)]})
    with pytest.raises(ValueError, match=r"jobs: 1001 jobs, more than the 1000") as info:
        read_jobs_file(path)
    assert "split them over several jobs files" in str(info.value)
    assert (
        len(read_jobs_file(_write(tmp_path, {"jobs": [_job(f"j{i}") for i in range(config.MAX_JOBS)]})).jobs)
        == config.MAX_JOBS
    )


@pytest.mark.parametrize(
    "schedule", ["0 25 * * *", "every day", "@sometimes", "* * *", "0 2 * * * * * *", "", "0 2 31 2 mon-"]
)
def test_bad_schedule_names_file_job_and_field(tmp_path, schedule):
    path = _write(tmp_path, {"jobs": [_job("good"), _job("nightly", schedule=schedule)]})
    result = read_jobs_file(path)
    assert [j.job_id for j in result.jobs] == ["good"]
    (error,) = result.errors
    assert (error.index, error.job_id) == (1, "nightly")
    assert "jobs.1.schedule" in error.message and "cron" in error.message
    with pytest.raises(ValueError) as info:
        load_jobs_file(path)
    assert str(path) in str(info.value) and "job #1 ('nightly')" in str(info.value)
    assert "jobs.1.schedule" in str(info.value)


@pytest.mark.parametrize(
    "schedule",
    [
        "@hourly",
        "@daily",
        "@weekly",
        "@monthly",
        "@quarterly",
        "@yearly",
        "0 2 * * *",
        "*/15 6-18 * * mon-fri",
        None,
    ],
)
def test_good_schedules(schedule):
    assert RefreshJob.model_validate(_job("ok", schedule=schedule)).schedule == schedule


def test_presets_are_airflows():
    from airflow.sdk.definitions.timetables._cron import CRON_PRESETS

    assert config.CRON_PRESETS == CRON_PRESETS


def test_one_invalid_job_does_not_hide_the_others(tmp_path):
    path = _write(
        tmp_path,
        {
            "jobs": [
                _job("first"),
                _job("broken", audiences=[{"id": "x' OR 1=1"}]),
                {"job_id": "../evil", "audiences": []},
                _job("last"),
            ]
        },
    )
    result = read_jobs_file(path)
    assert [j.job_id for j in result.jobs] == ["first", "last"]
    assert [(e.index, e.job_id) for e in result.errors] == [(1, "broken"), (2, None)]
    assert "jobs.1.audiences.0.id" in result.errors[0].message
    assert "jobs.2.job_id" in result.errors[1].message and "jobs.2.identity" in result.errors[1].message


def test_duplicate_job_ids_are_both_invalid(tmp_path):
    result = read_jobs_file(_write(tmp_path, {"jobs": [_job("a"), _job("b"), _job("a")]}))
    assert [j.job_id for j in result.jobs] == ["b"]
    assert [(e.index, e.job_id) for e in result.errors] == [(0, "a"), (2, "a")]
    assert "used by 2 jobs" in result.errors[0].message


def test_error_text_is_bounded_and_does_not_echo_huge_values(tmp_path):
    huge = "N" * 50_000
    path = _write(
        tmp_path,
        {"jobs": [_job("big", description=huge, audiences=[{"id": huge}] * 50, unknown_setting=huge)]},
    )
    result = read_jobs_file(path)
    (error,) = result.errors
    assert len(error.message) < 5000, len(error.message)
    assert "jobs.0.audiences.0.id" in error.message and "more errors" in error.message


@pytest.mark.parametrize(
    "content, message",
    [
        ("[]", "expected a mapping"),
        ('{"jobs": []}', "non-empty list"),
        ('{"jobs": [{"job_id": "x"}], "version": 2}', "version"),
        ('{"jobs": [], "extra": 1}', "unknown top-level keys"),
        ("[" * 100_000, "cannot be parsed"),
    ],
)
def test_file_level_errors_name_the_file(tmp_path, content, message):
    path = _write(tmp_path, content)
    with pytest.raises(ValueError, match=message) as info:
        read_jobs_file(path)
    assert str(path) in str(info.value)


def test_deeply_nested_yaml(tmp_path):
    path = _write(tmp_path, "jobs: " + "[" * 50_000 + "]" * 50_000 + "\n", "jobs.yaml")
    with pytest.raises(ValueError) as info:
        read_jobs_file(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------------------------------
# The job setting ``path`` (client | server): default, validation naming the field, and the DAG it builds.


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
