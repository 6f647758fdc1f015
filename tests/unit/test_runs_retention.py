"""Which export batches a run may revert (issue 14, part 3): never one a live batch may need again."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from airflow_cja_audiences.runs import ExportBatch, ExportRef, Holder, exports_to_prune

NOW = datetime(2026, 12, 1, 6, 0, tzinfo=timezone.utc)
WEEK = timedelta(days=7)


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def export(batch_id: str, days_ago: float, *, filtered: bool = False) -> ExportBatch:
    at = NOW - timedelta(days=days_ago)
    return ExportBatch(ExportRef(batch_id, _ms(at), filtered=filtered), created_ms=_ms(at) + 5_000)


def day(days_ago: int) -> tuple[datetime, datetime]:
    """The daily interval [D 02:00, D+1 02:00) whose end is ``days_ago`` days before NOW's 02:00."""
    end = NOW.replace(hour=2) - timedelta(days=days_ago)
    return end - timedelta(days=1), end


def test_only_old_unneeded_exports_are_reverted():
    exports = [export(f"e{n}", n + 0.1) for n in range(20)]  # one full export a day, e0 the newest
    decision = exports_to_prune(exports, [Holder("snap", "snapshot", "e0")], now=NOW, retention=WEEK)
    assert sorted(decision.revert) == sorted(f"e{n}" for n in range(7, 20))
    assert all(f"e{n}" in decision.keep for n in range(7))
    assert "snapshot batch snap" in decision.keep["e0"]
    assert "older than the retention of 7 days" in decision.revert["e12"]


def test_the_live_snapshots_export_and_the_newest_full_one_are_kept_however_old():
    # The live snapshot was made from e30 (no run published a snapshot since); e20 is the newest full
    # export; e1 is time-filtered (an events-only backfill run's): no member list to compare with.
    exports = [export("e1", 1, filtered=True), export("e20", 20), export("e30", 30), export("e40", 40)]
    decision = exports_to_prune(exports, [Holder("snap", "snapshot", "e30")], now=NOW, retention=WEEK)
    assert set(decision.revert) == {"e40"}
    assert "newest full export" in decision.keep["e20"]
    assert "snapshot batch snap" in decision.keep["e30"]


def test_every_export_a_live_events_interval_was_proved_from_is_kept():
    # Daily runs: the run of interval D exports just after D's end, i.e. inside interval D+1.
    exports = [export(f"e{n}", n - 0.99) for n in range(1, 40)]  # one a day, e{n} about n - 1 days ago
    old = day(30)  # a live events interval of a month ago
    holders = [Holder("ev-old", "events", "e30", old), Holder("snap", "snapshot", "e1")]
    decision = exports_to_prune(exports, holders, now=NOW, retention=WEEK)
    start_ms, end_ms = _ms(old[0]), _ms(old[1])
    inside = {e.ref.batch_id for e in exports if start_ms <= e.ref.at_ms <= end_ms}
    first_after = min((e for e in exports if e.ref.at_ms > end_ms), key=lambda e: e.ref.at_ms).ref.batch_id
    needed = inside | {first_after, "e30"}
    assert needed <= set(decision.keep), needed - set(decision.keep)
    assert all("ev-old" in decision.keep[b] for b in needed)
    assert not needed & set(decision.revert)
    # and the rest of that old month goes
    assert {"e20", "e35", "e39"} <= set(decision.revert)


def test_untimed_pair_of_a_live_interval_is_kept():
    # Interval of 10 days ago; the full exports bracketing its end are e11 (before) and e9 (after);
    # e10 is a filtered backfill export inside the interval's end day.
    interval = (NOW - timedelta(days=11), NOW - timedelta(days=10))
    exports = [
        export("e12", 12),
        export("e11", 10.5),
        export("f10", 10.2, filtered=True),
        export("e9", 9),
        export("e8", 8),
    ]
    decision = exports_to_prune(exports, [Holder("ev", "events", "f10", interval)], now=NOW, retention=WEEK)
    assert {"e11", "f10", "e9"} <= set(decision.keep)
    assert set(decision.revert) == {"e12"}  # before the interval: cannot prove anything in it
    # e8 is neither young nor needed... but it is the newest full export
    assert "newest full export" in decision.keep["e8"]


def test_an_in_progress_events_batch_protects_its_sources_too():
    # A manual run publishing an old interval is loading now: its sources must not vanish under it.
    interval = (NOW - timedelta(days=60), NOW - timedelta(days=59))
    exports = [export("e60", 59.5), export("e58", 58.5), export("e1", 1)]
    decision = exports_to_prune(
        exports, [Holder("open-ev", "events", "e1", interval)], now=NOW, retention=WEEK
    )
    assert {"e60", "e58"} <= set(decision.keep) and not decision.revert


def test_a_holder_naming_an_unknown_export_keeps_nothing_extra_and_reports_only_listed_exports():
    decision = exports_to_prune(
        [export("e9", 9), export("e1", 1)], [Holder("snap", "snapshot", "gone")], now=NOW, retention=WEEK
    )
    assert set(decision.keep) == {"e1"} and set(decision.revert) == {"e9"}


def test_retention_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        exports_to_prune([], [], now=NOW, retention=timedelta(0))
