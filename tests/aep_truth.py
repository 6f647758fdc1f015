"""What the emulator holds for one job, next to its ground truth (for tests that run the DAG for real).

Each published batch carries its label (``runs.BatchLabel``) in ``externalId``: kind, interval and
the export batch it was read from. The export job that wrote that export batch reflects the
emulator clock at the second of its ``creationTime``, so the ground truth to compare with is the
truth *observed at that second*, not at the time the test looks (memberships keep changing).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from airflow_cja_audiences.runs import BatchLabel


def _iso(epoch_seconds: int) -> str:
    return datetime.fromtimestamp(epoch_seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class LiveBatch:
    id: str
    label: BatchLabel
    observed_at: str  # RFC 3339: the instant the export this batch was read from reflects


class JobView:
    """One job's datasets and live batches in the emulator's sandbox, with ground-truth helpers."""

    def __init__(self, emu: Any, job_id: str, audiences: list[str], tenant: str, sandbox: str = "prod") -> None:
        self.emu, self.job_id, self.audiences, self.tenant, self.sandbox = emu, job_id, audiences, tenant, sandbox

    def _state(self) -> dict:
        return self.emu.admin.state()["sandboxes"][self.sandbox]

    def dataset_id(self, name: str) -> str:
        matches = [i for i, d in self._state()["datasets"].items() if d["name"] == name]
        assert len(matches) == 1, f"{len(matches)} datasets named {name!r}"
        return matches[0]

    def live_batches(self, dataset_id: str, kind: str) -> list[LiveBatch]:
        """Successful batches of this job and kind in the dataset (reverted/aborted ones are not live)."""
        state = self._state()
        export_time = {j["destination"].get("batchId"): j["creationTime"] for j in state["exportJobs"]}
        found = []
        for batch in state["batches"].values():
            label = BatchLabel.parse(batch.get("externalId"))
            if (batch["status"] != "success" or label is None or label.job_id != self.job_id or label.kind != kind
                    or not any(o.get("id") == dataset_id for o in batch.get("relatedObjects", []))):
                continue
            found.append(LiveBatch(batch["id"], label, _iso(export_time[label.export_batch_id] // 1000)))
        return found

    # -- snapshot ----------------------------------------------------------------------------------
    def snapshot_records(self, dataset_id: str) -> dict[str, set[tuple]]:
        """personID -> {(audience, status, lastQualificationTime)} of the live records (one per person)."""
        records = self.emu.admin.dataset_records(dataset_id)
        people = [r["personID"] for r in records]
        duplicated = [p for p, n in Counter(people).items() if n > 1]
        assert not duplicated, f"people with more than one live record: {duplicated[:5]}"
        return {r["personID"]: {(m["audienceMembershipId"], m["status"], m["lastQualificationTime"])
                                for m in r[f"_{self.tenant}"]["audienceMembership"]} for r in records}

    def truth_snapshot(self, at: str) -> dict[str, set[tuple]]:
        truth: dict[str, set[tuple]] = defaultdict(set)
        for row in self.emu.admin.snapshot(self.audiences, ["realized", "existing"], at=at):
            truth[row["email"]].add((row["audience_id"], row["status"], row["last_qualification_time"]))
        return dict(truth)

    # -- events ------------------------------------------------------------------------------------
    def event_records(self, dataset_id: str, start: str, end: str) -> Counter:
        """Live event records whose ``timestamp`` is in [start, end), as a multiset (duplicates count)."""
        t = f"_{self.tenant}"
        return Counter((r[t]["personID"], r[t]["audienceMembershipId"], r[t]["audienceEventType"], r["timestamp"])
                       for r in self.emu.admin.dataset_records(dataset_id) if start <= r["timestamp"] < end)

    def truth_events(self, start: str, end: str, observed_at: str) -> Counter:
        return Counter((e["email"], e["audience_id"], e["event"], e["time"])
                       for e in self.emu.admin.events(self.audiences, start, end, observed_at=observed_at))


    # -- checks (assertions) -----------------------------------------------------------------------
    def check_snapshot(self, dataset_id: str) -> str:
        """The live profile snapshot equals the ground truth at its export; returns its batch id."""
        live = self.live_batches(dataset_id, "snapshot")
        assert len(live) == 1, f"expected exactly one live snapshot batch, got {[b.id for b in live]}"
        records = self.snapshot_records(dataset_id)
        truth = self.truth_snapshot(at=live[0].observed_at)
        assert records == truth and records, (
            f"snapshot differs from the ground truth at {live[0].observed_at}: {len(records)} people vs {len(truth)}; "
            f"only in records: {sorted(set(records) - set(truth))[:5]}, "
            f"only in truth: {sorted(set(truth) - set(records))[:5]}")
        return live[0].id

    def check_interval_events(self, dataset_id: str, start: str, end: str) -> tuple[str, int]:
        """Exactly one live events batch for [start, end), and the dataset's events in that interval
        equal the ground truth observed at that batch's export (duplicates counted). Returns (batch, n)."""
        scope = interval_scope(start, end)
        live = [b for b in self.live_batches(dataset_id, "events") if b.label.scope == scope]
        records = self.event_records(dataset_id, start, end)
        truth = self.truth_events(start, end, live[0].observed_at) if len(live) == 1 else None
        if not records:  # an interval without changes publishes nothing (no batch)
            assert not live and not truth, f"[{start}, {end}): no records, but live batches {live} / truth {truth}"
            return "", 0
        assert len(live) == 1, f"[{start}, {end}): expected one live events batch, got {[b.id for b in live]}"
        assert records == truth, (f"[{start}, {end}) events differ from the ground truth at {live[0].observed_at}: "
                                  f"extra {list((records - truth).items())[:5]}, "
                                  f"missing {list((truth - records).items())[:5]}")
        return live[0].id, sum(records.values())


def interval_scope(start: str, end: str) -> str:
    """The ``scope`` part of an events batch label for [start, end) (see ``BatchLabel.for_run``)."""
    def compact(iso: str) -> str:
        return iso.replace("-", "").replace(":", "")
    return f"{compact(start)}_{compact(end)}"
