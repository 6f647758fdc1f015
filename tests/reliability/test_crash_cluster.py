"""The crash matrix on a real deployment: Airflow itself notices the killed task and retries it.

test_crash_matrix.py kills the process that runs a task and then does the scheduler's part itself
(driver.py: fail the task for retry, start its next try). Here a real scheduler with LocalExecutor
workers, api-server, triggerer and PostgreSQL (tests/airflow_cluster.py) runs the DAG: the task's
process is SIGKILLed by pid while it uploads its file; its supervisor reports the death, the
scheduler queues the next try, and the run converges like in the matrix. Needs PostgreSQL (and the
cluster harness's Redis check) on localhost; runs in the figures script (CJA_RELIABILITY_FULL=1).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from aep_emulator.connection import airflow_connection_env
from airflow_cja_audiences.config import RefreshJob
from airflow_cja_audiences.dag_factory import dag_id_for

from aep_truth import JobView
from harness import FULL, poll
from reliability_checks import assert_converged, duplicates, export_jobs_of

pytestmark = [
    pytest.mark.slow,
    pytest.mark.services,
    pytest.mark.skipif(not FULL, reason="figures script only (CJA_RELIABILITY_FULL=1)"),
]

ROOT = Path(__file__).resolve().parents[2]
HELD = "ingestion.put_file"


def test_a_killed_task_process_is_retried_by_the_scheduler(emu, audience_ids, tmp_path, figures):
    from airflow_cluster import AirflowCluster, ClusterSpec, services_unavailable

    if reason := services_unavailable():
        pytest.skip(f"needs PostgreSQL and Redis on localhost: {reason}")
    job = RefreshJob.model_validate(
        {
            "job_id": "crash_cluster",
            "schedule": None,
            "publish_events": False,
            "retries": 2,
            "retry_delay_seconds": 0,
            "poll_interval_seconds": 1,
            "audiences": [{"id": a} for a in audience_ids],
            "api_retries": {"max_attempts": 8, "initial_wait_seconds": 0.05, "max_wait_seconds": 2},
            "identity": {"field": "_{tenant}.identification.core.email", "namespace": "Email"},
        }
    )
    (tmp_path / "jobs.json").write_text(json.dumps({"jobs": [job.model_dump(mode="json")]}))
    env = {
        "CJA_AUDIENCES_CONFIG": str(tmp_path / "jobs.json"),
        **airflow_connection_env(
            "adobe_experience_platform_default", emu.ready, emu.credentials.client_secret
        ),
    }
    dag_id = dag_id_for(job)
    cluster = AirflowCluster(
        ClusterSpec(
            dags_folder=ROOT / "dags", env=env, executor="LocalExecutor", pools={job.query_service_pool: 4}
        ),
        workdir=tmp_path / "cluster",
    )
    runs: list[str] = []
    try:
        cluster.start()
        cluster.wait_for_dag(dag_id)
        cluster.set_paused(dag_id, False)
        runs.append(cluster.trigger(dag_id))
        assert cluster.wait_for_run(dag_id, runs[0]) == "success"
        view = JobView(emu, job.job_id, audience_ids, emu.credentials.tenant)
        dataset = view.dataset_id(job.names.profile_dataset)
        (previous,) = view.live_batches(dataset, "snapshot")

        emu.admin.set_faults([{"route": HELD, "kind": "latency", "seconds": 300, "times": 1}])
        started = time.monotonic()
        runs.append(cluster.trigger(dag_id))
        poll(
            lambda: emu.admin.stats()["routes"].get(HELD, {}).get("inFlight"),
            timeout=180,
            interval=0.2,
            what="the held upload",
        )
        assert [b.id for b in view.live_batches(dataset, "snapshot")] == [previous.id]
        pid = cluster.kill_task_process(dag_id, runs[1], "load_snapshot", map_index=0)
        emu.admin.clear_faults()
        poll(
            lambda: not emu.admin.stats()["routes"][HELD].get("inFlight"),
            timeout=60,
            what="the released upload",
        )
        assert cluster.wait_for_run(dag_id, runs[1]) == "success"
        seconds = time.monotonic() - started
        load = cluster.task_instance(dag_id, runs[1], "load_snapshot", map_index=0)
        assert load["try_number"] == 2 and load["pid"] != pid, load
        assert_converged(view, job)
        assert not any(duplicates(emu).values()) and len(export_jobs_of(emu, job)) == 2
        figures.record(
            "crashes",
            "load: uploading the file (real scheduler, LocalExecutor, PostgreSQL)",
            "the supervisor reported the death, the scheduler ran try 2 in a new process; converged; "
            "1 live snapshot = ground truth; no duplicates",
            killed_task="load_snapshot[0]",
            held=HELD,
            retry_try=load["try_number"],
            retries={},
            seconds=seconds,
        )
    except BaseException:
        cluster.dump_logs("reliability crash on a real deployment", runs=[(dag_id, r) for r in runs])
        raise
    finally:
        cluster.stop()
