"""DAG tests: a migrated SQLite metadata DB under the session's AIRFLOW_HOME, and the emulator."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def airflow_db() -> None:
    airflow = Path(sys.executable).with_name("airflow")
    result = subprocess.run([str(airflow), "db", "migrate"], env=os.environ.copy(), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    subprocess.run([str(airflow), "pools", "set", "cja_audiences_query_service", "4", "test"], env=os.environ.copy(),
                   capture_output=True, check=True)


@pytest.fixture(autouse=True)
def _adobe(adobe_conn):
    yield


@pytest.fixture
def dags_folder(tmp_path, monkeypatch):
    """Put jobs into a DAG folder of their own (``dag.test()`` syncs the DAG from its bundle);
    returns a function ``(job, ...) -> DAG`` giving the DAG of the first job."""
    import json

    from airflow_cja_audiences.dag_factory import build_dag

    folder = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])  # fixed when Airflow was imported
    (folder / "cja_audiences.py").write_text((ROOT / "dags" / "cja_audiences.py").read_text())

    def make(*jobs):
        config = folder / "jobs.json"
        config.write_text(json.dumps({"jobs": [j.model_dump(mode="json") for j in jobs]}))
        monkeypatch.setenv("CJA_AUDIENCES_CONFIG", str(config))
        return build_dag(jobs[0])

    return make
