"""Run refresh DAG runs in a separate process against the emulator, and read what they did.

A :class:`Pipeline` is one refresh job (one DAG) under test. Each run executes in a driver
process (``driver.py``) whose combined output is the run's task log, so a test can SIGKILL the
process that executes a task at a chosen moment, resume the run as Airflow would retry it, count
the hooks' retries per API route from the log and search the log for secrets.

Plain helpers (no pytest import): the figures script uses them too.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

from airflow_cja_audiences.config import RefreshJob
from airflow_cja_audiences.dag_factory import dag_id_for

import polling

DRIVER = Path(__file__).with_name("driver.py")
# The figures script sets this: every case runs. By default (make test) a representative subset
# runs, so the suite takes a few minutes; each test says which of its cases are in it.
FULL = os.environ.get("CJA_RELIABILITY_FULL") == "1"
RESULT_PREFIX = "DRIVER-RESULT "
# The hooks' retry warning (hooks/platform.py): "<route>: attempt 2/8 failed (...); retrying in 0.1 s".
T = TypeVar("T")
_RETRY = re.compile(r"\] (?P<route>[A-Za-z0-9_.]+): attempt (?P<attempt>\d+)/(?P<of>\d+) failed")


def pick(cases: list[T], quick: Callable[[T], bool]) -> list[T]:
    """All ``cases`` under ``CJA_RELIABILITY_FULL=1``, else those ``quick`` selects."""
    return list(cases) if FULL else [case for case in cases if quick(case)]


def poll(condition: Callable[[], Any], *, timeout: float, interval: float = 0.05, what: str) -> Any:
    """:func:`polling.poll`, checking often (the crash matrix waits for short windows)."""
    return polling.poll(condition, timeout=timeout, interval=interval, what=what)


def logical_date(days_ago: int = 0) -> datetime:
    """The start of a past daily interval (02:00 UTC), as the test DAGs are scheduled."""
    end = datetime.now(timezone.utc).replace(hour=2, minute=0, second=0, microsecond=0)
    if end > datetime.now(timezone.utc):
        end -= timedelta(days=1)
    return end - timedelta(days=days_ago + 1)


@dataclass
class RunOutcome:
    """One driver process: its final state (None when it was killed), output and duration."""

    state: str | None
    seconds: float
    log: str
    run_id: str | None = None
    tasks: dict[str, str] = field(default_factory=dict)
    killed: list[str] = field(default_factory=list)

    @property
    def retries(self) -> Counter[str]:
        """Retries per API route, from the hooks' warnings (sync calls, triggers and creates)."""
        return Counter(m["route"] for m in _RETRY.finditer(self.log))

    @property
    def max_attempt(self) -> int:
        """The highest attempt number any single call needed (1 = no call was retried)."""
        return max((int(m["attempt"]) + 1 for m in _RETRY.finditer(self.log)), default=1)

    def task_log(self, task_id: str) -> str:
        """The log lines of one task (every try; a mapped task's every index)."""
        sections = re.split(r"(?=\[DAG TEST\] starting task_id=)", self.log)
        return "".join(
            s for s in sections if re.match(rf"\[DAG TEST\] starting task_id={re.escape(task_id)}\b", s)
        )

    def failed_tasks(self) -> list[str]:
        return sorted(t for t, s in self.tasks.items() if s in ("failed", "upstream_failed"))


class DriverProcess:
    """A running driver: wait for it, or kill it the way a crashed worker dies."""

    def __init__(self, command: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.log_path = log_path
        self.started = time.monotonic()
        with log_path.open("wb") as out:
            self.popen = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float = 300) -> RunOutcome:
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"the DAG run did not finish within {timeout:.0f} s; log: {self.log_path}"
            ) from None
        seconds = time.monotonic() - self.started
        text = self.log()
        result = next(
            (
                json.loads(line[len(RESULT_PREFIX) :])
                for line in reversed(text.splitlines())
                if line.startswith(RESULT_PREFIX)
            ),
            None,
        )
        if result is None:
            raise AssertionError(
                f"the driver exited with {self.popen.returncode} without a result:\n{text[-6000:]}"
            )
        return RunOutcome(
            state=result["state"],
            seconds=seconds,
            log=text,
            run_id=result["run_id"],
            tasks=result["tasks"],
            killed=result["killed"],
        )

    def kill(self) -> RunOutcome:
        """SIGKILL the process (and anything it started): no cleanup, no ``on_kill``, no ``finally``."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(timeout=30)
        return RunOutcome(state=None, seconds=time.monotonic() - self.started, log=self.log())


class Pipeline:
    """One refresh job under test: its jobs file in the session's DAG folder, runs in driver processes.

    :param write_jobs: writes the jobs file the DAG file reads and returns the DAG (the
        ``dags_folder`` fixture); called once here.
    """

    def __init__(self, job: RefreshJob, write_jobs: Callable[..., Any], workdir: Path | None = None) -> None:
        self.job = job
        self.dag = write_jobs(job)
        self.dag_id = dag_id_for(job)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="cja-reliability-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._drivers: list[DriverProcess] = []

    def start(self, when: datetime, *, mode: str = "run", conf: dict | None = None) -> DriverProcess:
        command = [
            sys.executable,
            str(DRIVER),
            mode,
            "--dag-id",
            self.dag_id,
            "--logical-date",
            when.isoformat(),
        ]
        if conf:
            command += ["--conf", json.dumps(conf)]
        log = self.workdir / f"run-{len(self._drivers) + 1:02d}-{mode}.log"
        self._drivers.append(DriverProcess(command, log, os.environ.copy()))
        return self._drivers[-1]

    def close(self) -> None:
        """Kill any driver still running (a test that failed between starting and killing one)."""
        for driver in self._drivers:
            if driver.popen.poll() is None:
                driver.kill()

    def run(self, when: datetime, *, conf: dict | None = None, timeout: float = 300) -> RunOutcome:
        return self.start(when, conf=conf).wait(timeout)

    def resume(self, when: datetime, timeout: float = 300) -> RunOutcome:
        """Retry the killed tasks of the run at ``when`` and drive the run to its end."""
        return self.start(when, mode="resume").wait(timeout)

    # ---------------------------------------------------------------- what the run left in Airflow

    def xcom(self, run_id: str, task_id: str, key: str = "return_value") -> Any:
        from sqlalchemy import select

        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        with create_session() as session:
            raw = session.scalar(
                select(XComModel.value).where(
                    XComModel.dag_id == self.dag_id,
                    XComModel.run_id == run_id,
                    XComModel.task_id == task_id,
                    XComModel.key == key,
                    XComModel.map_index == -1,
                )
            )
        return None if raw is None else XComModel.deserialize_value(type("X", (), {"value": raw})())

    def task_retries(self, run_id: str) -> int:
        """How many task retries the run needed (tries beyond the first, of the tasks that ran)."""
        return sum(max(0, tries - 1) for tries in self.try_numbers(run_id).values())

    def try_numbers(self, run_id: str) -> dict[str, int]:
        """Task (``task[map_index]`` when mapped) -> its latest try number (0: it never ran)."""
        from sqlalchemy import select

        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session

        with create_session() as session:
            rows = session.execute(
                select(TaskInstance.task_id, TaskInstance.map_index, TaskInstance.try_number).where(
                    TaskInstance.dag_id == self.dag_id, TaskInstance.run_id == run_id
                )
            ).all()
        return {(t if m < 0 else f"{t}[{m}]"): n for t, m, n in rows}
