"""Partitions sized by time: how many Query Service queries read one export (pure: no Airflow).

Every partition query reads the whole export batch again (Query Service has no index on the hash
of the person id), so partitions cost scans, not just rows. Sized by rows (at most 50,000 each, the
ad hoc row cap) the number of scans grows with the audience, and Query Service time with its
square: 126 scans of the export per run at 10M profiles. Query Service documents ``LIMIT 0`` as
lifting the row cap of an ad hoc query; what remains is its 10-minute limit. So a partition is
sized by *time* here:

* one query costs ``scan_seconds`` (measured: how long the count query over the same export took)
  plus its rows at ``rows_per_second`` (the rate a load task reads, transforms and writes them);
* a partition must finish within ``budget_seconds``, well under the 10 minutes, so the rows one
  partition may hold are ``(budget - scan) * rate`` (*rows per budget*) and at least
  ``ceil(rows / rows_per_budget)`` partitions are **required**;
* more partitions than required only shorten the wall time (they run in parallel, up to the Query
  Service ``concurrency``) and cost one more scan each. With one partition required, up to
  ``qs_factor`` (2) run instead when reading the rows is expected to take longer than the scan:
  their Query Service time then stays within ``qs_factor`` of the floor, one ``LIMIT 0`` query over
  everything (``scan + rows / rate``), *however fast the rows turn out to be read* (``n`` scans plus
  the rows is at most ``n`` times one scan plus the rows). An estimate-based bound would not hold:
  measured against the emulator at 1M profiles, 4 partitions planned for a 1.5x estimate cost 2.4x,
  because the rows were read 7 times faster than the configured rate;
* Airflow maps at most ``max_map_length`` tasks: a plan that needs more fails *before* mapping,
  saying what to change.

The partition queries of a load are thus ``required`` or, when one is required, at most
``qs_factor``: independent of the audience size for a given budget.

Query Service reports both the row cap and the 10-minute timeout as SQLSTATE 53400;
:func:`limit_kind` tells them apart by the message and :func:`limit_reaction` says what a load
does about each: splitting helps against the row cap, and against a timeout only when rows were
already arriving (reading them was too slow); a timeout before the first row means one scan alone
takes too long, and then no number of partitions helps.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from airflow_cja_audiences.sql import Partition

#: Query Service's limit on an ad hoc query (guardrails: 10 minutes, error 53400).
AD_HOC_TIMEOUT_SECONDS = 600.0
#: The largest per-query budget accepted: 90% of the limit.
MAX_BUDGET_SECONDS = 0.9 * AD_HOC_TIMEOUT_SECONDS
#: Airflow's default ``[core] max_map_length``.
DEFAULT_MAX_MAP_LENGTH = 1024
#: Partitions added only for parallelism keep at least this many rows each (smaller is not worth a scan).
MIN_PARALLEL_ROWS = 50_000
#: How much Query Service time the partition queries may spend relative to one LIMIT 0 query (at most).
DEFAULT_QS_FACTOR = 2.0

LimitKind = Literal["timeout", "rows", "unknown"]


class PlanError(ValueError):
    """No plan fits; the message says why and what to change. ``measured``: it rests on the measured
    scan time, which a busy Query Service may have inflated (trying again later may succeed)."""

    def __init__(self, message: str, *, measured: bool = False) -> None:
        super().__init__(message)
        self.measured = measured


@dataclass(frozen=True)
class PartitionPlan:
    """The partitions of one load and the estimates they were chosen by."""

    partitions: tuple[Partition, ...]
    rows: int
    rows_per_budget: int
    required: int  # ceil(rows / rows_per_budget): fewer would break the budget
    scan_seconds: float
    rows_per_second: float
    budget_seconds: float

    @property
    def count(self) -> int:
        return len(self.partitions)

    @property
    def query_seconds(self) -> float:
        """Estimated duration of one partition query."""
        return (
            self.scan_seconds + self.rows / max(self.count, 1) / self.rows_per_second if self.count else 0.0
        )

    @property
    def total_seconds(self) -> float:
        """Estimated Query Service time of all partition queries (each scans the export once)."""
        return self.count * self.scan_seconds + self.rows / self.rows_per_second if self.count else 0.0

    @property
    def floor_seconds(self) -> float:
        """One ``LIMIT 0`` query over everything: the least Query Service time reading the rows can take."""
        return self.scan_seconds + self.rows / self.rows_per_second if self.rows else 0.0

    def describe(self) -> str:
        if not self.count:
            return "no rows: no partition"
        return (
            f"{self.rows} rows in {self.count} partitions ({self.required} required by the {self.budget_seconds:g} s "
            f"budget at {self.rows_per_second:g} rows/s after a {self.scan_seconds:.1f} s scan, i.e. <= "
            f"{self.rows_per_budget} rows per query); about {self.query_seconds:.0f} s per query, "
            f"{self.total_seconds:.0f} s of Query Service time against a floor of {self.floor_seconds:.0f} s"
        )


def _number(
    value: object, name: str, *, minimum: float, maximum: float | None = None, inclusive: bool = True
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if value < minimum or (not inclusive and value == minimum) or (maximum is not None and value > maximum):
        bounds = f"{'>=' if inclusive else '>'} {minimum:g}" + (
            f" and <= {maximum:g}" if maximum is not None else ""
        )
        raise ValueError(f"{name} must be {bounds}, got {value!r}")
    return float(value)


def plan_by_time(
    rows: int,
    *,
    scan_seconds: float,
    rows_per_second: float,
    budget_seconds: float,
    concurrency: int,
    max_map_length: int = DEFAULT_MAX_MAP_LENGTH,
    qs_factor: float = DEFAULT_QS_FACTOR,
) -> PartitionPlan:
    """Hash partitions of ``rows`` rows, each expected to finish within ``budget_seconds`` (see module doc).

    Raises :class:`PlanError` when one scan leaves no time to read rows within the budget, or when
    the partitions required exceed ``max_map_length``.
    """
    if type(rows) is not int or rows < 0:
        raise ValueError(f"rows must be an int >= 0, got {rows!r}")
    scan = _number(scan_seconds, "scan_seconds", minimum=0.0)
    rate = _number(rows_per_second, "rows_per_second", minimum=0.0, inclusive=False)
    budget = _number(
        budget_seconds, "budget_seconds", minimum=0.0, maximum=MAX_BUDGET_SECONDS, inclusive=False
    )
    factor = _number(qs_factor, "qs_factor", minimum=1.0)
    for name, val in (("concurrency", concurrency), ("max_map_length", max_map_length)):
        if type(val) is not int or val < 1:
            raise ValueError(f"{name} must be an int >= 1, got {val!r}")
    if rows == 0:
        return PartitionPlan((), 0, 0, 0, scan, rate, budget)
    left = budget - scan
    if left < 0.1 * budget:
        if scan >= 0.9 * AD_HOC_TIMEOUT_SECONDS:
            fix = (
                "one scan of the export is close to Query Service's 10-minute limit for ad hoc queries, so no "
                "partitioning can help: use the server-side path (Data Distiller), or export fewer profiles "
                "or fields"
            )
        else:
            fix = (
                f"raise query_time_budget_seconds (at most {MAX_BUDGET_SECONDS:g}) well above the scan time, or "
                f"use the server-side path (Data Distiller)"
            )
        raise PlanError(
            f"reading the export once took {scan:.1f} s, which leaves less than 10% of the "
            f"{budget:g} s per-query time budget (query_time_budget_seconds) for the rows: {fix}",
            measured=True,
        )
    rows_per_budget = max(1, math.floor(left * rate))
    required = math.ceil(rows / rows_per_budget)
    if required > max_map_length:
        raise PlanError(
            f"{rows} rows need {required} partition queries of <= {rows_per_budget} rows to stay within the "
            f"{budget:g} s per-query time budget, but Airflow maps at most {max_map_length} tasks "
            f"([core] max_map_length): raise max_map_length to at least {required} "
            f"(AIRFLOW__CORE__MAX_MAP_LENGTH={required}), raise query_time_budget_seconds (at most "
            f"{MAX_BUDGET_SECONDS:g}), or use the server-side path (Data Distiller)"
        )
    count = required
    if required == 1 and rows / rate > scan:
        # Parallel partitions, when reading rows dominates: n <= factor keeps n * scan + transfer
        # within factor * (scan + transfer) for any transfer time, not just the estimated one.
        by_rows = max(1, rows // MIN_PARALLEL_ROWS)
        count = max(1, min(math.floor(factor), concurrency, by_rows, max_map_length))
    return PartitionPlan(
        tuple(Partition(count, r) for r in range(count)) if count > 1 else (Partition(),),
        rows,
        rows_per_budget,
        required,
        scan,
        rate,
        budget,
    )


# ---------------------------------------------------------------------------------------------
# SQLSTATE 53400: row cap or timeout
# ---------------------------------------------------------------------------------------------

# Adobe documents the code (53400) for the 10-minute limit and the row cap, not the message texts;
# these patterns are GUESSES that match the emulator's messages ("Statement timeout: the query ran
# longer than ...", "Query result exceeds the maximum of 50,000 rows ...", "LIMIT exceeds max
# value") and the usual wordings of a timeout. Timeout is checked first: "time limit" is not a row limit.
_TIMEOUT = re.compile(
    r"time ?out|timed out|ran longer|execution time|time limit|too long|minutes", re.IGNORECASE
)
_ROWS = re.compile(r"\brows?\b|\bLIMIT\b|result (size|set)|too many", re.IGNORECASE)


def limit_kind(message: str) -> LimitKind:
    """Which 53400 limit a Query Service error message speaks of: the timeout, the row cap, or unknown."""
    if _TIMEOUT.search(message):
        return "timeout"
    if _ROWS.search(message):
        return "rows"
    return "unknown"


@dataclass(frozen=True)
class Reaction:
    """What a load does about a 53400: ``split`` the partition in two, or ``fail`` with ``message``."""

    action: Literal["split", "fail"]
    message: str


def limit_reaction(
    kind: LimitKind, *, partition: str, rows_received: int, depth: int, max_depth: int, error: str
) -> Reaction:
    """The reaction to a 53400 of kind ``kind`` on ``partition`` after ``rows_received`` rows arrived.

    * row cap: split (each half returns half the rows);
    * timeout after rows arrived: reading the rows was too slow for the estimate, split (each half
      reads half the rows again after its own scan);
    * timeout before any row: the scan alone reached the limit; every partition scans the whole
      export, so splitting cannot help: fail and say what can;
    * unknown: fail, naming both possibilities (splitting would be wrong for a timeout).
    """
    if kind == "timeout" and rows_received == 0:
        return Reaction(
            "fail",
            (
                f"partition {partition}: Query Service stopped the query at its ad hoc time limit before it returned a "
                f"row ({error}). Scanning the export alone takes that long, and every partition scans all of it, so "
                f"smaller partitions cannot help: use the server-side path (Data Distiller), or export fewer profiles or "
                f"fields"
            ),
        )
    if kind == "unknown":
        return Reaction(
            "fail",
            (
                f"partition {partition}: Query Service answered SQLSTATE 53400 with a message that names neither its "
                f"row cap nor its time limit ({error}). If it is the time limit, lower query_time_budget_seconds or "
                f"query_service_rows_per_second so that prepare plans more, smaller partitions; if it is the row cap, "
                f"the LIMIT 0 override was not honoured: set query_partitioning to 'rows'"
            ),
        )
    if depth >= max_depth:
        what = (
            "returned more rows than Query Service allows"
            if kind == "rows"
            else "still ran into Query Service's time limit while returning rows"
        )
        fix = (
            "check for a skewed person id"
            if kind == "rows"
            else "lower query_service_rows_per_second (how fast a load task reads rows) so that prepare plans more "
            "partitions, or lower query_time_budget_seconds"
        )
        return Reaction("fail", f"partition {partition} {what} after {depth} splits ({error}): {fix}")
    if kind == "rows":
        return Reaction("split", f"partition {partition} is over Query Service's row cap ({error})")
    return Reaction(
        "split",
        (
            f"partition {partition} ran into Query Service's time limit after {rows_received} rows ({error}): reading "
            f"its rows is slower than planned (lower query_service_rows_per_second)"
        ),
    )


def plan_by_rows(
    rows: int, max_rows: int, max_map_length: int = DEFAULT_MAX_MAP_LENGTH
) -> tuple[Partition, ...]:
    """Partitioning ``rows``: partitions of at most ``max_rows`` rows on average (one scan each), within
    ``max_map_length``."""
    from airflow_cja_audiences.sql import plan_partitions

    partitions = tuple(plan_partitions(rows, max_rows)) if rows else ()
    if len(partitions) > max_map_length:
        raise PlanError(
            f"{rows} rows need {len(partitions)} partition queries of <= {max_rows} rows (query_partitioning "
            f"'rows'), but Airflow maps at most {max_map_length} tasks ([core] max_map_length): use "
            f"query_partitioning 'time' (a few LIMIT 0 queries instead of one per {max_rows} rows), or raise "
            f"max_map_length to at least {len(partitions)} (AIRFLOW__CORE__MAX_MAP_LENGTH={len(partitions)})"
        )
    return partitions
