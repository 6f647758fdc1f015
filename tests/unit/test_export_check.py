"""The export read check: the rows a read finds against the export job's own count (pure)."""

from __future__ import annotations

import pytest

from airflow_cja_audiences import export_check as ec
from airflow_cja_audiences import sql
from airflow_cja_audiences.config import RefreshJob

BATCH = "01EQ1C48TR4GD4FE7NH2522TCQ"


def test_expected_rows_prefers_the_job_counter_then_the_catalog_batch():
    assert ec.expected_rows(
        export_job_id=24115, export_batch_id=BATCH, job_counter=20, catalog_counter=99
    ) == ec.ExpectedRows(24115, BATCH, 20, ec.JOB_COUNTER)
    assert (
        ec.expected_rows(
            export_job_id=24115, export_batch_id=BATCH, job_counter=None, catalog_counter="7"
        ).rows
        == 7
    )
    assert ec.expected_rows(
        export_job_id=None, export_batch_id=BATCH, job_counter=None, catalog_counter=0
    ) == ec.ExpectedRows(None, BATCH, 0, ec.CATALOG_COUNTER)
    for junk in (None, True, "many", -1, [3]):
        assert (
            ec.expected_rows(
                export_job_id=1, export_batch_id=BATCH, job_counter=junk, catalog_counter=None
            ).rows
            is None
        ), junk


def test_equal_counts_pass_and_an_unknown_count_is_not_a_failure():
    expected = ec.ExpectedRows(24115, BATCH, 120)
    verdict = ec.check_read(expected, 120, batch_id_column="_acp_batchid")
    assert verdict.ok and "export job 24115" in verdict.message
    assert ec.check_read(ec.ExpectedRows(24115, BATCH, None), 0, batch_id_column="x").ok
    assert ec.check_read(ec.ExpectedRows(24115, BATCH, 0), 0, batch_id_column="x").ok  # an export of nobody


@pytest.mark.parametrize("read, retryable", [(0, True), (119, True), (121, False), (240, False)])
def test_a_different_count_fails_naming_the_job_both_counts_and_the_filter(read, retryable):
    verdict = ec.check_read(ec.ExpectedRows(24115, BATCH, 120), read, batch_id_column="_acp_batchid")
    assert not verdict.ok and verdict.retryable is retryable
    for part in (
        "export job 24115",
        f"batch {BATCH}",
        f"shows {read} rows",
        "wrote 120",
        ec.JOB_COUNTER,
        f"_acp_batchid = '{BATCH}'",
        "Nothing published",
    ):
        assert part in verdict.message, (part, verdict.message)


def test_export_rows_sql_counts_the_batch_rows_with_the_configured_column():
    job = RefreshJob.model_validate(
        {
            "job_id": "j",
            "audiences": [{"id": "a-1"}],
            "tenant": "acme",
            "identity": {"field": "_{tenant}.identification.core.email"},
        }
    )
    q = sql.build_membership_query(job, table="audience_export", batch_id=BATCH)
    assert sql.export_rows_sql(q) == (
        "SELECT count(*) AS exportedRows FROM audience_export "
        f"WHERE _acp_system_metadata.acp_sourceBatchId = '{BATCH}'"
    )
    wrong = sql.build_membership_query(
        job.model_copy(update={"batch_id_column": "_acp_batchid"}), table="audience_export", batch_id=BATCH
    )
    assert sql.export_rows_sql(wrong).endswith(f"WHERE _acp_batchid = '{BATCH}'")


def test_export_check_stays_pure() -> None:
    """The decision imports no Airflow (nor the emulator): the operator is its thin caller."""
    import subprocess
    import sys

    code = (
        "import sys, airflow_cja_audiences.export_check; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'airflow' or '.emulator' in m))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
