"""The server path (``path: server``, Data Distiller) end to end: scans, worker memory and wall time.

Runs ``python -m benchmarks.distiller [--sizes 200000 1000000]``. For each size, one run:

* starts the AEP emulator (HTTPS + Query Service) with that many synthetic profiles, in its own process;
* runs the refresh DAG of one job (3 audiences, ``path: server``, snapshot and change events) with
  ``airflow dags test`` in a child process, against a fresh SQLite metadata DB;
* reads from the emulator: how many statements read the export dataset's table, split into ad hoc
  (PostgreSQL: ``prepare_*``'s counts for the identity check and the report) and batch queries
  (the ``INSERT INTO`` s that write the snapshot and the events), and the records the live snapshot
  batch holds;
* takes each step's time from the run's log (``distill_*``: submitting the batch query, waiting for
  it, finding its batch; the emulator writes about as fast as DuckDB reads, real Query Service adds minutes
  of batch start-up);
* measures the ``airflow dags test`` process's peak RSS (``VmHWM``, sampled: every task of the run executes
  in that process, so it bounds what a worker needs) and the wall time.

Targets (exit 1 when one is missed): exactly one batch-query scan of the export per dataset written
(two: the profile dataset and the events dataset; one live batch in each); ad hoc scans the same at every size (they do not grow with N); peak RSS
of the task process at the largest size within 10 % (+ 16 MB) of the smallest; the snapshot holds one
record per member with a person id (checked against the emulator's truth when the size allows).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import demo

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-client-secret"
JOB_ID = "bench_server"
RSS_TOLERANCE = 0.10
RSS_SLACK_MB = 16.0
# Child processes import this checkout's package (not another one an editable install points at).
CHILD_ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
}


class Emulator(demo.Emulator):
    """The default-mode emulator with short export jobs (1 s) and batches (0.5 s)."""

    def __init__(self, workdir: Path, profiles: int) -> None:
        super().__init__(
            workdir,
            profiles,
            mode="default",
            secret=SECRET,
            args=["--export-job-seconds", "1", "--batch-seconds", "0.5"],
            env=CHILD_ENV,
            start_timeout=300,
        )

    def get(self, path: str, *, lines: bool = False, **params: Any) -> Any:
        """JSON, or with ``lines`` the JSON Lines of the answer as objects."""
        import requests

        response = requests.get(
            self.ready["base_url"] + path, params=params, timeout=600, verify=self.ready["ca_bundle"]
        )
        response.raise_for_status()
        if lines:
            return [json.loads(line) for line in response.text.splitlines() if line.strip()]
        return response.json()


def _airflow(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), *args],
        env=env,
        text=True,
        capture_output=True,
        check=False,
    )


def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        found += [int(c) for c in children]
        todo += [int(c) for c in children]
    return found


def watch_peak_rss(child: subprocess.Popen) -> int:
    """Wait for ``child``; return the largest ``VmHWM`` (kB) it or a descendant reached.

    Sampled from /proc every 0.1 s (VmHWM is the process image's own high-water mark, so a sample
    taken after a peak still sees it). Not ``ru_maxrss``: on Linux it keeps the peak of the process
    that forked the child across exec, which would charge this benchmark's own memory to the child.
    """
    peak = 0
    while child.poll() is None:
        for pid in (child.pid, *_descendants(child.pid)):
            peak = max(peak, _status_kb(pid, "VmHWM"))
        time.sleep(0.1)
    return peak


def task_seconds(log: str, task_ids: tuple[str, ...]) -> dict[str, float | None]:
    """Seconds from each task's first start to its last end, from ``airflow dags test``'s log lines."""
    out: dict[str, float | None] = {}
    for task_id in task_ids:
        starts = re.findall(
            rf"^(\S+) \[info\s*\] \[DAG TEST\] starting task_id={task_id} ", log, re.MULTILINE
        )
        ends = re.findall(rf"^(\S+) \[info\s*\] \[DAG TEST\] end task task_id={task_id} ", log, re.MULTILINE)
        out[f"{task_id}_s"] = (
            round(
                (
                    datetime.fromisoformat(ends[-1].replace("Z", "+00:00"))
                    - datetime.fromisoformat(starts[0].replace("Z", "+00:00"))
                ).total_seconds(),
                1,
            )
            if starts and ends
            else None
        )
    return out


def run_once(profiles: int, workdir: Path) -> dict[str, Any]:
    from aep_emulator.connection import airflow_connection_env

    emulator = Emulator(workdir, profiles)
    try:
        audiences = [a["id"] for a in emulator.get("/emulator/state")["audiences"][:3]]
        jobs = workdir / "jobs.json"
        jobs.write_text(
            json.dumps(
                {
                    "jobs": [
                        {
                            "job_id": JOB_ID,
                            "path": "server",
                            "retries": 0,
                            "poll_interval_seconds": 1,
                            "schedule": "0 2 * * *",
                            "audiences": [{"id": a} for a in audiences],
                            "identity": {
                                "field": "_{tenant}.identification.core.email",
                                "namespace": "Email",
                            },
                        }
                    ]
                }
            )
        )
        home = workdir / "airflow"
        env = {
            **CHILD_ENV,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "CJA_AUDIENCES_CONFIG": str(jobs),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            **airflow_connection_env("adobe_experience_platform_default", emulator.ready, SECRET),
        }
        if _airflow(env, "db", "migrate").returncode != 0:
            raise RuntimeError("airflow db migrate failed")
        _airflow(env, "pools", "set", "cja_audiences_query_service", "4", "Query Service concurrency")
        end = datetime.now(timezone.utc).replace(hour=2, minute=0, second=0, microsecond=0)
        if end > datetime.now(timezone.utc):
            end -= timedelta(days=1)
        log_path = workdir / "dags-test.log"
        started = time.monotonic()
        with log_path.open("w") as log:
            child = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("airflow")),
                    "dags",
                    "test",
                    f"cja_audiences__{JOB_ID}",
                    end.isoformat(),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
            peak_kb = watch_peak_rss(child)
        wall = time.monotonic() - started
        output = log_path.read_text()
        if child.returncode != 0 or "state=success" not in output.split("DagRun Finished")[-1][:400]:
            raise RuntimeError(f"the DAG run failed (exit {child.returncode}); log: {log_path}")
        state = emulator.get("/emulator/state")
        prod = state["sandboxes"]["prod"]
        export_ds = next(
            i for i, d in prod["datasets"].items() if d["name"] == f"CJA audiences export - {JOB_ID}"
        )
        profile_ds = next(
            i for i, d in prod["datasets"].items() if d["name"] == f"CJA audience profiles - {JOB_ID}"
        )
        export_table = prod["datasets"][export_ds]["table"]
        events_ds = next(
            i
            for i, d in prod["datasets"].items()
            if d["name"] == f"CJA audience membership events - {JOB_ID}"
        )

        def live_in(dataset_id: str) -> list[dict[str, Any]]:
            return [
                b
                for b in prod["batches"].values()
                if b["status"] == "success" and {"type": "dataSet", "id": dataset_id} in b["relatedObjects"]
            ]

        live, live_events = live_in(profile_ds), live_in(events_ds)
        scans = emulator.get("/emulator/stats")["tableScans"]
        truth_people = None
        if profiles <= 1_000_000:
            # The truth as of the export the snapshot was computed from (memberships keep changing).
            export_ms = max(j["creationTime"] for j in prod["exportJobs"] if j["status"] == "SUCCEEDED")
            at = datetime.fromtimestamp(export_ms // 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            rows = emulator.get(
                "/emulator/truth/snapshot",
                lines=True,
                audience=audiences,
                status=["realized", "existing"],
                at=at,
            )
            emails = {row.get("email") for row in rows}
            truth_people = len(emails - {None, ""})
        steps = task_seconds(
            output,
            (
                "export_audiences",
                "prepare_snapshot",
                "distill_snapshot",
                "publish_snapshot",
                "prepare_events",
                "distill_events",
                "publish_events",
            ),
        )
        return {
            "profiles": profiles,
            "wall_seconds": round(wall, 1),
            **steps,
            "peak_rss_mb": round(peak_kb / 1024, 1),
            "batch_scans": scans.get(f"batch:{export_table}", 0),
            "adhoc_scans": scans.get(f"adhoc:{export_table}", 0),
            "live_batches": len(live),
            "records": sum(int(b.get("recordCount") or 0) for b in live),
            "live_events_batches": len(live_events),
            "events": sum(int(b.get("recordCount") or 0) for b in live_events),
            "truth_people": truth_people,
            "datasets_written": 2,
        }
    finally:
        emulator.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--keep", action="store_true", help="keep the work directories (logs)")
    args = parser.parse_args(argv)
    results = []
    for size in sorted(args.sizes):
        workdir = Path(tempfile.mkdtemp(prefix=f"cja-distiller-bench-{size}-"))
        print(f"[distiller] {size} profiles (work dir {workdir}) ...", flush=True)
        result = run_once(size, workdir)
        results.append(result)
        print(json.dumps(result), flush=True)
        if not args.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    failures = []
    for r in results:
        if r["batch_scans"] != r["datasets_written"]:
            failures.append(
                f"{r['profiles']}: {r['batch_scans']} batch-query scans of the export for "
                f"{r['datasets_written']} dataset written (target: one each)"
            )
        if r["live_batches"] != 1:
            failures.append(f"{r['profiles']}: {r['live_batches']} live snapshot batches (target: 1)")
        if r["live_events_batches"] != 1:
            failures.append(f"{r['profiles']}: {r['live_events_batches']} live events batches (target: 1)")
        if r["truth_people"] is not None and r["records"] != r["truth_people"]:
            failures.append(
                f"{r['profiles']}: {r['records']} records for {r['truth_people']} members in the truth"
            )
    if len({r["adhoc_scans"] for r in results}) > 1:
        failures.append(f"ad hoc scans differ between sizes: {[r['adhoc_scans'] for r in results]}")
    small, large = results[0], results[-1]
    limit = small["peak_rss_mb"] * (1 + RSS_TOLERANCE) + RSS_SLACK_MB
    if len(results) > 1 and large["peak_rss_mb"] > limit:
        failures.append(
            f"peak RSS grows with N: {small['peak_rss_mb']} MB at {small['profiles']}, "
            f"{large['peak_rss_mb']} MB at {large['profiles']} (limit {limit:.0f} MB)"
        )
    print(
        f"{'profiles':>10} {'wall s':>8} {'distill s':>10} {'prepare s':>10} {'peak RSS MB':>12} {'batch scans':>12} "
        f"{'ad hoc scans':>13} {'records':>9}"
    )
    for r in results:
        print(
            f"{r['profiles']:>10} {r['wall_seconds']:>8} {r['distill_snapshot_s']!s:>10} {r['prepare_snapshot_s']!s:>10} "
            f"{r['peak_rss_mb']:>12} {r['batch_scans']:>12} {r['adhoc_scans']:>13} {r['records']:>9}"
        )
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    print("PASS" if not failures else "FAIL", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
