"""One real Airflow deployment (CeleryExecutor, 2 workers) plus the AEP emulator, for the whole module.

Needs PostgreSQL and Redis on localhost: skipped with the reason when they are absent, except under
``CI=true``, where CI provides them and a missing service is a failure, not a skip.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Realistic mode on a slower compressed clock: 1 Adobe minute = 0.25 s, so the 20-minute export job
# takes 5 s (tests/distributed times deferrals against it); knob values below are Adobe seconds.
TIME_SCALE = 0.25 / 60
JOB_ID = "dist"
DAG_ID = f"cja_audiences__{JOB_ID}"
POOL = "cja_audiences_query_service"


def require_services() -> None:
    from airflow_cluster import services_unavailable

    reason = services_unavailable()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must provide PostgreSQL and Redis on localhost: {reason}")
    pytest.skip(f"distributed Airflow test needs PostgreSQL and Redis on localhost: {reason}")


@dataclass
class Deployment:
    """The running cluster, its emulator, and what the tests learned so far (tests run in order)."""

    cluster: object
    emu: object
    audiences: list[str]
    job: dict
    job_id: str = JOB_ID
    dag_id: str = DAG_ID
    runs: dict[str, str] = field(default_factory=dict)  # role -> run id
    facts: dict[str, object] = field(default_factory=dict)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def deployment(tmp_path_factory) -> Iterator[Deployment]:
    require_services()
    from aep_emulator.connection import airflow_connection_env

    from airflow_cluster import AirflowCluster, ClusterSpec
    from emulator_fixture import start_subprocess

    work = tmp_path_factory.mktemp("distributed")
    # Realistic mode. Export jobs (20 Adobe minutes) and ingestion batches (made 20 too) take 5 s:
    # several times what a worker needs to release the slot of a task that deferred (about 1 s), so
    # "waited without a slot" is measurable.
    emu = start_subprocess(
        profiles=3000,
        pg=True,
        realistic=True,
        args=["--time-scale", str(TIME_SCALE), "--batch-seconds", str(5 / TIME_SCALE)],
    )
    cluster = None
    try:
        audiences = [a["id"] for a in emu.admin.state()["audiences"][:3]]
        jobs = {
            "version": 1,
            "jobs": [
                {
                    "job_id": JOB_ID,
                    "description": "Distributed test job",
                    "schedule": "0 2 * * *",
                    "poll_interval_seconds": 1,
                    "retries": 0,
                    "query_partitioning": "rows",
                    "max_rows_per_query": 500,
                    "audiences": [{"id": a} for a in audiences],
                    "identity": {"field": "_{tenant}.identification.core.email", "namespace": "Email"},
                }
            ],
        }
        (work / "jobs.json").write_text(json.dumps(jobs))
        env = {
            "CJA_AUDIENCES_CONFIG": str(work / "jobs.json"),
            **airflow_connection_env(
                "adobe_experience_platform_default", emu.ready, emu.credentials.client_secret
            ),
        }
        # 2 workers x 2 slots: few enough that concurrent deferred tasks outnumber the worker slots.
        cluster = AirflowCluster(
            ClusterSpec(dags_folder=ROOT / "dags", env=env, workers=2, worker_concurrency=2, pools={POOL: 4}),
            workdir=work / "cluster",
        )
        cluster.start()
        cluster.wait_for_dag(DAG_ID)
        yield Deployment(cluster=cluster, emu=emu, audiences=audiences, job=jobs["jobs"][0])
    finally:
        if cluster is not None:
            cluster.stop()
        emu.stop()


@pytest.fixture
def dep(deployment, request) -> Iterator[Deployment]:
    """The deployment; prints process and failed-task logs when the test fails."""
    yield deployment
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        deployment.cluster.dump_logs(request.node.name, runs=[(DAG_ID, r) for r in deployment.runs.values()])
