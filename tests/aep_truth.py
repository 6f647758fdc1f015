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

from airflow_cja_audiences.runs import BatchLabel, parse_utc


def _iso(epoch_seconds: int) -> str:
    return datetime.fromtimestamp(epoch_seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class LiveBatch:
    id: str
    label: BatchLabel
    observed_at: str  # RFC 3339: the instant the export this batch was read from reflects


class JobView:
    """One job's datasets and live batches in the emulator's sandbox, with ground-truth helpers."""

    def __init__(
        self, emu: Any, job_id: str, audiences: list[str], tenant: str, sandbox: str = "prod"
    ) -> None:
        self.emu, self.job_id, self.audiences, self.tenant, self.sandbox = (
            emu,
            job_id,
            audiences,
            tenant,
            sandbox,
        )

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
            if (
                batch["status"] != "success"
                or label is None
                or label.job_id != self.job_id
                or label.kind != kind
                or not any(o.get("id") == dataset_id for o in batch.get("relatedObjects", []))
            ):
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
        return {
            r["personID"]: {
                (m["audienceMembershipId"], m["status"], m["lastQualificationTime"])
                for m in r[f"_{self.tenant}"]["audienceMembership"]
            }
            for r in records
        }

    def truth_snapshot(self, at: str) -> dict[str, set[tuple]]:
        truth: dict[str, set[tuple]] = defaultdict(set)
        for row in self.emu.admin.snapshot(self.audiences, ["realized", "existing"], at=at):
            truth[row["email"]].add((row["audience_id"], row["status"], row["last_qualification_time"]))
        return dict(truth)

    # -- events ------------------------------------------------------------------------------------
    def event_records(self, dataset_id: str, start: str, end: str) -> Counter:
        """Live event records whose ``timestamp`` is in [start, end), as a multiset (duplicates count)."""
        t = f"_{self.tenant}"
        return Counter(
            (r[t]["personID"], r[t]["audienceMembershipId"], r[t]["audienceEventType"], r["timestamp"])
            for r in self.emu.admin.dataset_records(dataset_id)
            if start <= r["timestamp"] < end
        )

    def truth_transitions(self, start: str, end: str) -> Counter:
        """What really happened in [start, end): the emulator's membership timeline (first principles)."""
        return Counter(
            (t["email"], t["audience_id"], t["event"], t["time"])
            for t in self.emu.admin.transitions(self.audiences, start, end)
        )

    def export_times(self, export_dataset_name: str) -> list[str]:
        """The instants the job's successful exports reflect (their jobs' ``creationTime``)."""
        state = self._state()
        dataset = self.dataset_id(export_dataset_name)
        return sorted(
            _iso(j["creationTime"] // 1000)
            for j in state["exportJobs"]
            if j["status"] == "SUCCEEDED" and j["destination"].get("datasetId") == dataset
        )

    def provable_events(self, start: str, end: str, observed_at: list[str]) -> set[tuple]:
        """The transitions in [start, end) that AEP's statuses at the given instants still show: an entry
        while ``realized`` (its lastQualificationTime), an exit while ``exited``. From the emulator's
        status model (what an export contains), not from the provider's SQL."""
        shown = set()
        for at in observed_at:
            for row in self.emu.admin.snapshot(self.audiences, ["realized", "exited"], at=at):
                if start <= row["last_qualification_time"] < end:
                    event = "entered" if row["status"] == "realized" else "exited"
                    shown.add((row["email"], row["audience_id"], event, row["last_qualification_time"]))
        return shown

    def check_events(
        self, dataset_id: str, start: str, end: str, *, exact: bool, export_dataset_name: str | None = None
    ) -> Counter:
        """The live events with a time in [start, end): no duplicate, each one a true transition at its
        true time; ``exact``: all of them; else at least every one AEP's exports could show."""
        records = self.event_records(dataset_id, start, end)
        duplicated = {k: n for k, n in records.items() if n > 1}
        assert not duplicated, (
            f"[{start}, {end}): {len(duplicated)} events published more than once: "
            f"{list(duplicated.items())[:5]}"
        )
        truth = self.truth_transitions(start, end)
        false = set(records) - set(truth)
        assert not false, (
            f"[{start}, {end}): {len(false)} published events never happened: {sorted(false)[:5]}"
        )
        if exact:
            missing = set(truth) - set(records)
            assert not missing, (
                f"[{start}, {end}): {len(missing)} transitions not published: {sorted(missing)[:5]}"
            )
        else:
            assert export_dataset_name, "a non-exact check needs the export dataset to know what AEP showed"
            shown = self.provable_events(start, end, self.export_times(export_dataset_name))
            missing = shown - set(records)
            assert not missing, (
                f"[{start}, {end}): {len(missing)} events an export showed were not published: "
                f"{sorted(missing)[:5]}"
            )
        return records

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
            f"only in truth: {sorted(set(truth) - set(records))[:5]}"
        )
        return live[0].id

    def check_interval_events(
        self, dataset_id: str, start: str, end: str, export_dataset_name: str
    ) -> tuple[str, int]:
        """One live events batch covering [start, end) (its own, or the hull of intervals that
        overlapped it), and the dataset's events in that interval are true transitions at their true
        times, none twice, and every one AEP's exports showed (:meth:`check_events`). Returns (batch, n)."""
        day = (parse_utc(start), parse_utc(end))
        live = [
            b
            for b in self.live_batches(dataset_id, "events")
            if b.label.interval and b.label.interval[0] < day[1] and day[0] < b.label.interval[1]
        ]
        assert len(live) <= 1, f"[{start}, {end}): overlapping live events batches {[b.id for b in live]}"
        if live:
            assert live[0].label.interval[0] <= day[0] and day[1] <= live[0].label.interval[1], live
        records = self.check_events(
            dataset_id, start, end, exact=False, export_dataset_name=export_dataset_name
        )
        if not records:  # an interval without changes publishes no batch of its own (a hull may cover it)
            assert not live or live[0].label.interval != day, (
                f"[{start}, {end}): no records, but live batches {live}"
            )
            return (live[0].id if live else ""), 0
        assert live, f"[{start}, {end}): {sum(records.values())} events but no live events batch covers them"
        return live[0].id, sum(records.values())


def interval_scope(start: str, end: str) -> str:
    """The ``scope`` part of an events batch label for [start, end) (see ``BatchLabel.for_run``)."""

    def compact(iso: str) -> str:
        return iso.replace("-", "").replace(":", "")

    return f"{compact(start)}_{compact(end)}"
