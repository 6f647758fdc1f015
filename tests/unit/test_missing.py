"""Telling an audience deleted or renamed in AEP from a typo (pure), and how the report shows it."""

from __future__ import annotations

import pytest

from airflow_cja_audiences.missing import AepAudienceNow, PreviousExports, Unresolved, classify, close_matches
from airflow_cja_audiences.report import build_report, format_report

NAMES = [
    "Luma - Gold members",
    "Cart abandoners",
    "Luma - Silver members",
    "Newsletter subscribers",
    "Lapsed VIP - archive",
]
T0 = 1_764_000_000_000  # the earliest snapshot that exported the audiences (epoch ms)
PREVIOUS = PreviousExports(
    audience_ids={"gold": 24115, "cart": 24116}, first_exported_ms={"gold": T0, "cart": T0}, snapshots=2
)


# ----------------------------------------------------------------------------- suggestions


@pytest.mark.parametrize(
    "typo, best",
    [
        ("Luma - Gold memebrs", "Luma - Gold members"),  # transposed letters
        ("cart abandoners", "Cart abandoners"),  # case only
        ("Cart abandoner", "Cart abandoners"),
        ("Gold members", "Luma - Gold members"),  # a part of the name
        ("Newsleter subscribers", "Newsletter subscribers"),
    ],
)
def test_close_matches_put_the_intended_name_first(typo, best):
    assert close_matches(typo, NAMES)[0] == best


def test_close_matches_are_few_unique_and_empty_for_nonsense():
    assert close_matches("Luma - members", NAMES + ["luma - gold members"], limit=2) == (
        "Luma - Gold members",
        "Luma - Silver members",
    )
    assert close_matches("zzzz qqqq", NAMES) == ()
    assert close_matches("   ", NAMES) == ()
    assert len(close_matches("Luma", NAMES, limit=3)) <= 3


# ----------------------------------------------------------------------------- classification


def test_unknown_id_without_history_is_a_typo():
    [m] = classify(
        [Unresolved(1, "id", "nope")], sandbox="prod", previous=PreviousExports(), orphans=[], suggestions={}
    )
    assert (m.reason, m.field, m.id) == ("unknown", "audiences[1].id", "nope")
    assert "no earlier snapshot" in m.detail and "'prod'" in m.detail


def test_id_exported_by_an_earlier_run_is_deleted_not_a_typo():
    [m] = classify(
        [Unresolved(0, "id", "gold", "Gold")], sandbox="prod", previous=PREVIOUS, orphans=[], suggestions={}
    )
    assert (m.reason, m.id, m.name) == ("deleted", "gold", "Gold")
    assert "24115" in m.detail  # the export job that proves it
    [typo] = classify(
        [Unresolved(0, "id", "other")], sandbox="prod", previous=PREVIOUS, orphans=[], suggestions={}
    )
    assert typo.reason == "unknown" and "none of this job's 2 earlier snapshot(s)" in typo.detail


def test_name_of_a_deleted_audience_is_paired_with_the_only_gone_orphan():
    [m] = classify(
        [Unresolved(2, "name", "Cart abandoners")],
        sandbox=None,
        previous=PREVIOUS,
        orphans=[AepAudienceNow("cart", None)],
        suggestions={2: ()},
    )
    assert (m.reason, m.id, m.name, m.field) == ("deleted", "cart", "Cart abandoners", "audiences[2].name")


def test_archived_orphan_counts_as_deleted():
    [m] = classify(
        [Unresolved(0, "name", "Cart abandoners")],
        sandbox=None,
        previous=PREVIOUS,
        orphans=[AepAudienceNow("cart", "Cart abandoners (old)", T0 + 5, "archived")],
        suggestions={},
    )
    assert m.reason == "deleted"


def test_name_of_an_audience_renamed_since_it_was_exported_is_renamed():
    [m] = classify(
        [Unresolved(0, "name", "Cart abandoners")],
        sandbox=None,
        previous=PREVIOUS,
        orphans=[AepAudienceNow("cart", "Cart abandoners 2027", T0 + 1000, "published")],
        suggestions={0: ("Cart abandoners 2027",)},
    )
    assert (m.reason, m.id, m.new_name) == ("renamed", "cart", "Cart abandoners 2027")
    assert m.to_dict()["suggestions"] == ["Cart abandoners 2027"]


def test_unchanged_orphan_is_an_audience_dropped_from_the_config_not_a_rename():
    """The job used to export 'cart', which still exists, unchanged since: the name that matches
    nothing is a typo, not that audience under a new name."""
    [m] = classify(
        [Unresolved(0, "name", "Gold memebrs")],
        sandbox=None,
        previous=PREVIOUS,
        orphans=[AepAudienceNow("cart", "Cart abandoners", T0 - 1000, "published")],
        suggestions={0: ("Luma - Gold members",)},
    )
    assert m.reason == "unknown" and "did you mean 'Luma - Gold members'?" in m.detail


def test_several_names_pair_a_rename_by_its_close_new_name_and_the_rest_as_deleted():
    orphans = [
        AepAudienceNow("gold", None),
        AepAudienceNow("cart", "Cart abandoners (EU)", T0 + 1, "published"),
    ]
    out = classify(
        [Unresolved(0, "name", "Luma - Gold members"), Unresolved(1, "name", "Cart abandoners")],
        sandbox=None,
        previous=PREVIOUS,
        orphans=orphans,
        suggestions={},
    )
    assert [(m.field, m.reason, m.id) for m in out] == [
        ("audiences[0].name", "deleted", "gold"),
        ("audiences[1].name", "renamed", "cart"),
    ]


def test_ambiguous_pairing_is_a_typo_with_the_candidates_named():
    """A rename to a name close to none of the names that match nothing cannot be paired safely."""
    orphans = [AepAudienceNow("gold", None), AepAudienceNow("cart", "Q3 promo", T0 + 1, "published")]
    out = classify(
        [Unresolved(0, "name", "A"), Unresolved(1, "name", "B")],
        sandbox=None,
        previous=PREVIOUS,
        orphans=orphans,
        suggestions={},
    )
    assert [m.reason for m in out] == ["unknown", "unknown"]
    assert "gold (deleted)" in out[0].detail and "cart (now named 'Q3 promo')" in out[0].detail
    more_names = classify(
        [Unresolved(0, "name", "A"), Unresolved(1, "name", "B")],
        sandbox=None,
        previous=PREVIOUS,
        orphans=[AepAudienceNow("gold", None)],
        suggestions={},
    )
    assert [m.reason for m in more_names] == ["unknown", "unknown"]


def test_several_names_all_deleted_are_all_deleted():
    out = classify(
        [Unresolved(3, "name", "A"), Unresolved(1, "name", "B")],
        sandbox=None,
        previous=PREVIOUS,
        orphans=[AepAudienceNow("gold", None), AepAudienceNow("cart", None)],
        suggestions={},
    )
    assert [(m.field, m.reason, m.id) for m in out] == [
        ("audiences[1].name", "deleted", None),
        ("audiences[3].name", "deleted", None),
    ]
    assert "cart, gold" in out[0].detail


def test_without_history_every_name_is_a_typo_with_suggestions():
    [m] = classify(
        [Unresolved(0, "name", "Cart abandoner")],
        sandbox="prod",
        previous=None,
        orphans=[],
        suggestions={0: ("Cart abandoners",)},
    )
    assert m.reason == "unknown" and m.message().startswith("audiences[0].name: ")
    assert "did you mean 'Cart abandoners'?" in m.detail


# ----------------------------------------------------------------------------- report


def _report(missing, snapshot=True):
    return build_report(
        job_id="j",
        sandbox="prod",
        audiences=[{"id": "gold", "name": "Gold"}],
        plan={"snapshot": snapshot, "events": False},
        export=None,
        snapshot=None,
        snapshot_counts={"gold": {"members": 3, "entered": 0, "exited": 0}},
        events=None,
        event_counts=None,
        datasets={},
        cja=None,
        missing_audiences=missing,
    )


def test_report_lists_missing_audiences_and_what_happened_to_their_members():
    report = _report(
        [
            {
                "id": "cart",
                "name": "Cart abandoners",
                "reason": "deleted",
                "suggestions": [],
                "detail": "deleted in AEP",
            },
            {
                "id": "vip",
                "name": "VIP",
                "reason": "renamed",
                "new_name": "VIP 2027",
                "suggestions": [],
                "detail": "renamed",
            },
        ]
    )
    deleted, renamed = report["missing_in_aep"]
    assert deleted["reason"] == "deleted" and "no longer lists them" in deleted["members"]
    assert "events dataset keeps their history" in deleted["members"]
    assert renamed["reason"] == "renamed" and "'VIP 2027'" in renamed["members"]
    text = format_report(report)
    assert "missing in AEP:" in text and "Cart abandoners (cart): deleted" in text
    assert [r["id"] for r in report["audiences"]] == ["gold"]  # the deleted one is not a refreshed row


def test_report_without_missing_audiences_is_unchanged():
    assert _report(None)["missing_in_aep"] == [] and "missing in AEP" not in format_report(_report(None))
    assert (
        "published no snapshot"
        in _report([{"id": "x", "reason": "deleted"}], snapshot=False)["missing_in_aep"][0]["members"]
    )
