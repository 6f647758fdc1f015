"""Partitions sized by time (scanplan): bounded scans, the time budget, max_map_length, 53400 kinds."""

from __future__ import annotations

import math

import pytest

from airflow_cja_audiences import scanplan
from airflow_cja_audiences.scanplan import PlanError, limit_kind, limit_reaction, plan_by_rows, plan_by_time
from airflow_cja_audiences.sql import Partition


def _plan(rows: int, **kw: object) -> scanplan.PartitionPlan:
    args: dict = {
        "scan_seconds": 50.0,
        "rows_per_second": 20_000.0,
        "budget_seconds": 300.0,
        "concurrency": 5,
    }
    args.update(kw)
    return plan_by_time(rows, **args)


def test_no_rows_no_partitions() -> None:
    plan = _plan(0)
    assert plan.partitions == () and plan.total_seconds == 0 and "no partition" in plan.describe()


@pytest.mark.parametrize("rows", [1, 49_999, 1_000_000, 5_000_000, 25_000_000, 120_000_000])
@pytest.mark.parametrize("scan", [0.0, 0.5, 10.0, 52.0, 200.0])
def test_scans_stay_bounded_and_queries_within_the_budget(rows: int, scan: float) -> None:
    plan = _plan(rows, scan_seconds=scan, max_map_length=10_000)
    required = math.ceil(rows / plan.rows_per_budget)
    assert plan.required == required
    # The goal: at most ceil(rows / rows-per-budget) + 4 scans (concurrency 5).
    assert required <= plan.count <= required + 4
    assert plan.query_seconds <= 300.0 + 1e-6  # every partition fits the budget
    if plan.count > required:  # partitions added for parallelism keep Query Service time near the floor...
        assert plan.total_seconds <= scanplan.DEFAULT_QS_FACTOR * plan.floor_seconds + 1e-6
        # ... however fast the rows are actually read (transfer time -> 0)
        assert plan.count * plan.scan_seconds <= scanplan.DEFAULT_QS_FACTOR * plan.scan_seconds + 1e-6
    assert sorted(p.remainder for p in plan.partitions) == list(range(plan.count))
    assert {p.modulus for p in plan.partitions} == {plan.count}


def test_a_whole_result_that_fits_is_one_unpartitioned_query() -> None:
    plan = _plan(40_000, scan_seconds=1.0)
    assert plan.partitions == (Partition(),)


def test_parallel_partitions_only_when_scans_are_cheap_relative_to_the_rows() -> None:
    cheap = _plan(5_000_000, scan_seconds=2.0)  # transfer 250 s >> scan: two queries at once
    dear = _plan(5_000_000, scan_seconds=200.0)  # 200 s per scan: needs 3 for the budget, adds none
    scan_bound = _plan(1_000_000, scan_seconds=60.0)  # transfer 50 s < scan: parallel is not worth a scan
    assert cheap.count == 2 and cheap.required == 1
    assert dear.required == dear.count == math.ceil(5_000_000 / (100 * 20_000))
    assert scan_bound.count == 1
    assert _plan(5_000_000, scan_seconds=2.0, concurrency=1).count == 1


def test_ten_million_profiles_need_about_ten_scans_not_126() -> None:
    # The 10M run: ~4.9M membership rows (122 partitions of 40,000), one scan ~52 s.
    plan = _plan(4_880_000, scan_seconds=52.0, concurrency=5)
    assert plan.count <= 10 and plan.total_seconds <= 2 * plan.floor_seconds


def test_a_scan_that_leaves_no_time_for_rows_fails_with_the_fix() -> None:
    with pytest.raises(PlanError, match="query_time_budget_seconds") as info:
        _plan(1000, scan_seconds=290.0)
    assert "Data Distiller" in str(info.value) and info.value.measured
    with pytest.raises(PlanError, match="10-minute limit") as info:
        _plan(1000, scan_seconds=560.0, budget_seconds=540.0)
    assert "no partitioning can help" in str(info.value)


def test_max_map_length_is_never_exceeded() -> None:
    # Needs 1000 partitions: within the default 1024 they are planned, with 500 it fails before mapping.
    rows = 1000 * 250 * 20_000
    assert _plan(rows, scan_seconds=50.0).count == 1000
    with pytest.raises(PlanError, match="max_map_length") as info:
        _plan(rows, scan_seconds=50.0, max_map_length=500)
    assert "AIRFLOW__CORE__MAX_MAP_LENGTH=1000" in str(info.value) and not info.value.measured
    # Parallel partitions are capped by it too.
    assert _plan(5_000_000, scan_seconds=2.0, max_map_length=1).count == 1


def test_rows_partitioning_keeps_the_old_plan_within_max_map_length() -> None:
    assert len(plan_by_rows(4_880_000, 40_000)) == 122
    assert plan_by_rows(0, 40_000) == ()
    with pytest.raises(PlanError, match="query_partitioning 'time'") as info:
        plan_by_rows(41_000_001, 40_000)
    assert "max_map_length" in str(info.value) and "1026" in str(info.value)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"rows_per_second": 0}, "rows_per_second"),
        ({"budget_seconds": 600}, "budget_seconds"),
        ({"scan_seconds": -1}, "scan_seconds"),
        ({"concurrency": 0}, "concurrency"),
        ({"max_map_length": True}, "max_map_length"),
        ({"qs_factor": 0.5}, "qs_factor"),
        ({"scan_seconds": float("nan")}, "scan_seconds"),
    ],
)
def test_bad_inputs_name_the_field(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _plan(10, **kw)


@pytest.mark.parametrize(
    "message, kind",
    [
        (
            "Statement timeout: the query ran longer than the maximum of 600 seconds allowed for ad hoc queries",
            "timeout",
        ),
        ("Query timed out after 10 minutes", "timeout"),
        (
            "Query result exceeds the maximum of 50,000 rows for ad hoc queries returned to PostgreSQL clients",
            "rows",
        ),
        ("LIMIT exceeds max value: 100001 is higher than the maximum of 100,000", "rows"),
        ("insufficient resources", "unknown"),
    ],
)
def test_53400_is_told_apart_by_its_message(message: str, kind: str) -> None:
    assert limit_kind(message) == kind


def test_reactions_to_53400() -> None:
    common = {"partition": "p0of2", "depth": 0, "max_depth": 6, "error": "x"}
    assert limit_reaction("rows", rows_received=50_000, **common).action == "split"
    slow = limit_reaction("timeout", rows_received=10, **common)
    assert slow.action == "split" and "rows_per_second" in slow.message
    scan = limit_reaction("timeout", rows_received=0, **common)
    assert scan.action == "fail" and "cannot help" in scan.message and "too many rows" not in scan.message
    unknown = limit_reaction("unknown", rows_received=0, **common)
    assert unknown.action == "fail" and "time limit" in unknown.message and "row cap" in unknown.message
    deep = limit_reaction("timeout", rows_received=10, **{**common, "depth": 6})
    assert deep.action == "fail" and "query_service_rows_per_second" in deep.message
    assert "skewed" in limit_reaction("rows", rows_received=1, **{**common, "depth": 6}).message
