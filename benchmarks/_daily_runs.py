"""Consecutive daily runs of the example job against the emulator, for the benchmarks that measure
what several runs leave behind (``event_history``, ``snapshot_swap``).

One copy of: the emulator in a subprocess (``demo.Emulator``), a throw-away ``AIRFLOW_HOME`` with a
SQLite metadata DB and the Adobe connection pointed at the emulator, the Query Service pool, and the
loop that sets the emulator's clock a little after each interval's end before ``airflow dags test``
runs it (a scheduler starts a run a little after its tick; the clock keeps running, as AEP's does).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import demo
from aep_emulator.connection import airflow_connection_env

#: The example job (``dags/cja_audiences.yaml``) whose DAG ``demo.DAG_ID`` is.
JOB_ID = "luma_loyalty"


def iso(instant: datetime) -> str:
    """The emulator's clock format: UTC, seconds, a literal ``Z``."""
    return instant.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class DailyRuns:
    emulator: demo.Emulator
    workdir: Path
    env: dict[str, str]

    def run(self, days: int, delay_s: int) -> list[datetime]:
        """Run the DAG for the last ``days`` daily intervals (oldest first), the emulator's clock set
        ``delay_s`` seconds after each interval's end; returns the interval ends. Raises (naming the
        run's log file) when a run fails."""
        # Data intervals end at 02:00 UTC (the logical date `dags test` is given is the interval's end).
        today = datetime.now(timezone.utc).replace(hour=2, minute=0, second=0, microsecond=0)
        if today > datetime.now(timezone.utc):
            today -= timedelta(days=1)
        ends = [today - timedelta(days=k) for k in range(days - 1, -1, -1)]
        for k, end in enumerate(ends):
            self.emulator.admin("POST", "/emulator/clock", {"set": iso(end + timedelta(seconds=delay_s))})
            demo._run_dag(self.env, end, self.workdir / f"run{k + 1}.log")
        return ends


@contextmanager
def daily_runs(prefix: str, profiles: int) -> Iterator[DailyRuns]:
    """The emulator with ``profiles`` profiles and an Airflow home ready for ``DailyRuns.run``.

    The emulator is stopped whatever happens; the work directory (emulator and run logs) is removed
    only when the block succeeded, so that the log a failure names is still there to read."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    emulator = None
    try:
        emulator = demo.Emulator(workdir, profiles)
        home = workdir / "airflow"
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(demo.ROOT / "dags"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            **airflow_connection_env("adobe_experience_platform_default", emulator.ready, demo.SECRET),
        }
        if demo._airflow(env, "db", "migrate", capture=True).returncode != 0:
            raise RuntimeError(f"airflow db migrate failed (AIRFLOW_HOME {home})")
        demo._airflow(env, "pools", "set", "cja_audiences_query_service", "4", "Query Service", capture=True)
        yield DailyRuns(emulator, workdir, env)
    finally:
        if emulator is not None:
            emulator.stop()
    shutil.rmtree(workdir, ignore_errors=True)
