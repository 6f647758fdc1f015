"""The Query Service pool exists before a refresh run needs it.

Airflow's scheduler never starts a task whose pool does not exist, and says so only in its own log:
a refresh run whose ``query_service_pool`` was not created would wait forever at its first
``load_*`` task. Neither a DAG file nor a task can create a pool in Airflow 3 (neither has database
access), the scheduler can: this provider's plugin registers a listener that, when a run of a DAG
using this package's operators starts, creates each pool they name that is missing, with
:data:`DEFAULT_POOL_SLOTS` slots, and logs a warning saying so (resize it with
``airflow pools set <name> <slots> <description>``). Set ``[cja_audiences] create_missing_pools =
False`` (``AIRFLOW__CJA_AUDIENCES__CREATE_MISSING_POOLS=False``) to create pools yourself only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

#: Query Service sessions an org may have at once in the smallest licence Adobe names (guardrails:
#: "Concurrent Query Service users", +5 per ad hoc query user add-on; past it "Session Limit Reached").
QUERY_SERVICE_SESSIONS_PER_ORG = 5
#: Slots of a pool the plugin creates. Every task that opens a Query Service session (resolve_audiences'
#: check, prepare_*, load_*) runs in the pool and holds one session at a time, so the pool bounds
#: Airflow's sessions; one below the licence leaves a session for people and other clients (a refused
#: connection is retried with backoff, but a pool above the licence would make that the normal case).
DEFAULT_POOL_SLOTS = 4
PACKAGE = "airflow_cja_audiences"


def our_pools(tasks: Iterable[Any]) -> set[str]:
    """Pools named by this package's tasks (operators or their serialized form), default pool aside."""
    pools = set()
    for task in tasks:
        module = getattr(task, "_task_module", None) or type(task).__module__
        pool = getattr(task, "pool", None)
        if module.startswith(PACKAGE) and isinstance(pool, str) and pool and pool != "default_pool":
            pools.add(pool)
    return pools


def create_missing_pools(names: Iterable[str], session: Any, *, dag_id: str = "") -> list[str]:
    """Create each named pool that does not exist (in ``session``, committed by its owner)."""
    from sqlalchemy import select

    from airflow.models.pool import Pool

    created = []
    for name in sorted(set(names)):
        if session.scalar(select(Pool.id).where(Pool.pool == name)) is None:
            session.add(
                Pool(
                    pool=name,
                    slots=DEFAULT_POOL_SLOTS,
                    include_deferred=False,
                    description="Query Service queries at once (created by airflow-cja-audiences)",
                )
            )
            created.append(name)
            log.warning(
                "Pool %r did not exist; created it with %d slots for the load tasks of %s. Resize it to your "
                "Query Service concurrency: airflow pools set %s <slots> 'AEP Query Service'",
                name,
                DEFAULT_POOL_SLOTS,
                dag_id or "a refresh DAG",
                name,
            )
    if created:
        session.flush()
    return created


def _enabled() -> bool:
    from airflow.configuration import conf

    return conf.getboolean("cja_audiences", "create_missing_pools", fallback=True)


try:
    from airflow.listeners import hookimpl
except ImportError:  # the task SDK alone (a worker without airflow-core): no scheduler here
    hookimpl = None

if hookimpl is not None:

    @hookimpl
    def on_dag_run_running(dag_run: Any, msg: str) -> None:
        """Called by the scheduler (with its session) when a run starts, before any task is queued."""
        dag = getattr(dag_run, "dag", None)
        if dag is None or not _enabled():
            return
        pools = our_pools(getattr(dag, "tasks", ()))
        if not pools:
            return
        from sqlalchemy.orm import object_session
        from sqlalchemy.orm.exc import UnmappedInstanceError

        try:
            session = object_session(dag_run)
        except UnmappedInstanceError:
            session = None
        try:
            if session is not None:
                create_missing_pools(pools, session, dag_id=dag_run.dag_id)
            else:
                from airflow.utils.session import create_session

                with create_session() as own:
                    create_missing_pools(pools, own, dag_id=dag_run.dag_id)
        except Exception:
            log.exception(
                "Could not create the pools %s of %s; create them with 'airflow pools set'",
                sorted(pools),
                dag_run.dag_id,
            )


def _plugin_class() -> type:
    try:
        from airflow.plugins_manager import AirflowPlugin
    except ImportError:  # the task SDK alone
        from airflow.sdk.plugins_manager import AirflowPlugin  # type: ignore[no-redef]
    import sys

    class CjaAudiencesPlugin(AirflowPlugin):
        """Registers :func:`on_dag_run_running` (creates missing Query Service pools)."""

        name = "cja_audiences"
        listeners = [sys.modules[__name__]]

    return CjaAudiencesPlugin


CjaAudiencesPlugin = _plugin_class()
