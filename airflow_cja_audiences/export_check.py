"""Did the Query Service read see the whole export? (pure: no Airflow import)

An export job says how many profiles it wrote (``metrics.totalExportedProfileCounter``; its Catalog
batch says the same as ``outputRecordCount``), and each profile is one row of the export dataset,
found by the batch filter. A read that finds a different number of rows did not read that export:
the filter names the wrong batch column (Adobe documents that a row's physical ``_acp_batchid`` and
its logical ``_acp_system_metadata.acp_sourceBatchId`` need not match, and the job reports the
logical one), the lake does not show the batch yet, or the batch was reverted. Publishing from
such a read would replace the live snapshot with a partial or empty one, so the run stops before
anything is written to CJA's datasets.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Where the expected count came from (named in messages and logs).
JOB_COUNTER = "export job metrics.totalExportedProfileCounter"
CATALOG_COUNTER = "Catalog batch metrics.outputRecordCount"


@dataclass(frozen=True)
class ExpectedRows:
    """What the export wrote, by its own account."""

    export_job_id: int | str | None  # None: not known to the caller (its Catalog batch is)
    export_batch_id: str
    rows: int | None  # None: neither the job nor its batch reports a count
    source: str = JOB_COUNTER


@dataclass(frozen=True)
class ReadVerdict:
    ok: bool
    message: str
    retryable: bool = False  # waiting may help (the lake not showing the batch yet); else it cannot


def expected_rows(
    *, export_job_id: int | str | None, export_batch_id: str, job_counter: object, catalog_counter: object
) -> ExpectedRows:
    """The export's own count: the job's counter, else its Catalog batch's (both absent: unknown)."""
    for value, source in ((job_counter, JOB_COUNTER), (catalog_counter, CATALOG_COUNTER)):
        if isinstance(value, bool) or value is None:
            continue
        try:
            rows = int(value)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            continue
        if rows >= 0:
            return ExpectedRows(export_job_id, export_batch_id, rows, source)
    return ExpectedRows(export_job_id, export_batch_id, None, "")


def check_read(expected: ExpectedRows, read_rows: int, *, batch_id_column: str) -> ReadVerdict:
    """Compare the rows the batch filter finds with what the export says it wrote."""
    job = f"export job {expected.export_job_id}" if expected.export_job_id is not None else "the export job"
    what = f"{job} (batch {expected.export_batch_id})"
    if expected.rows is None:
        return ReadVerdict(
            True,
            f"{what} reports no profile count: the read of {read_rows} rows cannot be checked against it",
        )
    if read_rows == expected.rows:
        return ReadVerdict(True, f"{what}: {read_rows} rows read, as its {expected.source} says")
    hint = (
        f"Query Service shows {read_rows} rows where {what} wrote {expected.rows} ({expected.source}), "
        f"filtering on {batch_id_column} = '{expected.export_batch_id}'."
    )
    if read_rows < expected.rows:
        reason = (
            " Nothing published: an empty or partial read must not replace the live data. Either the "
            "batch filter names a column that does not carry the job's batch id (export jobs report the "
            "logical batch, _acp_system_metadata.acp_sourceBatchId; _acp_batchid is the physical one and "
            "may differ), or the data lake does not show the whole batch yet (retried), or the batch "
            "was reverted."
        )
        return ReadVerdict(False, hint + reason, retryable=True)
    reason = (
        " Nothing published: the filter matches rows of other batches too (check batch_id_column), "
        "which waiting cannot fix."
    )
    return ReadVerdict(False, hint + reason, retryable=False)
