"""Whole pipeline on the client path: scans of the export per run, Query Service time, wall time, RSS.

Runs ``python -m benchmarks.pipeline_scans [--profiles 300000] [--modes rows,time] [--runs 2]``.
For each partitioning mode, side by side in one invocation:

* ``rows``: ``query_partitioning: rows``, main's behaviour before partitions were sized by time
  (one query of at most 40,000 rows per partition, each scanning the whole export);
* ``time``: the default, ``LIMIT 0`` partitions sized by a per-query time budget (scanplan).

Each mode starts the emulator with ``--profiles N`` and the Query Service scan-cost model (default:
realistic mode's guessed 5 s per million rows scanned plus 2 s per query, see
``emulator/query_service/scans.py``), then runs the refresh DAG with ``airflow dags test`` like
``make demo`` does (run 1 a day back, run 2 now: the second is the steady daily run), with this
checkout's code (``PYTHONPATH``). Per run it reports the emulator's scan statistics (queries that
scanned an export batch, batch scans, rows scanned, modelled seconds), the partitions prepare
planned, the wall time, and the peak RSS of any single process of the ``dags test`` tree (tasks run
in it). The floor is one ``LIMIT 0`` query over the same snapshot rows, run once after the runs.

Then it projects 10M and 50M profiles from the measured rates (membership rows per profile, floor
transfer rate) with the planner itself. Targets (exit 1 when missed), for the ``time`` mode:

* partition queries per run <= the planner's required partitions + 4 per load;
* the snapshot partition queries' Query Service time (modelled scans + measured transfer) within 2x
  of the floor;
* peak RSS no more than 25% above the ``rows`` mode's (rows are streamed, not materialised).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psutil

import demo
from aep_emulator.connection import airflow_connection_env
from aep_emulator.query_service.scans import (
    REALISTIC_SECONDS_PER_MILLION_ROWS,
    REALISTIC_SECONDS_PER_QUERY,
)

ROOT = Path(__file__).resolve().parent.parent
# Child processes (emulator, Airflow) import this checkout's provider AND emulator, not the copies an
# editable install may point at.
CHECKOUT_PATH = os.pathsep.join((str(ROOT), str(ROOT / "aep-emulator")))
DAG_ID = "cja_audiences__luma_loyalty"
SECRET = "bench-client-secret"
POOL_SLOTS = 4
MAX_EXTRA_SCANS = 4
MAX_QS_FACTOR = 2.0
MAX_RSS_GROWTH = 1.25


def _log(message: str) -> None:
    print(f"[pipeline_scans {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _emulator(workdir: Path, profiles: int, per_million: float, per_query: float) -> demo.Emulator:
    """The default-mode emulator (export jobs 3 s, batches 1 s) with the scan-cost model switched on."""
    return demo.Emulator(
        workdir,
        profiles,
        mode="default",
        secret=SECRET,
        args=["--qs-seconds-per-million-rows", str(per_million), "--qs-seconds-per-query", str(per_query)],
        env={**os.environ, "PYTHONPATH": CHECKOUT_PATH},
        start_timeout=600,
    )


def _airflow(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), *args],
        env=env,
        text=True,
        capture_output=True,
        check=False,
    )


def _peak_rss_run(command: list[str], env: dict[str, str]) -> tuple[int, str, float, float]:
    """Run ``command``; return (exit code, output, seconds, peak RSS in MB of any one process of its tree)."""
    started = time.monotonic()
    process = psutil.Popen(command, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                procs = [process, *process.children(recursive=True)]
            except psutil.Error:
                procs = []
            for proc in procs:
                try:
                    peak[0] = max(peak[0], proc.memory_info().rss)
                except psutil.Error:
                    pass
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    done.set()
    sampler.join()
    return process.returncode, output, time.monotonic() - started, peak[0] / 2**20


def _plans(output: str) -> list[dict[str, int]]:
    """What each prepare task logged: partitions (and, for 'time', how many the budget required)."""
    found = []
    for match in re.finditer(
        r"(snapshot|events): (\d+) rows in (\d+) partitions(?: \((\d+) required)?", output
    ):
        found.append(
            {
                "kind": match[1],
                "rows": int(match[2]),
                "partitions": int(match[3]),
                "required": int(match[4]) if match[4] else int(match[3]),
            }
        )
    return found


def _jobs_file(path: Path, mode: str) -> None:
    """The demo's jobs file; ``mode`` rows/time: the client path partitioned that way; server: the
    server path (Data Distiller writes the snapshot; events still take the client path)."""
    text = (ROOT / "dags" / "cja_audiences.yaml").read_text()
    if mode == "server":
        text = text.replace("    layout: per_person\n", "    layout: per_person\n    path: server\n")
        assert "path: server" in text, "the demo jobs file changed: update the benchmark"
    elif mode != "main":
        text = text.replace(
            "    layout: per_person\n", f"    layout: per_person\n    query_partitioning: {mode}\n"
        )
        assert f"query_partitioning: {mode}" in text, "the demo jobs file changed: update the benchmark"
    path.write_text(text)


def _table_scans(emulator: demo.Emulator) -> dict[str, int]:
    """The emulator's per-table statement counts (``adhoc:<table>``, ``batch:<table>``; never reset)."""
    return dict(emulator.admin("GET", "/emulator/stats")["tableScans"])


def run_mode(mode: str, args: argparse.Namespace, *, floor: bool = True) -> dict[str, Any]:
    """Run the refresh DAG ``args.runs`` times in ``mode`` (rows, time: client path; server: Data
    Distiller) against a fresh emulator of ``args.profiles`` profiles; per run, the scan statistics."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-pipeline-{mode}-"))
    emulator = _emulator(workdir, args.profiles, args.seconds_per_million_rows, args.seconds_per_query)
    result: dict[str, Any] = {"mode": mode, "runs": []}
    try:
        home = workdir / "airflow"
        _jobs_file(workdir / "jobs.yaml", mode)
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "PYTHONPATH": CHECKOUT_PATH,
            "CJA_AUDIENCES_CONFIG": str(workdir / "jobs.yaml"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            **airflow_connection_env("adobe_experience_platform_default", emulator.ready, SECRET),
        }
        if _airflow(env, "db", "migrate").returncode != 0:
            raise RuntimeError("airflow db migrate failed")
        _airflow(
            env, "pools", "set", "cja_audiences_query_service", str(POOL_SLOTS), "Query Service concurrency"
        )
        today = datetime.now(timezone.utc).replace(hour=2, minute=0, second=0, microsecond=0)
        if today > datetime.now(timezone.utc):
            today -= timedelta(days=1)
        now = emulator.admin("GET", "/emulator/clock")["now"]
        for run in range(args.runs):
            back = args.runs - 1 - run
            emulator.admin("POST", "/emulator/clock", {"set": now})
            if back:
                emulator.admin("POST", "/emulator/clock", {"advance_seconds": -86_400 * back})
            emulator.admin("DELETE", "/emulator/query-service/scans")
            tables_before = _table_scans(emulator)
            written_before = set(_batch_query_batches(emulator))
            logical = today - timedelta(days=back)
            code, output, seconds, rss = _peak_rss_run(
                [str(Path(sys.executable).with_name("airflow")), "dags", "test", DAG_ID, logical.isoformat()],
                env,
            )
            (workdir / f"run{run + 1}.log").write_text(output)
            if code != 0 or "CJA audience refresh report" not in output:
                raise RuntimeError(
                    f"{mode} run {run + 1} failed (exit {code}); log: {workdir / f'run{run + 1}.log'}"
                )
            scans = emulator.admin("GET", "/emulator/query-service/scans")
            tables_after = _table_scans(emulator)
            entry = {
                "run": run + 1,
                "wall_seconds": round(seconds, 1),
                "peak_rss_mb": round(rss),
                "scans": scans,
                "plans": _plans(output),
                # Statements per dataset table this run, ad hoc (PostgreSQL) and batch (REST INSERT INTO).
                "table_scans": {
                    k: v - tables_before.get(k, 0)
                    for k, v in tables_after.items()
                    if v != tables_before.get(k, 0)
                },
            }
            # Batches batch queries wrote this run: one per dataset written (snapshot, events); the
            # largest is the snapshot's.
            written = {k: v for k, v in _batch_query_batches(emulator).items() if k not in written_before}
            entry["batch_query_batches"] = len(written)
            entry["batch_query_records"] = max(written.values(), default=0)
            result["runs"].append(entry)
            _log(
                f"{mode} run {run + 1}: {seconds:.0f} s wall, peak RSS {rss:.0f} MB, {scans['scans']} scans "
                f"({scans['batch_scans']} batch scans, {scans['rows_scanned']:,} rows), modelled Query Service "
                f"{scans['modelled_seconds']:.0f} s, plans {entry['plans']}"
            )
        if floor:
            result["floor"] = _floor(emulator, env)
            _log(f"{mode} floor: {result['floor']}")
    finally:
        emulator.stop()
        if args.keep:
            _log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def _batch_query_batches(emulator: demo.Emulator) -> dict[str, int]:
    """{batch id: records} of the successful batches batch queries wrote (none on the client path).
    Catalog keeps a replaced batch, so ids, not counts, tell this run's from the earlier runs'."""
    batches = emulator.admin("GET", "/emulator/state")["sandboxes"]["prod"]["batches"]
    return {
        batch_id: int(b["recordCount"] or 0)
        for batch_id, b in batches.items()
        if b["status"] == "success" and any(o.get("type") == "query" for o in b["relatedObjects"])
    }


def _floor(emulator: demo.Emulator, env: dict[str, str]) -> dict[str, Any]:
    """One LIMIT 0 query over the latest export's snapshot rows: modelled scan seconds, rows, wall seconds."""
    os.environ.update({k: v for k, v in env.items() if k.startswith("AIRFLOW_CONN_")})
    import yaml

    from airflow_cja_audiences import sql
    from airflow_cja_audiences.config import JobsFile
    from airflow_cja_audiences.hooks.platform import clear_token_cache
    from airflow_cja_audiences.hooks.query_service import QueryServiceHook

    state = emulator.admin("GET", "/emulator/state")
    prod = state["sandboxes"]["prod"]
    jobs = sorted(
        (j for j in prod["exportJobs"] if j.get("status") == "SUCCEEDED"), key=lambda j: j["creationTime"]
    )
    latest = jobs[-1]
    dataset = prod["datasets"][latest["destination"]["datasetId"]]
    table = dataset["tags"]["adobe/pqs/table"][0]
    job = JobsFile.model_validate(yaml.safe_load(Path(env["CJA_AUDIENCES_CONFIG"]).read_text())).jobs[0]
    names = {a.name for a in job.audiences}
    ids = [a["id"] for a in state["audiences"] if a["name"] in names]
    q = sql.build_membership_query(
        job,
        table=table,
        batch_id=latest["destination"]["batchId"],
        tenant=state.get("tenant") or "demoemea",
        audience_ids=ids,
    )
    clear_token_cache()
    emulator.admin("DELETE", "/emulator/query-service/scans")
    started = time.monotonic()
    rows = sum(len(batch) for batch in QueryServiceHook().stream(sql.lift_row_cap(sql.membership_sql(q))))
    seconds = time.monotonic() - started
    scans = emulator.admin("GET", "/emulator/query-service/scans")
    return {
        "rows": rows,
        "wall_seconds": round(seconds, 1),
        "modelled_seconds": scans["modelled_seconds"],
        "rows_scanned": scans["rows_scanned"],
        "transfer_seconds": round(max(seconds - scans["modelled_seconds"], 0), 1),
    }


def _project(results: dict[str, dict], args: argparse.Namespace) -> list[str]:
    """Scans and Query Service time per run at larger sizes, from the measured membership rows per profile
    and the floor's transfer rate, planned by the same planner the pipeline uses."""
    from airflow_cja_audiences.config import RefreshJob
    from airflow_cja_audiences.scanplan import plan_by_rows, plan_by_time

    floor = next(iter(results.values()))["floor"]
    per_profile = floor["rows"] / args.profiles
    exported = floor["rows_scanned"] / args.profiles  # the export holds the audiences' members only
    transfer_rate = floor["rows"] / max(floor["transfer_seconds"], 0.1)
    defaults = RefreshJob.model_fields
    budget, rate = (
        defaults["query_time_budget_seconds"].default,
        defaults["query_service_rows_per_second"].default,
    )
    out = [
        (
            f"projection (snapshot load only; {per_profile:.2f} membership rows per profile, planner rate {rate:g} "
            f"rows/s, budget {budget:g} s, {exported:.2f} exported profiles per profile, scan = "
            f"{args.seconds_per_query:g} s + {args.seconds_per_million_rows:g} s per M exported profiles):"
        )
    ]
    out.append(
        f"  {'profiles':>11} {'rows':>11} {'rows-mode scans':>16} {'rows-mode QS h':>15} "
        f"{'time-mode scans':>16} {'time-mode QS min':>17} {'floor QS min':>13}"
    )
    for profiles in sorted({args.profiles, 10_000_000, 50_000_000}):
        rows = int(per_profile * profiles)
        scan = args.seconds_per_query + args.seconds_per_million_rows * exported * profiles / 1e6
        transfer = rows / rate  # on real Query Service the worker's rate bounds the transfer
        by_rows = len(plan_by_rows(rows, 40_000, 10**9))
        try:
            plan = plan_by_time(
                rows, scan_seconds=scan, rows_per_second=rate, budget_seconds=budget, concurrency=5
            )
            time_cell = f"{plan.count:>16} {plan.total_seconds / 60:>17.1f}"
        except ValueError as exc:
            time_cell = f"{'no plan: ' + str(exc)[:40]:>34}"
        out.append(
            f"  {profiles:>11,} {rows:>11,} {by_rows:>16} {(by_rows * scan + transfer) / 3600:>15.2f} "
            f"{time_cell} {(scan + transfer) / 60:>13.1f}"
        )
    out.append(f"  (emulator transfer rate of the floor query: {transfer_rate:,.0f} rows/s)")
    return out


def report(results: dict[str, dict], args: argparse.Namespace) -> tuple[list[str], bool]:
    lines = [
        (
            f"pipeline at {args.profiles:,} profiles, scan cost {args.seconds_per_million_rows:g} s per M rows + "
            f"{args.seconds_per_query:g} s per query, pool {POOL_SLOTS} slots, `airflow dags test`:"
        ),
        (
            f"  {'mode':<5} {'run':>3} {'wall s':>7} {'peak RSS MB':>12} {'scans':>6} {'batch scans':>12} "
            f"{'rows scanned':>13} {'modelled QS s':>14}  partitions (snapshot, events)"
        ),
    ]
    for mode, res in results.items():
        for run in res["runs"]:
            s = run["scans"]
            parts = ", ".join(f"{p['kind']} {p['partitions']}" for p in run["plans"])
            lines.append(
                f"  {mode:<5} {run['run']:>3} {run['wall_seconds']:>7.0f} {run['peak_rss_mb']:>12} "
                f"{s['scans']:>6} {s['batch_scans']:>12} {s['rows_scanned']:>13,} "
                f"{s['modelled_seconds']:>14.0f}  {parts}"
            )
        f = res["floor"]
        lines.append(
            f"  {mode:<5} floor: one LIMIT 0 query, {f['rows']:,} rows in {f['wall_seconds']:.1f} s "
            f"(modelled scan {f['modelled_seconds']:.1f} s, transfer {f['transfer_seconds']:.1f} s)"
        )
    ok = True
    if "time" in results:
        res = results["time"]
        floor = res["floor"]
        scan = floor["modelled_seconds"]
        for run in res["runs"]:
            for plan in run["plans"]:
                good = plan["partitions"] <= plan["required"] + MAX_EXTRA_SCANS
                ok &= good
                lines.append(
                    f"  [{'ok' if good else 'MISSED'}] time run {run['run']} {plan['kind']}: "
                    f"{plan['partitions']} partition queries <= {plan['required']} required + {MAX_EXTRA_SCANS}"
                )
            snap = next((p for p in run["plans"] if p["kind"] == "snapshot"), None)
            if snap and floor["wall_seconds"] > 0:
                qs = snap["partitions"] * scan + floor["transfer_seconds"]
                base = scan + floor["transfer_seconds"]
                good = qs <= MAX_QS_FACTOR * base
                ok &= good
                lines.append(
                    f"  [{'ok' if good else 'MISSED'}] time run {run['run']} snapshot partitions' Query "
                    f"Service time {qs:.1f} s <= {MAX_QS_FACTOR:g} x floor {base:.1f} s"
                )
        if "rows" in results:
            ours = max(r["peak_rss_mb"] for r in res["runs"])
            before = max(r["peak_rss_mb"] for r in results["rows"]["runs"])
            good = ours <= MAX_RSS_GROWTH * before
            ok &= good
            lines.append(
                f"  [{'ok' if good else 'MISSED'}] peak RSS {ours} MB (time) <= {MAX_RSS_GROWTH:g} x "
                f"{before} MB (rows)"
            )
    lines += _project(results, args)
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--profiles",
        type=int,
        default=300_000,
        help="synthetic profiles (default %(default)s, a few minutes; the issue's figures use 1000000)",
    )
    parser.add_argument("--modes", default="rows,time", help="comma-separated: rows (before), time (after)")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--seconds-per-million-rows", type=float, default=REALISTIC_SECONDS_PER_MILLION_ROWS)
    parser.add_argument("--seconds-per-query", type=float, default=REALISTIC_SECONDS_PER_QUERY)
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--keep", action="store_true", help="keep the emulator and Airflow logs")
    args = parser.parse_args(argv)
    results: dict[str, dict] = {}
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        if mode not in ("rows", "time"):
            parser.error(f"unknown mode {mode!r}")
        _log(f"mode {mode}: {args.profiles:,} profiles, {args.runs} runs")
        results[mode] = run_mode(mode, args)
    lines, ok = report(results, args)
    print("\n".join(lines), flush=True)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": vars(args) | {"json": str(args.json)}, "results": results}, indent=2, default=str
            )
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
