"""Session-wide test settings: an isolated AIRFLOW_HOME (tests/ is importable through pytest's
``pythonpath`` setting in pyproject.toml)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent

# Airflow reads its configuration at import time: isolate it before any test imports airflow.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="cja-audiences-airflow-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
# DAG tests write their DAG files here; Airflow reads the folder's location once, at import.
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(Path(os.environ["AIRFLOW_HOME"]) / "dags"))
Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).mkdir(parents=True, exist_ok=True)


# ---------------------------------------------------------------------------------------------------
# One emulator process for every suite that talks to "Adobe" (started on first use, over HTTPS, with
# Query Service). Suites opt in with an autouse fixture that requests ``adobe_conn``.

import json  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def emu() -> Iterator:
    from emulator_fixture import start_subprocess

    with start_subprocess(
        profiles=600, pg=True, args=["--export-job-seconds", "0.3", "--batch-seconds", "0.2"]
    ) as running:
        yield running


@pytest.fixture(scope="session")
def realistic_emu() -> Iterator:
    """The emulator in realistic mode (Adobe's pace and limits on the compressed clock, README
    "Realistic mode"): the end-to-end suites (dags, reliability) use it as their ``emu`` by default; a
    test there that needs the default (kind) emulator starts one and says why."""
    from emulator_fixture import start_subprocess

    # CJA_TEST_EMULATOR_MODE=default runs these suites against the default emulator instead (to
    # compare run times, or to tell a realistic-mode failure from another one).
    mode = os.environ.get("CJA_TEST_EMULATOR_MODE", "realistic")
    if mode not in ("realistic", "default"):
        raise pytest.UsageError(f"CJA_TEST_EMULATOR_MODE must be realistic or default, got {mode!r}")
    args = [] if mode == "realistic" else ["--export-job-seconds", "0.3", "--batch-seconds", "0.2"]
    with start_subprocess(profiles=600, pg=True, realistic=mode == "realistic", args=args) as running:
        yield running


@pytest.fixture
def adobe_conn(emu, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """The default Adobe connection pointed at the emulator; emulator state and token cache reset after."""
    from airflow_cja_audiences.hooks.platform import clear_token_cache

    from emulator_fixture import point_default_connection

    yield point_default_connection(emu, monkeypatch.setenv)
    clear_token_cache()
    emu.admin.clear_faults()
    emu.admin.knobs(
        export_job_failures=0, export_batch_failures=0, ingestion_failures=0, partial_ingestion_failures=0
    )
    emu.admin.reset()


@pytest.fixture
def fast_retries() -> dict:
    """Hook parameters that keep retry waits short (Retry-After is still honoured)."""
    return {"initial_retry_wait": 0.05, "max_retry_wait": 2.0}


# ---------------------------------------------------------------------------------------------------
# Suites that run the refresh DAG (dags, reliability): a migrated SQLite metadata DB under the
# session's AIRFLOW_HOME, and the jobs file the DAG file of the session's DAG folder reads.

ROOT = TESTS.parent


@pytest.fixture(scope="session")
def airflow_db() -> None:
    import subprocess

    airflow = Path(sys.executable).with_name("airflow")
    result = subprocess.run(
        [str(airflow), "db", "migrate"], env=os.environ.copy(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    subprocess.run(
        [str(airflow), "pools", "set", "cja_audiences_query_service", "4", "test"],
        env=os.environ.copy(),
        capture_output=True,
        check=True,
    )


@pytest.fixture
def dags_folder(monkeypatch: pytest.MonkeyPatch):
    """Put jobs into a DAG folder of their own (``dag.test()`` syncs the DAG from its bundle);
    returns a function ``(job, ...) -> DAG`` giving the DAG of the first job."""
    from airflow_cja_audiences.dag_factory import build_dag

    folder = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])  # fixed when Airflow was imported
    (folder / "cja_audiences.py").write_text((ROOT / "dags" / "cja_audiences.py").read_text())

    def make(*jobs):
        config = folder / "jobs.json"
        config.write_text(json.dumps({"jobs": [j.model_dump(mode="json") for j in jobs]}))
        monkeypatch.setenv("CJA_AUDIENCES_CONFIG", str(config))
        return build_dag(jobs[0])

    return make
