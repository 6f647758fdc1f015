"""pipeline.split: partitions over Query Service's limits are split in two; what cannot be split fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_cja_audiences import sql
from airflow_cja_audiences.pipeline import split
from airflow_cja_audiences.pipeline.refusals import PartitionLimitError
from airflow_cja_audiences.transform import TransformSummary, WrittenFile


def _summary(tmp: Path, part: sql.Partition, rows: int) -> TransformSummary:
    path = tmp / f"{part.modulus}-{part.remainder}.json"
    path.write_text("{}\n")
    return TransformSummary(
        rows=rows,
        records=rows,
        skipped_rows=0,
        duplicate_rows=0,
        files=(WrittenFile(path=path, bytes=3, records=rows),),
        bytes=3,
    )


class _Server:
    """Answers with ``rows`` per partition, or the limit hit that ``limit(part)`` names."""

    def __init__(self, tmp: Path, rows: dict[int, int] | None = None, limit=None) -> None:
        self.tmp, self.rows, self.limit = tmp, rows or {}, limit
        self.queried: list[str] = []
        self.uploaded: list[Path] = []

    def query(self, part: sql.Partition):
        self.queried.append(part.label)
        hit = self.limit(part) if self.limit else None
        if hit is not None:
            return hit
        return _summary(self.tmp, part, self.rows.get(part.modulus, 10))

    def upload(self, summary: TransformSummary) -> None:
        self.uploaded += [f.path for f in summary.files]


def _load(server: _Server, *, by_time: bool = True, row_limit: int = 50_000, max_depth: int = 3):
    totals = split.LoadTotals(partition=sql.Partition().to_dict())
    split.load_partition(
        sql.Partition(),
        query=server.query,
        upload=server.upload,
        totals=totals,
        by_time=by_time,
        row_limit=row_limit,
        max_depth=max_depth,
    )
    return totals


def test_a_partition_within_limits_is_uploaded_once(tmp_path):
    server = _Server(tmp_path)
    totals = _load(server)
    assert totals.to_dict() == {
        "partition": {"modulus": 1, "remainder": 0},
        "rows": 10,
        "records": 10,
        "files": 1,
        "bytes": 3,
        "skipped_rows": 0,
        "splits": 0,
    }
    assert len(server.uploaded) == 1


def test_a_result_at_the_row_limit_is_discarded_and_split_when_partitioned_by_rows(tmp_path):
    server = _Server(tmp_path, rows={1: 100, 2: 40})
    totals = _load(server, by_time=False, row_limit=100)
    assert totals.splits == 1 and totals.rows == 80 and len(server.uploaded) == 2
    assert not (tmp_path / "1-0.json").exists()  # the cut result's file is gone, never uploaded


def test_the_same_count_is_trusted_with_limit_0(tmp_path):
    assert _load(_Server(tmp_path, rows={1: 100}), by_time=True, row_limit=100).splits == 0


def test_a_row_cap_53400_splits_until_the_halves_fit(tmp_path):
    def limit(part):
        return (
            split.LimitHit("rows", 50_000, "row limit", RuntimeError("53400")) if part.modulus < 4 else None
        )

    server = _Server(tmp_path, limit=limit)
    totals = _load(server)
    assert totals.splits == 3 and totals.files == 4  # 1 -> 2 -> 4 partitions


def test_a_timeout_before_any_row_fails_without_splitting_and_chains_the_cause(tmp_path):
    cause = RuntimeError("53400 timeout")
    server = _Server(tmp_path, limit=lambda part: split.LimitHit("timeout", 0, "timeout", cause))
    with pytest.raises(PartitionLimitError, match="before it returned a row") as err:
        _load(server)
    assert err.value.__cause__ is cause and server.queried == ["p0of1"]
    assert server.uploaded == []


def test_splitting_stops_at_max_depth(tmp_path):
    server = _Server(tmp_path, rows=dict.fromkeys((1, 2, 4), 100))
    with pytest.raises(PartitionLimitError, match="still over the limit after 2 splits"):
        _load(server, by_time=False, row_limit=100, max_depth=2)
    assert server.uploaded == []
