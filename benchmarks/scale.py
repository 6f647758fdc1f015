"""Issue 14's benchmark: the whole pipeline at 1M and 10M profiles on both paths, side by side.

Runs ``python -m benchmarks.scale [--sizes 1000000 10000000] [--runs 1] [--json out.json]``. For each
size, against a fresh emulator each (default mode, short export jobs and batches, the Query Service
scan-cost model at realistic mode's guessed 5 s per million exported rows + 2 s per query), it runs the
demo's refresh DAG (``airflow dags test``, this checkout's code) on

* the **client** path: partitions sized by a per-query time budget (``query_partitioning: time``), then
  the **floor**: one ``LIMIT 0`` query over the same snapshot rows (modelled scan + measured transfer);
* the **server** path (``path: server``): Data Distiller batch queries (``INSERT INTO ... SELECT``)
  write the snapshot and the change events, one per dataset; its ad hoc scans are ``check_export_read``'s
  and the prepares' counts.

Per run: scans of the export (queries that read an export batch, from the scan-cost model), statements
per table split ad hoc / batch query, total modelled Query Service time, wall time, and the peak RSS of
any process of the ``dags test`` tree (every task runs in it: what a worker needs). Then a projection to
50M profiles from the measured rates (membership rows and exported rows per profile, the floor's
transfer rate), planned by the pipeline's own planner, and for the server path the batch query's time
under realistic mode's batch-query model (start-up, scan, write, promotion; see
``aep_emulator/query_service/batch.py``).

Goals (issue 14; exit 1 when one is missed):

* client: scans of the export per run <= the planner's required partitions (ceil(rows / rows per
  budget), summed over the loads) + 4; the run's Query Service time (modelled scans + the floor's
  transfer, which any reader pays once) within 2x of the floor; peak RSS flat (largest size within
  10 % + 16 MB of the smallest);
* server: exactly one batch-query read of the export per dataset written (the profile dataset, and the
  events dataset when the run publishes events) per run; peak RSS flat likewise.

``--from-json A.json [B.json ...]`` re-reports saved results (this module's ``--json`` files, or
``benchmarks.pipeline_scans --json`` files for the client path) without running anything: the sizes can
be measured in separate invocations (a 10M run takes most of an hour on a shared 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from aep_emulator.query_service.scans import (
    REALISTIC_SECONDS_PER_MILLION_ROWS,
    REALISTIC_SECONDS_PER_QUERY,
)
from aep_emulator.settings import REALISTIC
from benchmarks import pipeline_scans

MAX_EXTRA_SCANS = 4
MAX_QS_FACTOR = 2.0
RSS_TOLERANCE = 0.10
RSS_SLACK_MB = 16.0
PROJECT_TO = (10_000_000, 50_000_000)


def _log(message: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {message}", flush=True)


def measure(sizes: list[int], paths: list[str], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """{str(size): {"client": run_mode result (with floor), "server": run_mode result}}."""
    results: dict[str, dict[str, Any]] = {}
    for size in sorted(sizes):
        per_size: dict[str, Any] = {}
        for path in paths:
            run_args = argparse.Namespace(
                profiles=size,
                runs=args.runs,
                seconds_per_million_rows=args.seconds_per_million_rows,
                seconds_per_query=args.seconds_per_query,
                keep=args.keep,
            )
            _log(f"{size:,} profiles, {path} path, {args.runs} run(s) ...")
            mode = "time" if path == "client" else "server"
            per_size[path] = pipeline_scans.run_mode(mode, run_args, floor=path == "client")
        results[str(size)] = per_size
        if args.json:  # after each size: a later failure keeps what was measured
            args.json.write_text(json.dumps({"args": _args_json(args), "results": results}, indent=2))
    return results


def _args_json(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "from_json"}


def load(files: list[Path]) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """Merge saved results; ``benchmarks.pipeline_scans`` files count as the client path of their size."""
    merged: dict[str, dict[str, Any]] = {}
    cost = {
        "seconds_per_million_rows": REALISTIC_SECONDS_PER_MILLION_ROWS,
        "seconds_per_query": REALISTIC_SECONDS_PER_QUERY,
    }
    for file in files:
        data = json.loads(file.read_text())
        saved = data.get("args", {})
        cost = {k: float(saved.get(k, v)) for k, v in cost.items()}
        if "time" in data.get("results", {}):  # a pipeline_scans file
            merged.setdefault(str(saved["profiles"]), {})["client"] = data["results"]["time"]
        else:
            for size, paths in data["results"].items():
                merged.setdefault(size, {}).update(paths)
    return merged, cost


def _export_table(run: dict[str, Any]) -> str | None:
    return next((k.split(":", 1)[1] for k in run.get("table_scans", {}) if "export" in k), None)


def _required(run: dict[str, Any]) -> int:
    return sum(p["required"] for p in run["plans"])


def report(results: dict[str, dict[str, Any]], cost: dict[str, float]) -> tuple[list[str], list[str]]:
    """(lines, failures)."""
    lines = [
        f"whole pipeline, scan cost {cost['seconds_per_million_rows']:g} s per M export rows + "
        f"{cost['seconds_per_query']:g} s per query (guesses), `airflow dags test`, pool "
        f"{pipeline_scans.POOL_SLOTS} slots:",
        f"  {'profiles':>11} {'path':<6} {'run':>3} {'scans':>6} {'required+4':>10} {'batch-query reads':>17} "
        f"{'modelled QS s':>13} {'QS s vs floor':>14} {'wall s':>7} {'peak RSS MB':>11}  partitions",
    ]
    failures: list[str] = []
    rss: dict[str, list[tuple[int, float]]] = {"client": [], "server": []}
    for size_key in sorted(results, key=int):
        size = int(size_key)
        floor = results[size_key].get("client", {}).get("floor")
        notes: list[str] = []
        for path in ("client", "server"):
            res = results[size_key].get(path)
            if res is None:
                continue
            for run in res["runs"]:
                s = run["scans"]
                table = _export_table(run)
                batch_reads = run.get("table_scans", {}).get(f"batch:{table}", 0) if table else 0
                required = _required(run)
                ratio = ""
                qs = s["modelled_seconds"]
                if floor and path == "client":
                    base = floor["modelled_seconds"] + floor["transfer_seconds"]
                    run_qs = qs + floor["transfer_seconds"]
                    ratio = f"{run_qs / base:.2f}x"
                    if run_qs > MAX_QS_FACTOR * base:
                        failures.append(
                            f"{size:,} client run {run['run']}: Query Service time {run_qs:.0f} s (modelled "
                            f"{qs:.0f} s + transfer {floor['transfer_seconds']:.0f} s) > {MAX_QS_FACTOR:g} x "
                            f"floor {base:.0f} s"
                        )
                    if s["scans"] > required + MAX_EXTRA_SCANS:
                        failures.append(
                            f"{size:,} client run {run['run']}: {s['scans']} scans of the export > "
                            f"{required} required + {MAX_EXTRA_SCANS}"
                        )
                written = run.get("batch_query_batches", 1)  # older result files: the snapshot only
                if path == "server" and (batch_reads != written or not written):
                    failures.append(
                        f"{size:,} server run {run['run']}: {batch_reads} batch-query reads of the export for "
                        f"{written} dataset(s) written (target: one each)"
                    )
                snap = next((p for p in run["plans"] if p["kind"] == "snapshot"), None)
                if floor and path == "client":
                    notes.append(_at_planner_rate(size, run, floor))
                if floor and path == "client" and snap:
                    # The snapshot load alone (what pipeline_scans checks): its partition queries' scans
                    # plus one transfer of its rows, against the floor. Informational, not a goal.
                    load_qs = snap["partitions"] * floor["modelled_seconds"] + floor["transfer_seconds"]
                    notes.append(
                        f"  {size:>11,} client run {run['run']}: snapshot load alone {load_qs:.1f} s = "
                        f"{load_qs / (floor['modelled_seconds'] + floor['transfer_seconds']):.2f}x the floor "
                        f"({snap['partitions']} partition queries, {snap['required']} required)"
                    )
                parts = ", ".join(f"{p['kind']} {p['partitions']}" for p in run["plans"])
                lines.append(
                    f"  {size:>11,} {path:<6} {run['run']:>3} {s['scans']:>6} "
                    f"{(str(required + MAX_EXTRA_SCANS) if path == 'client' else '-'):>10} "
                    f"{(batch_reads if path == 'server' else '-')!s:>17} {qs:>13.1f} {ratio:>14} "
                    f"{run['wall_seconds']:>7.0f} {run['peak_rss_mb']:>11}  {parts}"
                )
                rss[path].append((size, float(run["peak_rss_mb"])))
        lines += notes
        if floor:
            lines.append(
                f"  {size:>11,} floor: one LIMIT 0 query, {floor['rows']:,} rows, modelled scan "
                f"{floor['modelled_seconds']:.1f} s + transfer {floor['transfer_seconds']:.1f} s "
                f"({floor['wall_seconds']:.1f} s wall)"
            )
    for path, points in rss.items():
        sizes = sorted({p[0] for p in points})
        if len(sizes) < 2:
            continue
        small = max(r for n, r in points if n == sizes[0])
        large = max(r for n, r in points if n == sizes[-1])
        limit = small * (1 + RSS_TOLERANCE) + RSS_SLACK_MB
        good = large <= limit
        lines.append(
            f"  [{'ok' if good else 'MISSED'}] {path} peak RSS {large:.0f} MB at {sizes[-1]:,} <= "
            f"{limit:.0f} MB ({small:.0f} MB at {sizes[0]:,} + 10 % + 16 MB)"
        )
        if not good:
            failures.append(f"{path} peak RSS grows with N: {small:.0f} MB -> {large:.0f} MB")
    lines += project(results, cost)
    return lines, failures


def _at_planner_rate(size: int, run: dict[str, Any], floor: dict[str, Any]) -> str:
    """The run against the floor with every row streamed at the planner's ``query_service_rows_per_second``
    (how fast a load task reads rows; a real client, not the emulator's bare fetch, sets the pace of a
    ``LIMIT 0`` stream). Informational: the goal above uses the emulator's measured transfer."""
    from airflow_cja_audiences.config import RefreshJob

    rate = RefreshJob.model_fields["query_service_rows_per_second"].default
    rows = sum(p["rows"] for p in run["plans"])
    run_s = run["scans"]["modelled_seconds"] + rows / rate
    floor_s = floor["modelled_seconds"] + floor["rows"] / rate
    return (
        f"  {size:>11,} client run {run['run']}: at the planner's {rate:,.0f} rows/s instead of the emulator's "
        f"transfer: {run_s:.0f} s vs floor {floor_s:.0f} s = {run_s / floor_s:.2f}x (informational)"
    )


def project(results: dict[str, dict[str, Any]], cost: dict[str, float]) -> list[str]:
    """Per-run Query Service time at larger sizes from the largest measured size's rates."""
    from airflow_cja_audiences.config import RefreshJob
    from airflow_cja_audiences.scanplan import plan_by_time

    measured = [int(k) for k in results if results[k].get("client", {}).get("floor")]
    if not measured:
        return ["projection: no client floor measured"]
    base = max(measured)
    client = results[str(base)]["client"]
    floor = client["floor"]
    per_profile = floor["rows"] / base  # membership rows per profile
    exported = floor["rows_scanned"] / base  # export rows per profile (members of any audience)
    transfer_rate = floor["rows"] / max(floor["transfer_seconds"], 0.1)
    defaults = RefreshJob.model_fields
    budget = defaults["query_time_budget_seconds"].default
    rate = defaults["query_service_rows_per_second"].default
    last = client["runs"][-1]
    other_scans = last["scans"]["scans"] - sum(
        p["partitions"] for p in last["plans"] if p["kind"] == "snapshot"
    )
    server = results[str(base)].get("server")
    records_per_profile = (
        server["runs"][-1].get("batch_query_records", 0) / base if server and server["runs"] else per_profile
    )
    lines = [
        f"projection from {base:,} profiles ({per_profile:.3f} membership rows and {exported:.3f} export rows per "
        f"profile; planner {rate:g} rows/s, budget {budget:g} s, concurrency 5; emulator transfer "
        f"{transfer_rate:,.0f} rows/s; realistic batch-query model: start {REALISTIC['qs_batch_start_seconds']:g} s, "
        f"write {REALISTIC['qs_batch_write_seconds_per_million_records']:g} s/M records, promotion "
        f"{REALISTIC['qs_batch_promote_seconds']:g} s):",
        f"  {'profiles':>11} {'rows':>11} {'client scans':>12} {'client QS min':>13} {'floor QS min':>12} "
        f"{'server batch query min':>22}",
    ]
    for profiles in sorted({base, *PROJECT_TO}):
        rows = int(per_profile * profiles)
        scan = cost["seconds_per_query"] + cost["seconds_per_million_rows"] * exported * profiles / 1e6
        transfer = rows / rate
        try:
            plan = plan_by_time(
                rows, scan_seconds=scan, rows_per_second=rate, budget_seconds=budget, concurrency=5
            )
            count = plan.count + other_scans
            client_min = f"{(count * scan + transfer) / 60:>13.1f}"
            scans_cell = f"{count:>12}"
        except ValueError as exc:
            scans_cell, client_min = f"{'no plan':>12}", f"{str(exc)[:13]:>13}"
        written = records_per_profile * profiles
        server_s = (
            REALISTIC["qs_batch_start_seconds"]
            + scan
            + REALISTIC["qs_batch_write_seconds_per_million_records"] * written / 1e6
            + REALISTIC["qs_batch_promote_seconds"]
        )
        lines.append(
            f"  {profiles:>11,} {rows:>11,} {scans_cell} {client_min} {(scan + transfer) / 60:>12.1f} "
            f"{server_s / 60:>22.1f}"
        )
    lines.append(
        f"  (client scans = the planner's snapshot partitions + the {other_scans} other scans the last measured "
        f"run made; the server path adds the events' client scans, not in its column)"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--paths", default="client,server", help="comma-separated: client, server")
    parser.add_argument("--runs", type=int, default=1, help="runs per size and path (default %(default)s)")
    parser.add_argument("--seconds-per-million-rows", type=float, default=REALISTIC_SECONDS_PER_MILLION_ROWS)
    parser.add_argument("--seconds-per-query", type=float, default=REALISTIC_SECONDS_PER_QUERY)
    parser.add_argument("--json", type=Path, help="write the raw results here (after each size)")
    parser.add_argument("--from-json", type=Path, nargs="+", help="report saved results; run nothing")
    parser.add_argument("--keep", action="store_true", help="keep the emulator and Airflow logs")
    args = parser.parse_args(argv)
    if args.from_json:
        results, cost = load(args.from_json)
    else:
        paths = [p.strip() for p in args.paths.split(",") if p.strip()]
        unknown = set(paths) - {"client", "server"}
        if unknown:
            parser.error(f"unknown paths {sorted(unknown)}; use client, server")
        results = measure(args.sizes, paths, args)
        cost = {
            "seconds_per_million_rows": args.seconds_per_million_rows,
            "seconds_per_query": args.seconds_per_query,
        }
    lines, failures = report(results, cost)
    print("\n".join(lines), flush=True)
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    print("PASS" if not failures else "FAIL", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
