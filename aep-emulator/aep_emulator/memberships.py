"""Membership timelines, statuses at a time T, exports and ground truth, all computed in DuckDB.

Timeline of (profile, audience): zero, one or two intervals ``[enter, exit)`` (``exit`` NULL = still
a member), a pure function of ``(seed, profile index, audience index)`` drawn from three 64-bit
hashes. Enter times spread over [anchor - 120 days, anchor + 60 days], so moving the clock changes
memberships. Tests can replace the future of a pair (``set_membership``); the replaced timeline is
kept as an explicit interval list in a small table that overrides the synthetic one.

Status at T (as in production):

* member, entered less than 24 h before T -> ``realized``; ``lastQualificationTime`` = enter;
* member for 24 h or more -> ``existing``; ``lastQualificationTime`` = enter + 24 h (the time of the
  realized -> existing change: the last status change);
* left less than 30 days before T -> ``exited``; ``lastQualificationTime`` = exit;
  ``validUntil`` = exit + 30 days (when AEP purges it);
* otherwise no entry at all.

Every query is a chain of CTEs over ``range(N)``: hashes -> timelines -> latest interval at T ->
status. Each stage is a separate projection because DuckDB inlines lateral aliases (the hashes
would be recomputed in every expression that uses them).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from aep_emulator.settings import AudienceSpec

DAY = 86_400
WINDOW_BEFORE = 120 * DAY
WINDOW = 180 * DAY
REALIZED_FOR = DAY
EXITED_KEPT = 30 * DAY
FIRST_STAY_MAX = 60 * DAY
LATER_GAP_MAX = 30 * DAY
OVERRIDE_TABLE = "_emu_membership_override"
STATUSES = ("realized", "existing", "exited")


def _q(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class Timeline:
    """The SQL builder for one emulator's synthetic memberships."""

    seed: int
    profiles: int
    audiences: tuple[AudienceSpec, ...]
    anchor: int  # epoch seconds

    def index_of(self, audience_id: str) -> int:
        for k, aud in enumerate(self.audiences):
            if aud.id == audience_id:
                return k
        raise KeyError(audience_id)

    # -- stages ------------------------------------------------------------------------------
    def _hashes(self, source: str) -> str:
        cols = ", ".join(
            f"hash({self.seed}, idx, {k}, {j}) AS h{j}_{k}"
            for k in range(len(self.audiences))
            for j in (1, 2, 3)
        )
        return f"SELECT idx{', ' + cols if cols else ''} FROM {source}"

    def _timelines(self) -> str:
        """Synthetic intervals as ``tl_k = {e1, x1, e2, x2}`` (epoch seconds) or NULL (never a member)."""
        w0 = self.anchor - WINDOW_BEFORE
        cols = []
        for k, aud in enumerate(self.audiences):
            threshold = int(round(aud.probability * 65536))
            e1 = f"({w0} + ((h1_{k} >> 16) % {WINDOW})::BIGINT)"
            closed1 = f"(h2_{k} % 256) >= 128"  # half of the first stays are still open
            second = f"((h2_{k} >> 8) % 256) < 90"  # ~35% of those who left come back
            closed2 = f"((h2_{k} >> 16) % 256) >= 128"
            stay1 = f"(3600 + ((h2_{k} >> 24) % {FIRST_STAY_MAX}))::BIGINT"
            gap = f"(3600 + (h3_{k} % {LATER_GAP_MAX}))::BIGINT"
            stay2 = f"(3600 + ((h3_{k} >> 32) % {LATER_GAP_MAX}))::BIGINT"
            cols.append(
                f"CASE WHEN (h1_{k} % 65536) < {threshold} THEN {{"
                f"'e1': {e1}, "
                f"'x1': CASE WHEN {closed1} THEN {e1} + {stay1} END, "
                f"'e2': CASE WHEN {closed1} AND {second} THEN {e1} + {stay1} + {gap} END, "
                f"'x2': CASE WHEN {closed1} AND {second} AND {closed2} THEN {e1} + {stay1} + {gap} + {stay2} END"
                f"}} END AS tl_{k}"
            )
        return f"SELECT idx{''.join(', ' + c for c in cols)} FROM hashes"

    def _latest(self, at: int) -> str:
        """``r_k = {e, x, v}``: the latest interval entered at or before T (v = its 1-based number)."""
        cols = []
        for k in range(len(self.audiences)):
            tl = lambda f, k=k: f"struct_extract(tl_{k}, '{f}')"  # noqa: E731
            # Overridden pairs carry an explicit interval list; synthetic ones have at most two
            # intervals, picked with scalar CASEs (twice as fast as list functions at 10^7 profiles).
            ov = f"ov.m[{k}]"
            cols.append(
                f"CASE WHEN ov.m IS NOT NULL AND {ov} IS NOT NULL THEN CASE "
                f"WHEN len(list_filter({ov}, lambda v: v.e <= {at})) > 0 THEN {{"
                f"'e': struct_extract(list_filter({ov}, lambda v: v.e <= {at})[-1], 'e'), "
                f"'x': struct_extract(list_filter({ov}, lambda v: v.e <= {at})[-1], 'x'), "
                f"'v': len(list_filter({ov}, lambda v: v.e <= {at}))}} END "
                f"WHEN {tl('e2')} <= {at} THEN {{'e': {tl('e2')}, 'x': {tl('x2')}, 'v': 2}} "
                f"WHEN {tl('e1')} <= {at} THEN {{'e': {tl('e1')}, 'x': {tl('x1')}, 'v': 1}} END AS r_{k}"
            )
        return f"SELECT timelines.idx{''.join(', ' + c for c in cols)} FROM timelines LEFT JOIN overrides ov USING (idx)"

    def _status(self, at: int) -> str:
        """``st_k`` (status), ``q_k`` (lastQualificationTime, epoch s), ``v_k``, ``u_k`` (validUntil)."""
        cols = []
        for k in range(len(self.audiences)):
            e, x, v = (f"struct_extract(r_{k}, '{f}')" for f in ("e", "x", "v"))
            cols.append(
                f"CASE WHEN r_{k} IS NULL THEN NULL "
                f"WHEN {x} IS NULL OR {x} > {at} THEN "
                f"CASE WHEN {at} - {e} < {REALIZED_FOR} THEN 'realized' ELSE 'existing' END "
                f"WHEN {at} - {x} < {EXITED_KEPT} THEN 'exited' END AS st_{k}"
            )
            cols.append(
                f"CASE WHEN r_{k} IS NULL THEN NULL WHEN {x} IS NULL OR {x} > {at} THEN "
                f"CASE WHEN {at} - {e} < {REALIZED_FOR} THEN {e} ELSE {e} + {REALIZED_FOR} END "
                f"WHEN {at} - {x} < {EXITED_KEPT} THEN {x} END AS q_{k}"
            )
            cols.append(f"{v}::VARCHAR AS v_{k}")
            cols.append(
                f"CASE WHEN {x} <= {at} AND {at} - {x} < {EXITED_KEPT} THEN {x} + {EXITED_KEPT} END AS u_{k}"
            )
        return f"SELECT idx{''.join(', ' + c for c in cols)} FROM latest"

    def chain(self, at: int | None, *, only_index: int | None = None) -> str:
        """``WITH`` clause defining ``overrides``, ``hashes``, ``timelines`` and (given T) ``latest``, ``status``."""
        source = (
            f"range({int(only_index)}, {int(only_index) + 1}) p(idx)"
            if only_index is not None
            else f"range({self.profiles}) p(idx)"
        )
        ctes = [
            f"overrides AS (SELECT idx, map_from_entries(list({{'k': aud, 'v': ivs}})) AS m "
            f"FROM {OVERRIDE_TABLE} GROUP BY idx)",
            f"hashes AS ({self._hashes(source)})",
            f"timelines AS ({self._timelines()})",
        ]
        if at is not None:
            ctes += [f"latest AS ({self._latest(at)})", f"status AS ({self._status(at)})"]
        return "WITH " + ",\n".join(ctes)

    # -- queries -----------------------------------------------------------------------------
    def membership_struct(self, k: int) -> str:
        """The ``segmentMembership.ups`` value of audience k (columns of ``status``)."""
        return (
            f"{{'status': st_{k}, 'lastQualificationTime': make_timestamp(q_{k} * 1000000), "
            f"'version': v_{k}, 'validUntil': make_timestamp(u_{k} * 1000000)}}"
        )

    def segment_membership(self) -> str:
        entries = ", ".join(
            f"{{'key': {_q(a.id)}, 'value': {self.membership_struct(k)}}}"
            for k, a in enumerate(self.audiences)
        )
        if not entries:
            return "{'ups': MAP {}}"
        return f"{{'ups': map_from_entries(list_filter([{entries}], lambda m: m.value.status IS NOT NULL))}}"

    def condition(self, audience_id: str, statuses: list[str], start: int | None, end: int | None) -> str:
        """SQL predicate: the profile's membership of the audience has one of the statuses (and
        lastQualificationTime in [start, end) when given)."""
        k = self.index_of(audience_id)
        pred = f"st_{k} IN ({', '.join(_q(s) for s in statuses)})"
        if start is not None:
            pred += f" AND q_{k} >= {int(start)}"
        if end is not None:
            pred += f" AND q_{k} < {int(end)}"
        return f"({pred})"

    def long_rows(
        self, audience_ids: list[str], statuses: list[str], start: int | None = None, end: int | None = None
    ) -> str:
        """One row per (profile, audience) among ``audience_ids`` (over the ``status`` CTE)."""
        parts = []
        for aid in audience_ids:
            k = self.index_of(aid)
            parts.append(
                f"SELECT idx, {_q(aid)} AS audience_id, st_{k} AS status, q_{k} AS qualified "
                f"FROM status WHERE {self.condition(aid, statuses, start, end)}"
            )
        return (
            " UNION ALL ".join(parts)
            if parts
            else "SELECT NULL::BIGINT AS idx, NULL AS audience_id, NULL AS status, NULL::BIGINT AS qualified WHERE false"
        )

    def transitions_rows(self, audience_ids: list[str], start: int, end: int) -> str:
        """True timeline events (entered / exited) with time in [start, end) (over ``timelines``)."""
        parts = []
        for aid in audience_ids:
            k = self.index_of(aid)
            tl = lambda f, k=k: f"struct_extract(tl_{k}, '{f}')"  # noqa: E731
            synthetic = (
                f"[{{'t': {tl('e1')}, 'event': 'entered'}}, {{'t': {tl('x1')}, 'event': 'exited'}}, "
                f"{{'t': {tl('e2')}, 'event': 'entered'}}, {{'t': {tl('x2')}, 'event': 'exited'}}]"
            )
            ov = f"ov.m[{k}]"
            overridden = (
                f"flatten(list_transform({ov}, lambda v: [{{'t': v.e, 'event': 'entered'}}, "
                f"{{'t': v.x, 'event': 'exited'}}]))"
            )
            parts.append(
                f"SELECT idx, {_q(aid)} AS audience_id, ev.event AS event, ev.t AS t FROM ("
                f"SELECT timelines.idx, unnest(CASE WHEN ov.m IS NOT NULL AND {ov} IS NOT NULL THEN {overridden} "
                f"WHEN tl_{k} IS NOT NULL THEN {synthetic} ELSE [] END) AS ev "
                f"FROM timelines LEFT JOIN overrides ov USING (idx)) "
                f"WHERE ev.t IS NOT NULL AND ev.t >= {int(start)} AND ev.t < {int(end)}"
            )
        return (
            " UNION ALL ".join(parts)
            if parts
            else "SELECT NULL::BIGINT AS idx, NULL AS audience_id, NULL AS event, NULL::BIGINT AS t WHERE false"
        )

    def intervals_sql(self, idx: int, audience_id: str) -> str:
        """The effective interval list of one pair (for applying an override on top of it)."""
        k = self.index_of(audience_id)
        tl = lambda f: f"struct_extract(tl_{k}, '{f}')"  # noqa: E731
        ov = f"ov.m[{k}]"
        return (
            f"{self.chain(None, only_index=idx)} SELECT CASE WHEN ov.m IS NOT NULL AND {ov} IS NOT NULL "
            f"THEN {ov} WHEN tl_{k} IS NOT NULL THEN list_filter([{{'e': {tl('e1')}, 'x': {tl('x1')}}}, "
            f"{{'e': {tl('e2')}, 'x': {tl('x2')}}}], lambda v: v.e IS NOT NULL) ELSE [] END "
            f"FROM timelines LEFT JOIN overrides ov USING (idx)"
        )


def apply_override(
    intervals: list[tuple[int, int | None]], at: int, member: bool
) -> list[tuple[int, int | None]]:
    """Replace the future of a timeline: from ``at`` on the profile is (not) a member, indefinitely.

    Intervals entered at or after ``at`` are dropped; an interval covering ``at`` is cut at ``at``
    (or kept open when the profile stays a member); a new open interval starts at ``at`` otherwise.
    """
    out: list[tuple[int, int | None]] = []
    covering = False
    for enter, exit_ in sorted(intervals):
        if enter >= at:
            continue
        if exit_ is None or exit_ > at:
            covering = True
            out.append((enter, None if member else at))
        else:
            out.append((enter, exit_))
    if member and not covering:
        if out and out[-1][1] == at:  # leaving and re-entering at the same instant is no change
            out[-1] = (out[-1][0], None)
        else:
            out.append((at, None))
    return out


def epoch(instant: datetime | int | float) -> int:
    return int(instant.timestamp()) if isinstance(instant, datetime) else int(instant)
