"""The run report says the window of every number it shows (pure, no Airflow)."""

from __future__ import annotations

from airflow_cja_audiences.report import build_report, format_report

AUDIENCES = [{"id": "aud-1", "name": "Gold"}, {"id": "aud-2", "name": "Cart"}]
PLAN = {"events": True, "interval_start": "2026-11-28T02:00:00Z", "interval_end": "2026-11-29T02:00:00Z"}


def _report(**overrides):
    kwargs = dict(
        job_id="luma",
        sandbox="prod",
        audiences=AUDIENCES,
        plan=PLAN,
        export=None,
        snapshot=None,
        snapshot_counts={
            "aud-1": {
                "members": 10,
                "entered": 2,
                "entered_untimed": 0,
                "exited": 1,
                "untraced": 3,
                "unidentified": 4,
                "new": False,
            },
            "aud-2": {
                "members": 7,
                "entered": None,
                "exited": None,
                "untraced": None,
                "unidentified": 0,
                "new": True,
            },
        },
        events=None,
        event_counts={
            "aud-1": {"entered": 2, "exited": 1, "entered_untimed": 0},
            "aud-2": {"entered": 0, "exited": 0, "entered_untimed": 0},
        },
        datasets={},
        cja=None,
        snapshot_coverage={
            "from": "2026-11-28T02:00:05Z",
            "from_batch_id": "B1",
            "to": "2026-11-29T02:00:04Z",
            "to_batch_id": "B2",
        },
        events_coverage={
            "interval": ["2026-11-27T02:00:00Z", "2026-11-29T02:00:00Z"],
            "requested": ["2026-11-28T02:00:00Z", "2026-11-29T02:00:00Z"],
            "sources": [{"batch_id": "B1"}, {"batch_id": "B2"}],
            "untimed_window": ["2026-11-28T02:00:05Z", "2026-11-29T02:00:04Z"],
        },
    )
    kwargs.update(overrides)
    return build_report(**kwargs)


def test_every_number_says_its_window():
    text = format_report(_report())
    assert (
        "between the export at 2026-11-28T02:00:05Z (batch B1) and this run's at 2026-11-29T02:00:04Z" in text
    )
    assert "run data interval: [2026-11-28T02:00:00Z, 2026-11-29T02:00:00Z)" in text
    assert (
        "events published (ev.*): [2026-11-27T02:00:00Z, 2026-11-29T02:00:00Z) (widened from "
        "[2026-11-28T02:00:00Z, 2026-11-29T02:00:00Z)"
    ) in text
    assert "ev.untimed: entries between the exports at 2026-11-28T02:00:05Z and 2026-11-29T02:00:04Z" in text
    assert "untraced:" in text  # explained where it is not zero


def test_a_new_audience_is_new_not_entered_and_people_without_identity_are_apart():
    report = _report()
    cart = next(r for r in report["audiences"] if r["id"] == "aud-2")
    assert cart["new"] and cart["entered"] is None and cart["members"] == 7
    gold = next(r for r in report["audiences"] if r["id"] == "aud-1")
    assert (gold["exited"], gold["untraced"], gold["unidentified"]) == (1, 3, 4)
    line = next(x for x in format_report(report).splitlines() if x.strip().startswith("Cart"))
    assert line.split()[3] == "new"


def test_first_snapshot_has_no_change_counts():
    text = format_report(
        _report(snapshot_coverage={"from": None, "from_batch_id": None, "to": "x", "to_batch_id": "B"})
    )
    assert "first snapshot of this job: no entered / exited counts" in text
    text = format_report(
        _report(
            events_coverage={
                "interval": ["a", "b"],
                "requested": ["a", "b"],
                "sources": [],
                "untimed_window": None,
            }
        )
    )
    assert "widened" not in text and "cannot be counted" in text
