"""The run report: per-audience members and changes, what was published (pure, no Airflow import)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def build_report(*, job_id: str, sandbox: str | None, audiences: Sequence[Mapping[str, Any]],
                 plan: Mapping[str, Any], export: Mapping[str, Any] | None,
                 snapshot: Mapping[str, Any] | None, snapshot_counts: Mapping[str, Mapping[str, int]] | None,
                 events: Mapping[str, Any] | None, event_counts: Mapping[str, Mapping[str, int]] | None,
                 datasets: Mapping[str, str | None], cja: Mapping[str, Any] | None,
                 missing_audiences: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Assemble the report from the tasks' small XCom outputs (ids and counts only).

    ``missing_audiences``: the resolve step's audiences that AEP deleted or renamed (``{id, name,
    reason, suggestions, detail, new_name}``); the report says what happened to their members.
    """
    rows = []
    for audience in audiences:
        aid = audience["id"]
        snap = (snapshot_counts or {}).get(aid, {})
        ev = (event_counts or {}).get(aid, {})
        rows.append({"id": aid, "name": audience.get("name"), "members": snap.get("members"),
                     "entered": snap.get("entered"), "exited": snap.get("exited"),
                     "interval_entered": ev.get("entered", 0) if event_counts is not None else None,
                     "interval_exited": ev.get("exited", 0) if event_counts is not None else None})
    return {
        "job_id": job_id,
        "sandbox": sandbox,
        "interval": [plan.get("interval_start"), plan.get("interval_end")] if plan.get("events") else None,
        "export": dict(export or {}),
        "snapshot": dict(snapshot) if snapshot else None,
        "events": dict(events) if events else None,
        "datasets": dict(datasets),
        "audiences": rows,
        "cja": dict(cja) if cja else None,
        "warnings": list(plan.get("warnings") or []),
        "missing_in_aep": [_missing_row(m, snapshot=bool(plan.get("snapshot"))) for m in missing_audiences or ()],
    }


def _missing_row(missing: Mapping[str, Any], *, snapshot: bool) -> dict[str, Any]:
    """One audience AEP no longer has under the configured id/name, and what happened to its members."""
    if missing.get("reason") == "renamed":
        members = (f"still refreshed under its id: its members are in this run's snapshot under the new name "
                   f"{missing.get('new_name')!r}")
    elif snapshot:
        members = ("not exported: the snapshot this run published no longer lists them (they left the CJA "
                   "profile dataset with the snapshot it replaced); the events dataset keeps their history "
                   "and no exit events were published for them")
    else:
        members = ("not exported by this run (it published no snapshot); the events dataset keeps their "
                   "history and no exit events were published for them")
    return {"id": missing.get("id"), "name": missing.get("name"), "reason": missing.get("reason"),
            "new_name": missing.get("new_name"), "suggestions": list(missing.get("suggestions") or []),
            "detail": missing.get("detail"), "members": members}


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def format_report(report: Mapping[str, Any]) -> str:
    """A plain-text table for logs and the demo."""
    lines = [f"CJA audience refresh report: job {report['job_id']} (sandbox {report.get('sandbox') or 'default'})"]
    if report.get("interval"):
        lines.append(f"  events interval: [{report['interval'][0]}, {report['interval'][1]})")
    header = ("audience", "members", "entered", "exited", "ev.entered", "ev.exited")
    table = [header] + [(f"{r['name']} ({r['id'][:8]})", *(_cell(r[k]) for k in (
        "members", "entered", "exited", "interval_entered", "interval_exited"))) for r in report["audiences"]]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        lines.append("  " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                                     for i, (cell, w) in enumerate(zip(row, widths))))
    export = report.get("export") or {}
    if export:
        lines.append(f"  export job {export.get('export_job_id')} -> batch {export.get('export_batch_id')} "
                     f"({export.get('exported_profiles')} profiles)")
    for kind in ("snapshot", "events"):
        part = report.get(kind)
        if part:
            lines.append(f"  {kind}: dataset {report['datasets'].get(kind)} batch {part.get('batch_id')} "
                         f"({part.get('records')} records; replaced {part.get('replaced_batch_ids') or 'nothing'})")
    cja = report.get("cja")
    if cja:
        lines.append("  CJA: " + ("ok" if cja.get("ok") else "to do in the CJA UI:"))
        lines += [f"    - {problem}" for problem in (cja.get("problems") or [])]
    missing = report.get("missing_in_aep") or []
    if missing:
        lines.append("  missing in AEP:")
        for row in missing:
            lines.append(f"    - {row.get('name') or '(name unknown)'} ({row.get('id') or 'id unknown'}): "
                         f"{row.get('reason')}; members {row.get('members')}")
    for warning in report.get("warnings", []):
        lines.append(f"  warning: {warning}")
    return "\n".join(lines)
