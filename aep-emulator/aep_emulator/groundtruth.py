"""Ground truth for tests: what an export at time T must contain, and what happened when.

Everything is computed from the membership timeline (:mod:`memberships`: the seed and the test
overrides), never from what the emulator has exported before, and shares nothing with the
provider's SQL or transform. Two kinds of truth, kept apart on purpose:

* :func:`snapshot`: the statuses AEP shows at T (what an export at T contains): a model of AEP;
* :func:`transitions`: what really happened (entries and exits, at their times): the oracle for the
  published change events. There is deliberately no "events as an export shows them": deriving
  events from statuses is the provider's job, and an oracle that did it the same way would share
  the provider's blind spots (it once did: ``existing`` rows were counted as entries).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from typing import Any, Protocol

import duckdb

from aep_emulator.catalog import Batch
from aep_emulator.clock import Clock
from aep_emulator.memberships import OVERRIDE_TABLE, STATUSES, Timeline, apply_override, epoch
from aep_emulator.settings import AudienceSpec, EmulatorSettings
from aep_emulator.synthetic import profile_attribute_columns

log = logging.getLogger("aep_emulator.groundtruth")


class TruthSource(Protocol):
    """What the ground truth reads: the membership timeline and its clock, the synthetic profiles'
    seed, and the DuckDB connection (``state.TruthSource`` provides it). Catalog look-ups (which
    table holds an export batch, which batches of a dataset are live) are the state's: it resolves
    them and passes the answer, so this module never walks the sandboxes."""

    @property
    def settings(self) -> EmulatorSettings: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def timeline(self) -> Timeline: ...
    @property
    def audiences(self) -> Sequence[AudienceSpec]: ...
    @property
    def lock(self) -> AbstractContextManager[Any]: ...
    def cursor(self) -> duckdb.DuckDBPyConnection: ...
    def execute(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]: ...


def _ts(seconds: int | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, tz=timezone.utc)


def _audiences(state: TruthSource, audience_ids: list[str] | None) -> list[str]:
    known = [a.id for a in state.audiences]
    if audience_ids is None:
        return known
    unknown = [a for a in audience_ids if a not in known]
    if unknown:
        raise ValueError(f"unknown audience ids {unknown}")
    return list(audience_ids)


def _with_profile(state: TruthSource, inner: str, columns: str) -> str:
    attrs = profile_attribute_columns(state.settings.seed, "r.idx")
    return (
        f"SELECT r.idx AS profile_index, {attrs['email']} AS email, {attrs['ecid']} AS ecid, "
        f"{attrs['crm_id']} AS crm_id, {columns} FROM ({inner}) r"
    )


TIME_COLUMNS = ("last_qualification_time", "time")


def iter_rows(state: TruthSource, sql: str, chunk: int = 10_000) -> Iterator[dict]:
    """Rows of a ground-truth query as dicts, fetched in chunks (epoch-second columns become UTC datetimes)."""
    cur = state.cursor()
    try:
        result = cur.execute(sql)
        names = [d[0] for d in result.description]
        while True:
            rows = result.fetchmany(chunk)
            if not rows:
                break
            for row in rows:
                out = dict(zip(names, row))
                for key in TIME_COLUMNS:
                    if key in out:
                        out[key] = _ts(out[key])
                yield out
    finally:
        cur.close()


def _query(state: TruthSource, sql: str) -> list[dict]:
    cur = state.cursor()
    try:
        result = cur.execute(sql)
        names = [d[0] for d in result.description]
        return [dict(zip(names, row)) for row in result.fetchall()]
    finally:
        cur.close()


def snapshot_sql(
    state: TruthSource,
    audience_ids: list[str] | None,
    statuses: list[str] | None,
    at: datetime | int | None,
) -> str:
    statuses = list(statuses or ["realized", "existing"])
    bad = [s for s in statuses if s not in STATUSES]
    if bad:
        raise ValueError(f"unknown statuses {bad}")
    when = epoch(at) if at is not None else int(state.clock.epoch())
    tl = state.timeline
    inner = tl.long_rows(_audiences(state, audience_ids), statuses)
    return (
        f"{tl.chain(when)} "
        + _with_profile(state, inner, "r.audience_id, r.status, r.qualified AS last_qualification_time")
        + " ORDER BY profile_index, audience_id"
    )


def snapshot(
    state: TruthSource,
    audience_ids: list[str] | None,
    statuses: list[str] | None,
    at: datetime | int | None,
) -> list[dict]:
    """Memberships at ``at`` (default: now) with a status in ``statuses`` (default realized+existing).

    Rows: profile_index, email, ecid, crm_id, audience_id, status, last_qualification_time (UTC).
    """
    return list(iter_rows(state, snapshot_sql(state, audience_ids, statuses, at)))


def transitions_sql(
    state: TruthSource, audience_ids: list[str] | None, start: datetime | int, end: datetime | int
) -> str:
    tl = state.timeline
    inner = tl.transitions_rows(_audiences(state, audience_ids), epoch(start), epoch(end))
    return (
        f"{tl.chain(None)} "
        + _with_profile(state, inner, "r.audience_id, r.event, r.t AS time")
        + " ORDER BY time, profile_index, audience_id"
    )


def transitions(
    state: TruthSource, audience_ids: list[str] | None, start: datetime | int, end: datetime | int
) -> list[dict]:
    """The true timeline events (entered / exited) with time in [start, end), whatever AEP keeps."""
    return list(iter_rows(state, transitions_sql(state, audience_ids, start, end)))


def export_rows(state: TruthSource, table: str, batch_id: str) -> list[dict]:
    """The rows an export batch appended to its dataset's ``table`` (system columns included)."""
    # The Catalog batch is the logical one: rows name it in acp_sourceBatchId (_acp_batchid may differ).
    return _query(
        state,
        f'SELECT * FROM "{table}" WHERE _acp_system_metadata.acp_sourceBatchId = '
        f"'{batch_id.replace(chr(39), '')}'",
    )


def profile(state: TruthSource, profile_index: int) -> dict:
    """The synthetic attributes of one profile."""
    if not 0 <= profile_index < state.settings.profiles:
        raise ValueError(f"profile index must be within [0, {state.settings.profiles})")
    attrs = profile_attribute_columns(state.settings.seed, "idx")
    cols = ", ".join(f"{expr} AS {name}" for name, expr in attrs.items())
    return _query(
        state,
        f"SELECT idx AS profile_index, {cols} FROM range({int(profile_index)}, "
        f"{int(profile_index) + 1}) p(idx)",
    )[0]


def set_membership(
    state: TruthSource, profile_index: int, audience_id: str, member: bool, at: datetime | int | None
) -> list[tuple[int, int | None]]:
    """From ``at`` (default: now) on, the profile is (``member``) or is not a member of the audience,
    until another change. Returns the pair's new interval list (epoch seconds)."""
    if not 0 <= profile_index < state.settings.profiles:
        raise ValueError(f"profile index must be within [0, {state.settings.profiles})")
    k = state.timeline.index_of(audience_id)
    when = epoch(at) if at is not None else int(state.clock.epoch())
    with state.lock:
        current = state.execute(state.timeline.intervals_sql(profile_index, audience_id))[0][0] or []
        intervals = apply_override([(iv["e"], iv["x"]) for iv in current], when, member)
        state.execute(f"DELETE FROM {OVERRIDE_TABLE} WHERE idx = ? AND aud = ?", [profile_index, k])
        state.execute(
            f"INSERT INTO {OVERRIDE_TABLE} VALUES (?, ?, ?)",
            [profile_index, k, [{"e": e, "x": x} for e, x in intervals]],
        )
    log.info(
        "membership override: profile %d %s audience %s at %s -> %s",
        profile_index,
        "enters" if member else "leaves",
        audience_id,
        _ts(when),
        intervals,
    )
    return intervals


def dumps(row: dict) -> str:
    return json.dumps(row, default=str, separators=(",", ":"))


def dataset_records(
    state: TruthSource, table: str | None, live: Sequence[Batch], chunk: int = 10_000
) -> Iterator[str]:
    """JSON Lines of the records in a dataset's ``live`` (``success``) batches, oldest batch first:
    what Query Service and a CJA connection would see. Export batches come from the DuckDB
    ``table`` (None: the dataset has none), ingested ones from their accepted-records file."""
    for batch in live:
        if batch.origin == "export" and table is not None:
            cur = state.cursor()
            try:
                result = cur.execute(
                    f'SELECT to_json(t) FROM "{table}" t WHERE _acp_system_metadata.acp_sourceBatchId = ?',
                    [batch.id],
                )
                while rows := result.fetchmany(chunk):
                    for (line,) in rows:
                        yield line
            finally:
                cur.close()
        elif batch.records_path is not None and batch.records_path.exists():
            with batch.records_path.open(encoding="utf-8") as handle:
                for line in handle:
                    yield line.rstrip("\n")
