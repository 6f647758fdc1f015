"""Query Service batch queries (Data Distiller): ``POST /queries`` with ``INSERT INTO <table> SELECT ...``.

What Adobe documents (reference section 8.3; experience-platform docs
``help/query-service/api/queries.md``, ``help/query-service/sql/syntax.md``, guardrails.md):

* ``POST /data/foundation/query/queries`` with ``{"dbName", "sql", "name", "description", ...}`` answers
  **202** with the query object; ``GET /queries/{id}``, ``GET /queries`` (``orderby``, ``limit``, ``start``),
  ``PATCH /queries/{id}`` ``{"op": "cancel"}`` -> 202 ``{"message": "Query cancel request received"}``.
* Query object: ``id``, ``state``, ``request``, ``isInsertInto``, ``isCTAS``, ``rowCount``, ``errors``,
  ``elapsedTime``, ``created``/``updated`` (ISO strings), ``client``, ``userId``, ``_links``, ``version``.
* ``state``: ``SUBMITTED -> IN_PROGRESS -> SUCCESS | FAILED | KILLED | TIMEOUT`` (spec ``query.state``).
* ``INSERT INTO t SELECT ...`` appends a batch to the dataset whose table is ``t`` (no row limit, up to
  24 hours; results only go into datasets). The select must not be parenthesised.

Guesses (marked where they are made below): the batch is visible in Catalog with ``relatedObjects``
naming the query (``{"type": "query", "id": ...}``), it is ``loading`` while the query writes and
``success`` with ``recordCount`` when it ends; the select's column names are the record's top-level
fields (nested fields built with ``named_struct``/``struct``); a record the dataset's schema refuses
fails the whole query (Adobe documents a schema-compatibility check, not its error text); errors are
``{"code": <SQLSTATE>, "message": ...}``. ``CREATE TABLE AS`` and query templates are not modelled
(the query fails saying so).

Timing (realistic mode; every knob 0 by default, so default-mode queries end as fast as DuckDB
writes). Adobe documents that batch queries run at most 24 hours, that their concurrency is licensed
and excess queries wait, and that they are billed in compute hours (guardrails.md); it publishes no
durations. The phases, each a setting and knob (``qs_batch_*``, values and sources in settings.REALISTIC):

1. ``SUBMITTED``: waits for one of ``qs_batch_concurrency`` slots of the org (guess: excess queries queue
   rather than fail, as the guardrails say of queries past the licence), then ``qs_batch_start_seconds``
   of start-up (guess: a Spark job is provisioned per batch query).
2. ``IN_PROGRESS``: the scan costs what the scan-cost model charges an ad hoc query reading the same
   rows (:mod:`.scans`, real seconds, counted in ``/emulator/query-service/scans``); then the batch is
   ``loading`` for ``qs_batch_write_seconds_per_million_records`` per million records written; then
   ``staging`` (``processing`` without intermediate statuses) for ``qs_batch_promote_seconds``; then the
   batch is a success and the query ends ``SUCCESS`` (guess: the query reports success once its output is
   live; the provider reads the batch's status right after the query's).
3. A query whose modelled run time (scan + write + promotion, Adobe seconds) exceeds
   ``qs_batch_max_seconds`` ends ``TIMEOUT`` when that limit falls due, its batch failed (guess: with
   SQLSTATE 53400, the code Adobe documents for the ad hoc time limit).

All waits but the scan are on the compressed clock (``time_scale``); a cancel interrupts any of them.

The SELECT goes through the same Spark -> DuckDB translation as the PostgreSQL endpoint
(:mod:`.translate`), so the batch query reads exactly what an ad hoc query reads. The records are
streamed from DuckDB into the batch's JSON Lines file (as an ingested batch's accepted records), so the
written data is read back by Catalog, CJA and the admin API like any ingested batch.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import duckdb

from aep_emulator import catalog as cat
from aep_emulator.query_service import errors as err
from aep_emulator.query_service.errors import QueryServiceError
from aep_emulator.query_service.translate import Translator, strip_comments

if TYPE_CHECKING:  # pragma: no cover
    from aep_emulator.state import EmulatorState, SandboxState

log = logging.getLogger("aep_emulator.query_service.batch")

SUBMITTED, IN_PROGRESS, SUCCESS, FAILED, KILLED, TIMEOUT = (
    "SUBMITTED",
    "IN_PROGRESS",
    "SUCCESS",
    "FAILED",
    "KILLED",
    "TIMEOUT",
)
TERMINAL = frozenset({SUCCESS, FAILED, KILLED, TIMEOUT})
ORIGIN = "query"  # Catalog batch origin (emulator-internal; Catalog shows it through relatedObjects)
_INSERT_RE = re.compile(
    r"\A\s*INSERT\s+INTO\s+(?P<table>[A-Za-z_][A-Za-z0-9_]*)\s+(?P<select>(?:SELECT|WITH)\b.*)\Z",
    re.IGNORECASE | re.DOTALL,
)
_CTAS_RE = re.compile(r"\A\s*CREATE\s+TABLE\b", re.IGNORECASE)
_FETCH_CHUNK = 10_000
# How many problems a failed query lists (guess: Adobe's errors array shape for batch queries).
_MAX_ERRORS = 5
_TRANSLATOR = Translator()


def _iso(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


@dataclass
class BatchQuery:
    id: str
    sandbox: str
    request: dict[str, Any]
    user_id: str
    created: int
    updated: int
    state: str = SUBMITTED
    is_insert_into: bool = False
    row_count: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    dataset_id: str | None = None
    batch_id: str | None = None
    started_monotonic: float | None = None
    elapsed_ms: int = 0
    cancel_requested: bool = False
    version: int = 1
    # Set by a cancel: wakes a query waiting in a modelled phase (queue, start-up, scan, write, promotion).
    cancelled: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    def to_json(self, base_url: str) -> dict[str, Any]:
        href = f"{base_url}/data/foundation/query/queries/{self.id}"
        links: dict[str, Any] = {
            "self": {"href": href, "method": "GET"},
            "soft_delete": {"href": href, "method": "PATCH", "body": '{ "op": "soft_delete"}'},
        }
        if self.state not in TERMINAL:
            links["cancel"] = {"href": href, "method": "PATCH", "body": '{ "op": "cancel"}'}
        if self.dataset_id:
            links["referenced_datasets"] = [
                {
                    "id": self.dataset_id,
                    "href": f"{base_url}/data/foundation/catalog/dataSets/{self.dataset_id}",
                }
            ]
        return {
            "isInsertInto": self.is_insert_into,
            "isCTAS": False,
            "request": dict(self.request),
            "state": self.state,
            "rowCount": self.row_count,
            "errors": [dict(e) for e in self.errors],
            "version": self.version,
            "id": self.id,
            "elapsedTime": self.elapsed_ms,
            "created": _iso(self.created),
            "updated": _iso(self.updated),
            "client": "API",
            "userId": self.user_id,
            "_links": links,
        }


class _Context:
    """The translator's view for one batch query: the sandbox's tables, system columns hidden."""

    drop_system_columns = True

    def __init__(self, cursor: duckdb.DuckDBPyConnection, tables: Mapping[str, str]) -> None:
        self._cursor = cursor
        self._tables = tables

    def describe(self, sql: str) -> list[tuple[str, Any]]:
        try:
            self._cursor.execute(sql)
        except duckdb.Error as exc:
            raise err.from_duckdb(exc) from exc
        return [(d[0], d[1]) for d in self._cursor.description or []]

    def tables(self) -> Mapping[str, str]:
        return self._tables

    def session_function(self, name: str, args: Sequence[str]) -> str | None:
        return None  # PostgreSQL session functions mean nothing in a batch query


def submit(state: EmulatorState, sandbox: SandboxState, body: dict[str, Any], user_id: str) -> BatchQuery:
    """Register a query and start it in the executor (call under the state lock)."""
    now = state.now_ms()
    query = BatchQuery(
        id=str(uuid.uuid4()), sandbox=sandbox.name, request=body, user_id=user_id, created=now, updated=now
    )
    sandbox.batch_queries[query.id] = query
    # A thread of its own, not the state's executor: a query waiting out its modelled time must not hold
    # one of the two workers exports and ingestion share.
    threading.Thread(
        target=_run, args=(state, sandbox, query), name=f"batch-query-{query.id[:8]}", daemon=True
    ).start()
    log.info("batch query %s submitted (%s)", query.id, body.get("name") or "unnamed")
    return query


def cancel(state: EmulatorState, query: BatchQuery) -> None:
    """``{"op": "cancel"}``: a running query stops at its next chunk and ends KILLED."""
    query.cancel_requested = True
    query.cancelled.set()
    if query.state == SUBMITTED:
        _finish(state, query, KILLED, [{"code": err.QUERY_CANCELED, "message": "query cancelled by request"}])


def _finish(state: EmulatorState, query: BatchQuery, status: str, errors: list[dict[str, Any]]) -> None:
    query.state, query.errors = status, errors[:_MAX_ERRORS]
    query.updated = state.now_ms()
    query.version += 1
    if query.started_monotonic is not None:
        query.elapsed_ms = int((time.monotonic() - query.started_monotonic) * 1000)


def _target(sandbox: SandboxState, table: str) -> cat.Dataset:
    for dataset in sandbox.catalog.datasets.values():
        if dataset.table.lower() == table.lower():
            return dataset
    raise QueryServiceError(
        err.UNDEFINED_TABLE,
        f'Table not found: relation "{table}" does not exist',
        hint="INSERT INTO needs the table name of an existing dataset of this sandbox",
    )


def _parse(sql: object) -> tuple[str, str]:
    """(target table, select) of ``INSERT INTO <table> SELECT ...``; anything else fails."""
    if not isinstance(sql, str) or not sql.strip():
        raise QueryServiceError(err.SYNTAX_ERROR, "the request has no sql")
    text = strip_comments(sql).strip().rstrip(";").strip()
    if ";" in text:
        raise QueryServiceError(err.SYNTAX_ERROR, "a batch query is one statement")
    if _CTAS_RE.match(text):
        raise QueryServiceError(
            err.FEATURE_NOT_SUPPORTED,
            "CREATE TABLE AS SELECT is not modelled by the Query Service emulator; "
            "use INSERT INTO an existing dataset",
        )
    match = _INSERT_RE.match(text)
    if match is None:
        if re.match(r"\s*INSERT\s+INTO\s+\S+\s*\(", text, re.IGNORECASE):
            raise QueryServiceError(err.SYNTAX_ERROR, "INSERT INTO: the SELECT must not be parenthesised")
        if re.match(r"\s*INSERT\b", text, re.IGNORECASE):
            raise QueryServiceError(err.SYNTAX_ERROR, "syntax error: expected INSERT INTO <table> SELECT ...")
        raise QueryServiceError(
            err.FEATURE_NOT_SUPPORTED,
            "the Query Service emulator runs batch queries of the form "
            "INSERT INTO <table> SELECT ... only (ad hoc SELECTs go over the PostgreSQL "
            "endpoint; REST returns no rows)",
        )
    return match["table"], match["select"]


class _Slots:
    """The org's batch-query slots: at most ``limit`` queries past SUBMITTED at once (0 = no limit)."""

    def __init__(self) -> None:
        self._running = 0
        self._changed = threading.Condition()

    def acquire(self, limit: int, query: BatchQuery) -> None:
        with self._changed:
            while limit > 0 and self._running >= limit:
                if query.cancelled.is_set():
                    raise _Cancelled()
                # Woken by a release; the timeout re-checks a cancel (which does not notify this condition).
                self._changed.wait(0.05)
            self._running += 1

    def release(self) -> None:
        with self._changed:
            self._running -= 1
            self._changed.notify_all()


# One set of slots per emulator state (one org), without a field on the state itself.
_SLOTS: weakref.WeakKeyDictionary[Any, _Slots] = weakref.WeakKeyDictionary()
_SLOTS_LOCK = threading.Lock()


def _slots(state: EmulatorState) -> _Slots:
    with _SLOTS_LOCK:
        slots = _SLOTS.get(state)
        if slots is None:
            slots = _SLOTS[state] = _Slots()
        return slots


def _pause(query: BatchQuery, seconds: float) -> None:
    """Wait ``seconds`` real seconds of a modelled phase; a cancel ends the wait (and the query)."""
    if seconds > 0 and query.cancelled.wait(seconds):
        raise _Cancelled()
    if query.cancel_requested:
        raise _Cancelled()


def _run(state: EmulatorState, sandbox: SandboxState, query: BatchQuery) -> None:
    """The query's whole life, in its own thread."""
    knobs = state.knobs
    slots = _slots(state)
    try:
        slots.acquire(knobs.qs_batch_concurrency, query)
    except _Cancelled:
        return  # cancel() already ended a query still SUBMITTED
    try:
        _pause(query, knobs.real_seconds(knobs.qs_batch_start_seconds))
    except _Cancelled:
        slots.release()
        return
    try:
        _execute(state, sandbox, query)
    finally:
        slots.release()


def _execute(state: EmulatorState, sandbox: SandboxState, query: BatchQuery) -> None:
    """From IN_PROGRESS to a terminal state, holding one of the org's slots."""
    knobs = state.knobs
    with state.lock:
        if query.state in TERMINAL:
            return
        query.state, query.started_monotonic = IN_PROGRESS, time.monotonic()
        query.updated = state.now_ms()
        query.version += 1
    batch: cat.Batch | None = None
    try:
        table, select = _parse(query.request.get("sql"))
        state.count_scans(select, "batch")
        with state.lock:
            query.is_insert_into = True
            dataset = _target(sandbox, table)
            query.dataset_id = dataset.id
            if dataset.has_table:
                raise QueryServiceError(
                    err.FEATURE_NOT_SUPPORTED,
                    f"INSERT INTO {dataset.table}: writing into a profile export (union "
                    f"schema) dataset is not modelled by the Query Service emulator",
                )
            schema = sandbox.registry.record_schema(dataset.schema_id)
            tables = {
                name.lower(): name for name, (owner, _) in state.tables.items() if owner == sandbox.name
            }
        cursor = state.cursor()
        try:
            translation = _TRANSLATOR.translate(select, _Context(cursor, tables))
            # The scan costs what the scan-cost model charges an ad hoc query reading the same rows
            # (real seconds; also what /emulator/query-service/scans totals).
            scan_seconds = state.qs_scans.charge(select)
            _pause(query, scan_seconds)
            with state.lock:
                batch = _open_batch(state, sandbox, dataset, query)
            directory = state.files_dir / batch.id
            directory.mkdir(parents=True, exist_ok=True)
            records_path = directory / "accepted.jsonl"
            rows, size = _write(cursor, translation.sql, schema, records_path, query)
        finally:
            cursor.close()
        write_seconds = knobs.qs_batch_write_seconds_per_million_records * rows / 1_000_000
        log.info(
            "batch query %s read and wrote %d records; modelled: scan %.1f s, write %.1f s, promotion %g s "
            "(Adobe seconds; the write and promotion run on time scale %g)",
            query.id,
            rows,
            scan_seconds,
            write_seconds,
            knobs.qs_batch_promote_seconds,
            knobs.time_scale,
        )
        modelled = scan_seconds + write_seconds + knobs.qs_batch_promote_seconds
        limit = knobs.qs_batch_max_seconds
        if limit > 0 and modelled > limit:
            # The query would run past Query Service's limit: it ends TIMEOUT when the limit falls due.
            _pause(query, knobs.real_seconds(max(limit - scan_seconds, 0.0)))
            message = (
                f"batch query exceeded the maximum execution time of {limit:g} s (modelled {modelled:.0f} s: "
                f"scan {scan_seconds:.0f} s, writing {rows} records {write_seconds:.0f} s, "
                f"promotion {knobs.qs_batch_promote_seconds:g} s)"
            )
            with state.lock:
                _fail_batch(state, batch, message)
                _finish(state, query, TIMEOUT, [{"code": err.INSUFFICIENT_RESOURCES, "message": message}])
            log.warning("batch query %s TIMEOUT: %s", query.id, message)
            return
        _pause(query, knobs.real_seconds(write_seconds))  # the batch is "loading" meanwhile
        promote = knobs.real_seconds(knobs.qs_batch_promote_seconds)
        if promote > 0:
            with state.lock:
                batch.status = cat.STAGING if knobs.intermediate_statuses else cat.PROCESSING
                batch.touch(state.now_ms())
            _pause(query, promote)
        with state.lock:
            now = state.now_ms()
            batch.records_path = records_path
            batch.status, batch.completed = cat.SUCCESS, now
            batch.metrics = {
                "inputRecordCount": rows,
                "outputRecordCount": rows,
                "failedRecordCount": 0,
                "inputByteSize": size,
            }
            batch.touch(now)
            query.row_count = rows
            _finish(state, query, SUCCESS, [])
        log.info(
            "batch query %s SUCCESS: %d records into batch %s of dataset %s",
            query.id,
            rows,
            batch.id,
            dataset.id,
        )
    except _Cancelled:
        with state.lock:
            _fail_batch(state, batch, "query cancelled")
            _finish(
                state, query, KILLED, [{"code": err.QUERY_CANCELED, "message": "query cancelled by request"}]
            )
    except QueryServiceError as exc:
        with state.lock:
            _fail_batch(state, batch, str(exc))
            _finish(state, query, FAILED, [{"code": exc.sqlstate, "message": str(exc)}])
        log.info("batch query %s FAILED: %s", query.id, exc)
    except duckdb.Error as exc:
        failure = err.from_duckdb(exc)
        with state.lock:
            _fail_batch(state, batch, str(failure))
            _finish(state, query, FAILED, [{"code": failure.sqlstate, "message": str(failure)}])
        log.info("batch query %s FAILED: %s", query.id, failure)
    except Exception as exc:  # a bug of the emulator: the query fails like an internal error
        log.exception("batch query %s: internal error", query.id)
        with state.lock:
            _fail_batch(state, batch, "internal error")
            _finish(state, query, FAILED, [{"code": err.INTERNAL_ERROR, "message": f"internal error: {exc}"}])


class _Cancelled(Exception):
    pass


def _open_batch(
    state: EmulatorState, sandbox: SandboxState, dataset: cat.Dataset, query: BatchQuery
) -> cat.Batch:
    now = state.now_ms()
    batch = cat.Batch(
        id=cat.new_batch_id(),
        sandbox=sandbox.name,
        dataset_id=dataset.id,
        origin=ORIGIN,
        status=cat.LOADING,
        created=now,
        updated=now,
        started=now,
        created_client=state.settings.client_id,
        input_format={"format": "parquet"},
        # Guess: Adobe does not document how Catalog links a batch to the query that wrote it.
        related=[{"type": "query", "id": query.id}],
    )
    sandbox.catalog.batches[batch.id] = batch
    query.batch_id = batch.id
    return batch


def _fail_batch(state: EmulatorState, batch: cat.Batch | None, reason: str) -> None:
    if batch is None or batch.status not in (cat.LOADING, cat.STAGING, cat.PROCESSING):
        return
    now = state.now_ms()
    batch.status, batch.completed = cat.FAILED, now
    batch.errors = [{"code": "QS-BATCH-FAILED", "description": f"the batch query failed: {reason}"}]  # guess
    batch.touch(now)


def _write(
    cursor: duckdb.DuckDBPyConnection, select_sql: str, schema: Any, path: Any, query: BatchQuery
) -> tuple[int, int]:
    """Stream the select's rows as JSON records into ``path``; every record must fit the schema."""
    rows = size = 0
    result = cursor.execute(f"SELECT to_json(_row) FROM ({select_sql}) AS _row")
    with open(path, "w", encoding="utf-8") as out:
        while chunk := result.fetchmany(_FETCH_CHUNK):
            if query.cancel_requested:
                raise _Cancelled()
            for (line,) in chunk:
                record = json.loads(line)
                problems = schema.validate(record)
                if problems:
                    code, message = problems[0]
                    raise QueryServiceError(
                        err.DATATYPE_MISMATCH,
                        f"record {rows + 1} does not fit the schema of the target dataset ({code}: {message}); "
                        f"nothing was written",
                    )
                out.write(line)
                out.write("\n")
                size += len(line) + 1
                rows += 1
    return rows, size
