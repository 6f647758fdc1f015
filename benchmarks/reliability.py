"""Reliability figures: run the reliability suite and print its tables (Markdown).

    python -m benchmarks.reliability            # every fault kind on its own too (about 10 minutes)
    python -m benchmarks.reliability --quick    # what `make test` runs (mixed faults; about 5 minutes)

The tables come from the tests themselves (tests/reliability records each case's outcome, retries
per API route and duration), so a figure exists only for a case whose checks passed; a failing case
shows up as a pytest failure and the exit code is non-zero. Faults are seeded: the same commit
injects the same faults on every run; durations vary with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Short column names of the fault-matrix cases in the per-route table.
SHORT = {
    "all of the above, mixed": "mixed",
    "429 with Retry-After: 1": "429+RA",
    "429 without Retry-After": "429",
    "connection reset": "reset",
    "truncated answer": "trunc",
    "lost answer (processed, then dropped)": "lost",
}


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return "" if value is None else str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def retries_text(retries: dict[str, int], limit: int = 4) -> str:
    if not retries:
        return "0"
    top = sorted(retries.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = ", ".join(f"{route} {n}" for route, n in top[:limit])
    more = f", +{len(top) - limit} routes" if len(top) > limit else ""
    return f"{sum(retries.values())} ({shown}{more})"


def short(case: str) -> str:
    if case.startswith("timeout"):
        return "timeout"
    if case.startswith("Query Service"):
        return "QS"
    return SHORT.get(case, case)


def render(tables: dict[str, list[dict]]) -> str:
    out = []
    faults = tables.get("faults", [])
    if faults:
        out += [
            "### Fault matrix (every REST route a refresh calls, 20% per request, seeded)",
            "",
            table(
                [
                    "case",
                    "outcome",
                    "faults injected",
                    "retries (per route: top 4)",
                    "max attempts of one call",
                    "task retries",
                    "time (s)",
                ],
                [
                    [
                        r["case"],
                        r["outcome"],
                        r.get("faults"),
                        retries_text(r["retries"]),
                        r.get("max_attempts"),
                        r.get("task_retries", 0),
                        r["seconds"],
                    ]
                    for r in faults
                ],
            ),
            "",
        ]
        cases = [r for r in faults if r.get("faults_per_route") is not None]
        routes = sorted({route for r in cases for route in (*r["retries"], *r["faults_per_route"])})
        out += [
            "### Retries per API route (retries / faults injected; equal means one retry per fault)",
            "",
            "A lost answer to a create costs no retry: the create is found. A reset on a route the "
            "triggers poll (get_export_job, get_batch) may cost none either: aiohttp re-sends an "
            "idempotent request once, at once, when a reused connection drops.",
            "",
            table(
                ["route", *(short(r["case"]) for r in cases)],
                [
                    [
                        route,
                        *(
                            f"{r['retries'].get(route, 0)}/{r['faults_per_route'].get(route, 0)}"
                            if route in r["retries"] or route in r["faults_per_route"]
                            else ""
                            for r in cases
                        ),
                    ]
                    for route in routes
                ],
            ),
            "",
        ]
    if tables.get("crashes"):
        out += [
            "### Crash matrix (task process SIGKILLed mid-step, then retried)",
            "",
            table(
                [
                    "kill point",
                    "task killed",
                    "request held at the kill",
                    "outcome",
                    "retries in the retry run",
                    "try",
                    "time (s)",
                ],
                [
                    [
                        r["case"],
                        r["killed_task"],
                        r["held"],
                        r["outcome"],
                        retries_text(r["retries"], 3),
                        r["retry_try"],
                        r["seconds"],
                    ]
                    for r in tables["crashes"]
                ],
            ),
            "",
        ]
    if tables.get("tokens"):
        out += [
            "### Token expiry mid-run",
            "",
            table(
                ["case", "outcome", "tokens issued", "closest two (s)", "time (s)"],
                [
                    [r["case"], r["outcome"], r["tokens"], r["min_gap_seconds"], r["seconds"]]
                    for r in tables["tokens"]
                ],
            ),
            "",
        ]
    if tables.get("bad input"):
        rows = tables["bad input"]
        out += [
            f"### Bad input ({len(rows)} cases: AEP state compared before and after each)",
            "",
            table(
                ["case", "caught in", "outcome", "time (s)"],
                [[r["case"], r.get("where"), r["outcome"], r["seconds"]] for r in rows],
            ),
            "",
        ]
    if tables.get("remote failures"):
        out += [
            "### Remote failures (task retries off: the failure itself)",
            "",
            table(
                ["case", "outcome", "retries", "time (s)"],
                [
                    [r["case"], r["outcome"], retries_text(r["retries"]), r["seconds"]]
                    for r in tables["remote failures"]
                ],
            ),
            "",
        ]
    if tables.get("secrets"):
        out += [
            "### Secret scan",
            "",
            table(
                ["case", "outcome", "time (s)"],
                [[r["case"], r["outcome"], r["seconds"]] for r in tables["secrets"]],
            ),
            "",
        ]
    return "\n".join(out)


def describe() -> str:
    def version(dist: str) -> str:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as _version

        try:
            return _version(dist)
        except PackageNotFoundError:
            return "?"

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return (
        f"commit {commit.stdout.strip() or '?'}, Python {platform.python_version()}, "
        f"Airflow {version('apache-airflow')}, {os.cpu_count()} CPUs, {platform.system()} {platform.machine()}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the CI subset (no per-kind fault runs)")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (e.g. -k crash)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cja-reliability-figures-") as tmp:
        figures = Path(tmp) / "figures.json"
        env = {**os.environ, "CJA_RELIABILITY_FIGURES": str(figures)}
        if not args.quick:
            env["CJA_RELIABILITY_FULL"] = "1"
        command = [
            sys.executable,
            "-m",
            "pytest",
            "tests/reliability",
            "-q",
            "-p",
            "no:cacheprovider",
            *args.pytest_args,
        ]
        print(f"$ {' '.join(command[2:])}   ({'quick' if args.quick else 'full'}; {describe()})", flush=True)
        result = subprocess.run(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        summary = [line for line in result.stdout.splitlines() if line.strip()][-15:]
        print("\n".join(summary), flush=True)
        if not figures.exists():
            print("no figures were written (did the suite start?)", file=sys.stderr)
            return result.returncode or 1
        data = json.loads(figures.read_text())
    if args.json:
        args.json.write_text(json.dumps(data, indent=1))
    print()
    print(render(data))
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
