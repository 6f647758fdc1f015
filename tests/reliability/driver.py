"""Run one refresh DAG run in this process, or resume a run whose task process was killed.

Used by the reliability suite as a subprocess (``python tests/reliability/driver.py ...``): the
process that executes the tasks can then be SIGKILLed at a chosen moment, and its whole output is
the run's task log. The DAG comes from the jobs file named by ``CJA_AUDIENCES_CONFIG`` (the DAG
file of the session's DAG folder reads the same file).

``run``     ``dag.test()`` for the logical date: tasks run in this process, deferred waits inline.
``resume``  what Airflow does after a task process died: the task instances that were executing
            (running, or queued while their trigger ran inline) are failed the way the scheduler
            fails a task without heartbeat (``TaskInstance.handle_failure``: up for retry, next
            method cleared, try recorded); then the same DAG run is driven on by ``dag.test()``'s
            own loop, which starts each retry as a new try once its retry delay passed. ``dag.test``
            would first clear the run's task instances and re-create the run (losing XComs and the
            task state store); a scheduler retrying a task does neither, so both steps are skipped.

The last line printed is ``DRIVER-RESULT {json}`` with the run id and the final states.
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime
from typing import Any
from unittest.mock import patch

RESULT_PREFIX = "DRIVER-RESULT "
KILLED_MESSAGE = "the task process was killed (SIGKILL) while the task ran"


def _dag(dag_id: str) -> Any:
    from airflow_cja_audiences.dag_factory import dags_from_file

    return dags_from_file(os.environ["CJA_AUDIENCES_CONFIG"])[dag_id]


def _find_run(session: Any, dag_id: str, logical_date: datetime) -> Any:
    from sqlalchemy import select

    from airflow.models.dagrun import DagRun

    run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.logical_date == logical_date))
    if run is None:
        raise SystemExit(f"no run of {dag_id} at {logical_date.isoformat()} to resume")
    return run


def fail_killed_tasks(dag: Any, logical_date: datetime) -> list[str]:
    """Fail (for retry) the task instances that were executing when the process died."""
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState

    executing = (TaskInstanceState.RUNNING, TaskInstanceState.QUEUED, TaskInstanceState.DEFERRED)
    killed = []
    with create_session() as session:
        run = _find_run(session, dag.dag_id, logical_date)
        for ti in run.get_task_instances(state=executing, session=session):
            ti.task = dag.get_task(ti.task_id)
            ti.handle_failure(KILLED_MESSAGE, session=session)
            killed.append(f"{ti.task_id}[{ti.map_index}]" if ti.map_index >= 0 else ti.task_id)
    return killed


def resume(dag: Any, logical_date: datetime) -> Any:
    from airflow.serialization.definitions.dag import SerializedDAG

    def existing_run(**kwargs: Any) -> Any:
        run = _find_run(kwargs["session"], dag.dag_id, logical_date)
        run.dag = kwargs["dag"]  # the scheduler's view of the DAG, as get_or_create_dagrun sets it
        return run

    with (
        patch.object(SerializedDAG, "clear_dags"),
        patch("airflow.models.dagrun.get_or_create_dagrun", side_effect=existing_run),
    ):
        return dag.test(logical_date=logical_date)


def _states(run: Any) -> dict[str, str]:
    from airflow.utils.session import create_session

    with create_session() as session:
        return {
            (f"{ti.task_id}[{ti.map_index}]" if ti.map_index >= 0 else ti.task_id): str(ti.state)
            for ti in run.get_task_instances(session=session)
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("run", "resume"))
    parser.add_argument("--dag-id", required=True)
    parser.add_argument("--logical-date", required=True, type=datetime.fromisoformat)
    parser.add_argument("--conf", type=json.loads, default=None)
    args = parser.parse_args()
    dag = _dag(args.dag_id)
    killed: list[str] = []
    if args.mode == "run":
        run = dag.test(logical_date=args.logical_date, run_conf=args.conf)
    else:
        killed = fail_killed_tasks(dag, args.logical_date)
        run = resume(dag, args.logical_date)
    print(
        RESULT_PREFIX
        + json.dumps(
            {"state": str(run.state), "run_id": run.run_id, "killed": killed, "tasks": _states(run)}
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
