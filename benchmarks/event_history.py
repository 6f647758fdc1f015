"""Consecutive daily runs of the example job: published change events against what really happened.

``python -m benchmarks.event_history [--days 3] [--profiles 20000] [--delay 90]``

Runs the example job (``dags/cja_audiences.yaml``, job ``luma_loyalty``) with ``airflow dags test``
for ``--days`` consecutive daily intervals, the emulator's clock set ``--delay`` seconds after each
interval's end (a scheduler starts a run a little after its tick; the clock keeps running, as AEP's
does). After the last run it compares, per day and event type, the live records of the event
dataset with the emulator's transition timeline (``/emulator/truth/transitions``, first principles):

* ``truth``: transitions that happened in the interval;
* ``published``: live event records with a timestamp in the interval (duplicates counted);
* ``exact``: published events that are a true transition at its true time (person, audience, type,
  time), each counted once;
* ``duplicates`` / ``false``: records beyond the first of one event / records that match no
  transition.

It only uses what every version of this package has (the demo's helpers, from this checkout's
``demo/``, the admin API's transitions and dataset records), so the same script measures an older
checkout's provider: put it on ``PYTHONPATH`` ahead of the installed package. Exits non-zero when a run fails or any published event
is false or duplicated (``--measure-only``: report, exit 0; for measuring an older version).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from datetime import datetime, timedelta

import yaml

import demo
from benchmarks._daily_runs import JOB_ID, daily_runs, iso


def _get_lines(emulator: demo.Emulator, path: str, params: dict) -> list[dict]:
    import requests

    response = requests.get(
        emulator.ready["base_url"] + path, params=params, timeout=120, verify=emulator.ready["ca_bundle"]
    )
    response.raise_for_status()
    return [json.loads(line) for line in response.text.splitlines() if line]


def _compare(
    emulator: demo.Emulator,
    audiences: list[str],
    tenant: str,
    dataset_id: str,
    days: list[tuple[datetime, datetime]],
) -> list[dict]:
    records = _get_lines(emulator, f"/emulator/datasets/{dataset_id}/records", {})
    t = f"_{tenant}"
    published = Counter(
        (r[t]["personID"], r[t]["audienceMembershipId"], r[t]["audienceEventType"], r["timestamp"])
        for r in records
    )
    rows = []
    for start, end in days:
        s, e = iso(start), iso(end)
        truth = {
            (x["email"], x["audience_id"], x["event"], x["time"])
            for x in _get_lines(
                emulator, "/emulator/truth/transitions", {"audience": audiences, "start": s, "end": e}
            )
        }
        day = {k: n for k, n in published.items() if s <= k[3] < e}
        for event in ("entered", "exited"):
            mine = {k: n for k, n in day.items() if k[2] == event}
            real = {k for k in truth if k[2] == event}
            rows.append(
                {
                    "interval": f"[{s}, {e})",
                    "event": event,
                    "truth": len(real),
                    "published": sum(mine.values()),
                    "exact": len(set(mine) & real),
                    "duplicates": sum(n - 1 for n in mine.values()),
                    "false": len(set(mine) - real),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--profiles", type=int, default=20_000)
    parser.add_argument(
        "--delay", type=int, default=90, help="seconds after each interval end the run exports"
    )
    parser.add_argument(
        "--measure-only", action="store_true", help="exit 0 even with false or duplicate events"
    )
    args = parser.parse_args(argv)
    with daily_runs("cja-event-history-", args.profiles) as runs:
        emulator = runs.emulator
        ends = runs.run(args.days, args.delay)
        state = emulator.admin("GET", "/emulator/state")
        sandbox = state["sandboxes"]["prod"]
        job = next(
            j
            for j in yaml.safe_load((demo.ROOT / "dags" / "cja_audiences.yaml").read_text())["jobs"]
            if j["job_id"] == JOB_ID
        )
        names = {a["name"] for a in job["audiences"]}
        audiences = [a["id"] for a in state["audiences"] if a["name"] in names]
        dataset_id = next(
            i
            for i, d in sandbox["datasets"].items()
            if d["name"] == f"CJA audience membership events - {JOB_ID}"
        )
        rows = _compare(
            emulator,
            audiences,
            emulator.ready["tenant"],
            dataset_id,
            [(end - timedelta(days=1), end) for end in ends],
        )
    header = ("interval", "event", "truth", "published", "exact", "duplicates", "false")
    widths = [max(len(str(r[h])) for r in [dict(zip(header, header)), *rows]) for h in header]
    for r in [dict(zip(header, header)), *rows]:
        print("  ".join(str(r[h]).rjust(w) for h, w in zip(header, widths)))
    bad = sum(r["duplicates"] + r["false"] for r in rows)
    print(
        f"\n{bad} duplicate or false events; {sum(r['exact'] for r in rows)} of "
        f"{sum(r['truth'] for r in rows)} true transitions published exactly"
    )
    return 1 if bad and not args.measure_only else 0


if __name__ == "__main__":
    sys.exit(main())
