"""The server path's decisions: which batch query is this run's, which batch it wrote, who goes on (pure).

On the server path a Query Service batch query (``INSERT INTO ... SELECT``, Data Distiller) writes the
batch. Each query is named after the run's batch label, so a retried task re-attaches to the query it
submitted (:func:`attach`) instead of writing a second batch, and for events that name is the run's
claim on its interval while the query runs (:func:`claim_query`). Queries API:
https://developer.adobe.com/experience-platform-apis/references/query-service/ ; Data Distiller batch
queries: https://experienceleague.adobe.com/en/docs/experience-platform/query/key-concepts/incremental-load
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol

from airflow_cja_audiences import runs
from airflow_cja_audiences.errors import AepError
from airflow_cja_audiences.models import Batch
from airflow_cja_audiences.pipeline.batches import LabelOf
from airflow_cja_audiences.pipeline.events import open_claims
from airflow_cja_audiences.pipeline.ports import BatchActions, BatchLister, BatchQueries, BatchQueryState
from airflow_cja_audiences.pipeline.refusals import PipelineRefusal
from airflow_cja_audiences.runs import BatchLabel

log = logging.getLogger(__name__)

#: How far back a retried task looks for the query it submitted (a run rarely lasts longer).
REATTACH_WINDOW = timedelta(days=2)
#: SQLSTATE classes of a query Query Service refuses as written (syntax, unknown table or column,
#: type mismatch, unsupported feature, bad data): running it again cannot succeed.
PERMANENT_SQLSTATE_CLASSES = ("42", "0A", "22")


class ClaimLostError(PipelineRefusal):
    """Another run's overlapping events claim goes first: this run's batch query is cancelled."""


class _HasId(Protocol):
    @property
    def id(self) -> str: ...


def query_id_of(batch: Batch) -> str | None:
    """The query that wrote ``batch``, from its ``relatedObjects`` (UNCONFIRMED: how Catalog links a
    batch query's batch to its query is not documented; the emulator links it this way)."""
    for obj in batch.related_objects:
        if isinstance(obj, dict) and obj.get("type") == "query" and isinstance(obj.get("id"), str):
            return str(obj["id"])
    return None


def batch_written_by(catalog_batches: list[Batch], query: _HasId) -> Batch:
    """The batch ``query`` wrote, among a dataset's batches: the one Catalog links to the query.

    There is deliberately no guess by creation time: a batch the pipeline cannot tie to its query
    could not be recognised (and replaced) by later runs either, so two snapshots would stay live.
    """
    linked = [b for b in catalog_batches if query_id_of(b) == query.id]
    if len(linked) == 1:
        return linked[0]
    raise AepError(
        f"cannot tell which batch query {query.id} wrote: {len(linked)} batches of the dataset link to "
        f"it in Catalog (relatedObjects type 'query'). Without that link later runs could not replace "
        f"the batch; if Catalog does not link batch query batches to their query, use path: client"
    )


def wrote_live_batch(ingestion: BatchLister, dataset_id: str, query: _HasId) -> bool:
    """Whether the batch ``query`` wrote is live (False when it cannot be told which batch that is)."""
    try:
        return bool(batch_written_by(list(ingestion.list_batches(dataset_id)), query).is_success)
    except AepError:
        return False


def reattach_since_ms(now: datetime) -> int:
    """How far back (epoch ms) a task looks for the query an earlier try of it submitted."""
    return int((now - REATTACH_WINDOW).timestamp() * 1000)


def attach(
    queries: BatchQueries, ingestion: BatchLister, dataset_id: str, name: str, *, since_ms: int
) -> BatchQueryState | None:
    """The batch query an earlier try of this run submitted (found by its name, the run's batch label),
    to wait for instead of writing again; None when there is none, or when it succeeded but its batch is
    no longer live (reverted by a shrink guard or a run that gave way): then it is written again."""
    query = queries.find_query(name, created_after_ms=since_ms)
    if query is not None and query.is_success and not wrote_live_batch(ingestion, dataset_id, query):
        log.info(
            "Batch query %s of this run succeeded earlier, but its batch is no longer live (reverted by "
            "a shrink guard or a run that gave way): writing it again",
            query.id,
        )
        return None
    if query is not None:
        log.info(
            "Batch query %s of this run is already %s: waiting for it rather than writing again",
            query.id,
            query.state,
        )
    return query


def claim_query(
    queries: BatchQueries,
    ingestion: BatchActions,
    dataset_id: str,
    query: BatchQueryState,
    *,
    external_id: str,
    replaced: Collection[str],
    labels: LabelOf | None,
    cancel: Callable[[str], None],
    now: datetime,
) -> BatchQueryState:
    """Events: this run's query is its claim on the interval; of overlapping claims (other runs'
    in-flight events queries, open or newly live batches) the one created first goes on.

    Losing means two runs planned overlapping intervals at once (each passed prepare_events' wait
    before the other submitted) or a batch went live since this run planned: its interval and sources
    are stale, and only prepare_events can plan them again. The query is cancelled (``cancel``; its
    batch reverted if it ended first) and :class:`ClaimLostError` says so."""
    label = BatchLabel.parse(external_id)
    if label is None:
        raise ClaimLostError(
            f"external_id {external_id!r} is not a batch label of this package",
            advice="external_id must be prepare_events' external_id",
        )
    reason = runs.events_publish_conflict(
        mine_id=query.id,
        mine_created_ms=query.created_ms() or 0,
        run_key=label.run_key,
        interval=label.interval,  # type: ignore[arg-type]
        replaced=set(replaced),
        others=open_claims(ingestion, dataset_id, label.job_id, labels=labels, queries=queries, now=now),
    )
    if reason is None:
        return query
    cancel(query.id)
    current = queries.get_query(query.id)
    if current.is_success and wrote_live_batch(ingestion, dataset_id, current):
        batch = batch_written_by(list(ingestion.list_batches(dataset_id)), current)
        ingestion.revert_batch(batch.id)
        log.warning("Batch query %s ended before the cancel: its batch %s is reverted", query.id, batch.id)
    raise ClaimLostError(
        f"{reason}. This run's events batch query {query.id} [{label.scope}] is cancelled: its interval and "
        f"sources were planned without that one. Clear this run's prepare_events task and its downstream "
        f"tasks to plan again (nothing of this run is live).",
        advice="clear this run's prepare_events task and its downstream tasks",
    )


def refused_statement(errors: Iterable[Mapping[str, Any] | Any]) -> bool:
    """Whether a failed batch query's errors say Query Service refused the statement as written
    (a SQLSTATE of :data:`PERMANENT_SQLSTATE_CLASSES`): running it again cannot succeed."""
    codes = [str(e.get("code", "")) for e in errors if isinstance(e, Mapping)]
    return any(code[:2] in PERMANENT_SQLSTATE_CLASSES for code in codes)
