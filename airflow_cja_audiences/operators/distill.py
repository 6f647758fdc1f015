"""The server-side path (Data Distiller): Query Service writes the snapshot and events batches itself.

``DistillSnapshotOperator`` / ``DistillEventsOperator`` submit one batch query, ``INSERT INTO <dataset
table> SELECT ...`` (:func:`airflow_cja_audiences.distill.snapshot_insert_sql`,
:func:`~airflow_cja_audiences.distill.events_insert_sql`), wait for it deferrably
(:class:`~airflow_cja_audiences.triggers.aep.BatchQueryTrigger`) and find the Catalog batch it wrote.
No row passes through a worker. ``publish_snapshot`` / ``publish_events`` then replace what the batch
supersedes, as on the client path (prepare_* applied the events guard and planned the interval).

The query is named after the run's batch label (``prepare_*`` decides it): a retried task re-attaches
to the query it submitted instead of writing a second batch, and later runs tell from the query's name
which job and slot (snapshot, or events interval) a batch written by a query belongs to. For events,
that name is also the run's claim on its interval while the query runs: ``prepare_events`` waits while
an earlier overlapping claim is in flight, and after submitting, the query created first goes on
(:func:`airflow_cja_audiences.runs.events_publish_conflict`). Those decisions (re-attach, claim, which
batch a query wrote, a refused statement) are :mod:`airflow_cja_audiences.pipeline.distill`; this
operator submits, waits (deferred or not) and cancels.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_cja_audiences import distill, hooks, triggers
from airflow_cja_audiences.errors import AepWaitTimeoutError
from airflow_cja_audiences.links import AepBatchLink, push_batch_link
from airflow_cja_audiences.operators.base import DEFAULT_DEFERRABLE, validate_event
from airflow_cja_audiences.operators.load import (
    _TEMPLATE_FIELDS,
    _MembershipQueryOperator,
    _query_failed,
    events_decision,
    query_labels,
)
from airflow_cja_audiences.pipeline import distill as server_path


class DistillOperator(_MembershipQueryOperator):
    """Write the job's snapshot (``kind="snapshot"``) or one interval's change events (``kind="events"``)
    into their dataset with one Query Service batch query.

    :param external_id: the run's batch label (``prepare_*``'s ``external_id``): the query's name.
    :param memberships: ``prepare_*``'s count of identified memberships or events (0: nothing to write).
    :param replaced_batch_ids: events: ``prepare_events``'s ``previous_batch_ids`` (the live batches its
        interval replaces: no conflict with them).
    :param wait_timeout: how long to wait for the query (Query Service runs batch queries up to 24 h).

    For events, ``interval_start``/``interval_end``/``sources`` are ``prepare_events``'s (the widened
    interval, the exports that prove it).

    Return value (XCom): ``{batch_id, records, query_id}`` (``batch_id`` "" when nothing was written).
    """

    template_fields = (*_TEMPLATE_FIELDS, "external_id", "memberships", "replaced_batch_ids")  # type: ignore[assignment]
    operator_extra_links = (AepBatchLink(),)

    def __init__(
        self,
        *,
        external_id: str,
        memberships: Any = None,
        replaced_batch_ids: Any = (),
        poll_interval: float = 15.0,
        wait_timeout: timedelta = timedelta(hours=3),
        deferrable: bool = DEFAULT_DEFERRABLE,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("multiple_outputs", True)
        super().__init__(**kwargs)
        self.external_id = external_id
        self.memberships = memberships
        self.replaced_batch_ids = replaced_batch_ids
        self.poll_interval = poll_interval
        self.wait_timeout = wait_timeout
        self.deferrable = deferrable

    def _queries(self) -> Any:
        return self.hook(hooks.batch_query.BatchQueryHook)

    def statement(self) -> str:
        """The ``INSERT INTO`` of this run."""
        catalog = self.hook(hooks.catalog.CatalogHook)
        table = catalog.get_dataset(self.dataset_id).table_name
        if not table:
            raise AirflowFailException(
                f"{self.kind} dataset {self.dataset_id} has no Query Service table name "
                f"(tag adobe/pqs/table): it cannot be written with INSERT INTO"
            )
        job = self.job_config
        names = {a["id"]: a["name"] for a in self.audiences}
        try:
            if self.kind == "events":
                window = self.window()
                assert window is not None  # kind events: window() fails without an interval
                return distill.events_insert_sql(
                    self.query(),
                    window,
                    list(self.sources or ()) or None,
                    target_table=table,
                    job_id=job.job_id,
                    tenant=self.tenant,
                    audience_names=names,
                    fields=job.output,
                )
            return distill.snapshot_insert_sql(
                self.query(),
                target_table=table,
                job_id=job.job_id,
                tenant=self.tenant,
                audience_names=names,
                layout=job.layout,
                fields=job.output,
            )
        except ValueError as exc:
            raise AirflowFailException(f"cannot build the batch query: {exc}") from exc

    def execute(self, context: Context) -> dict[str, Any]:
        self._skip_unless_enabled()
        if not self.external_id:
            raise AirflowFailException(
                f"external_id (the run's batch label from prepare_{self.kind}) is empty"
            )
        if self.memberships is not None and not int(self.memberships):
            self.log.info(
                "The export holds no identified %s of this job%s: no batch query, nothing written",
                "change event" if self.kind == "events" else "membership",
                f" in [{self.interval_start}, {self.interval_end})" if self.kind == "events" else "",
            )
            return {"batch_id": "", "records": 0, "query_id": ""}
        queries = self._queries()
        since = server_path.reattach_since_ms(datetime.now(timezone.utc))
        query = server_path.attach(
            queries, self.ingestion(), self.dataset_id, self.external_id, since_ms=since
        )
        if query is None:
            statement = self.statement()
            self.log.info("Submitting the batch query (%d characters of SQL):\n%s", len(statement), statement)
            query = queries.create_query(
                statement,
                name=self.external_id,
                created_after_ms=since,
                description=f"airflow-cja-audiences {self.kind} of job {self.job_config.job_id}",
            )
        if self.kind == "events":
            with events_decision(self.log):
                query = server_path.claim_query(
                    queries,
                    self.ingestion(),
                    self.dataset_id,
                    query,
                    external_id=self.external_id,
                    replaced=self.replaced_batch_ids or (),
                    labels=query_labels(self),
                    cancel=self._cancel,
                    now=datetime.now(timezone.utc),
                )
        if not query.is_terminal:
            deadline = time.time() + self.wait_timeout.total_seconds()
            if self.deferrable:
                self.defer(
                    trigger=triggers.aep.BatchQueryTrigger(
                        query_id=query.id, **self.trigger_kwargs(self.poll_interval, deadline)
                    ),
                    method_name="execute_complete",
                    kwargs={"query_id": query.id},
                )
            try:
                query = queries.wait_for_query(
                    query.id, deadline=deadline, poll_interval=self.poll_interval, first=query
                )
            except AepWaitTimeoutError as exc:
                # A query left running would write a batch nobody publishes.
                self._cancel(query.id)
                raise AirflowException(f"{exc} (cancelled)") from exc
        return self._finish(context, query.id)

    def execute_complete(
        self, context: Context, event: dict[str, Any] | None = None, query_id: str = ""
    ) -> dict[str, Any]:
        if not (isinstance(event, dict) and event.get("status") in ("success", "failed")) and query_id:
            # Timed out or the wait broke: a query left running would write a batch nobody publishes.
            self._cancel(query_id)
        event = validate_event(
            event, what=f"batch query {query_id or self.external_id}", accept=("success", "failed")
        )
        return self._finish(context, str(event.get("query_id") or query_id))

    def _cancel(self, query_id: str) -> None:
        try:
            self._queries().cancel_query(query_id)
            self.log.warning("Batch query %s cancelled", query_id)
        except Exception as exc:  # noqa: BLE001 - the failure being reported matters more than this clean-up
            self.log.warning(
                "Could not cancel batch query %s (%s); if it still succeeds, its batch is reverted "
                f"by the next run's publish_{self.kind}",
                query_id,
                exc,
            )

    def _finish(self, context: Context, query_id: str) -> dict[str, Any]:
        queries = self._queries()
        query = queries.get_query(query_id)
        if not query.is_success:
            message = (
                f"batch query {query.id} ended {query.state}: {query.error_summary()}. Nothing of it is "
                f"live; the previous {self.kind} is untouched."
            )
            if server_path.refused_statement(query.errors):
                raise AirflowFailException(
                    f"{message} Query Service refused the statement; running it again cannot succeed."
                )
            raise _query_failed(message, query)
        ingestion = self.ingestion()
        batch = server_path.batch_written_by(list(ingestion.list_batches(self.dataset_id)), query)
        if not batch.is_success:
            raise AirflowException(
                f"batch query {query.id} succeeded but its batch {batch.id} is {batch.status}: "
                f"{batch.error_summary()}"
            )
        push_batch_link(context, ingestion.settings, batch.id)
        records = batch.record_count
        self.log.info(
            "Batch query %s wrote %d records into batch %s of dataset %s",
            query.id,
            records,
            batch.id,
            self.dataset_id,
        )
        self.log_retries()
        return {"batch_id": batch.id, "records": records, "query_id": query.id}


class DistillSnapshotOperator(DistillOperator):
    """:class:`DistillOperator` writing the snapshot (``kind="snapshot"``)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("kind", "snapshot")
        super().__init__(**kwargs)


class DistillEventsOperator(DistillOperator):
    """:class:`DistillOperator` writing one interval's change events (``kind="events"``)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("kind", "events")
        super().__init__(**kwargs)
