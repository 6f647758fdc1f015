"""pipeline.replace: what a publish replaces, the overlap check, the shrink guard, Catalog's verdict."""

from __future__ import annotations

import pytest
from unit.pipeline.fakes import Ingestion, batch, events_label, snapshot_label

from airflow_cja_audiences.errors import AepConfigError, AepObjectFailedError, is_permanent
from airflow_cja_audiences.pipeline import replace
from airflow_cja_audiences.pipeline.refusals import OverlappingEventsError, ShrinkGuardError


def test_parse_label_names_the_parameter_when_it_is_not_ours():
    with pytest.raises(AepConfigError, match="external_id 'hand-made'"):
        replace.parse_label("hand-made")


@pytest.mark.parametrize(
    ("results", "records"),
    [([{"records": 3}, {"records": 4}, None], 7), ({"records": 5}, 5), (None, 0), ([], 0)],
)
def test_loaded_records_sums_partitions_or_takes_one_batch_query(results, records):
    assert replace.loaded_records(results) == records


def test_predecessors_are_our_live_snapshots_of_the_job_not_the_new_batch_nor_other_jobs():
    live = batch("old", "success", snapshot_label(run_id="r0"), records=10)
    failed = batch("failed", "failed", snapshot_label(run_id="r0"))
    other_job = batch("other", "success", snapshot_label(job_id="someone-else", run_id="r0"))
    new = batch("new", "loading", snapshot_label())
    ingestion = Ingestion(live, failed, other_job, new)
    found = replace.predecessors(ingestion, "ds", snapshot_label(), "new")
    assert [b.id for b in found] == ["old"]


def test_a_live_events_batch_overlapping_without_lying_inside_refuses_the_publish():
    mine = events_label("2026-11-02T00:00:00Z", "2026-11-04T00:00:00Z")
    straddling = batch(
        "late", "success", events_label("2026-11-03T00:00:00Z", "2026-11-05T00:00:00Z", run_id="r2")
    )
    with pytest.raises(
        OverlappingEventsError, match="events batch late .* went live after this run planned"
    ) as err:
        replace.check_disjoint([straddling], mine, "mine")
    assert is_permanent(err.value)


def test_a_live_events_batch_inside_the_interval_is_replaced_not_refused():
    mine = events_label("2026-11-02T00:00:00Z", "2026-11-04T00:00:00Z")
    inside = batch(
        "inside", "success", events_label("2026-11-02T00:00:00Z", "2026-11-03T00:00:00Z", run_id="r0")
    )
    open_straddling = batch("open", "loading", events_label("2026-11-03T00:00:00Z", "2026-11-05T00:00:00Z"))
    ingestion = Ingestion(inside, open_straddling)
    replace.check_disjoint(list(ingestion.batches.values()), mine, "mine")  # an open batch is not live
    assert [b.id for b in replace.predecessors(ingestion, "ds", mine, "mine")] == ["inside"]


def test_shrink_is_measured_against_all_live_records():
    live = [batch("a", records=60), batch("b", records=40)]
    assert replace.shrink(50, live, 0.5) is None  # exactly the floor
    found = replace.shrink(49, live, 0.5)
    assert found is not None and (found.records, found.before) == (49, 100)
    assert "drop of more than 50%" in found.message
    assert replace.shrink(0, live, None) is None
    assert replace.shrink(0, [], 0.5) is None


def test_tripped_guard_aborts_an_open_batch_and_keeps_the_live_one():
    ingestion = Ingestion(batch("new", "loading"))
    with pytest.raises(
        ShrinkGuardError, match="shrink guard: the new snapshot has 1 records, the live one 10"
    ) as err:
        replace.enforce_shrink_guard(
            ingestion, batch_id="new", records=1, previous=[batch("old", records=10)], guard=0.5, force=False
        )
    assert ingestion.aborted == ["new"] and ingestion.reverted == []
    assert is_permanent(err.value) and "force_replace" in err.value.advice


def test_tripped_guard_reverts_a_batch_query_batch_that_is_live_already():
    ingestion = Ingestion(batch("new", "success"))
    with pytest.raises(ShrinkGuardError, match="The new batch new is reverted"):
        replace.enforce_shrink_guard(
            ingestion, batch_id="new", records=1, previous=[batch("old", records=10)], guard=0.5, force=False
        )
    assert ingestion.reverted == ["new"]


def test_forced_replace_skips_the_guard_and_touches_nothing():
    ingestion = Ingestion(batch("new", "loading"))
    replace.enforce_shrink_guard(
        ingestion, batch_id="new", records=1, previous=[batch("old", records=10)], guard=0.5, force=True
    )
    assert ingestion.aborted == ingestion.reverted == []


def test_verdict_success_passes_the_status_through():
    assert (
        replace.verdict(Ingestion(), batch_id="b", ok=True, status="success", failed_records=0, errors="")
        == "success"
    )


def test_verdict_reverts_a_partial_batch_that_replaced_nothing_and_fails_for_good():
    ingestion = Ingestion(batch("new", "success"))
    with pytest.raises(AepObjectFailedError, match=r"success with 2 failed records \(reverted\)") as err:
        replace.verdict(ingestion, batch_id="new", ok=True, status="success", failed_records=2, errors="x")
    assert ingestion.reverted == ["new"] and err.value.permanent
    assert "personID: missing" in str(err.value)


def test_verdict_keeps_a_partial_batch_that_already_replaced_its_predecessor_by_replay():
    ingestion = Ingestion(batch("old", "inactive"), batch("new", "success", replay=["old"]))
    with pytest.raises(AepObjectFailedError, match=r"replaced \['old'\] by batch replay .* stays live"):
        replace.verdict(ingestion, batch_id="new", ok=True, status="success", failed_records=2, errors="x")
    assert ingestion.reverted == []


def test_revert_replaced_reports_replay_and_the_fallback_reverts():
    late = batch("late", "success", records=5)
    ingestion = Ingestion(batch("old", "inactive"), batch("new", "success", replay=["old"]), late)
    result = replace.revert_replaced(ingestion, "new", 7, [late])
    assert result == {"batch_id": "new", "records": 7, "replaced_batch_ids": ["old", "late"]}
    assert ingestion.reverted == ["late"]


def test_revert_replaced_with_nothing_published_reverts_what_was_live():
    old = batch("old", "success")
    ingestion = Ingestion(old)
    assert replace.revert_replaced(ingestion, None, 0, [old])["replaced_batch_ids"] == ["old"]
    assert ingestion.reverted == ["old"]


def test_a_refusal_tells_the_fail_fast_message_what_to_do():
    from airflow_cja_audiences.errors import permanent_reason

    assert permanent_reason(ShrinkGuardError("x", advice="force it")) == "force it"
