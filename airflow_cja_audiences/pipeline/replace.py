"""Publishing a batch: what it replaces, when it must not, and what to revert afterwards (pure).

Order matters for "nothing already published is lost": the shrink guard runs *before* the batch is
completed (a tripped guard aborts the new batch; the old snapshot stays), the batch is completed and
waited for, and only once it succeeded are the batches it replaces reverted. A snapshot batch created
with ``replay.predecessors`` has had them taken out by AEP the moment it succeeded (Batch Ingestion,
"Replay a batch": https://developer.adobe.com/experience-platform-apis/references/batch-ingestion/);
what is still live afterwards is the fallback this module reverts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from airflow_cja_audiences.errors import AepConfigError, AepObjectFailedError
from airflow_cja_audiences.models import Batch
from airflow_cja_audiences.pipeline.batches import LabelOf, events_batches, live_batches
from airflow_cja_audiences.pipeline.ports import BatchActions, BatchReader
from airflow_cja_audiences.pipeline.refusals import OverlappingEventsError, ShrinkGuardError
from airflow_cja_audiences.runs import BatchLabel, overlaps

log = logging.getLogger(__name__)


def parse_label(external_id: str) -> BatchLabel:
    """The batch label a publish task was given (its ``external_id`` parameter)."""
    label = BatchLabel.parse(external_id)
    if label is None:
        raise AepConfigError(f"external_id {external_id!r} is not a batch label of this package")
    return label


def loaded_records(load_results: Any) -> int:
    """The records the load tasks wrote: a list of partition results (client path), or one batch
    query's result (server path); anything else counts nothing."""
    loaded = [load_results] if isinstance(load_results, dict) else (load_results or [])
    return sum(int(r.get("records", 0)) for r in loaded if isinstance(r, dict))


def predecessors(
    ingestion: BatchActions,
    dataset_id: str,
    label: BatchLabel,
    batch_id: str | None,
    labels: LabelOf | None = None,
) -> list[Batch]:
    """The live batches publishing ``batch_id`` (labelled ``label``) replaces; for events, first
    :func:`check_disjoint` against the listing."""
    batches = list(ingestion.list_batches(dataset_id))
    if label.interval is not None:
        check_disjoint(batches, label, batch_id, labels)
    return [b for b in live_batches(ingestion, dataset_id, label, batches, labels=labels) if b.id != batch_id]


def check_disjoint(
    batches: Sequence[Batch], label: BatchLabel, batch_id: str | None, labels: LabelOf | None = None
) -> None:
    """Live events intervals stay disjoint: refuse to publish next to a live batch that overlaps this
    one's interval without lying inside it (prepare_events widens the interval over every overlapping
    batch; one that went live since then means the plan is stale)."""
    mine = label.interval
    for batch, other in events_batches(batches, label.job_id, labels):
        if batch.id == batch_id or not batch.is_success:
            continue
        if mine and other.interval and overlaps(mine, other.interval) and not label.supersedes(other):
            raise OverlappingEventsError(
                f"events batch {batch.id} [{other.scope}] went live after this run planned [{label.scope}] and "
                f"overlaps it; publishing both would duplicate events. Clear this run's prepare_events task "
                f"(and its downstream tasks) to plan again.",
                advice="plan again: clear prepare_events and its downstream tasks",
            )


@dataclass(frozen=True)
class Shrink:
    """The shrink guard's finding: the new batch has ``records``, the live ones ``before``."""

    records: int
    before: int
    guard: float

    @property
    def message(self) -> str:
        return (
            f"shrink guard: the new snapshot has {self.records} records, the live one {self.before}; that is a "
            f"drop of more than {self.guard:.0%}. The live snapshot is kept. If the drop is real (audiences "
            f"emptied, members left), trigger the DAG with force_replace=true."
        )


def shrink(records: int, previous: Sequence[Batch], guard: float | None) -> Shrink | None:
    """A drop of more than ``guard`` (a fraction) from the live batches' records, else None (also
    without a guard or without anything live)."""
    if guard is None or not previous:
        return None
    before = sum(b.record_count for b in previous)
    return None if records >= (1.0 - guard) * before else Shrink(records, before, guard)


def enforce_shrink_guard(
    ingestion: BatchActions,
    *,
    batch_id: str | None,
    records: int,
    previous: Sequence[Batch],
    guard: float | None,
    force: bool,
) -> None:
    """Refuse (and take the new batch back) when the new snapshot shrank past the guard, unless forced.

    An open batch is aborted; a batch query's batch is live already and is reverted. Retrying would not
    change the numbers, so the refusal is permanent."""
    found = shrink(records, previous, guard)
    if found is None:
        return
    message = found.message
    if force:
        log.warning("%s -- forced, replacing anyway", message)
        return
    if batch_id:
        if ingestion.get_batch(batch_id).is_success:  # a batch query's batch is live already
            ingestion.revert_batch(batch_id)
            message += f" The new batch {batch_id} is reverted."
        else:
            ingestion.abort_batch(batch_id)
    raise ShrinkGuardError(message, advice="trigger the DAG with force_replace=true if the drop is real")


def row_errors(ingestion: BatchActions, batch_id: str) -> str:
    """The first failed records' messages (Data Access row diagnostics), for a failure message."""
    reasons = ingestion.get_row_errors(batch_id, limit=5)
    return (
        "; ".join(f"{(r.get('_errors') or [{}])[0].get('message', r)}" for r in reasons)
        or "no row diagnostics"
    )


def replayed_away(ingestion: BatchReader, batch_id: str) -> list[str]:
    """The predecessors ``batch_id`` replaced by replay (listed in its ``replay`` and no longer live)."""
    batch = ingestion.get_batch(batch_id)
    return [
        str(old_id)
        for old_id in (batch.replay or {}).get("predecessors") or []
        if not ingestion.get_batch(str(old_id)).is_success
    ]


def verdict(
    ingestion: BatchActions, *, batch_id: str, ok: bool, status: str, failed_records: int, errors: str
) -> str:
    """Catalog's verdict on the completed batch: return its status when it may stay live, else raise.

    A batch that succeeded with failed records is reverted (a partial snapshot must not stay visible;
    the previous one is still live) - unless it already replaced its predecessors by replay, which
    would leave no snapshot at all: then it stays and the task fails, naming the records. A failed
    batch fails the task for good: a retry would read the same failed batch again."""
    if ok and failed_records:
        replaced = replayed_away(ingestion, batch_id)
        if replaced:
            raise AepObjectFailedError(
                f"batch {batch_id} {status} with {failed_records} failed records: {errors}. It replaced "
                f"{replaced} by batch replay when it succeeded, so it stays live (reverting it would leave "
                f"no snapshot); the {failed_records} failed records are missing from it. First failed records: "
                f"{row_errors(ingestion, batch_id)}.",
                what=f"batch {batch_id}",
                state=status,
                permanent=True,
                advice="fix the failed records' cause, then trigger a new run",
            )
        ingestion.revert_batch(batch_id)
        ok, status = False, f"{status} with {failed_records} failed records (reverted)"
    if not ok:
        raise AepObjectFailedError(
            f"batch {batch_id} {status}: {errors}. First failed records: {row_errors(ingestion, batch_id)}. "
            f"The previous data is untouched. See AEP > Monitoring > Batches.",
            what=f"batch {batch_id}",
            state=status,
            permanent=True,
            advice="the batch cannot be published any more: fix the cause, then clear the whole DAG run "
            "(or trigger a new one) to load a new batch",
        )
    return status


def revert_replaced(
    ingestion: BatchActions, batch_id: str | None, records: int, previous: Sequence[Batch]
) -> dict[str, Any]:
    """Revert what the new batch replaces and is still live (``previous``, listed after it succeeded);
    return the publish result ``{batch_id, records, replaced_batch_ids}`` (replay's and reverted)."""
    replayed: list[str] = []
    if batch_id:
        replayed = [str(p) for p in (ingestion.get_batch(batch_id).replay or {}).get("predecessors") or []]
    if replayed:
        log.info("Batch %s replaced %s by batch replay when it succeeded", batch_id, replayed)
    for old in previous:
        ingestion.revert_batch(old.id)
        log.info(
            "Reverted batch %s (%d records), replaced by %s%s",
            old.id,
            old.record_count,
            batch_id,
            " (batch replay did not cover it)" if replayed else "",
        )
    return {
        "batch_id": batch_id,
        "records": records,
        "replaced_batch_ids": replayed + [b.id for b in previous if b.id not in replayed],
    }
