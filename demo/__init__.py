"""``make demo``: the refresh DAG end to end against the local emulator, with ``airflow dags test``.

1. start the emulator (HTTPS + Query Service, 100k synthetic profiles) in a subprocess, in realistic
   mode (Adobe's pace and limits on a compressed clock; ``--mode default`` for the fast, kind one);
2. point the Adobe connection at it through ``AIRFLOW_CONN_...`` (nothing stored anywhere);
3. a throw-away ``AIRFLOW_HOME`` with a SQLite metadata DB;
4. run the DAG for yesterday's interval with the emulator's clock one day back, move the clock
   forward one day, run it for today's interval: the second report shows who entered and exited;
5. print the report, stop everything, exit non-zero if any step failed.

Run it with ``make demo`` or ``python -m demo [--profiles N] [--mode M] [--keep]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from aep_emulator.connection import airflow_connection_env

ROOT = Path(__file__).resolve().parents[1]
DAG_ID = "cja_audiences__luma_loyalty"
SECRET = "demo-client-secret"
REPORT_START = "CJA audience refresh report"


def _log(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Emulator:
    """The emulator as a subprocess; stopped on exit whatever happens. The benchmarks start theirs
    through it too: ``args`` are appended to the command line (the last of a repeated option wins),
    ``env`` replaces the child's environment, ``start_timeout`` allows for large data sets."""

    def __init__(
        self,
        workdir: Path,
        profiles: int,
        mode: str = "realistic",
        *,
        secret: str = SECRET,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        start_timeout: float = 120.0,
    ) -> None:
        self.workdir = workdir
        # Default mode: export jobs of 3 s and batches of 1 s; realistic mode brings its own durations.
        timing = ["--export-job-seconds", "3", "--batch-seconds", "1"] if mode == "default" else []
        ready_file = workdir / "emulator-ready.json"
        self.stderr = (workdir / "emulator.log").open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aep_emulator",
                "--port",
                "0",
                "--pg-port",
                "0",
                "--profiles",
                str(profiles),
                "--client-secret",
                secret,
                "--state-dir",
                str(workdir / "emulator"),
                "--mode",
                mode,
                *timing,
                "--ready-file",
                str(ready_file),
                *args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
            env=None if env is None else dict(env),
        )
        deadline = time.monotonic() + start_timeout
        while not ready_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the emulator did not start; see {workdir / 'emulator.log'}")
            time.sleep(0.1)
        self.ready = json.loads(ready_file.read_text())

    def admin(self, method: str, path: str, body: dict | None = None, timeout: float = 60) -> Any:
        import requests

        response = requests.request(
            method, self.ready["base_url"] + path, json=body, timeout=timeout, verify=self.ready["ca_bundle"]
        )
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.stderr.close()


def _airflow(env: dict[str, str], *args: str, capture: bool = False) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("airflow")), *args]
    return subprocess.run(command, env=env, text=True, capture_output=capture, check=False)


def _run_dag(env: dict[str, str], logical_date: datetime, log_file: Path) -> str:
    """``airflow dags test`` for one logical date; returns its output; raises when the run failed."""
    started = time.monotonic()
    result = _airflow(env, "dags", "test", DAG_ID, logical_date.isoformat(), capture=True)
    output = result.stdout + result.stderr
    log_file.write_text(output)
    state = (
        re.findall(r"state=(\w+)", output.split("DagRun Finished")[-1][:400])
        if "DagRun Finished" in output
        else []
    )
    if result.returncode != 0 or (state and state[0] != "success") or REPORT_START not in output:
        raise RuntimeError(
            f"the DAG run for {logical_date:%Y-%m-%d} failed (exit {result.returncode}, state "
            f"{state[0] if state else 'unknown'}); full log: {log_file}"
        )
    _log(f"run for {logical_date:%Y-%m-%d %H:%M} succeeded in {time.monotonic() - started:.0f} s")
    return output


def _report(output: str) -> str:
    """The report block the report task logged (the last one in the output)."""
    start = output.rfind(REPORT_START)
    lines = []
    for line in output[start:].splitlines():
        if lines and not line.startswith("  "):
            break
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument(
        "--mode",
        choices=("realistic", "default"),
        default="realistic",
        help="emulator mode (default %(default)s: Adobe's pace and limits on a compressed clock)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary AIRFLOW_HOME and logs")
    args = parser.parse_args(argv)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="cja-audiences-demo-"))
    emulator = None
    ok = False
    try:
        _log(
            f"starting the AEP emulator in {args.mode} mode with {args.profiles} profiles (logs in {workdir})"
        )
        emulator = Emulator(workdir, args.profiles, args.mode)
        home = workdir / "airflow"
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            **airflow_connection_env("adobe_experience_platform_default", emulator.ready, SECRET),
        }
        _log("creating the SQLite metadata DB")
        if _airflow(env, "db", "migrate", capture=True).returncode != 0:
            raise RuntimeError("airflow db migrate failed")
        _airflow(
            env, "pools", "set", "cja_audiences_query_service", "4", "Query Service concurrency", capture=True
        )
        today = datetime.now(timezone.utc).replace(hour=2, minute=0, second=0, microsecond=0)
        if today > datetime.now(timezone.utc):
            today -= timedelta(days=1)
        # Data intervals end at 02:00 (the logical date given to `dags test` is the interval's end):
        # run 1 covers the previous interval as of a day ago, run 2 the latest interval as of now.
        now = emulator.admin("GET", "/emulator/clock")["now"]
        emulator.admin("POST", "/emulator/clock", {"advance_seconds": -86_400})
        _log(
            f"run 1: interval ending {today - timedelta(days=1):%Y-%m-%d %H:%M} UTC (emulator clock one day back)"
        )
        _run_dag(env, today - timedelta(days=1), workdir / "run1.log")
        emulator.admin("POST", "/emulator/clock", {"set": now})
        _log(f"run 2: interval ending {today:%Y-%m-%d %H:%M} UTC (emulator clock back to now)")
        output = _run_dag(env, today, workdir / "run2.log")
        print("\n" + _report(output) + "\n", flush=True)
        ok = True
    except Exception as exc:  # noqa: BLE001 - the demo reports any failure and exits non-zero
        _log(f"FAILED: {exc}")
    finally:
        if emulator is not None:
            emulator.stop()
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif not ok or args.keep:
            _log(f"logs kept in {workdir}")
    _log(f"{'done' if ok else 'failed'} in {time.monotonic() - started:.0f} s")
    return 0 if ok else 1
