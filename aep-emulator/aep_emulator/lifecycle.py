"""Lifecycles of export jobs and batches, advanced lazily from timestamps by ``Host.tick``.

Export job: NEW (first quarter of ``export_job_seconds``) -> PROCESSING (the Catalog batch appears and
``destination.batchId`` is set) -> SUCCEEDED | FAILED once the time is up and the rows are computed.
The rows are computed in the executor into a per-batch table as soon as the job is created; the
dataset's table (a view over its live batch tables) includes it only once the job succeeds, so
readers never see a partial export and nothing is copied.

Ingestion batch: loading -> (COMPLETE) processing -> success | failed after ``batch_seconds`` and the
validation in the executor.

Realistic mode (``knobs.intermediate_statuses``): an ingestion batch goes loading -> (COMPLETE)
loaded -> processing -> staging -> success (failed straight from processing); an export's batch is
loading while its job is PROCESSING, then staging for ``export_batch_seconds`` after the job
SUCCEEDED, then success | failed. The names are Catalog's (its spec's status enum); the order and the
shares of each phase are guesses (statuses: https://experienceleague.adobe.com/en/docs/experience-platform/
ingestion/batch-ingestion/troubleshooting). Durations are Adobe seconds, turned
into real ones by ``knobs.time_scale`` (the compressed clock).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any, Protocol

import duckdb

from aep_emulator import catalog as cat
from aep_emulator import exports, ingest
from aep_emulator.catalog import Batch, Catalog, Dataset
from aep_emulator.clock import Clock
from aep_emulator.exports import ExportJob, ExportRequest
from aep_emulator.knobs import Knobs
from aep_emulator.memberships import Timeline
from aep_emulator.settings import EmulatorSettings

log = logging.getLogger("aep_emulator.lifecycle")


# The lifecycles see the emulator through these two interfaces only; ``state.Host`` and
# ``state.Sandbox`` provide them. So ``state`` imports this module and never the reverse, and
# every change the lifecycles make outside a job or batch is a named call (``watch_job``, ...).
class Sandbox(Protocol):
    """The part of a sandbox the lifecycles touch: its Catalog and its export jobs."""

    @property
    def name(self) -> str: ...
    @property
    def catalog(self) -> Catalog: ...
    @property
    def export_jobs(self) -> dict[int, ExportJob]: ...


class Host(Protocol):
    """What the lifecycles need from the emulator: configuration, time, storage, and bookkeeping."""

    @property
    def settings(self) -> EmulatorSettings: ...
    @property
    def knobs(self) -> Knobs: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def timeline(self) -> Timeline: ...
    @property
    def executor(self) -> Executor: ...
    @property
    def files_dir(self) -> Path: ...
    def now_ms(self) -> int: ...
    def cursor(self) -> duckdb.DuckDBPyConnection: ...
    def execute(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]: ...
    def new_export_job_id(self) -> int: ...
    def watch_job(self, sandbox: str, job_id: int) -> None: ...
    def watch_batch(self, sandbox: str, batch_id: str) -> None: ...
    def drop_when_done(self, work: Future[Any], table: str) -> None: ...
    def refresh_export_view(self, sandbox: Sandbox, dataset: Dataset) -> None: ...


def batch_table(batch_id: str) -> str:
    """The DuckDB table holding the rows of one export batch."""
    return f"_emu_batch_{batch_id}"


def _compute_export(state: Host, job: ExportJob) -> int:
    sql = exports.export_sql(
        state.timeline,
        state.settings.seed,
        state.settings.tenant,
        job.at,
        job.request,
        job.batch_id,
        job.physical_batch_id,
    )
    started = time.monotonic()
    cur = state.cursor()
    try:
        # Datasets have no row order; not preserving it lets DuckDB write in parallel (~25% faster).
        cur.execute("SET preserve_insertion_order = false")
        cur.execute(f'CREATE TABLE "{batch_table(job.batch_id)}" AS {sql}')
        rows = cur.execute(f'SELECT count(*) FROM "{batch_table(job.batch_id)}"').fetchone()[0]
    finally:
        cur.close()
    log.info("export job %s computed %d rows in %.2fs", job.id, rows, time.monotonic() - started)
    return int(rows)


def create_export_job(state: Host, sandbox: Sandbox, request: ExportRequest, request_id: str) -> ExportJob:
    """Register a job and start computing its rows (call under the state lock)."""
    now = time.monotonic()
    processing_at, done_at = exports.progress_times(
        now, state.knobs.real_seconds(state.knobs.export_job_seconds)
    )
    failure = None
    if request.unknown_fields:
        # The use-case doc's trap: the job is accepted and SUCCEEDS, and the batch it wrote fails.
        failure = "fields"
    elif state.knobs.export_job_failures > 0:
        state.knobs.export_job_failures -= 1
        failure = "job"
    elif state.knobs.export_batch_failures > 0:
        state.knobs.export_batch_failures -= 1
        failure = "batch"
    # One clock reading: the export reflects second int(creationTime / 1000) exactly.
    now_epoch = state.clock.epoch()
    now_ms = int(now_epoch * 1000)
    job = ExportJob(
        id=state.new_export_job_id(),
        sandbox=sandbox.name,
        request=request,
        at=int(now_epoch),
        created_ms=now_ms,
        updated_ms=now_ms,
        processing_at=processing_at,
        done_at=done_at,
        batch_id=cat.new_batch_id(),
        request_id=request_id,
        failure_mode=failure,
        # Realistic mode: the data lake's physical batch is not the logical one the job reports.
        physical_batch_id=cat.new_batch_id() if state.knobs.distinct_batch_ids else None,
    )
    job.work = state.executor.submit(_compute_export, state, job)
    sandbox.export_jobs[job.id] = job
    state.watch_job(sandbox.name, job.id)
    if failure:
        log.info("export job %s will fail (%s) as the failure knob asked", job.id, failure)
    return job


CALL_STACK = "com.adobe.aep.unifiedprofile.common.logging.Logger"  # the spec's and docs' example


def _fail_job(state: Host, sandbox: Sandbox, job: ExportJob, code: str, message: str) -> None:
    now_ms = state.now_ms()
    job.status, job.updated_ms, job.end_ms = exports.FAILED, now_ms, now_ms
    # callStack is a string in Segmentation's spec and in the documented FAILED job (never null);
    # its value there is a logger class name, which the emulator repeats (what else it holds: unknown).
    job.errors = [{"code": code, "msg": message, "callStack": CALL_STACK}]
    batch = sandbox.catalog.batches.get(job.batch_id)
    if batch is not None and batch.status in cat.IN_PROGRESS | {cat.LOADING}:
        batch.status, batch.completed = cat.FAILED, now_ms
        batch.errors = [{"code": code, "description": message}]
        batch.touch(now_ms)
    if job.work is not None:
        state.drop_when_done(job.work, batch_table(job.batch_id))


def cancel_export_job(state: Host, sandbox: Sandbox, job: ExportJob) -> None:
    """DELETE /export/jobs/{id}: a running job ends FAILED (guess: no CANCELLED status is documented)."""
    if not job.terminal:
        _fail_job(state, sandbox, job, "0100-499", "Export job was cancelled at the client's request")
        log.info("export job %s cancelled", job.id)


def advance_export_job(state: Host, sandbox: Sandbox, job: ExportJob) -> None:
    now = time.monotonic()
    if job.status == exports.NEW and now >= job.processing_at:
        now_ms = state.now_ms()
        job.status, job.updated_ms, job.start_ms = exports.PROCESSING, now_ms, now_ms
        sandbox.catalog.batches[job.batch_id] = Batch(
            id=job.batch_id,
            sandbox=sandbox.name,
            dataset_id=job.request.dataset_id,
            origin="export",
            # Guess: the export writes its files into a batch that is loading (realistic mode).
            status=cat.LOADING if state.knobs.intermediate_statuses else cat.PROCESSING,
            created=now_ms,
            updated=now_ms,
            started=now_ms,
            created_client="acp_segmentation",
            input_format={"format": "parquet"},
        )
        job.batch_created = True
    if job.status != exports.PROCESSING or now < job.done_at or job.work is None or not job.work.done():
        return
    dataset = sandbox.catalog.datasets.get(job.request.dataset_id)
    error = job.work.exception()
    if error is not None:
        log.error("export job %s failed computing its rows: %s", job.id, error)
        _fail_job(state, sandbox, job, "0090-500", f"Export failed: {error}")
        return
    if dataset is None:
        _fail_job(
            state, sandbox, job, "0091-404", f"Destination dataset {job.request.dataset_id} was deleted"
        )
        return
    if job.failure_mode == "job":
        _fail_job(state, sandbox, job, "0092-500", "Export job failed (failure injected by the emulator)")
        return
    rows = job.work.result()
    batch = sandbox.catalog.batches[job.batch_id]
    now_ms = state.now_ms()
    job.status, job.exported, job.updated_ms, job.end_ms = exports.SUCCEEDED, rows, now_ms, now_ms
    tail = (
        state.knobs.real_seconds(state.knobs.export_batch_seconds)
        if state.knobs.intermediate_statuses
        else 0.0
    )
    if tail > 0:
        # The job is done; Catalog still shows its batch staging for a while (realistic mode).
        batch.status, batch.due = cat.STAGING, time.monotonic() + tail
        batch.touch(now_ms)
        state.watch_batch(sandbox.name, batch.id)
        log.info("export job %s SUCCEEDED with %d profiles; its batch %s is staging", job.id, rows, batch.id)
        return
    settle_export_batch(state, sandbox, job, batch)
    log.info(
        "export job %s SUCCEEDED with %d profiles into batch %s (%s)", job.id, rows, batch.id, batch.status
    )


def settle_export_batch(state: Host, sandbox: Sandbox, job: ExportJob, batch: Batch) -> None:
    """The export's batch ends: success (its rows join the dataset) or failed (failure modes)."""
    now_ms = state.now_ms()
    dataset = sandbox.catalog.datasets.get(job.request.dataset_id)
    if job.failure_mode == "fields":
        # Guess: the code and text of the batch error (the use-case doc says only that the batch fails).
        batch.status = cat.FAILED
        batch.errors = [
            {
                "code": "INGEST-1555-400",
                "description": f"Field path(s) {', '.join(job.request.unknown_fields)} of the export "
                f"job's fields do not exist in the profile union schema",
            }
        ]
        state.drop_when_done(job.work, batch_table(job.batch_id))
    elif job.failure_mode == "batch":
        # The recipe's trap: the job reports success while the batch it wrote fails in Catalog.
        batch.status = cat.FAILED
        batch.errors = [
            {
                "code": "INGEST-1510-400",
                "description": "Batch failed while writing to the dataset (failure injected by the emulator)",
            }
        ]
        state.drop_when_done(job.work, batch_table(job.batch_id))
    elif dataset is None:
        batch.status = cat.FAILED
        batch.errors = [
            {
                "code": "INGEST-1404-404",
                "description": f"Destination dataset {job.request.dataset_id} was deleted",
            }
        ]
        state.drop_when_done(job.work, batch_table(job.batch_id))
    else:
        rows = job.exported or 0
        batch.status, batch.live_since = cat.SUCCESS, time.monotonic()
        state.refresh_export_view(sandbox, dataset)
        # Record counts only: an export writes no input files whose bytes could be reported.
        batch.metrics = {"inputRecordCount": rows, "outputRecordCount": rows, "failedRecordCount": 0}
    batch.completed = now_ms
    batch.due = None
    batch.touch(now_ms)
    if batch.status == cat.FAILED:
        log.info("export batch %s of job %s failed: %s", batch.id, job.id, batch.errors[0]["description"])


# -- ingestion batches -------------------------------------------------------------------------
def complete_batch(state: Host, sandbox: Sandbox, batch: Batch, schema) -> None:
    """COMPLETE: start validating the uploaded files (call under the state lock)."""
    now_ms = state.now_ms()
    now, duration = time.monotonic(), state.knobs.real_seconds(state.knobs.batch_seconds)
    batch.started = now_ms
    if state.knobs.intermediate_statuses:
        # Guess: shares of the phases (loaded 10%, processing 80%, staging the last 10%).
        batch.status = cat.LOADED
        batch.stages = [(now + 0.1 * duration, cat.PROCESSING), (now + 0.9 * duration, cat.STAGING)]
    else:
        batch.status = cat.PROCESSING
    batch.touch(now_ms)
    batch.due = now + duration
    if state.knobs.ingestion_failures > 0:
        state.knobs.ingestion_failures -= 1
        batch.work = None  # fails at its due time without looking at the files
        batch.errors = [
            {
                "code": "INGEST-1100-500",
                "description": "Internal error while processing the batch (failure injected by the emulator)",
            }
        ]
    else:
        directory = state.files_dir / batch.id
        directory.mkdir(parents=True, exist_ok=True)
        batch.records_path = directory / "accepted.jsonl"
        batch.row_errors_dir = directory / "row_errors" if batch.diagnostics else None
        files = [(name, f.disk) for name, f in sorted(batch.files.items())]
        reject = 0
        if state.knobs.partial_ingestion_failures > 0:
            state.knobs.partial_ingestion_failures -= 1
            reject, batch.partial_percent = 1, 100.0  # one record fails; the batch succeeds without it
        batch.work = state.executor.submit(
            ingest.process,
            files,
            schema,
            multiline=bool(batch.input_format.get("isMultiLineJson")),
            records_out=batch.records_path,
            row_errors_dir=batch.row_errors_dir,
            reject_first=reject,
        )
    state.watch_batch(sandbox.name, batch.id)


def advance_batch(state: Host, sandbox: Sandbox, batch: Batch) -> bool:
    """Move a batch in progress on when due; True once the batch needs no more ticks."""
    if batch.status not in cat.IN_PROGRESS:
        return True
    now = time.monotonic()
    if batch.origin == "export":  # staging after its job SUCCEEDED (realistic mode)
        if batch.due is not None and now < batch.due:
            return False
        job = next((j for j in sandbox.export_jobs.values() if j.batch_id == batch.id), None)
        if job is not None:
            settle_export_batch(state, sandbox, job, batch)
        return True
    while batch.stages and now >= batch.stages[0][0]:
        _, status = batch.stages.pop(0)
        if status == cat.STAGING and batch.work is not None and not batch.work.done():
            batch.stages.insert(0, (now, status))  # validation still running: stay processing
            break
        if status == cat.STAGING and _will_fail(batch):
            batch.stages.clear()  # a failing batch is never staged: it fails from processing
            break
        batch.status = status
        batch.touch(state.now_ms())
    if batch.due is None or now < batch.due or (batch.work is not None and not batch.work.done()):
        return False
    now_ms = state.now_ms()
    batch.completed = now_ms
    batch.touch(now_ms)
    if batch.work is None:  # injected failure
        batch.status = cat.FAILED
        return True
    error = batch.work.exception()
    if error is not None:
        log.error("batch %s failed in processing: %s", batch.id, error)
        batch.status, batch.errors = cat.FAILED, [{"code": "INGEST-1100-500", "description": str(error)}]
        return True
    result: ingest.IngestResult = batch.work.result()
    ok, errors = ingest.outcome(result, partial_percent=batch.partial_percent, diagnostics=batch.diagnostics)
    batch.status, batch.errors = (cat.SUCCESS if ok else cat.FAILED), errors
    if ok:
        batch.live_since = time.monotonic()  # the instant the replay below (if any) takes effect too
    batch.metrics = {
        "inputByteSize": result.input_bytes,
        "inputFileCount": result.file_count,
        "inputRecordCount": result.input_records,
        "outputRecordCount": result.output_records if ok else 0,
        "failedRecordCount": result.failed_records,
    }
    log.info(
        "batch %s %s: %d records in, %d failed",
        batch.id,
        batch.status,
        result.input_records,
        result.failed_records,
    )
    if ok and batch.replay:
        # Batch replay ("equivalent to deleting the old batch and ingesting a new one", batch ingestion
        # API guide). When the predecessors leave the dataset is not documented. Guess: at the moment
        # the replay batch succeeds, in the same step (under the state lock, so no reader ever sees
        # both or neither); a replay batch that fails, is aborted or never completes leaves them live.
        # Predecessors reverted meanwhile stay as they are.
        for old_id in batch.replay.get("predecessors") or []:
            old = sandbox.catalog.batches.get(str(old_id))
            if old is not None and old.status == cat.SUCCESS:
                revert_batch(
                    state, sandbox, old, by_client=batch.created_client, at=batch.live_since, at_ms=now_ms
                )
    return True


def _will_fail(batch: Batch) -> bool:
    """Whether a batch whose validation finished will end failed (it then skips staging)."""
    if batch.work is None:
        return True
    if batch.work.exception() is not None:
        return True
    ok, _ = ingest.outcome(
        batch.work.result(), partial_percent=batch.partial_percent, diagnostics=batch.diagnostics
    )
    return not ok


def revert_batch(
    state: Host,
    sandbox: Sandbox,
    batch: Batch,
    *,
    by_client: str | None = None,
    at: float | None = None,
    at_ms: int | None = None,
) -> None:
    """REVERT (or replacement by a replay): the batch becomes inactive and its records leave the dataset.
    ``at``/``at_ms``: the instant (monotonic / epoch ms) of a replay's success, the same for both."""
    now_ms = state.now_ms() if at_ms is None else at_ms
    batch.status, batch.live_until = cat.INACTIVE, time.monotonic() if at is None else at
    if by_client is not None:
        batch.updated_client = by_client
    batch.touch(now_ms)
    dataset = sandbox.catalog.datasets.get(batch.dataset_id)
    if batch.origin == "export" and dataset is not None and dataset.has_table:
        state.refresh_export_view(sandbox, dataset)
        state.execute(f'DROP TABLE IF EXISTS "{batch_table(batch.id)}"')
    if batch.records_path is not None:
        batch.records_path.unlink(missing_ok=True)
    log.info("batch %s reverted (inactive)", batch.id)
