"""The end state every reliability case must reach: one live snapshot (and events batch) equal to
the ground truth, nothing created twice, one export job per exporting run."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from airflow_cja_audiences.config import RefreshJob

from aep_truth import JobView

_COMPACT = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z")


def _iso(compact: str) -> str:
    """``20261127T020000Z`` (a batch label's interval bound) -> ``2026-11-27T02:00:00Z``."""
    y, mo, d, h, mi, s = _COMPACT.fullmatch(compact).groups()  # type: ignore[union-attr]
    return f"{y}-{mo}-{d}T{h}:{mi}:{s}Z"


def assert_converged(view: JobView, job: RefreshJob) -> dict[str, set[tuple]]:
    """Exactly one live snapshot batch whose records equal the ground truth observed when its export
    ran (one record per person), and the same for the run's events interval. Returns the snapshot."""
    profile = view.dataset_id(job.names.profile_dataset)
    live = view.live_batches(profile, "snapshot")
    assert len(live) == 1, f"{len(live)} live snapshot batches: {[b.id for b in live]}"
    snapshot = view.snapshot_records(profile)
    assert snapshot == view.truth_snapshot(live[0].observed_at), (
        "the live snapshot differs from the ground truth"
    )
    if job.publish_events:
        events = view.dataset_id(job.names.event_dataset)
        (batch,) = view.live_batches(events, "events")
        start, end = (_iso(bound) for bound in batch.label.scope.split("_"))
        view.check_events(events, start, end, exact=False, export_dataset_name=job.names.export_dataset)
    return snapshot


def duplicates(emu: Any, sandbox: str = "prod") -> dict[str, list[str]]:
    """What exists more than once (a retry must never create a second one): datasets by name,
    schemas and field groups by title, identity descriptors by schema and field."""
    state = emu.admin.state()["sandboxes"][sandbox]

    def repeated(values: list[Any]) -> list[str]:
        return sorted(str(v) for v, n in Counter(values).items() if n > 1)

    return {
        "datasets": repeated([d["name"] for d in state["datasets"].values()]),
        "schemas": repeated([s["title"] for s in state["schemas"]]),
        "field groups": repeated([g["title"] for g in state["fieldGroups"]]),
        "descriptors": repeated(
            [(d.get("xdm:sourceSchema"), d.get("xdm:sourceProperty")) for d in state["descriptors"]]
        ),
    }


def export_jobs_of(emu: Any, job: RefreshJob, sandbox: str = "prod") -> list[dict]:
    """The export jobs written into this job's export dataset."""
    state = emu.admin.state()["sandboxes"][sandbox]
    export_dataset = {i for i, d in state["datasets"].items() if d["name"] == job.names.export_dataset}
    return [j for j in state["exportJobs"] if j["destination"].get("datasetId") in export_dataset]
