"""docker-compose.yaml really started: the whole stack up on a Docker engine, driven end to end.

The test starts its own ``dockerd`` (own data root, exec root, pid file and socket; no iptables
rules, no default bridge, no IP forwarding: nothing on the host changes, and another engine on the
machine is left alone), builds stand-ins for the three upstream images with
``docker/build-standins.sh`` (no registry is reachable here; see the README's Docker section),
builds the project image from the real ``Dockerfile``, and runs ``docker-compose up`` on the real
``docker-compose.yaml`` with the variables a user may set (published ports on loopback, a UI
password, a Fernet key, a JWT secret, a smaller emulator). Then, through the api-server's REST API
on the published port: the Adobe connection test (and a wrong secret failing it), a triggered run
and the scheduled run to success, a two-interval backfill, and the emulator container's state
(datasets, live batches, snapshot and events) against its ground truth. Finally ``down -v``, its
images removed, its daemon stopped and its data root deleted.

Needs root, Debian's ``docker.io``, ``docker-compose`` and ``debootstrap`` (``.ci/run`` installs
them): skipped with the reason when they are missing or the engine cannot start, except under
``CI=true``, where that is a failure. The debootstrap tarball and the built stand-ins are cached
under ``CJA_STANDIN_CACHE`` (default /var/cache/cja-audiences-compose-test), keyed by what they are
built from, so a second run on one machine loads them instead of building them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from cryptography.fernet import Fernet

from airflow_cja_audiences.config import RefreshJob

from aep_truth import JobView
from airflow_cluster import AirflowApi, ClusterError, free_port, poll
from emulator_fixture import Credentials, RunningEmulator

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CACHE = os.environ.get("CJA_STANDIN_CACHE", "/var/cache/cja-audiences-compose-test")
CONN_ID = "adobe_experience_platform_default"
CONN_VAR = f"AIRFLOW_CONN_{CONN_ID.upper()}"
EMULATOR_ENV_FILE = ROOT / "docker" / "emulator.env"
JOBS_FILE = ROOT / "dags" / "cja_audiences.yaml"
PROFILES = 3000  # EMULATOR_PROFILES: the stack's default (100k) is for people, not for CI
SERVICES = (
    "postgres",
    "redis",
    "aep-emulator",
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-worker",
    "airflow-triggerer",
)
ONE_SHOT = {"airflow-init"}  # must exit 0; every other service must end up running and healthy


def _fail_or_skip(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the docker-compose stack: {reason}")
    pytest.skip(f"docker-compose stack test: {reason}")


def _tools() -> dict[str, str]:
    """The programs the test drives, or a skip (a failure under CI) naming what is missing."""
    if os.geteuid() != 0:
        _fail_or_skip("needs root to start its own Docker engine")
    found = {
        "dockerd": shutil.which("dockerd", path="/usr/sbin:/usr/bin:/sbin:/bin"),
        # The client shipped with that engine when there is one (same API version).
        "docker": "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else shutil.which("docker"),
        "docker-compose": shutil.which("docker-compose"),
        "debootstrap": shutil.which("debootstrap", path="/usr/sbin:/usr/bin:/sbin:/bin"),
    }
    missing = [name for name, path in found.items() if not path]
    if missing:
        _fail_or_skip(
            f"{', '.join(missing)} not installed (apt-get install docker.io docker-compose debootstrap)"
        )
    return found


class Engine:
    """One private ``dockerd``: started in its own session, stopped by its process group."""

    def __init__(self, tools: dict[str, str], workdir: Path) -> None:
        self.tools = tools
        self.data_root = workdir / "data-root"
        # Unix socket paths are short (108 bytes): the exec root (containerd's sockets) lives in /run.
        self.exec_root = Path(tempfile.mkdtemp(prefix="cja-dockerd-", dir="/run"))
        self.socket = self.exec_root / "docker.sock"
        self.log = workdir / "dockerd.log"
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}"}
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> str | None:
        """Start the daemon; None when it serves, else why not (with the end of its log)."""
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    self.tools["dockerd"],
                    "--data-root",
                    str(self.data_root),
                    "--exec-root",
                    str(self.exec_root),
                    "--pidfile",
                    str(self.exec_root / "dockerd.pid"),
                    "--host",
                    f"unix://{self.socket}",
                    # Leave the host's firewall, forwarding and docker0 alone: containers talk on the
                    # compose network's bridge, the host reaches them through docker-proxy on loopback,
                    # and builds use the host network.
                    "--bridge",
                    "none",
                    "--iptables=false",
                    "--ip-forward=false",
                    "--log-level",
                    "warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return f"dockerd exited with {self.process.returncode}: {self._log_tail()}"
            if self.docker("version", check=False, timeout=10).returncode == 0:
                return None
            time.sleep(0.5)
        return f"dockerd did not answer within {timeout:.0f} s: {self._log_tail()}"

    def _log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def docker(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [self.tools["docker"], *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise ClusterError(
                f"docker {' '.join(args)} exited with {result.returncode}:\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def stop(self) -> None:
        """Remove every image, stop the daemon (SIGTERM, then SIGKILL), delete its directories."""
        if self.process is not None and self.process.poll() is None:
            try:
                images = self.docker("images", "-aq", check=False, timeout=60).stdout.split()
                if images:
                    self.docker("rmi", "-f", *sorted(set(images)), check=False, timeout=300)
            finally:
                _signal_group(self.process, signal.SIGTERM)
                try:
                    self.process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    _signal_group(self.process, signal.SIGKILL)
                    self.process.wait(timeout=30)
        # What the daemon leaves mounted (its network namespace file under the exec root) goes first.
        for mount in _mounts_under(self.exec_root, self.data_root):
            subprocess.run(["umount", "-l", mount], capture_output=True, timeout=30)
        shutil.rmtree(self.data_root, ignore_errors=True)
        shutil.rmtree(self.exec_root, ignore_errors=True)


def _mounts_under(*roots: Path) -> list[str]:
    """Mount points below ``roots`` (deepest first), from /proc/self/mounts."""
    points = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    prefixes = tuple(f"{root}/" for root in roots)
    return sorted((p for p in points if p.startswith(prefixes)), key=len, reverse=True)


def _signal_group(popen: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(popen.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Stack(AirflowApi):
    """The compose project: its compose command line, its containers, and its api-server's REST API."""

    def __init__(self, engine: Engine, workdir: Path) -> None:
        self.engine = engine
        self.project = f"cjacompose{secrets.token_hex(4)}"
        self.proj_dir = workdir / "project"  # AIRFLOW_PROJ_DIR: dags, logs, config, plugins
        self.api_port, self.emulator_port = free_port(), free_port()
        password = secrets.token_urlsafe(16)
        # Only what the test sets reaches compose's variable substitution (not this session's AIRFLOW_*).
        clean = {
            k: v
            for k, v in engine.env.items()
            if not k.startswith(("AIRFLOW", "CJA_AUDIENCES", "COMPOSE_", "_AIRFLOW", "EMULATOR_"))
        }
        self.env = {
            **clean,
            "AIRFLOW_PROJ_DIR": str(self.proj_dir),
            "AIRFLOW_API_PORT": f"127.0.0.1:{self.api_port}",
            "EMULATOR_PORT": f"127.0.0.1:{self.emulator_port}",
            "EMULATOR_PROFILES": str(PROFILES),
            "_AIRFLOW_WWW_USER_PASSWORD": password,
            "FERNET_KEY": Fernet.generate_key().decode(),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
        }
        super().__init__(f"http://127.0.0.1:{self.api_port}", "airflow", password)

    def compose(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        command = [
            self.engine.tools["docker-compose"],
            "--ansi",
            "never",
            "--project-directory",
            str(ROOT),
            "-f",
            str(ROOT / "docker-compose.yaml"),
            "-p",
            self.project,
            *args,
        ]
        result = subprocess.run(
            command,
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise ClusterError(
                f"docker-compose {' '.join(args)} exited with {result.returncode}:\n"
                f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            )
        return result

    def containers(self) -> dict[str, dict]:
        """service -> ``docker inspect`` of its container."""
        ids = self.compose("ps", "-q", timeout=60).stdout.split()
        if not ids:
            return {}
        inspected = json.loads(self.engine.docker("inspect", *ids, timeout=60).stdout)
        return {c["Config"]["Labels"]["com.docker.compose.service"]: c for c in inspected}

    def check_alive(self) -> None:
        """No long-running service exited or is restarting (called on every REST poll)."""
        bad = {
            name: c["State"]["Status"]
            for name, c in self.containers().items()
            if name not in ONE_SHOT and (c["State"]["Status"] != "running" or c["State"]["Restarting"])
        }
        if bad:
            raise ClusterError(f"compose services not running: {bad}")

    def healthy(self) -> bool:
        """Every service up: init exited 0, the others running and healthy; raise on a dead one."""
        containers = self.containers()
        for name, c in containers.items():
            state = c["State"]
            if name in ONE_SHOT:
                if state["Status"] == "exited" and state["ExitCode"] != 0:
                    raise ClusterError(f"{name} exited with {state['ExitCode']}")
            elif state["Status"] == "exited" or state.get("Health", {}).get("Status") == "unhealthy":
                raise ClusterError(f"{name} is {state['Status']} / {state.get('Health', {}).get('Status')}")
        missing = set(SERVICES) - set(containers)
        if missing:
            raise ClusterError(f"services without a container: {sorted(missing)}")
        return all(
            containers[n]["State"]["Status"] == "exited"
            if n in ONE_SHOT
            else containers[n]["State"].get("Health", {}).get("Status") == "healthy"
            for n in SERVICES
        )

    def read_file(self, service: str, path: str) -> str:
        """A file inside a service's container (``docker cp`` to stdout is a tar stream: use cat)."""
        container = self.containers()[service]["Id"]
        return self.engine.docker("exec", container, "cat", path, timeout=60).stdout

    def dump_logs(self, reason: str, runs: list[tuple[str, str]] = ()) -> None:
        out = [f"\n===== docker-compose stack logs ({reason}) ====="]
        result = self.compose("ps", check=False, timeout=60)
        out.append(result.stdout + result.stderr)
        result = self.compose("logs", "--no-color", "--tail", "150", check=False, timeout=120)
        out.append(result.stdout[-60000:] + result.stderr[-4000:])
        out.extend(self.runs_report(runs, self.proj_dir / "logs"))
        print("\n".join(out), file=sys.stderr, flush=True)


def _emulator_connection() -> dict:
    """The Adobe connection the stack runs with (docker/emulator.env), as Airflow's JSON form."""
    for line in EMULATOR_ENV_FILE.read_text().splitlines():
        if line.startswith(f"{CONN_VAR}="):
            return json.loads(line.split("=", 1)[1])
    raise AssertionError(f"{CONN_VAR} not in {EMULATOR_ENV_FILE}")


def _iso(instant: datetime) -> str:
    return instant.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _du(path: Path | str) -> str:
    # -x: not into the overlay mounts of running containers (each would count its image again)
    result = subprocess.run(["du", "-shx", str(path)], capture_output=True, text=True)
    return result.stdout.split("\t", 1)[0] if result.returncode == 0 else "?"


class Timer:
    """Wall time per phase of the test, printed as each ends."""

    def __init__(self) -> None:
        self.started = self.last = time.monotonic()
        self.phases: list[tuple[str, float]] = []

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.phases.append((name, now - self.last))
        self.last = now
        print(f"[compose] {name}: {self.phases[-1][1]:.0f} s", flush=True)

    def report(self) -> str:
        return (
            ", ".join(f"{name} {seconds:.0f} s" for name, seconds in self.phases)
            + f"; total {time.monotonic() - self.started:.0f} s"
        )


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    tools = _tools()
    timer = Timer()
    workdir = Path(tempfile.mkdtemp(prefix="cja-compose-test-", dir="/var/tmp"))
    engine = Engine(tools, workdir)
    stack = None
    try:
        reason = engine.start()
        if reason is not None:
            _fail_or_skip(f"the Docker engine did not start: {reason}")
        timer.lap("dockerd started")
        env = {**engine.env, "DOCKER": tools["docker"], "CJA_STANDIN_CACHE": CACHE}
        built = subprocess.run(
            [str(ROOT / "docker" / "build-standins.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            stdin=subprocess.DEVNULL,
        )
        assert built.returncode == 0, (
            f"docker/build-standins.sh failed:\n{built.stdout[-3000:]}\n{built.stderr[-6000:]}"
        )
        print(built.stderr.strip(), flush=True)
        timer.lap("stand-in images ready")
        # The project image, from the real Dockerfile, under the name the compose file uses by default.
        engine.docker(
            "build", "-q", "--network", "host", "-t", "airflow-cja-audiences:local", str(ROOT), timeout=900
        )
        timer.lap("project image built")

        stack = Stack(engine, workdir)
        (stack.proj_dir / "dags").mkdir(parents=True)
        for path in (ROOT / "dags").iterdir():
            if path.is_file():
                shutil.copy2(path, stack.proj_dir / "dags" / path.name)
        try:
            stack.compose("up", "-d", timeout=600)
            poll(stack.healthy, timeout=420, interval=2.0, what="every compose service to be healthy")
        except BaseException:
            stack.dump_logs("start-up failed")
            raise
        timer.lap("docker-compose up (all healthy)")
        stack.timer = timer
        yield stack
    finally:
        try:
            if stack is not None:
                print(
                    f"[compose] disk: engine data root {_du(engine.data_root)}; cache {CACHE} {_du(CACHE)}",
                    flush=True,
                )
                print(engine.docker("system", "df", check=False, timeout=60).stdout, flush=True)
                down = stack.compose("down", "-v", "--remove-orphans", check=False, timeout=300)
                if down.returncode != 0:
                    print(down.stdout + down.stderr, file=sys.stderr, flush=True)
        finally:
            engine.stop()
            shutil.rmtree(workdir, ignore_errors=True)
            timer.lap("down -v, images removed, engine stopped")
            print(f"[compose] wall time: {timer.report()}", flush=True)


def test_compose_stack_runs_the_refresh_dag_end_to_end(stack):
    job = RefreshJob.model_validate(yaml.safe_load(JOBS_FILE.read_text())["jobs"][0])
    dag_id = f"cja_audiences__{job.job_id}"
    runs: list[tuple[str, str]] = []
    try:
        _end_to_end(stack, job, dag_id, runs)
    except BaseException:
        stack.dump_logs("test failed", runs)
        raise


def _end_to_end(stack: Stack, job: RefreshJob, dag_id: str, runs: list[tuple[str, str]]) -> None:
    timer = stack.timer
    health = stack.api("GET", "/api/v2/monitor/health")
    assert all(
        health[p]["status"] == "healthy" for p in ("metadatabase", "scheduler", "triggerer", "dag_processor")
    )

    # The connection test runs in the api-server container: it reaches https://aep-emulator:8443 and
    # verifies the certificate with the CA bundle from the emulator's volume.
    conn = _emulator_connection()
    body = {
        "connection_id": CONN_ID,
        "conn_type": conn["conn_type"],
        "login": conn["login"],
        "password": conn["password"],
        "extra": json.dumps(conn["extra"]),
    }
    tested = stack.api("POST", "/api/v2/connections/test", json=body)
    assert tested["status"] is True, tested
    assert "Connected to AEP org" in tested["message"], tested
    wrong = stack.api("POST", "/api/v2/connections/test", json={**body, "password": "not-the-secret"})
    assert wrong["status"] is False, wrong

    # The emulator as the stack runs it, seen from here through its published port (the certificate
    # also names localhost), with its own CA bundle.
    ca_bundle = Path(stack.proj_dir) / "emulator-ca.pem"
    ca_bundle.write_text(stack.read_file("aep-emulator", conn["extra"]["ca_bundle"]))
    ready = json.loads(stack.read_file("aep-emulator", "/opt/airflow/emulator/ready.json"))
    emu = RunningEmulator(
        base_url=f"https://localhost:{stack.emulator_port}",
        ca_bundle=str(ca_bundle),
        pg_host=None,
        pg_port=None,
        ready=ready,
        credentials=Credentials(
            conn["login"], conn["password"], ready["org_id"], ready["sandbox"], ready["tenant"]
        ),
    )
    by_name = {a["name"]: a["id"] for a in emu.admin.state()["audiences"]}
    audiences = [a.id or by_name[a.name] for a in job.audiences]
    view = JobView(emu, job.job_id, audiences, ready["tenant"])
    timer.lap("connection test")

    # A run triggered through the REST API, the scheduled run the scheduler adds on unpause (the DAG
    # runs one of those at a time: max_active_runs=1), and meanwhile a backfill of the two intervals
    # before the scheduled one (POST /api/v2/backfills; backfill runs count against the backfill's
    # own max_active_runs, so they run alongside).
    stack.wait_for_dag(dag_id, timeout=120)
    assert stack.api("GET", f"/api/v2/dags/{dag_id}")["is_paused"] is True  # DAGS_ARE_PAUSED_AT_CREATION
    stack.set_paused(dag_id, False)
    manual = stack.trigger(dag_id)
    runs.append((dag_id, manual))
    scheduled_run = poll(
        lambda: next((r for r in stack.dag_runs(dag_id) if r["run_type"] == "scheduled"), None),
        timeout=60,
        what="the scheduler to create the scheduled run",
    )
    scheduled = scheduled_run["dag_run_id"]
    runs.append((dag_id, scheduled))
    interval_start = datetime.fromisoformat(scheduled_run["data_interval_start"].replace("Z", "+00:00"))
    starts = [interval_start - timedelta(days=d) for d in (2, 1)]
    backfill = stack.api(
        "POST",
        "/api/v2/backfills",
        json={
            "dag_id": dag_id,
            "from_date": _iso(starts[0]),
            "to_date": _iso(starts[-1] + timedelta(hours=1)),
            "run_backwards": False,
            "dag_run_conf": {},
            "reprocess_behavior": "none",
            "max_active_runs": 2,
        },
    )
    backfill_runs = poll(
        lambda: [r for r in stack.dag_runs(dag_id) if r["run_type"] == "backfill"] or None,
        timeout=60,
        what=f"the runs of backfill {backfill['id']}",
    )
    runs.extend((dag_id, r["dag_run_id"]) for r in backfill_runs)
    states = stack.wait_for_runs(dag_id, [run_id for _, run_id in runs], timeout=600)
    assert set(states.values()) == {"success"}, states
    timer.lap("triggered, scheduled and two backfill runs")

    # The emulator's state: one live snapshot (the latest run's) equal to the ground truth at its
    # export; the scheduled and both backfilled intervals' events equal to theirs.
    scheduled_run = stack.dag_run(dag_id, scheduled)
    profile_ds = view.dataset_id(job.names.profile_dataset)
    event_ds = view.dataset_id(job.names.event_dataset)
    snapshot_batch = view.check_snapshot(profile_ds)
    _, scheduled_events = view.check_interval_events(
        event_ds,
        scheduled_run["data_interval_start"],
        scheduled_run["data_interval_end"],
        job.names.export_dataset,
    )
    intervals = sorted(
        (r["data_interval_start"], r["data_interval_end"])
        for r in stack.dag_runs(dag_id)
        if r["run_type"] == "backfill"
    )
    assert [s for s, _ in intervals] == [_iso(s) for s in starts], intervals
    events = {
        start[:10]: view.check_interval_events(event_ds, start, end, job.names.export_dataset)[1]
        for start, end in intervals
    }
    tis = {
        (run_id, t["task_id"]): t["state"] for _, run_id in runs for t in stack.task_instances(dag_id, run_id)
    }
    assert all(tis[(r["dag_run_id"], "publish_snapshot")] == "skipped" for r in backfill_runs), tis
    assert sum(events.values()) + scheduled_events > 0, "no events published at all: nothing was checked"

    state = emu.admin.state()["sandboxes"]["prod"]
    print(
        f"\n[compose] snapshot batch {snapshot_batch}: {len(view.snapshot_records(profile_ds))} people; events "
        f"scheduled interval {scheduled_events}, backfill {events}; emulator holds "
        f"{len(state['datasets'])} datasets, {len(state['batches'])} batches, {len(state['exportJobs'])} export jobs",
        flush=True,
    )
    emu.admin.close()
