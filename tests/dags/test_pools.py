"""A refresh run never waits forever for a Query Service pool nobody created: the provider's plugin
creates the missing pool in the scheduler when the run starts."""

from __future__ import annotations

from types import SimpleNamespace

from airflow_cja_audiences.config import RefreshJob
from airflow_cja_audiences.dag_factory import build_dag
from airflow_cja_audiences.pools import DEFAULT_POOL_SLOTS, QUERY_SERVICE_SESSIONS_PER_ORG, our_pools


def _dag(pool: str):
    return build_dag(
        RefreshJob.model_validate(
            {
                "job_id": "pooled",
                "query_service_pool": pool,
                "audiences": [{"id": "a-1"}],
                "identity": {"field": "_{tenant}.identification.core.email"},
            }
        )
    )


def _pool(name: str):
    from airflow.models.pool import Pool
    from airflow.utils.session import create_session

    with create_session() as session:
        pool = Pool.get_pool(name, session=session)
        return None if pool is None else (pool.slots, pool.include_deferred)


def test_the_pools_of_our_tasks_as_the_scheduler_sees_them():
    from airflow.serialization.serialized_objects import DagSerialization

    dag = _dag("qs_pool_a")
    assert our_pools(dag.tasks) == {"qs_pool_a"}
    scheduler_side = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    assert our_pools(scheduler_side.tasks) == {"qs_pool_a"}


def test_a_run_start_creates_the_missing_pool_once(airflow_db):
    from airflow.listeners.listener import get_listener_manager

    from airflow_cja_audiences import pools

    assert pools in get_listener_manager().pm.get_plugins(), "the plugin's listener is not registered"
    name = "qs_pool_created_by_listener"
    assert _pool(name) is None
    dag_run = SimpleNamespace(dag=_dag(name), dag_id="cja_audiences__pooled")  # not bound to a session
    get_listener_manager().hook.on_dag_run_running(dag_run=dag_run, msg="started")
    assert _pool(name) == (DEFAULT_POOL_SLOTS, False)
    from airflow.models.pool import Pool
    from airflow.utils.session import create_session

    with create_session() as session:  # resized by the user: left alone by the next run
        Pool.create_or_update_pool(name, slots=9, description="mine", include_deferred=False, session=session)
    get_listener_manager().hook.on_dag_run_running(dag_run=dag_run, msg="started")
    assert _pool(name) == (9, False)


def test_in_the_schedulers_session_and_can_be_turned_off(airflow_db, monkeypatch):
    from airflow.models.pool import Pool
    from airflow.utils.session import create_session

    from airflow_cja_audiences.pools import create_missing_pools, on_dag_run_running

    with create_session() as session:
        assert create_missing_pools({"qs_pool_in_session"}, session) == ["qs_pool_in_session"]
        assert Pool.get_pool("qs_pool_in_session", session=session) is not None  # visible before the commit
        assert create_missing_pools({"qs_pool_in_session"}, session) == []
    monkeypatch.setenv("AIRFLOW__CJA_AUDIENCES__CREATE_MISSING_POOLS", "False")
    on_dag_run_running(dag_run=SimpleNamespace(dag=_dag("qs_pool_not_wanted"), dag_id="x"), msg="started")
    assert _pool("qs_pool_not_wanted") is None


def test_every_query_service_session_is_in_the_pool_and_the_defaults_stay_below_the_licence():
    """Adobe refuses a session past the org's licensed ones ("Session Limit Reached", 5 in the smallest
    licence): every task that opens a session runs in the pool (one session each at a time), and the
    pool the plugin creates, like the one docker-compose creates, is smaller than 5."""
    import re
    from pathlib import Path

    dag = _dag("qs_pool_b")
    sessions = {
        "resolve_audiences",
        "check_export_read",
        "prepare_snapshot",
        "load_snapshot",
        "prepare_events",
        "load_events",
    }
    pooled = {t.task_id for t in dag.tasks if t.pool == "qs_pool_b"}
    assert sessions & {t.task_id for t in dag.tasks} <= pooled, pooled
    assert DEFAULT_POOL_SLOTS < QUERY_SERVICE_SESSIONS_PER_ORG
    compose = (Path(__file__).parents[2] / "docker-compose.yaml").read_text()
    defaults = re.findall(r"CJA_AUDIENCES_QS_POOL_SLOTS:-(\d+)", compose)
    assert defaults and all(int(d) < QUERY_SERVICE_SESSIONS_PER_ORG for d in defaults), defaults
