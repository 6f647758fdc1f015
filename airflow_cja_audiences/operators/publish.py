"""Publish a loaded batch and replace what it supersedes (pipeline steps 6 and 7).

An adapter over :mod:`airflow_cja_audiences.pipeline.replace`, which holds the decisions. Order matters for "nothing already published is lost": the shrink guard runs *before* the batch is
completed (a tripped guard aborts the new batch; the old snapshot stays), the batch is completed and
waited for deferrably, and only once it succeeded are the batches it replaces reverted, so the
dataset ends with exactly one live batch per slot (the snapshot, or one interval's events).
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowSkipException

from airflow_cja_audiences import hooks, triggers
from airflow_cja_audiences.errors import AepConfigError
from airflow_cja_audiences.links import AepBatchLink, push_batch_link
from airflow_cja_audiences.models import Batch
from airflow_cja_audiences.operators.base import DEFAULT_DEFERRABLE, AdobeBaseOperator, truthy, validate_event
from airflow_cja_audiences.operators.load import query_labels
from airflow_cja_audiences.pipeline import replace
from airflow_cja_audiences.runs import BatchLabel


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
        return replace.parse_label(self.external_id)

    def _records(self) -> int:
        return replace.loaded_records(self.load_results)

    def _predecessors(self) -> list[Batch]:
        return replace.predecessors(
            self.hook(hooks.ingestion.BatchIngestionHook),
            self.dataset_id,
            self._label(),
            self.batch_id,
            labels=query_labels(self),
        )

    # ------------------------------------------------------------------ execution

    def execute(self, context: Context) -> dict[str, Any] | None:
        if not truthy(self.enabled):
            raise AirflowSkipException("this run publishes nothing of this kind")
        records = self._records()
        previous = self._predecessors()
        ingestion = self.hook(hooks.ingestion.BatchIngestionHook)
        replace.enforce_shrink_guard(
            ingestion,
            batch_id=self.batch_id,
            records=records,
            previous=previous,
            guard=self.shrink_guard,
            force=truthy(self.force),
        )
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
        if not self.batch_id:  # execute publishes nothing, and asks for no verdict, without a batch
            raise AepConfigError("a verdict was asked for, but this task has no batch_id")
        ingestion = self.hook(hooks.ingestion.BatchIngestionHook)
        status = replace.verdict(
            ingestion,
            batch_id=self.batch_id,
            ok=ok,
            status=status,
            failed_records=failed_records,
            errors=errors,
        )
        self.log.info("Batch %s is %s", self.batch_id, status)
        return self._replace(context, self.batch_id, self._records(), self._predecessors())

    def _replace(
        self, context: Context, batch_id: str | None, records: int, previous: list[Batch]
    ) -> dict[str, Any]:
        result = replace.revert_replaced(
            self.hook(hooks.ingestion.BatchIngestionHook), batch_id, records, previous
        )
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
