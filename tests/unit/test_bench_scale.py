"""benchmarks.scale's goal checks (issue 14): what it calls a miss, on saved results, without running."""

from __future__ import annotations

import copy
from typing import Any

from benchmarks import scale

COST = {"seconds_per_million_rows": 5.0, "seconds_per_query": 2.0}
EXPORT = "cja_audiences_export_luma_loyalty"


def _run(scans: int, modelled: float, rss: float, plans: list[dict[str, Any]], batch_reads: int = 0) -> dict:
    table_scans = {f"adhoc:{EXPORT}": scans - batch_reads}
    if batch_reads:
        table_scans[f"batch:{EXPORT}"] = batch_reads
    return {
        "run": 1,
        "wall_seconds": 60.0,
        "peak_rss_mb": rss,
        "scans": {"scans": scans, "batch_scans": scans, "rows_scanned": 1, "modelled_seconds": modelled},
        "plans": plans,
        "table_scans": table_scans,
        "batch_query_records": 400_000 if batch_reads else 0,
    }


def _results() -> dict[str, dict[str, Any]]:
    snapshot = {"kind": "snapshot", "rows": 480_000, "partitions": 2, "required": 2}
    floor = {
        "rows": 480_000,
        "wall_seconds": 5.0,
        "modelled_seconds": 4.0,
        "rows_scanned": 460_000,
        "transfer_seconds": 1.0,
    }
    return {
        "1000000": {
            "client": {"runs": [_run(6, 9.0, 280, [snapshot])], "floor": floor},
            "server": {"runs": [_run(3, 6.0, 250, [], batch_reads=1)]},
        },
        "10000000": {
            "client": {"runs": [_run(6, 9.0, 290, [snapshot])], "floor": floor},
            "server": {"runs": [_run(3, 6.0, 255, [], batch_reads=1)]},
        },
    }


def test_results_within_every_goal_pass() -> None:
    lines, failures = scale.report(_results(), COST)
    assert failures == []
    assert any("projection" in line for line in lines)


def test_each_missed_goal_is_reported() -> None:
    results = copy.deepcopy(_results())
    big = results["10000000"]
    big["client"]["runs"][0]["scans"]["scans"] = 7  # > 2 required + 4
    big["client"]["runs"][0]["scans"]["modelled_seconds"] = 20.0  # 21 s > 2 x 5 s
    big["server"]["runs"][0]["table_scans"][f"batch:{EXPORT}"] = 2  # two reads for one dataset
    big["server"]["runs"][0]["peak_rss_mb"] = 400  # grows with N
    _, failures = scale.report(results, COST)
    text = "\n".join(failures)
    assert "7 scans of the export > 2 required + 4" in text
    assert "Query Service time 21 s" in text
    assert "2 batch-query reads" in text
    assert "server peak RSS grows with N" in text
    assert len(failures) == 4


def test_server_path_reads_the_export_once_per_dataset_written() -> None:
    """Snapshot and events both by batch queries: two reads for two datasets written pass; two reads
    for one dataset, or reads with nothing written, miss."""
    results = copy.deepcopy(_results())
    run = results["10000000"]["server"]["runs"][0]
    run["table_scans"][f"batch:{EXPORT}"], run["batch_query_batches"] = 2, 2
    assert scale.report(results, COST)[1] == []
    for written in (1, 0):
        run["batch_query_batches"] = written
        failures = scale.report(results, COST)[1]
        assert failures == [
            f"10,000,000 server run 1: 2 batch-query reads of the export for {written} dataset(s) written "
            f"(target: one each)"
        ]
