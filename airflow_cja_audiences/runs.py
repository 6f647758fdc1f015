"""What one DAG run publishes, and how its batches are labelled in AEP (pure, no Airflow import).

A run publishes the profile **snapshot** (who is in which audience now) and/or the membership
**change events** of its data interval. Scheduled and manual runs refresh the snapshot; backfill
runs only fill their interval's events, so history never overwrites the current snapshot.

Batches carry a label in ``externalId`` (job, kind, scope, export batch, run). AEP keeps it with the
batch, so "which batches does this one replace" and "what did the previous snapshot export" are
answered from AEP itself, not from Airflow's metadata (which a user may clear).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

from airflow_cja_audiences import validation as v

Kind = Literal["snapshot", "events"]
EXIT_RETENTION = timedelta(days=30)  # AEP forgets exited memberships after 30 days
_LABEL_PREFIX = "cjaaud"
_SEP = "|"


def utc_iso(instant: datetime) -> str:
    """RFC 3339 UTC with a ``Z`` and whole seconds (the form the SQL builder accepts)."""
    if instant.tzinfo is None:
        raise ValueError(f"{instant!r} has no time zone")
    return instant.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _compact(iso: str) -> str:
    return iso.replace("-", "").replace(":", "")


@dataclass(frozen=True)
class RunPlan:
    """The decision of one run: what to publish, for which interval, and with which export."""

    snapshot: bool
    events: bool
    interval_start: str | None  # RFC 3339 UTC; both set when events is True
    interval_end: str | None
    warnings: tuple[str, ...] = ()

    @property
    def export_statuses(self) -> tuple[str, ...]:
        return ("realized", "existing", "exited") if self.events else ("realized", "existing")

    @property
    def qualification_window(self) -> tuple[str | None, str | None]:
        """The export's ``segmentQualificationTime`` filter: only for events-only (backfill) runs;
        the snapshot export must never be time-filtered."""
        if self.events and not self.snapshot:
            return self.interval_start, self.interval_end
        return None, None

    def to_dict(self) -> dict[str, object]:
        return {"snapshot": self.snapshot, "events": self.events, "interval_start": self.interval_start,
                "interval_end": self.interval_end, "export_statuses": list(self.export_statuses),
                "qualification_start": self.qualification_window[0],
                "qualification_end": self.qualification_window[1], "warnings": list(self.warnings)}


def plan_run(*, run_type: str, interval: tuple[datetime, datetime] | None, publish_events: bool,
             now: datetime, manual_interval: tuple[datetime, datetime] | None = None,
             force_snapshot: bool | None = None) -> RunPlan:
    """Decide what a run publishes.

    :param run_type: Airflow's DagRunType value (``scheduled``, ``manual``, ``backfill``, ...).
    :param interval: the run's data interval, when it has one (manual runs have none).
    :param manual_interval: an events interval given in a manual run's trigger form.
    :param force_snapshot: override (e.g. a manual events-only run sets False).
    """
    backfill = run_type in ("backfill", "backfill_job")  # the value, or the enum member name
    snapshot = not backfill if force_snapshot is None else force_snapshot
    window = manual_interval or interval
    events = publish_events and window is not None
    warnings: list[str] = []
    start = end = None
    if window is not None and events:
        s, e = window
        if e <= s:
            raise ValueError(f"data interval end {utc_iso(e)} is not after its start {utc_iso(s)}")
        if e > now:
            raise ValueError(f"data interval [{utc_iso(s)}, {utc_iso(e)}) ends in the future ({utc_iso(now)})")
        start, end = utc_iso(s), utc_iso(e)
        if s < now - EXIT_RETENTION:
            warnings.append(f"interval [{start}, {end}) starts more than {EXIT_RETENTION.days} days ago: AEP has "
                            f"purged exits older than {utc_iso(now - EXIT_RETENTION)}, so this interval's exited "
                            f"events are incomplete (entries are complete only for people still in the audience)")
    if not snapshot and not events:
        raise ValueError("this run would publish nothing: a backfill run needs an interval and publish_events")
    return RunPlan(snapshot=snapshot, events=events, interval_start=start, interval_end=end,
                   warnings=tuple(warnings))


@dataclass(frozen=True)
class BatchLabel:
    """Identity of a batch we write, stored in its ``externalId``."""

    job_id: str
    kind: Kind
    scope: str  # "current" for snapshots; the compact interval for events
    export_batch_id: str
    run_key: str

    def __post_init__(self) -> None:
        v.job_id(self.job_id)
        v.batch_id(self.export_batch_id)
        for part in (self.scope, self.run_key):
            if not part or _SEP in part:
                raise ValueError(f"invalid batch label part {part!r}")

    @classmethod
    def for_run(cls, *, job_id: str, kind: Kind, export_batch_id: str, run_id: str,
                interval_start: str | None = None, interval_end: str | None = None) -> BatchLabel:
        if kind == "events":
            if not (interval_start and interval_end):
                raise ValueError("an events batch needs its interval")
            scope = f"{_compact(interval_start)}_{_compact(interval_end)}"
        else:
            scope = "current"
        run_key = hashlib.sha256(run_id.encode()).hexdigest()[:12]
        return cls(job_id=job_id, kind=kind, scope=scope, export_batch_id=export_batch_id, run_key=run_key)

    @property
    def external_id(self) -> str:
        return _SEP.join((_LABEL_PREFIX, self.job_id, self.kind, self.scope, self.export_batch_id, self.run_key))

    @classmethod
    def parse(cls, external_id: str | None) -> BatchLabel | None:
        """The label of one of our batches, or None for any other batch."""
        parts = (external_id or "").split(_SEP)
        if len(parts) != 6 or parts[0] != _LABEL_PREFIX or parts[2] not in ("snapshot", "events"):
            return None
        try:
            return cls(job_id=parts[1], kind=parts[2], scope=parts[3], export_batch_id=parts[4],  # type: ignore[arg-type]
                       run_key=parts[5])
        except ValueError:
            return None

    def same_slot(self, other: BatchLabel) -> bool:
        """Whether ``other`` holds the data this batch replaces (same job, kind and scope)."""
        return (self.job_id, self.kind, self.scope) == (other.job_id, other.kind, other.scope)
