"""Loading one partition: a partition over Query Service's limits is split in two, recursively (pure).

Query Service answers ad hoc queries with at most 50,000 rows unless the statement ends ``LIMIT 0``, and
stops a statement after 10 minutes (SQLSTATE 53400 for both; Query Service guardrails:
https://experienceleague.adobe.com/en/docs/experience-platform/query/guardrails). What a limit calls for
is :func:`airflow_cja_audiences.scanplan.limit_reaction`'s decision; this module applies it: split the
hash partition in two and load each half, or give up. Files are uploaded only after a partition's query
completed, so a failed or split partition leaves nothing behind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from airflow_cja_audiences import scanplan, sql
from airflow_cja_audiences.pipeline.refusals import PartitionLimitError

if TYPE_CHECKING:  # the transform (and its JSON encoder) loads in the load task only, not at DAG parse
    from airflow_cja_audiences.transform import TransformSummary

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LimitHit:
    """A query Query Service stopped at a limit (53400): of which kind (``rows``, ``timeout``,
    ``unknown``), after how many rows, with what message; ``cause`` is the typed error it raised."""

    kind: scanplan.LimitKind
    rows_received: int
    server_message: str
    cause: BaseException


#: Runs a partition's query into files: its summary, or the limit it hit. Any other failure raises.
Query = Callable[[sql.Partition], "TransformSummary | LimitHit"]
#: Uploads a completed partition's files into the batch (and removes them locally).
Upload = Callable[["TransformSummary"], None]


@dataclass
class LoadTotals:
    """What a load task returns (XCom): ``{partition, rows, records, files, bytes, skipped_rows, splits}``."""

    partition: dict[str, int]
    rows: int = 0
    records: int = 0
    files: int = 0
    bytes: int = 0
    skipped_rows: int = 0
    splits: int = 0

    def add(self, summary: TransformSummary) -> None:
        self.rows += summary.rows
        self.records += summary.records
        self.files += len(summary.files)
        self.bytes += summary.bytes
        self.skipped_rows += summary.skipped_rows

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def too_big(summary: TransformSummary, *, by_time: bool, row_limit: int) -> str | None:
    """Why a completed result cannot be trusted, or None. Without ``LIMIT 0`` (partitions by rows) Query
    Service may cut a result at its row limit without an error: a full result is indistinguishable from
    a truncated one."""
    if by_time or summary.rows < row_limit:
        return None
    return f"it returned {summary.rows} rows, Query Service's limit (the result may be cut)"


def load_partition(
    part: sql.Partition,
    *,
    query: Query,
    upload: Upload,
    totals: LoadTotals,
    by_time: bool,
    row_limit: int,
    max_depth: int,
    depth: int = 0,
) -> None:
    """Load ``part`` (query, then upload), splitting it in two while it is over a limit, at most
    ``max_depth`` times deep. Raises :class:`PartitionLimitError` when splitting cannot (or can no
    longer) help: a retry would split the same way again."""
    outcome = query(part)
    cause: BaseException | None = None
    if isinstance(outcome, LimitHit):
        reaction = scanplan.limit_reaction(
            outcome.kind,
            partition=part.label,
            rows_received=outcome.rows_received,
            depth=depth,
            max_depth=max_depth,
            error=outcome.server_message,
        )
        if reaction.action == "fail":
            raise PartitionLimitError(reaction.message, advice="see the message") from outcome.cause
        reason = reaction.message
        cause = outcome.cause
    else:
        cut = too_big(outcome, by_time=by_time, row_limit=row_limit)
        if cut is None:
            upload(outcome)
            totals.add(outcome)
            return
        reason = cut
        for written in outcome.files:  # never uploaded: the halves write their own
            written.path.unlink()
    if depth >= max_depth:
        raise PartitionLimitError(
            f"partition {part.label} is still over the limit after {depth} splits: "
            f"{reason}; lower max_rows_per_query or check for a skewed person id",
            advice="lower max_rows_per_query or check for a skewed person id",
        ) from cause
    left, right = part.split()
    totals.splits += 1
    log.warning(
        "%s; splitting into %s and %s",
        reason if reason.startswith("partition") else f"Partition {part.label} is too big: {reason}",
        left.label,
        right.label,
    )
    for child in (left, right):
        load_partition(
            child,
            query=query,
            upload=upload,
            totals=totals,
            by_time=by_time,
            row_limit=row_limit,
            max_depth=max_depth,
            depth=depth + 1,
        )
