"""Publish a loaded batch and replace what it supersedes (pipeline steps 6 and 7).

Order matters for "nothing already published is lost": the shrink guard runs *before* the batch is
completed (a tripped guard aborts the new batch; the old snapshot stays), the batch is completed and
waited for deferrably, and only once it succeeded are the batches it replaces reverted, so the
dataset ends with exactly one live batch per slot (the snapshot, or one interval's events).
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from airflow_cja_audiences import hooks, triggers
from airflow_cja_audiences.errors import AepConfigError, AepObjectFailedError
from airflow_cja_audiences.links import AepBatchLink, push_batch_link
from airflow_cja_audiences.operators.base import DEFAULT_DEFERRABLE, AdobeBaseOperator, truthy, validate_event
from airflow_cja_audiences.operators.load import events_batches, live_batches, query_labels
from airflow_cja_audiences.runs import BatchLabel, overlaps


class PublishBatchOperator(AdobeBaseOperator):
    """Complete a loaded batch, wait for Catalog's verdict, then revert the batches it replaces.

    :param dataset_id: the dataset the batch belongs to.
    :param batch_id: the loaded batch (None: nothing to publish, the slot becomes empty).
    :param external_id: the batch's label (:class:`~airflow_cja_audiences.runs.BatchLabel`); batches
        with the same job, kind and scope are the ones replaced.
    :param load_results: the load tasks' return values (their ``records`` are summed).
    :param shrink_guard: refuse to replace when the new batch has fewer than ``(1 - shrink_guard)``
        times the records of the live one (None: no guard, e.g. for events).
    :param force: replace even when the guard would refuse (a manual run's Param).
    :param deferrable: wait in the triggerer rather than in a worker slot.

    XCom (keys): ``batch_id``, ``records``, ``replaced_batch_ids``.
    """

    template_fields = ("sandbox", "dataset_id", "batch_id", "external_id", "load_results", "force", "enabled")
    operator_extra_links = (AepBatchLink(),)

    def __init__(
        self,
        *,
        dataset_id: str,
        batch_id: str | None,
        external_id: str,
        load_results: Any = (),
        shrink_guard: float | None = None,
        force: bool | str = False,
        enabled: bool | str = True,
        poll_interval: float = 15.0,
        wait_timeout: timedelta = timedelta(hours=3),
        deferrable: bool = DEFAULT_DEFERRABLE,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dataset_id = dataset_id
        self.batch_id = batch_id
        self.external_id = external_id
        self.load_results = load_results
        self.shrink_guard = shrink_guard
        self.force = force
        self.enabled = enabled
        self.poll_interval = poll_interval
        self.wait_timeout = wait_timeout
        self.deferrable = deferrable

    # ------------------------------------------------------------------ helpers

    def _label(self) -> BatchLabel:
        label = BatchLabel.parse(self.external_id)
        if label is None:
            raise AepConfigError(f"external_id {self.external_id!r} is not a batch label of this package")
        return label

    def _records(self) -> int:
        # A list of partition results (client path), or one batch query's result (server path).
        loaded = [self.load_results] if isinstance(self.load_results, dict) else (self.load_results or [])
        results = [r for r in loaded if isinstance(r, dict)]
        return sum(int(r.get("records", 0)) for r in results)

    def _predecessors(self) -> list[Any]:
        ingestion = self.hook(hooks.ingestion.BatchIngestionHook)
        label = self._label()
        batches = list(ingestion.list_batches(self.dataset_id))
        if label.interval is not None:
            self._check_disjoint(batches, label)
        return [
            b
            for b in live_batches(ingestion, self.dataset_id, label, batches, labels=query_labels(self))
            if b.id != self.batch_id
        ]

    def _check_disjoint(self, batches: list[Any], label: BatchLabel) -> None:
        """Live events intervals stay disjoint: refuse to publish next to a live batch that overlaps
        this one's interval without lying inside it (prepare_events widens the interval over every
        overlapping batch; one that went live since then means the plan is stale)."""
        for batch, other in events_batches(batches, label.job_id, query_labels(self)):
            if batch.id == self.batch_id or not batch.is_success:
                continue
            mine = label.interval
            if mine and other.interval and overlaps(mine, other.interval) and not label.supersedes(other):
                raise AirflowFailException(
                    f"events batch {batch.id} [{other.scope}] went live after this run planned [{label.scope}] and "
                    f"overlaps it; publishing both would duplicate events. Clear this run's prepare_events task "
                    f"(and its downstream tasks) to plan again."
                )

    def _guard(self, records: int, previous: list[Any]) -> None:
        if self.shrink_guard is None or not previous:
            return
        before = sum(b.record_count for b in previous)
        floor = (1.0 - self.shrink_guard) * before
        if records >= floor:
            return
        message = (
            f"shrink guard: the new snapshot has {records} records, the live one {before}; that is a drop of "
            f"more than {self.shrink_guard:.0%}. The live snapshot is kept. If the drop is real (audiences "
            f"emptied, members left), trigger the DAG with force_replace=true."
        )
        if truthy(self.force):
            self.log.warning("%s -- forced, replacing anyway", message)
            return
        if self.batch_id:
            ingestion = self.hook(hooks.ingestion.BatchIngestionHook)
            if ingestion.get_batch(self.batch_id).is_success:  # a batch query's batch is live already
                ingestion.revert_batch(self.batch_id)
                message += f" The new batch {self.batch_id} is reverted."
            else:
                ingestion.abort_batch(self.batch_id)
        raise AirflowFailException(message)  # retrying would not change the numbers

    # ------------------------------------------------------------------ execution

    def execute(self, context: Context) -> dict[str, Any] | None:
        if not truthy(self.enabled):
            raise AirflowSkipException("this run publishes nothing of this kind")
        records = self._records()
        previous = self._predecessors()
        self._guard(records, previous)
        ingestion = self.hook(hooks.ingestion.BatchIngestionHook)
        if not self.batch_id:
            self.log.info("Nothing to publish (0 records)")
            return self._replace(context, None, 0, previous)
        push_batch_link(context, ingestion.settings, self.batch_id)
        batch = ingestion.get_batch(self.batch_id)
        if batch.is_open:
            ingestion.complete_batch(self.batch_id)
        elif not batch.is_terminal:
            self.log.info("Batch %s is already %s (completed by an earlier try)", batch.id, batch.status)
        if not batch.is_terminal:
            deadline = time.time() + self.wait_timeout.total_seconds()
            if self.deferrable:
                trigger = triggers.aep.BatchTrigger(
                    batch_id=self.batch_id, **self.trigger_kwargs(self.poll_interval, deadline)
                )
                self.defer(trigger=trigger, method_name="execute_complete")
            batch = ingestion.wait_for_batch(
                self.batch_id, deadline=deadline, poll_interval=self.poll_interval, first=batch
            )
        return self._verdict(
            context, batch.is_success, batch.status, batch.failed_record_count, batch.error_summary()
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        event = validate_event(event, what=f"batch {self.batch_id}", accept=("success", "failed"))
        return self._verdict(
            context,
            event["status"] == "success",
            event.get("batch_status", "?"),
            int(event.get("failed_records") or 0),
            event.get("message", ""),
        )

    def _verdict(
        self, context: Context, ok: bool, status: str, failed_records: int, errors: str
    ) -> dict[str, Any]:
        ingestion = self.hook(hooks.ingestion.BatchIngestionHook)
        if ok and failed_records:
            replaced = self._replayed_away()
            if replaced:
                # Batch replay already took the previous snapshot out when this one succeeded: reverting
                # this one too would leave no snapshot at all. Keep it (all but the failed records) and
                # fail, so the run is looked at and run again.
                raise AepObjectFailedError(
                    f"batch {self.batch_id} {status} with {failed_records} failed records: {errors}. It replaced "
                    f"{replaced} by batch replay when it succeeded, so it stays live (reverting it would leave "
                    f"no snapshot); the {failed_records} failed records are missing from it. First failed records: "
                    f"{self._row_errors(ingestion)}.",
                    what=f"batch {self.batch_id}",
                    state=status,
                    permanent=True,
                    advice="fix the failed records' cause, then trigger a new run",
                )
            # A partial snapshot must not stay visible: take it back; the previous one is still live.
            ingestion.revert_batch(self.batch_id)
            ok, status = False, f"{status} with {failed_records} failed records (reverted)"
        if not ok:
            # Permanent: a retry of this task would read the same failed batch again.
            raise AepObjectFailedError(
                f"batch {self.batch_id} {status}: {errors}. First failed records: {self._row_errors(ingestion)}. "
                f"The previous data is untouched. See AEP > Monitoring > Batches.",
                what=f"batch {self.batch_id}",
                state=status,
                permanent=True,
                advice="the batch cannot be published any more: fix the cause, then clear the whole DAG run "
                "(or trigger a new one) to load a new batch",
            )
        self.log.info("Batch %s is %s", self.batch_id, status)
        return self._replace(context, self.batch_id, self._records(), self._predecessors())

    def _row_errors(self, ingestion: Any) -> str:
        reasons = ingestion.get_row_errors(self.batch_id, limit=5)
        return (
            "; ".join(f"{(r.get('_errors') or [{}])[0].get('message', r)}" for r in reasons)
            or "no row diagnostics"
        )

    def _replayed_away(self) -> list[str]:
        """The predecessors this batch replaced by replay (listed in its ``replay`` and no longer live)."""
        catalog = self.hook(hooks.ingestion.BatchIngestionHook)
        batch = catalog.get_batch(self.batch_id)
        gone = []
        for old_id in (batch.replay or {}).get("predecessors") or []:
            if not catalog.get_batch(str(old_id)).is_success:
                gone.append(str(old_id))
        return gone

    def _replace(
        self, context: Context, batch_id: str | None, records: int, previous: list[Any]
    ) -> dict[str, Any]:
        """Revert what the new batch replaces and is still live. A snapshot batch created with
        ``replay.predecessors`` has had them taken out by AEP the moment it succeeded (so ``previous``,
        listed after that, no longer holds them); what is left is the fallback: batches replay did not
        cover (the replay was refused, or a batch went live after it was created) and events batches."""
        ingestion = self.hook(hooks.ingestion.BatchIngestionHook)
        replayed: list[str] = []
        if batch_id:
            replayed = [
                str(p) for p in (ingestion.get_batch(batch_id).replay or {}).get("predecessors") or []
            ]
        if replayed:
            self.log.info("Batch %s replaced %s by batch replay when it succeeded", batch_id, replayed)
        for old in previous:
            ingestion.revert_batch(old.id)
            self.log.info(
                "Reverted batch %s (%d records), replaced by %s%s",
                old.id,
                old.record_count,
                batch_id,
                " (batch replay did not cover it)" if replayed else "",
            )
        result = {
            "batch_id": batch_id,
            "records": records,
            "replaced_batch_ids": replayed + [b.id for b in previous if b.id not in replayed],
        }
        self.log_retries()
        return result


class AbortOpenBatchesOperator(AdobeBaseOperator):
    """Abort the run's batches that are still open (``loading``) after a failure.

    An open batch is never visible, but aborting it says so in AEP at once (instead of it being
    abandoned later) and frees the dataset's activity view. Batches already completed are left alone.
    """

    template_fields = ("sandbox", "batch_ids")

    def __init__(self, *, batch_ids: Any, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "one_failed")
        super().__init__(**kwargs)
        self.batch_ids = batch_ids

    def execute(self, context: Context) -> dict[str, Any]:
        ingestion = self.hook(hooks.ingestion.BatchIngestionHook)
        aborted = []
        for batch_id in [b for b in (self.batch_ids or []) if b]:
            batch = ingestion.get_batch(batch_id)
            if batch.is_open and ingestion.abort_batch(batch_id):
                aborted.append(batch_id)
            else:
                self.log.info("Batch %s is %s; left as it is", batch_id, batch.status)
        self.log.info("Aborted open batches: %s", aborted or "none")
        return {"aborted_batch_ids": aborted}
