"""SegmentationHook.resolve_selection against the emulator: deleted, renamed and mistyped audiences.

The history (what this job exported before) is given directly here; the DAG test
(tests/dags/test_missing_audiences_e2e.py) reads it from AEP as the resolve step does.
"""

from __future__ import annotations

import time

import pytest

from airflow_cja_audiences.config import AudienceSelector
from airflow_cja_audiences.errors import AepConfigError
from airflow_cja_audiences.hooks.segmentation import SegmentationHook
from airflow_cja_audiences.missing import PreviousExports


@pytest.fixture
def audiences(emu) -> dict[str, dict]:
    return {a["name"]: a for a in emu.admin.state()["audiences"]}


def _history(*ids: str) -> PreviousExports:
    """As if a snapshot exported ``ids`` a minute ago (before any rename the test makes)."""
    first_ms = int(time.time() * 1000) - 60_000
    return PreviousExports(
        audience_ids=dict.fromkeys(ids, 24115), first_exported_ms=dict.fromkeys(ids, first_ms), snapshots=1
    )


def test_deleted_audience_by_id_is_left_out_and_reported(emu, audiences):
    gold, cart = audiences["Luma - Gold members"], audiences["Cart abandoners"]
    emu.admin.delete_audience(gold["id"])
    calls = []

    def history():
        calls.append(1)
        return _history(gold["id"], cart["id"])

    resolution = SegmentationHook().resolve_selection(
        [AudienceSelector(id=gold["id"], display_name="Gold"), AudienceSelector(id=cart["id"])],
        previous_exports=history,
    )
    assert [a.id for a in resolution.resolved] == [cart["id"]]
    [missing] = resolution.missing
    assert (missing.reason, missing.id, missing.name, missing.field) == (
        "deleted",
        gold["id"],
        "Gold",
        "audiences[0].id",
    )
    assert calls == [1]


def test_history_is_read_only_when_something_is_missing(audiences):
    def history():
        raise AssertionError("read the history although every audience resolved")

    resolution = SegmentationHook().resolve_selection(
        [AudienceSelector(name="Cart abandoners")], previous_exports=history
    )
    assert resolution.missing == [] and resolution.resolved[0].aep_name == "Cart abandoners"


def test_renamed_audience_by_name_keeps_its_id_under_the_new_name(emu, audiences):
    cart = audiences["Cart abandoners"]
    emu.admin.rename_audience(cart["id"], "Cart abandoners (EU)")
    resolution = SegmentationHook().resolve_selection(
        [AudienceSelector(name="Cart abandoners"), AudienceSelector(name="Churn risk")],
        previous_exports=lambda: _history(cart["id"], audiences["Churn risk"]["id"]),
    )
    assert [(a.id, a.name, a.aep_name) for a in resolution.resolved] == [
        (cart["id"], "Cart abandoners (EU)", "Cart abandoners (EU)"),
        (audiences["Churn risk"]["id"], "Churn risk", "Churn risk"),
    ]
    [missing] = resolution.missing
    assert (missing.reason, missing.new_name, missing.name) == (
        "renamed",
        "Cart abandoners (EU)",
        "Cart abandoners",
    )


def test_typo_fails_naming_the_field_with_suggestions_even_with_history(emu, audiences):
    """The job exported 'Cart abandoners' before and it is unchanged in AEP: 'Cart abandonerz' is a
    typo of it, not that audience renamed."""
    cart = audiences["Cart abandoners"]
    with pytest.raises(AepConfigError) as info:
        SegmentationHook().resolve_selection(
            [
                AudienceSelector(name="Cart abandonerz"),
                AudienceSelector(id="00000000-0000-4000-8000-000000000000"),
            ],
            previous_exports=lambda: _history(cart["id"]),
        )
    text = str(info.value)
    assert "audiences[0].name" in text and "did you mean 'Cart abandoners'?" in text
    assert "audiences[1].id" in text and "earlier snapshot" in text


def test_every_audience_missing_fails_clearly(emu, audiences):
    gold = audiences["Luma - Gold members"]
    emu.admin.delete_audience(gold["id"])
    with pytest.raises(AepConfigError, match="every audience of the job is missing in AEP"):
        SegmentationHook().resolve_selection(
            [AudienceSelector(id=gold["id"])], previous_exports=lambda: _history(gold["id"])
        )


def test_strict_resolve_audiences_still_fails_on_a_deleted_audience(emu, audiences):
    gold = audiences["Luma - Gold members"]
    emu.admin.delete_audience(gold["id"])
    with pytest.raises(AepConfigError, match=r"audiences\[0\]\.id"):
        SegmentationHook().resolve_audiences([AudienceSelector(id=gold["id"])])
