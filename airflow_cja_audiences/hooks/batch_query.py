"""Query Service REST: batch queries (Data Distiller) that write into a dataset.

``POST /data/foundation/query/queries`` with the SQL (``INSERT INTO <table> SELECT ...``) answers 202
with the query; ``GET /queries/{id}`` tells its ``state`` (``SUBMITTED -> IN_PROGRESS -> SUCCESS |
FAILED | KILLED | TIMEOUT``, spec ``query.state``); ``PATCH /queries/{id}`` ``{"op": "cancel"}``
cancels it. Sources: experience-platform docs ``help/query-service/api/queries.md``; reference
section 8.3. Running batch queries needs the Data Distiller add-on.

A query carries a ``name``: the pipeline names each query after the batch label of what it writes
(:class:`airflow_cja_audiences.runs.BatchLabel`), which is how a retried task finds the query it
started, and how a later run learns what a batch a query wrote replaces
(:meth:`BatchQueryHook.label_of_batch`).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from pydantic import Field

from airflow_cja_audiences.errors import AepError
from airflow_cja_audiences.hooks.platform import AdobePlatformHook, path_segment
from airflow_cja_audiences.models import BATCH_QUERY_STATUS, Batch, BatchQueryState, StatusType, WaitableModel

# Pure (the pipeline's server-path decisions use them too); re-exported here where they were first.
from airflow_cja_audiences.pipeline.distill import batch_written_by as batch_written_by
from airflow_cja_audiences.pipeline.distill import query_id_of as query_id_of

log = logging.getLogger(__name__)

BASE = "/data/foundation/query"
LIST_PAGE = 50
#: How many pages of the query list a search for a query by name reads (newest first).
MAX_LIST_PAGES = 10


class BatchQuery(WaitableModel):
    """A Query Service query object (the fields the pipeline reads)."""

    id: str
    state: str
    request: dict[str, Any] = Field(default_factory=dict)
    errors: list[dict[str, Any]] = Field(default_factory=list)
    row_count: int | None = Field(default=None, alias="rowCount")
    created: str | None = None
    updated: str | None = None
    is_insert_into: bool | None = Field(default=None, alias="isInsertInto")

    STATUS: ClassVar[StatusType[BatchQueryState]] = BATCH_QUERY_STATUS
    # Upper-case spellings, for comparing with ``state.upper()`` (derived from BATCH_QUERY_STATUS).
    FAILED: ClassVar[frozenset[str]] = frozenset(s.value for s in BATCH_QUERY_STATUS.failed)

    @property
    def name(self) -> str | None:
        name = self.request.get("name")
        return name if isinstance(name, str) else None

    @property
    def status(self) -> str:
        """The ``state`` (the name every waitable object's status goes by in :mod:`~airflow_cja_audiences.waits`)."""
        return self.state

    def created_ms(self) -> int | None:
        return _epoch_ms(self.created)

    def error_summary(self, limit: int = 5) -> str:
        parts = [
            f"{e.get('code', '?')}: {e.get('message') or e.get('description') or ''}".strip()
            for e in self.errors[:limit]
            if isinstance(e, dict)
        ]
        return "; ".join(parts) or "no error details"


def _epoch_ms(text: str | None) -> int | None:
    if not text:
        return None
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


class BatchQueryHook(AdobePlatformHook):
    """Query Service REST API: create, read, find and cancel batch queries."""

    hook_name = "Adobe Experience Platform Query Service (batch queries)"

    def _db_name(self) -> str:
        return f"{self.sandbox}:all"

    def get_query(self, query_id: str) -> BatchQuery:
        payload = self.request_json(
            "GET", f"{BASE}/queries/{path_segment(query_id)}", route="query.get_query"
        )
        return BatchQuery.model_validate(payload)

    async def aget_query(self, query_id: str) -> BatchQuery:
        payload = await self.arequest_json(
            "GET", f"{BASE}/queries/{path_segment(query_id)}", route="query.get_query"
        )
        return BatchQuery.model_validate(payload)

    def recent_queries(self, *, created_after_ms: int) -> list[BatchQuery]:
        """Queries created at or after ``created_after_ms``, newest first (a bounded number of pages)."""
        found: list[BatchQuery] = []
        params: dict[str, Any] = {"orderby": "-created", "limit": LIST_PAGE}
        guard = self.page_guard("query.list_queries")
        for _ in range(MAX_LIST_PAGES):
            guard.next_page(str(sorted(params.items())))
            payload = self.request_json("GET", f"{BASE}/queries", route="query.list_queries", params=params)
            page = [BatchQuery.model_validate(q) for q in (payload or {}).get("queries") or []]
            guard.seen(q.id for q in page)
            for query in page:
                created = query.created_ms()
                if created is not None and created < created_after_ms:
                    return found
                found.append(query)
            href = (((payload or {}).get("_links") or {}).get("next") or {}).get("href")
            if not page or not href:
                return found
            params = {k: v[0] for k, v in parse_qs(urlsplit(href).query).items()}
        return found

    def find_query(self, name: str, *, created_after_ms: int) -> BatchQuery | None:
        """The newest query called ``name`` since ``created_after_ms`` that has not failed."""
        return next(
            (
                q
                for q in self.recent_queries(created_after_ms=created_after_ms)
                if q.name == name and q.state.upper() not in BatchQuery.FAILED
            ),
            None,
        )

    def create_query(
        self, sql: str, *, name: str, description: str = "", created_after_ms: int
    ) -> BatchQuery:
        """Submit a batch query (never twice: an ambiguous failure is reconciled by its name)."""
        body = {"dbName": self._db_name(), "sql": sql, "name": name, "description": description}

        def create() -> BatchQuery:
            return BatchQuery.model_validate(
                self.request_json("POST", f"{BASE}/queries", route="query.create_query", json=body)
            )

        query = self.create_once(
            "create batch query",
            create,
            lambda: self.find_query(name, created_after_ms=created_after_ms),
            route="query.create_query",
        )
        log.info("Batch query %s submitted (%s): %s", query.id, name, query.state)
        return query

    def wait_for_query(
        self, query_id: str, *, deadline: float, poll_interval: float = 15.0, first: BatchQuery | None = None
    ) -> BatchQuery:
        """Poll the query until it ends (``BATCH_QUERY_STATUS``) and return it; the synchronous twin of
        ``BatchQueryTrigger``. ``deadline`` (epoch seconds) is required: past it,
        :class:`~airflow_cja_audiences.errors.AepWaitTimeoutError` (the query is left running: the
        caller decides whether to cancel it)."""
        from airflow_cja_audiences.waits import wait_until_terminal

        return wait_until_terminal(
            lambda: self.get_query(query_id),
            status_type=BatchQuery.STATUS,
            what=f"batch query {query_id}",
            deadline=deadline,
            poll_interval=poll_interval,
            first=first,
        )

    def cancel_query(self, query_id: str) -> None:
        self.request_json(
            "PATCH",
            f"{BASE}/queries/{path_segment(query_id)}",
            route="query.cancel_query",
            json={"op": "cancel"},
        )

    async def acancel_query(self, query_id: str) -> None:
        await self.arequest_json(
            "PATCH",
            f"{BASE}/queries/{path_segment(query_id)}",
            route="query.cancel_query",
            json={"op": "cancel"},
        )

    def label_of_batch(self, batch: Batch) -> str | None:
        """The ``name`` of the query that wrote ``batch`` (our batch label), or None."""
        query_id = query_id_of(batch)
        if query_id is None:
            return None
        try:
            return self.get_query(query_id).name
        except AepError as exc:
            log.warning(
                "Batch %s was written by query %s, which cannot be read (%s): it is not taken for one "
                "of this job's batches",
                batch.id,
                query_id,
                exc,
            )
            return None
