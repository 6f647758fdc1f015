"""Synthetic data, clock and ground truth: status rules, clock moves, overrides, determinism."""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pytest

from aep_emulator.state import EmulatorState

from emulator_testkit import CLOCK_START, epoch, iso, settings

DAY = 86_400
ALL = ["realized", "existing", "exited"]


def _status_at(intervals: list[tuple[int, int | None]], at: int) -> tuple[str, int] | None:
    """The production rules, written independently of the emulator's SQL."""
    entered = [(e, x) for e, x in intervals if e <= at]
    if not entered:
        return None
    e, x = entered[-1]
    if x is None or x > at:
        return ("realized", e) if at - e < DAY else ("existing", e + DAY)
    return ("exited", x) if at - x < 30 * DAY else None


def _timelines(transitions: list[dict]) -> dict[tuple[int, str], list[tuple[int, int | None]]]:
    out: dict[tuple[int, str], list[tuple[int, int | None]]] = defaultdict(list)
    for t in sorted(transitions, key=lambda t: t["time"]):
        key, at = (t["profile_index"], t["audience_id"]), int(t["time"].timestamp())
        if t["event"] == "entered":
            out[key].append((at, None))
        else:
            assert out[key] and out[key][-1][1] is None, f"exit without entry for {key}"
            out[key][-1] = (out[key][-1][0], at)
    return out


@pytest.mark.parametrize("offset_days", [-50, 0, 1, 30])
def test_snapshot_follows_the_documented_status_rules(emu, offset_days):
    state = emu.state
    at = epoch(CLOCK_START) + offset_days * DAY + 3 * 3600
    timelines = _timelines(state.transitions(None, 0, 2**40))
    expected = {}
    for key, intervals in timelines.items():
        status = _status_at(intervals, at)
        if status is not None:
            expected[key] = status
    actual = {
        (r["profile_index"], r["audience_id"]): (r["status"], int(r["last_qualification_time"].timestamp()))
        for r in state.snapshot(None, ALL, at=at)
    }
    assert actual == expected
    assert {s for s, _ in actual.values()} == set(ALL)


def test_a_frozen_clock_stands_still_and_moves_only_when_told(emu):
    start = emu.admin.clock()["now"]
    try:
        frozen = emu.admin.set_clock("2026-03-01T02:00:00Z", frozen=True)
        assert frozen["frozen"] and frozen["now"] == "2026-03-01T02:00:00Z"
        time.sleep(1.2)  # real time passes; data time must not
        assert emu.admin.clock()["now"] == "2026-03-01T02:00:00Z"
        assert emu.admin.advance_clock(86_400)["now"] == "2026-03-02T02:00:00Z"
        thawed = emu.admin.freeze_clock(False)
        assert not thawed["frozen"] and thawed["now"].startswith("2026-03-02T02:00")
    finally:
        emu.admin.freeze_clock(False)
        emu.admin.set_clock(start)


def test_advancing_the_clock_changes_the_snapshot_and_the_exports(emu, aep):
    audience = aep.audiences()[4]["id"]
    before = {r["email"] for r in emu.admin.snapshot([audience])}
    start = epoch(emu.admin.clock()["now"])
    clock = emu.admin.advance_clock(25 * DAY)
    assert 25 * DAY <= epoch(clock["now"]) - start < 25 * DAY + 60
    after = {r["email"] for r in emu.admin.snapshot([audience])}
    assert before != after
    job = aep.export(aep.union_dataset(), [{"segmentId": audience}])
    at = job["creationTime"] // 1000
    assert at >= epoch(CLOCK_START) + 25 * DAY
    exported = {
        r["_demoemea"]["identification"]["core"]["email"]
        for r in emu.admin.batch_rows(job["destination"]["batchId"])
    }
    assert exported == {r["email"] for r in emu.admin.snapshot([audience], at=iso(at))}
    emu.admin.set_clock("2026-01-01T00:00:00Z")
    assert emu.admin.clock()["now"].startswith("2026-01-01")


def test_membership_override_is_seen_by_truth_and_exports(emu, aep):
    audience = aep.audiences()[1]["id"]
    member = emu.admin.snapshot([audience], ["existing"])[0]
    left_at = iso(int(epoch(emu.admin.clock()["now"])) - 60)
    result = emu.admin.set_membership(member["profile_index"], audience, False, at=left_at)
    assert result["intervals"][-1]["exit"] == left_at
    exited = {r["email"]: r for r in emu.admin.snapshot([audience], ["exited"])}
    assert exited[member["email"]]["last_qualification_time"] == left_at
    dataset = aep.union_dataset()
    kept = aep.export(dataset, [{"segmentId": audience, "status": ["realized", "existing"]}])
    rows = emu.admin.batch_rows(kept["destination"]["batchId"])
    assert member["email"] not in {r["_demoemea"]["identification"]["core"]["email"] for r in rows}
    gone = aep.export(dataset, [{"segmentId": audience, "status": ["exited"]}])
    rows = {
        r["_demoemea"]["identification"]["core"]["email"]: r
        for r in emu.admin.batch_rows(gone["destination"]["batchId"])
    }
    assert rows[member["email"]]["segmentMembership"]["ups"][audience]["status"] == "exited"
    emu.admin.set_membership(member["profile_index"], audience, True)
    back = {r["email"]: r["status"] for r in emu.admin.snapshot([audience], ALL)}
    assert back[member["email"]] == "realized"
    assert (
        emu.admin.request(
            "POST",
            "/emulator/memberships",
            json={"profile_index": 10**9, "audience_id": audience, "member": True},
        ).status_code
        == 400
    )


def _state(**changes) -> EmulatorState:
    return EmulatorState(settings(**changes), Path(tempfile.mkdtemp(prefix="emu-determinism-")))


def test_same_seed_same_data_other_seed_other_data():
    a, b, c = _state(profiles=500), _state(profiles=500), _state(profiles=500, seed=8)
    try:
        assert a.snapshot(None, ALL) == b.snapshot(None, ALL)
        assert [a.profile(i) for i in (0, 7, 499)] == [b.profile(i) for i in (0, 7, 499)]
        assert a.snapshot(None, ALL) != c.snapshot(None, ALL)
        assert a.profile(7)["email"] != c.profile(7)["email"]
        assert [x.id for x in a.audiences] == [x.id for x in c.audiences]  # ids are stable across seeds
        emails = {a.profile(i)["email"] for i in range(50)}
        assert len(emails) == 50 and all(e.endswith("@example.com") for e in emails)
    finally:
        for s in (a, b, c):
            s.close()


def test_audiences_file_settings_replace_the_defaults():
    from aep_emulator.settings import AudienceSpec

    state = _state(
        profiles=400,
        audiences=(AudienceSpec("aud-everyone", "Everyone", 1.0), AudienceSpec("aud-nobody", "Nobody", 0.0)),
    )
    try:
        members = state.snapshot(["aud-everyone"], ALL, at=epoch(CLOCK_START) + 60 * DAY)
        assert len({r["profile_index"] for r in members}) > 100
        assert state.snapshot(["aud-nobody"], ALL) == []
    finally:
        state.close()
