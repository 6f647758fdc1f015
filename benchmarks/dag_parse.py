"""DAG parse cost: importing our DAG file vs an empty DAG file (target: <= 150 ms more; see
docs/ARCHITECTURE.md, "Performance targets"); exit 1 when missed.

Each measurement runs in a fresh interpreter, as the DAG processor's parsing does: Airflow's SDK is
imported first in both cases (every DAG file pays that), then the DAG file is executed and timed.
The two kinds alternate, so machine noise hits both alike; medians are compared.

    python -m benchmarks.dag_parse [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_MS = 150.0

EMPTY_DAG = """
from datetime import datetime
from airflow.sdk import DAG
with DAG("empty", schedule=None, start_date=datetime(2026, 1, 1)):
    pass
"""

MEASURE = """
import sys, time, runpy
import airflow.sdk  # noqa: F401  (both kinds of DAG file pay for the SDK)
from airflow.sdk import DAG  # noqa: F401
start = time.perf_counter()
runpy.run_path(sys.argv[1])
elapsed = time.perf_counter() - start
heavy = sorted(m for m in ("psycopg", "psycopg2", "duckdb", "sqlglot", "aiohttp", "pandas", "starlette",
                           "uvicorn", "aep_emulator") if m in sys.modules)
print(f"{elapsed * 1000:.3f} {','.join(heavy) or '-'}")
"""


def _measure(path: Path) -> tuple[float, str]:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path)], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout.split()
    return float(out[0]), out[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args(argv)
    ours = ROOT / "dags" / "cja_audiences.py"
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty_dag.py"
        empty.write_text(EMPTY_DAG)
        _measure(empty), _measure(ours)  # warm the OS file cache for both
        empty_ms, ours_ms, heavy = [], [], "-"
        for _ in range(args.runs):
            empty_ms.append(_measure(empty)[0])
            ms, heavy = _measure(ours)
            ours_ms.append(ms)
    e, o = statistics.median(empty_ms), statistics.median(ours_ms)
    extra = o - e
    print(
        f"empty DAG file:  median {e:7.1f} ms  (min {min(empty_ms):.1f}, max {max(empty_ms):.1f}, n={args.runs})"
    )
    print(
        f"our DAG file:    median {o:7.1f} ms  (min {min(ours_ms):.1f}, max {max(ours_ms):.1f}, n={args.runs})"
    )
    print(
        f"extra parse cost: {extra:.1f} ms (target <= {TARGET_MS:.0f} ms): {'OK' if extra <= TARGET_MS else 'MISSED'}"
    )
    print(f"heavy modules loaded by our DAG file: {heavy}")
    return 0 if extra <= TARGET_MS and heavy == "-" else 1


if __name__ == "__main__":
    sys.exit(main())
