"""Jobs-file scale: the time to import the DAG file (and to serialize its DAGs) for 10, 100 and 1,000 jobs.

The DAG processor imports the DAG file under ``dagbag_import_timeout`` (30 s by default), then
serializes every DAG it built, all of it under ``dag_file_processor_timeout`` (50 s by default). Each
measurement runs in a fresh interpreter, as the DAG processor's parsing does: Airflow's SDK is
imported first (every DAG file pays that), then the DAG file is executed and timed, then its DAGs
are serialized the way the DAG processor does and timed. Targets: importing 1,000 jobs takes under
5 s, and the cost per job grows roughly linearly (per job at 1,000 at most 1.5x per job at 100).

For scale, the same run measures Airflow's own floor: a DAG file building as many DAGs with as many
tasks (chained EmptyOperators, no params), so a loaded machine shows up in both; the ratio of the two
(import + serialize) is what this package adds on top of Airflow, and must stay at most 3x at 1,000
jobs. The absolute target assumes a machine that is not shared: on a loaded one the floor itself
grows, and the ratio is the figure to trust.

    python -m benchmarks.dag_import [--runs 3] [--jobs 10,100,1000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPORT_TARGET_S = 5.0  # 1,000 jobs
LINEAR_FACTOR = 1.5
FLOOR_FACTOR = 3.0  # import + serialize of 1,000 jobs against Airflow's floor, same run
TASKS_PER_DAG = 15  # a refresh DAG with events: 13 tasks and 2 mapped ones

MEASURE = """
import sys, time, runpy
import airflow.sdk  # noqa: F401  (every DAG file pays for the SDK)
from airflow.sdk import DAG
start = time.perf_counter()
module = runpy.run_path(sys.argv[1])
imported = time.perf_counter() - start
dags = [d for d in module.values() if isinstance(d, DAG)]
from airflow.serialization.serialized_objects import DagSerialization
start = time.perf_counter()
for dag in dags:
    DagSerialization.to_dict(dag)
serialized = time.perf_counter() - start
broken = sum("config-error" in d.tags for d in dags)
print(f"{imported:.4f} {serialized:.4f} {len(dags)} {broken}")
"""


FLOOR_DAG_FILE = """
import os
from datetime import datetime
from airflow.sdk import DAG, chain
from airflow.providers.standard.operators.empty import EmptyOperator
for i in range(int(os.environ["FLOOR_DAGS"])):
    with DAG(f"floor_{i}", schedule="0 2 * * *", start_date=datetime(2026, 1, 1)) as dag:
        chain(*[EmptyOperator(task_id=f"t{k}") for k in range(int(os.environ["FLOOR_TASKS"]))])
    globals()[dag.dag_id] = dag
"""


def jobs_file(n: int) -> dict:
    """``n`` jobs shaped like real ones: a few audiences by id and by name, the defaults elsewhere."""
    return {
        "version": 1,
        "jobs": [
            {
                "job_id": f"job_{i:05d}",
                "description": f"Audiences of team {i}",
                "schedule": "0 2 * * *",
                "audiences": [
                    {"id": f"{i:08d}-2b4d-4bbd-9aa4-7c3b3f54d2e1"},
                    {"name": f"Gold members {i}", "display_name": "Gold"},
                    {"name": "Cart abandoners"},
                ],
                "identity": {"field": "_{tenant}.identification.core.email", "namespace": "Email"},
                "cja_connection_id": "dg_ed1857f3-625b-5060-a501-d2a5ab9d807d",
                "cja_data_view_id": "dv_bc3ac866f8fb5d51",
            }
            for i in range(n)
        ],
    }


def measure(dag_file: Path, config: Path, **extra_env: str) -> tuple[float, float, int, int]:
    env = {**os.environ, "CJA_AUDIENCES_CONFIG": str(config), **extra_env}
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(dag_file)],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    ).stdout.split()
    return float(out[0]), float(out[1]), int(out[2]), int(out[3])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", default="10,100,1000")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.jobs.split(",")]
    dag_file = ROOT / "dags" / "cja_audiences.py"
    results: dict[int, tuple[float, float]] = {}
    floors_by_n: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        floor_file = Path(tmp) / "floor_dags.py"
        floor_file.write_text(FLOOR_DAG_FILE)
        for n in sizes:
            config = Path(tmp) / f"jobs_{n}.json"
            config.write_text(json.dumps(jobs_file(n)))
            runs, floors = [], []
            for _ in range(args.runs):  # alternate, so machine noise hits both alike
                runs.append(measure(dag_file, config))
                floors.append(measure(floor_file, config, FLOOR_DAGS=str(n), FLOOR_TASKS=str(TASKS_PER_DAG)))
            assert all(r[2] == n and r[3] == 0 for r in runs), f"expected {n} valid DAGs, got {runs[0][2:]}"
            imported = statistics.median(r[0] for r in runs)
            serialized = statistics.median(r[1] for r in runs)
            floor = statistics.median(f[0] + f[1] for f in floors)
            results[n] = (imported, serialized)
            floors_by_n[n] = floor
            print(
                f"{n:6d} jobs: import {imported:7.2f} s ({imported / n * 1000:5.1f} ms/job), serialize "
                f"{serialized:7.2f} s ({serialized / n * 1000:5.1f} ms/job); Airflow's floor (as many DAGs of "
                f"{TASKS_PER_DAG} empty tasks, import + serialize) {floor:6.2f} s: ours x{(imported + serialized) / floor:.1f}; "
                f"median of {args.runs}",
                flush=True,
            )
    ok = True
    if 1000 in results:
        t = results[1000][0]
        verdict = "OK" if t < IMPORT_TARGET_S else "MISSED"
        ok &= t < IMPORT_TARGET_S
        print(
            f"import of 1,000 jobs: {t:.2f} s (target < {IMPORT_TARGET_S:.0f} s; Airflow's import timeout 30 s, "
            f"import + serialize {sum(results[1000]):.1f} s of the DAG processor's 50 s): {verdict}"
        )
    if 1000 in results:
        ratio = sum(results[1000]) / floors_by_n[1000]
        ok &= ratio <= FLOOR_FACTOR
        print(
            f"1,000 jobs against Airflow's floor: x{ratio:.1f} (target <= {FLOOR_FACTOR:.0f}x): "
            f"{'OK' if ratio <= FLOOR_FACTOR else 'MISSED'}"
        )
    if 100 in results and 1000 in results and 10 in results:
        # the cost per job beyond the fixed cost (what 10 jobs cost, mostly imports)
        small, mid, big = results[10][0], results[100][0], results[1000][0]
        per_mid, per_big = (mid - small) / 90, (big - small) / 990
        linear = per_big <= LINEAR_FACTOR * per_mid
        ok &= linear
        print(
            f"growth: {per_mid * 1000:.2f} ms/job from 10 to 100 jobs, {per_big * 1000:.2f} ms/job from 10 to 1,000 "
            f"(target <= {LINEAR_FACTOR}x): {'OK' if linear else 'MISSED'}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
