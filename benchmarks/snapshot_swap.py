"""How long two profile snapshots are live at once when a run replaces the snapshot.

``python -m benchmarks.snapshot_swap [--runs 3] [--profiles 20000] [--measure-only]``

Runs the example job (``dags/cja_audiences.yaml``, job ``luma_loyalty``) with ``airflow dags test``
for ``--runs`` consecutive daily intervals against the emulator (its clock running, as AEP's does),
then reads every snapshot batch of the job from the emulator's Catalog. For each replaced snapshot,
the overlap is ``updated`` of the replaced batch (when it was reverted or replayed away) minus
``completed`` of the batch that replaced it (when it became ``success``): the time both were live, on
the emulator's clock (milliseconds). The emulator makes a batch ``success`` when a poll finds its
processing done, so the figure is a lower bound of AEP's (where nobody has to look first).

It only reads what every version of this package writes (batch labels, Catalog's ``completed`` and
``updated``), so it measures an older checkout too: put that on ``PYTHONPATH`` ahead of the installed
package. Exits non-zero when a run fails or (unless ``--measure-only``) any overlap is above zero.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys

from airflow_cja_audiences.runs import BatchLabel
from benchmarks._daily_runs import JOB_ID, daily_runs


def overlaps(batches: dict[str, dict], job_id: str) -> list[dict]:
    """Each replaced snapshot batch of the job with the batch that replaced it and the overlap (ms)."""
    snapshots = sorted(
        (
            b
            for b in batches.values()
            if (label := BatchLabel.parse(b.get("externalId")))
            and label.job_id == job_id
            and label.kind == "snapshot"
            and b.get("completed")
            and b["status"] in ("success", "inactive")
        ),
        key=lambda b: b["completed"],
    )
    rows = []
    for old, new in itertools.pairwise(snapshots):
        if old["status"] != "inactive":
            continue
        rows.append(
            {
                "replaced": old["id"],
                "by": new["id"],
                "replay": bool(new.get("replay")),
                "overlap_ms": max(0, old["updated"] - new["completed"]),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profiles", type=int, default=20_000)
    parser.add_argument("--measure-only", action="store_true", help="exit 0 even when snapshots overlapped")
    args = parser.parse_args(argv)
    with daily_runs("cja-snapshot-swap-", args.profiles) as runs:
        runs.run(args.runs, delay_s=90)
        rows = overlaps(runs.emulator.admin("GET", "/emulator/state")["sandboxes"]["prod"]["batches"], JOB_ID)
    for row in rows:
        print(
            f"{row['replaced']} replaced by {row['by']} ({'batch replay' if row['replay'] else 'explicit revert'}): "
            f"both live for {row['overlap_ms']} ms"
        )
    if not rows:
        print("no snapshot was replaced")
        return 1
    values = [r["overlap_ms"] for r in rows]
    print(
        f"\noverlap over {len(values)} swaps: median {statistics.median(values):g} ms, max {max(values)} ms"
    )
    return 1 if max(values) > 0 and not args.measure_only else 0


if __name__ == "__main__":
    sys.exit(main())
