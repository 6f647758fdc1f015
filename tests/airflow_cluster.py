"""A real Airflow deployment on this machine, for tests: the docker-compose topology, natively.

PostgreSQL is the metadata DB (a fresh database per cluster), Redis the Celery broker, and every
Airflow component is its own ``airflow`` process under a temporary ``AIRFLOW_HOME``: api-server,
scheduler, dag-processor, triggerer and N Celery workers (or the scheduler's LocalExecutor). Plain
helpers, no pytest import, so any suite (distributed, reliability crash matrices) can build on it::

    with AirflowCluster(ClusterSpec(dags_folder=..., env=conn_env, workers=2)) as cluster:
        run_id = cluster.trigger("cja_audiences__job")
        assert cluster.wait_for_run("cja_audiences__job", run_id) == "success"
        tis = cluster.task_instances("cja_audiences__job", run_id)

Isolation from other clusters on the same machine (another engineer's tests may run at the same
time): own database, own Celery queue, own ports, own ``AIRFLOW_HOME``. Every process is started in
its own session and stopped by its process group (SIGTERM, then SIGKILL); :meth:`stop` also runs
when start-up fails half way.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

import polling

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
PG_ADMIN_DSN = os.environ.get("CJA_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
REDIS_HOST, REDIS_PORT = "127.0.0.1", int(os.environ.get("CJA_TEST_REDIS_PORT", "6379"))
TERMINAL_RUN_STATES = ("success", "failed")


class ClusterError(RuntimeError):
    """Start-up or a wait failed; the message says which and where the logs are."""


def services_unavailable() -> str | None:
    """Why the cluster cannot run here (no PostgreSQL or Redis on localhost), or None."""
    import psycopg2

    try:
        psycopg2.connect(PG_ADMIN_DSN, connect_timeout=3).close()
    except psycopg2.Error as exc:
        return f"PostgreSQL is not reachable ({PG_ADMIN_DSN}): {str(exc).strip()}"
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=3) as sock:
            sock.sendall(b"PING\r\n")
            if not sock.recv(64).startswith(b"+PONG"):
                return f"{REDIS_HOST}:{REDIS_PORT} does not answer PING like Redis"
    except OSError as exc:
        return f"Redis is not reachable at {REDIS_HOST}:{REDIS_PORT}: {exc}"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def poll(
    condition: Callable[[], Any], *, timeout: float, interval: float = 0.5, what: str = "condition"
) -> Any:
    """:func:`polling.poll` raising :class:`ClusterError` (the harness's own failures)."""
    return polling.poll(condition, timeout=timeout, interval=interval, what=what, error=ClusterError)


@dataclass
class ClusterSpec:
    """What to run. ``env`` is added to every process (connections, ``CJA_AUDIENCES_CONFIG``...)."""

    dags_folder: Path
    env: dict[str, str] = field(default_factory=dict)
    executor: str = "CeleryExecutor"  # or "LocalExecutor" (no workers; the scheduler runs tasks)
    workers: int = 2
    worker_concurrency: int = 4
    pools: dict[str, int] = field(default_factory=dict)
    dags_paused_at_creation: bool = True


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path


class AirflowApi:
    """The REST API of one Airflow api-server, as a SimpleAuthManager user: the helpers tests drive
    a deployment with (trigger, wait, read task instances). :class:`AirflowCluster` is one; a test of
    another deployment (the docker-compose stack) makes its own with the api-server's URL and login."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base_url = base_url
        self._username = username
        self._password = password
        self._session = requests.Session()

    def check_alive(self) -> None:
        """Raise when the deployment died (called on every poll); subclasses know how to tell."""

    def token(self) -> str:
        """A JWT from the SimpleAuthManager (``POST /auth/token``), cached on the session."""
        if "Authorization" not in self._session.headers:
            response = requests.post(
                f"{self.base_url}/auth/token",
                json={"username": self._username, "password": self._password},
                timeout=30,
            )
            response.raise_for_status()
            self._session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"
        return self._session.headers["Authorization"].split(" ", 1)[1]

    def api(self, method: str, path: str, *, expect: int | tuple[int, ...] = (200,), **kwargs: Any) -> Any:
        """Call the api-server (``/api/v2/...`` or ``/ui/...``) as the user; return the JSON body."""
        self.token()
        kwargs.setdefault("timeout", 60)
        response = self._session.request(method, f"{self.base_url}{path}", **kwargs)
        expected = (expect,) if isinstance(expect, int) else expect
        if response.status_code not in expected:
            raise ClusterError(f"{method} {path} -> {response.status_code}: {response.text[:2000]}")
        return (
            response.json()
            if response.content and "json" in response.headers.get("content-type", "")
            else response.text
        )

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> dict:
        """Wait until the dag-processor has parsed and serialized ``dag_id``; fail on an import error."""

        def parsed() -> dict | None:
            self.check_alive()
            errors = self.api("GET", "/api/v2/importErrors")["import_errors"]
            if errors:
                raise ClusterError(f"DAG import errors: {json.dumps(errors, indent=1)[:4000]}")
            response = self._session.get(f"{self.base_url}/api/v2/dags/{dag_id}", timeout=30)
            return response.json() if response.status_code == 200 else None

        return poll(parsed, timeout=timeout, interval=1.0, what=f"DAG {dag_id} to be parsed")

    def set_paused(self, dag_id: str, paused: bool) -> dict:
        return self.api("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": paused})

    def trigger(self, dag_id: str, *, conf: dict | None = None, logical_date: str | None = None) -> str:
        """``POST /api/v2/dags/{dag_id}/dagRuns``; returns the run id."""
        body = {"logical_date": logical_date, "conf": conf or {}}
        return self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body)["dag_run_id"]

    def dag_runs(self, dag_id: str, **params: Any) -> list[dict]:
        return self.api(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns", params={"limit": 100, "order_by": "id", **params}
        )["dag_runs"]

    def dag_run(self, dag_id: str, run_id: str) -> dict:
        return self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")

    def wait_for_run(
        self, dag_id: str, run_id: str, timeout: float = 300, on_poll: Callable[[], None] | None = None
    ) -> str:
        """Wait until the run is success or failed; return that state. ``on_poll`` runs each time."""

        def finished() -> str | None:
            self.check_alive()
            if on_poll is not None:
                on_poll()
            state = self.dag_run(dag_id, run_id)["state"]
            return state if state in TERMINAL_RUN_STATES else None

        return poll(finished, timeout=timeout, interval=1.0, what=f"run {run_id} of {dag_id} to finish")

    def wait_for_runs(self, dag_id: str, run_ids: Iterable[str], timeout: float = 300) -> dict[str, str]:
        pending, states = set(run_ids), {}
        deadline = time.monotonic() + timeout
        for run_id in sorted(pending):
            states[run_id] = self.wait_for_run(dag_id, run_id, timeout=max(1.0, deadline - time.monotonic()))
        return states

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.api(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000}
        )["task_instances"]

    def task_instance(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict:
        suffix = f"/{map_index}" if map_index >= 0 else ""
        return self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}{suffix}")

    def wait_for_task(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        states: Iterable[str],
        *,
        map_index: int = -1,
        timeout: float = 120,
    ) -> dict:
        """Wait until the task instance is in one of ``states``; return it (REST API shape)."""
        wanted = set(states)

        def reached() -> dict | None:
            self.check_alive()
            ti = self.task_instance(dag_id, run_id, task_id, map_index)
            return ti if ti["state"] in wanted else None

        return poll(
            reached, timeout=timeout, interval=0.2, what=f"{task_id}[{map_index}] of {run_id} in {wanted}"
        )

    def runs_report(self, runs: Iterable[tuple[str, str]], logs_dir: Path) -> list[str]:
        """For a failing test: each run's task instance states, and the end of its failed tasks' log
        files (``dag_id=/run_id=/task_id=/.../attempt=N.log`` under ``logs_dir``)."""
        out = []
        for dag_id, run_id in runs:
            try:
                tis = self.task_instances(dag_id, run_id)
            except Exception as exc:  # noqa: BLE001 - diagnostics must not hide the real failure
                out.append(f"(task instances of {run_id} unavailable: {exc})")
                continue
            out.append(f"----- {dag_id} {run_id}: " + ", ".join(f"{ti_name(t)}={t['state']}" for t in tis))
            base = logs_dir / f"dag_id={dag_id}" / f"run_id={run_id}"
            for ti in tis:
                if ti["state"] in ("failed", "upstream_failed", "up_for_retry"):
                    for path in sorted(base.glob(f"task_id={ti['task_id']}/**/attempt=*")):
                        out.append(
                            f"=== {path.relative_to(logs_dir)}\n{path.read_text(errors='replace')[-6000:]}"
                        )
        return out

    def xcom(
        self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1
    ) -> Any:
        return self.api(
            "GET",
            f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
            params={"map_index": map_index, "deserialize": True},
        )["value"]


class AirflowCluster(AirflowApi):
    """Start, drive and stop one Airflow deployment (see the module docstring)."""

    def __init__(self, spec: ClusterSpec, workdir: Path | None = None) -> None:
        self.spec = spec
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="cja-airflow-cluster-"))
        self.home = self.workdir / "airflow-home"
        self.logs = self.workdir / "process-logs"
        tag = uuid.uuid4().hex[:10]
        self.database = f"cja_audiences_test_{tag}"
        self.queue = f"cja-audiences-{tag}"
        self.api_port = free_port()
        # Log servers are not used (every process runs with --skip-serve-logs and the api-server reads
        # the files under AIRFLOW_HOME), but their fixed default ports would collide between clusters.
        self._log_ports = (free_port(), free_port())
        super().__init__(f"http://127.0.0.1:{self.api_port}", "admin", secrets.token_urlsafe(12))
        self.processes: dict[str, Process] = {}
        self._db_created = False

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """The environment every Airflow process of this cluster runs with."""
        db = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{self.database}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__") and k != "AIRFLOW_CONFIG"}
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__EXECUTOR": self.spec.executor,
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.spec.dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": str(self.spec.dags_paused_at_creation),
                "AIRFLOW__CORE__FERNET_KEY": _fernet_key(self.workdir),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db,
                "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/0",
                "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://postgres@127.0.0.1:5432/{self.database}",
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.spec.worker_concurrency),
                # Our own queue: tasks of another cluster sharing this Redis never reach our workers.
                "AIRFLOW__OPERATORS__DEFAULT_QUEUE": self.queue,
                # Workers and the scheduler reach the execution API here (the default :8080 is wrong).
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API__BASE_URL": self.base_url,
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                "AIRFLOW__API_AUTH__JWT_SECRET": _secret(self.workdir, "jwt"),
                "AIRFLOW__API_AUTH__JWT_ISSUER": "cja-audiences-test-cluster",
                "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
                # Fixed ports 8793/8794/8974 would collide between workers and between clusters.
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self._log_ports[0]),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self._log_ports[1]),
                # Quicker reactions than production defaults, so tests stay short.
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
                "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "300",
                "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
                # The task supervisor notices its task process has exited at its next wake-up, at most this
                # many seconds later (default 5): that much worker-slot time is added to every task.
                "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
            }
        )
        env.update(self.spec.env)
        return env

    def start(self, timeout: float = 240.0) -> AirflowCluster:
        """Create the database, migrate it, start every component and wait until all are up."""
        try:
            self._start(timeout)
        except BaseException:
            self.dump_logs("start-up failed")
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.home / "passwords.json").write_text(json.dumps({"admin": self._password}))
        self._create_database()
        self.cli("db", "migrate", timeout=300)
        for pool, slots in self.spec.pools.items():
            self.cli("pools", "set", pool, str(slots), "test pool")
        self._spawn(
            "api-server", "api-server", "--host", "127.0.0.1", "--port", str(self.api_port), "--workers", "1"
        )
        self._spawn("scheduler", "scheduler", "--skip-serve-logs")
        self._spawn("dag-processor", "dag-processor")
        self._spawn("triggerer", "triggerer", "--skip-serve-logs")
        if self.spec.executor == "CeleryExecutor":
            for n in range(1, self.spec.workers + 1):
                self._spawn(
                    f"worker-{n}",
                    "celery",
                    "worker",
                    "--celery-hostname",
                    f"worker-{n}@%h",
                    "--queues",
                    self.queue,
                    "--concurrency",
                    str(self.spec.worker_concurrency),
                    "--skip-serve-logs",
                    "--without-mingle",
                    "--without-gossip",
                )
        poll(
            self._healthy,
            timeout=max(5.0, deadline - time.monotonic()),
            interval=1.0,
            what="api-server, scheduler, dag-processor and triggerer to report healthy",
        )
        for name in self.worker_names:
            poll(
                lambda name=name: " ready." in self.process_log(name),
                timeout=max(5.0, deadline - time.monotonic()),
                interval=0.5,
                what=f"{name} to be ready",
            )

    def _healthy(self) -> bool:
        for process in self.processes.values():
            if process.popen.poll() is not None:
                raise ClusterError(
                    f"{process.name} exited with code {process.popen.returncode} during start-up"
                )
        try:
            health = requests.get(f"{self.base_url}/api/v2/monitor/health", timeout=5).json()
        except (requests.RequestException, ValueError):
            return False
        parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
        return all((health.get(p) or {}).get("status") == "healthy" for p in parts)

    def stop(self) -> None:
        """Stop every process (its whole process group), then drop the database. Safe to call twice."""
        for process in reversed(list(self.processes.values())):
            _signal_group(process.popen, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in self.processes.values():
            try:
                process.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(process.popen, signal.SIGKILL)  # stragglers of the group (task processes)
            try:
                process.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                print(f"[cluster] {process.name} (pid {process.popen.pid}) did not exit", file=sys.stderr)
        self.processes.clear()
        self._session.close()
        if self._db_created:
            self._drop_database()

    def __enter__(self) -> AirflowCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, name: str, *args: str) -> Process:
        log = self.logs / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [AIRFLOW, *args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                start_new_session=True,
            )
        self.processes[name] = Process(name, popen, log)
        return self.processes[name]

    def _create_database(self) -> None:
        self._admin_statement(f'CREATE DATABASE "{self.database}"')
        self._db_created = True

    def _drop_database(self) -> None:
        self._admin_statement(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        self._db_created = False

    @staticmethod
    def _admin_statement(sql: str) -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE need it) as the admin user."""
        import psycopg2

        conn = psycopg2.connect(PG_ADMIN_DSN)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    # -- processes and logs ----------------------------------------------------------------------
    @property
    def worker_names(self) -> list[str]:
        return [n for n in self.processes if n.startswith("worker-")]

    def process_log(self, name: str) -> str:
        return self.processes[name].log.read_text(errors="replace")

    def check_alive(self) -> None:
        dead = {p.name: p.popen.returncode for p in self.processes.values() if p.popen.poll() is not None}
        if dead:
            raise ClusterError(f"Airflow processes exited: {dead}")

    def cli(self, *args: str, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``airflow <args>`` against this cluster; raise with its output when it fails."""
        result = subprocess.run(
            [AIRFLOW, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
        )
        if check and result.returncode != 0:
            raise ClusterError(
                f"airflow {' '.join(args)} exited with {result.returncode}:\n"
                f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            )
        return result

    def task_log_files(self, dag_id: str, run_id: str, task_id: str | None = None) -> list[Path]:
        """Task log files (``attempt=N.log``, and the triggerer's ``attempt=N.log.trigger.*.log``)."""
        base = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
        pattern = f"task_id={task_id}/**/attempt=*" if task_id else "task_id=*/**/attempt=*"
        return sorted(base.glob(pattern))

    def task_log(self, dag_id: str, run_id: str, task_id: str) -> str:
        return "\n".join(
            f"=== {p.relative_to(self.home / 'logs')}\n{p.read_text(errors='replace')}"
            for p in self.task_log_files(dag_id, run_id, task_id)
        )

    def task_log_events(self, dag_id: str, run_id: str, task_id: str, *, trigger: bool = False) -> list[dict]:
        """The structured (JSON lines) events of a task's log files: the worker's, or the triggerer's."""
        events = []
        for path in self.task_log_files(dag_id, run_id, task_id):
            if (".log.trigger." in path.name) != trigger:
                continue
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("{"):
                    event = json.loads(line)
                    event["time"] = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
                    events.append(event)
        return events

    def dump_logs(self, reason: str, *, tail: int = 120, runs: Iterable[tuple[str, str]] = ()) -> None:
        """Print the end of every process log and the logs of failed tasks (for a failing test)."""
        out = [f"\n===== Airflow cluster logs ({reason}); everything is under {self.workdir} ====="]
        for name, process in self.processes.items():
            lines = process.log.read_text(errors="replace").splitlines() if process.log.exists() else []
            out.append(f"----- {name} (last {tail} of {len(lines)} lines) -----")
            out.extend(lines[-tail:])
        out.extend(self.runs_report(runs, self.home / "logs"))
        print("\n".join(out), file=sys.stderr, flush=True)

    # -- processes by pid --------------------------------------------------------------------------
    def kill_task_process(
        self, dag_id: str, run_id: str, task_id: str, map_index: int = -1, sig: int = signal.SIGKILL
    ) -> int:
        """Signal the process running a task instance now (crash tests); returns its pid.

        The pid comes from the task instance (``airflow worker -- <ti id>``); it must descend from
        one of this cluster's processes (worker > supervisor > task), so a foreign process is never
        signalled.
        """
        ti = self.wait_for_task(dag_id, run_id, task_id, ["running"], map_index=map_index)
        pid = int(ti["pid"])
        if not _descends_from(pid, {p.popen.pid for p in self.processes.values()}):
            raise ClusterError(f"pid {pid} of {task_id} is not a descendant of this cluster's processes")
        os.kill(pid, sig)
        return pid

    # -- Celery evidence -------------------------------------------------------------------------
    def worker_executions(self) -> list[Execution]:
        """Every task execution the Celery workers ran, read from the workers' own logs.

        A deferred task appears once per execution (its start, then each resume), possibly on
        different workers; ``finished`` is when the worker slot was released (None: still running).
        """
        executions: list[Execution] = []
        for name in self.worker_names:
            started: dict[str, Execution] = {}
            for line in self.process_log(name).splitlines():
                if (m := _WORKLOAD.search(line)) is not None:
                    started[m["celery"]] = execution = Execution(
                        worker=name,
                        celery_id=m["celery"],
                        dag_id=m["dag"],
                        run_id=m["run"],
                        task_id=m["task"],
                        map_index=int(m["map"]),
                        try_number=int(m["try"]),
                        started=_log_time(line),
                    )
                    executions.append(execution)
                elif (m := _WORKLOAD_DONE.search(line)) is not None and m["celery"] in started:
                    started[m["celery"]].finished = _log_time(line)
        return executions

    def tasks_per_worker(
        self, dag_id: str | None = None, run_ids: Iterable[str] | None = None
    ) -> dict[str, int]:
        """How many distinct task instance tries each worker executed (a deferred one once per worker)."""
        runs = set(run_ids) if run_ids is not None else None
        seen: dict[str, set] = {name: set() for name in self.worker_names}
        for e in self.worker_executions():
            if (dag_id is None or e.dag_id == dag_id) and (runs is None or e.run_id in runs):
                seen[e.worker].add((e.dag_id, e.run_id, e.task_id, e.map_index, e.try_number))
        return {name: len(keys) for name, keys in seen.items()}


@dataclass
class Execution:
    """One Celery task (``execute_workload``) that ran one try of one task instance."""

    worker: str
    celery_id: str
    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    try_number: int
    started: datetime
    finished: datetime | None = None


_WORKLOAD = re.compile(
    r"\[(?P<celery>[0-9a-f-]{36})\] Executing workload in Celery: .*?task_id='(?P<task>[^']+)'"
    r".*?dag_id='(?P<dag>[^']+)'.*?run_id='(?P<run>[^']+)'.*?try_number=(?P<try>\d+)"
    r".*?map_index=(?P<map>-?\d+)"
)
_WORKLOAD_DONE = re.compile(r"Task execute_workload\[(?P<celery>[0-9a-f-]{36})\] (succeeded|failed|raised)")


def _log_time(line: str) -> datetime:
    return datetime.fromisoformat(line.split(" ", 1)[0].replace("Z", "+00:00"))


def ti_name(ti: dict) -> str:
    """``task_id`` or ``task_id[map_index]`` of a task instance from the REST API."""
    return ti["task_id"] if ti["map_index"] < 0 else f"{ti['task_id']}[{ti['map_index']}]"


def _descends_from(pid: int, ancestors: set[int]) -> bool:
    """Whether ``pid``'s chain of parents (from /proc) reaches one of ``ancestors``."""
    while pid > 1:
        if pid in ancestors:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # field 4, after the parenthesised command name
    return False


def _signal_group(popen: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(
            popen.pid, sig
        )  # the group we created with start_new_session (our process and its children)
    except (ProcessLookupError, PermissionError):
        pass


def _secret(workdir: Path, name: str) -> str:
    path = workdir / f".{name}-secret"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32))
    return path.read_text()


def _fernet_key(workdir: Path) -> str:
    from cryptography.fernet import Fernet

    path = workdir / ".fernet-key"
    if not path.exists():
        path.write_text(Fernet.generate_key().decode())
    return path.read_text()
