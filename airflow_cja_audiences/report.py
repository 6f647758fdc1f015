"""The run report: per-audience members and changes, what was published (pure, no Airflow import).

Every number says its window. The snapshot's ``entered``/``exited`` compare two exports (the previous
snapshot's and this run's); the events columns count what was published for the events interval,
which can differ from the run's data interval (it is widened over live intervals it overlaps).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: Per-audience snapshot columns (``None``: not known, e.g. the audience is new to the job).
SNAPSHOT_KEYS = ("members", "entered", "entered_untimed", "exited", "untraced", "unidentified")


def build_report(
    *,
    job_id: str,
    sandbox: str | None,
    audiences: Sequence[Mapping[str, Any]],
    plan: Mapping[str, Any],
    export: Mapping[str, Any] | None,
    snapshot: Mapping[str, Any] | None,
    snapshot_counts: Mapping[str, Mapping[str, Any]] | None,
    events: Mapping[str, Any] | None,
    event_counts: Mapping[str, Mapping[str, Any]] | None,
    datasets: Mapping[str, str | None],
    cja: Mapping[str, Any] | None,
    snapshot_coverage: Mapping[str, Any] | None = None,
    events_coverage: Mapping[str, Any] | None = None,
    missing_audiences: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Assemble the report from the tasks' small XCom outputs (ids and counts only).

    ``missing_audiences``: the resolve step's audiences that AEP deleted or renamed (``{id, name,
    reason, suggestions, detail, new_name}``); the report says what happened to their members.
    """
    rows = []
    for audience in audiences:
        aid = audience["id"]
        snap = (snapshot_counts or {}).get(aid, {})
        ev = (event_counts or {}).get(aid, {})
        row: dict[str, Any] = {"id": aid, "name": audience.get("name"), "new": snap.get("new")}
        row.update({key: snap.get(key) for key in SNAPSHOT_KEYS})
        published = event_counts is not None
        row.update(
            {
                "interval_entered": ev.get("entered", 0) if published else None,
                "interval_exited": ev.get("exited", 0) if published else None,
                "interval_entered_untimed": ev.get("entered_untimed") if published else None,
            }
        )
        rows.append(row)
    return {
        "job_id": job_id,
        "sandbox": sandbox,
        "interval": [plan.get("interval_start"), plan.get("interval_end")] if plan.get("events") else None,
        "snapshot_window": dict(snapshot_coverage) if snapshot_coverage else None,
        "events_window": dict(events_coverage) if events_coverage else None,
        "export": dict(export or {}),
        "snapshot": dict(snapshot) if snapshot else None,
        "events": dict(events) if events else None,
        "datasets": dict(datasets),
        "audiences": rows,
        "cja": dict(cja) if cja else None,
        "warnings": list(plan.get("warnings") or []),
        "missing_in_aep": [
            _missing_row(m, snapshot=bool(plan.get("snapshot"))) for m in missing_audiences or ()
        ],
    }


def _missing_row(missing: Mapping[str, Any], *, snapshot: bool) -> dict[str, Any]:
    """One audience AEP no longer has under the configured id/name, and what happened to its members."""
    if missing.get("reason") == "renamed":
        members = (
            f"still refreshed under its id: its members are in this run's snapshot under the new name "
            f"{missing.get('new_name')!r}"
        )
    elif snapshot:
        members = (
            "not exported: the snapshot this run published no longer lists them (they left the CJA "
            "profile dataset with the snapshot it replaced); the events dataset keeps their history "
            "and no exit events were published for them"
        )
    else:
        members = (
            "not exported by this run (it published no snapshot); the events dataset keeps their "
            "history and no exit events were published for them"
        )
    return {
        "id": missing.get("id"),
        "name": missing.get("name"),
        "reason": missing.get("reason"),
        "new_name": missing.get("new_name"),
        "suggestions": list(missing.get("suggestions") or []),
        "detail": missing.get("detail"),
        "members": members,
    }


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def _window_lines(report: Mapping[str, Any]) -> list[str]:
    lines = []
    snap = report.get("snapshot_window")
    if snap:
        if snap.get("from_batch_id"):
            lines.append(
                f"  snapshot changes (entered / exited / untraced): between the export at "
                f"{snap.get('from') or '?'} (batch {snap['from_batch_id']}) and this run's at "
                f"{snap.get('to') or '?'}"
            )
        else:
            lines.append("  first snapshot of this job: no entered / exited counts")
    if report.get("interval"):
        lines.append(f"  run data interval: [{report['interval'][0]}, {report['interval'][1]})")
    ev = report.get("events_window")
    if ev:
        interval, requested = ev.get("interval") or ["?", "?"], ev.get("requested")
        widened = (
            f" (widened from [{requested[0]}, {requested[1]}) over live events it overlaps)"
            if requested and requested != interval
            else ""
        )
        lines.append(
            f"  events published (ev.*): [{interval[0]}, {interval[1]}){widened}, proven by "
            f"{len(ev.get('sources') or [])} exports"
        )
        untimed = ev.get("untimed_window")
        lines.append(
            f"  ev.untimed: entries between the exports at {untimed[0]} and {untimed[1]} that AEP no longer "
            f"dates (not published)"
            if untimed
            else "  ev.untimed: no two consecutive full exports bracket the interval: entries AEP no longer "
            "shows as realized cannot be counted (not published)"
        )
    return lines


def format_report(report: Mapping[str, Any]) -> str:
    """A plain-text table for logs and the demo."""
    lines = [
        f"CJA audience refresh report: job {report['job_id']} (sandbox {report.get('sandbox') or 'default'})"
    ]
    lines += _window_lines(report)
    header = (
        "audience",
        "members",
        "entered",
        "exited",
        "untraced",
        "no id",
        "ev.entered",
        "ev.exited",
        "ev.untimed",
    )
    table: list[tuple[str, ...]] = [header]
    for r in report["audiences"]:
        entered = "new" if r.get("new") and r.get("members") is not None else _cell(r.get("entered"))
        table.append(
            (
                f"{r['name']} ({r['id'][:8]})",
                _cell(r.get("members")),
                entered,
                *(
                    _cell(r.get(k))
                    for k in (
                        "exited",
                        "untraced",
                        "unidentified",
                        "interval_entered",
                        "interval_exited",
                        "interval_entered_untimed",
                    )
                ),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        lines.append(
            "  "
            + "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))
            )
        )
    if any(r.get("untraced") for r in report["audiences"]):
        lines.append(
            "  untraced: members of the previous snapshot absent from this export under the same person id "
            "(purged, merged, or the identity field was emptied): not counted as exits"
        )
    export = report.get("export") or {}
    if export:
        lines.append(
            f"  export job {export.get('export_job_id')} -> batch {export.get('export_batch_id')} "
            f"({export.get('exported_profiles')} profiles)"
        )
    for kind in ("snapshot", "events"):
        part = report.get(kind)
        if part:
            lines.append(
                f"  {kind}: dataset {report['datasets'].get(kind)} batch {part.get('batch_id')} "
                f"({part.get('records')} records; replaced {part.get('replaced_batch_ids') or 'nothing'})"
            )
    cja = report.get("cja")
    if cja:
        lines.append("  CJA: " + ("ok" if cja.get("ok") else "to do in the CJA UI:"))
        lines += [f"    - {problem}" for problem in (cja.get("problems") or [])]
    missing = report.get("missing_in_aep") or []
    if missing:
        lines.append("  missing in AEP:")
        for row in missing:
            lines.append(
                f"    - {row.get('name') or '(name unknown)'} ({row.get('id') or 'id unknown'}): "
                f"{row.get('reason')}; members {row.get('members')}"
            )
    for warning in report.get("warnings", []):
        lines.append(f"  warning: {warning}")
    return "\n".join(lines)
