"""The server-side path (Data Distiller): Query Service writes the snapshot batch itself.

``DistillSnapshotOperator`` submits one batch query, ``INSERT INTO <profile dataset table> SELECT ...``
(:func:`airflow_cja_audiences.distill.snapshot_insert_sql`), waits for it deferrably
(:class:`~airflow_cja_audiences.triggers.aep.BatchQueryTrigger`) and finds the Catalog batch it wrote.
No row passes through a worker. ``publish_snapshot`` then applies the same shrink guard and replaces
the previous snapshot, as on the client path.

The query is named after the run's batch label (``prepare_snapshot`` decides it): a retried task
re-attaches to the query it submitted instead of writing a second batch, and later runs tell from the
query's name which job and slot a batch written by a query belongs to.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_cja_audiences import distill, hooks, triggers
from airflow_cja_audiences.links import AepBatchLink, push_batch_link
from airflow_cja_audiences.operators.base import DEFAULT_DEFERRABLE, validate_event
from airflow_cja_audiences.operators.load import _TEMPLATE_FIELDS, _MembershipQueryOperator, _query_failed

#: SQLSTATE classes of a query Query Service refuses as written (syntax, unknown table or column,
#: type mismatch, unsupported feature, bad data): running it again cannot succeed.
_PERMANENT_SQLSTATE_CLASSES = ("42", "0A", "22")
#: How far back a retried task looks for the query it submitted (a run rarely lasts longer).
_REATTACH_WINDOW = timedelta(days=2)


class DistillSnapshotOperator(_MembershipQueryOperator):
    """Write the job's snapshot records into the profile dataset with one Query Service batch query.

    :param external_id: the run's batch label (``prepare_snapshot``'s ``external_id``): the query's name.
    :param memberships: ``prepare_snapshot``'s count of identified memberships (0: nothing to write).
    :param wait_timeout: how long to wait for the query (Query Service runs batch queries up to 24 h).

    Return value (XCom): ``{batch_id, records, query_id}`` (``batch_id`` "" when nothing was written).
    """

    template_fields = (*_TEMPLATE_FIELDS, "external_id", "memberships")  # type: ignore[assignment]
    operator_extra_links = (AepBatchLink(),)

    def __init__(
        self,
        *,
        external_id: str,
        memberships: Any = None,
        poll_interval: float = 15.0,
        wait_timeout: timedelta = timedelta(hours=3),
        deferrable: bool = DEFAULT_DEFERRABLE,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("kind", "snapshot")
        kwargs.setdefault("multiple_outputs", True)
        super().__init__(**kwargs)
        if self.kind != "snapshot":
            raise ValueError("the server path writes the snapshot; change events stay on the client path")
        self.external_id = external_id
        self.memberships = memberships
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
                f"profile dataset {self.dataset_id} has no Query Service table name "
                f"(tag adobe/pqs/table): it cannot be written with INSERT INTO"
            )
        job = self.job_config
        try:
            return distill.snapshot_insert_sql(
                self.query(),
                target_table=table,
                job_id=job.job_id,
                tenant=self.tenant,
                audience_names={a["id"]: a["name"] for a in self.audiences},
                layout=job.layout,
                fields=job.output,
            )
        except ValueError as exc:
            raise AirflowFailException(f"cannot build the batch query: {exc}") from exc

    def execute(self, context: Context) -> dict[str, Any]:
        self._skip_unless_enabled()
        if not self.external_id:
            raise AirflowFailException("external_id (the run's batch label from prepare_snapshot) is empty")
        if self.memberships is not None and not int(self.memberships):
            self.log.info(
                "The export holds no identified membership of this job: no batch query, nothing written"
            )
            return {"batch_id": "", "records": 0, "query_id": ""}
        queries = self._queries()
        since = int((datetime.now(timezone.utc) - _REATTACH_WINDOW).timestamp() * 1000)
        query = queries.find_query(self.external_id, created_after_ms=since)
        if query is not None:
            self.log.info(
                "Batch query %s of this run is already %s: waiting for it rather than writing again",
                query.id,
                query.state,
            )
        else:
            statement = self.statement()
            self.log.info("Submitting the batch query (%d characters of SQL):\n%s", len(statement), statement)
            query = queries.create_query(
                statement,
                name=self.external_id,
                created_after_ms=since,
                description=f"airflow-cja-audiences snapshot of job {self.job_config.job_id}",
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
            while not query.is_terminal:
                if time.time() > deadline:
                    self._cancel(query.id)
                    raise AirflowException(
                        f"batch query {query.id} still {query.state} after {self.wait_timeout} (cancelled)"
                    )
                time.sleep(self.poll_interval)
                query = queries.get_query(query.id)
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
                "by the next run's publish_snapshot",
                query_id,
                exc,
            )

    def _finish(self, context: Context, query_id: str) -> dict[str, Any]:
        queries = self._queries()
        query = queries.get_query(query_id)
        if not query.is_success:
            codes = [str(e.get("code", "")) for e in query.errors if isinstance(e, dict)]
            message = (
                f"batch query {query.id} ended {query.state}: {query.error_summary()}. Nothing of it is "
                f"live; the previous snapshot is untouched."
            )
            if any(code[:2] in _PERMANENT_SQLSTATE_CLASSES for code in codes):
                raise AirflowFailException(
                    f"{message} Query Service refused the statement; running it again cannot succeed."
                )
            raise _query_failed(message, query)
        from airflow_cja_audiences.hooks.batch_query import batch_written_by

        ingestion = self.ingestion()
        batch = batch_written_by(list(ingestion.list_batches(self.dataset_id)), query)
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
