"""Audiences a job selects that AEP does not answer for: a typo, or deleted/renamed since an earlier run.

Pure module (no Airflow import, no HTTP). AEP answers a deleted audience exactly like an id that
never existed (``GET /audiences/{id}`` -> 404), so the answer alone cannot tell a typo from a deletion
(https://experienceleague.adobe.com/en/docs/experience-platform/segmentation/api/audiences).
The evidence is AEP's own record of what this job exported before: its snapshot batches in the CJA
profile dataset carry a label naming their export batch (:class:`~airflow_cja_audiences.runs.BatchLabel`), and the export job that wrote that batch lists
the audience ids in ``filter.segments`` (:class:`PreviousExports`, gathered by the resolve step).

* An id selector whose id AEP no longer has: **deleted** when an earlier snapshot of this job
  exported it, otherwise **unknown** (a typo, or an id from another sandbox).
* A name selector that matches no audience: paired with the audiences this job exported before
  that no selector selects now and that AEP either no longer has (**deleted**) or changed since
  this job first exported them (**renamed**, per the audience's ``updateTime``). The pairing is
  made only when it is unambiguous; otherwise the name is **unknown**, with close matches.

Unknown selectors fail the run before anything is written; deleted ones are left out and reported;
renamed ones keep being refreshed under their id (the README says why).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Reason = Literal["deleted", "renamed", "unknown"]
# AEP's lifecycleState for a deleted audience ("archived: the audience is deleted", segmentation.json
# PlatformGeneratedAudience). "deleted" is not in the enum; accepted too in case AEP reports it so.
DELETED_STATES = frozenset({"archived", "deleted"})


def close_matches(
    name: str, candidates: Iterable[str], *, limit: int = 3, cutoff: float = 0.6
) -> tuple[str, ...]:
    """Up to ``limit`` candidate names close to ``name``, best first, for a "did you mean ...?".

    Case-insensitive: names that contain the other (``"gold members"`` vs ``"Luma - Gold members"``)
    come first, then :func:`difflib.get_close_matches` by similarity ratio. The original spelling of
    each candidate is returned, each once.
    """
    wanted = name.strip().lower()
    if not wanted:
        return ()
    by_lower: dict[str, str] = {}
    for candidate in candidates:
        by_lower.setdefault(candidate.lower(), candidate)
    if wanted in by_lower:  # differs only in case: the best possible suggestion
        return (by_lower[wanted],)
    contains = sorted(
        (c for c in by_lower if wanted in c or c in wanted),
        key=lambda c: (-difflib.SequenceMatcher(None, wanted, c).ratio(), c),
    )
    similar = difflib.get_close_matches(wanted, list(by_lower), n=limit, cutoff=cutoff)
    out: list[str] = []
    for lower in [*contains, *similar]:
        if by_lower[lower] not in out:
            out.append(by_lower[lower])
    return tuple(out[:limit])


def did_you_mean(suggestions: Sequence[str]) -> str:
    if not suggestions:
        return "no audience has a similar name"
    return "did you mean " + " or ".join(repr(s) for s in suggestions) + "?"


@dataclass(frozen=True)
class Unresolved:
    """A selector AEP had no (live) audience for: ``audiences[index].id`` or ``.name``."""

    index: int
    by: Literal["id", "name"]
    value: str
    display_name: str | None = None

    @property
    def field(self) -> str:
        return f"audiences[{self.index}].{self.by}"


@dataclass(frozen=True)
class PreviousExports:
    """What this job's earlier snapshots exported, as AEP records it.

    :param audience_ids: audience id -> export job id of the **latest** snapshot export that listed it.
    :param first_exported_ms: audience id -> creation time (epoch ms) of the **earliest** snapshot
        batch (within the look-back window) whose export listed it.
    :param snapshots: how many snapshot batches of the job were found (0: no earlier run).
    """

    audience_ids: Mapping[str, int] = field(default_factory=dict)
    first_exported_ms: Mapping[str, int] = field(default_factory=dict)
    snapshots: int = 0

    def exported(self, audience_id: str) -> bool:
        return audience_id in self.audience_ids


@dataclass(frozen=True)
class AepAudienceNow:
    """What AEP says now about an audience the job exported before (``name`` None: AEP has no such id)."""

    id: str
    name: str | None
    update_time_ms: int | None = None
    lifecycle_state: str | None = None

    @property
    def gone(self) -> bool:
        return self.name is None or (self.lifecycle_state or "").lower() in DELETED_STATES


@dataclass(frozen=True)
class MissingAudience:
    """One selected audience AEP no longer answers for, and why."""

    field: str
    id: str | None
    name: str | None  # the last name this job knew it by (the selector's name or display name)
    reason: Reason
    detail: str
    suggestions: tuple[str, ...] = ()
    new_name: str | None = None  # renamed: AEP's name now

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "reason": self.reason,
            "suggestions": list(self.suggestions),
            "detail": self.detail,
            "field": self.field,
            "new_name": self.new_name,
        }

    def message(self) -> str:
        return f"{self.field}: {self.detail}"


def _renamed_since_exported(now: AepAudienceNow, previous: PreviousExports) -> bool:
    first = previous.first_exported_ms.get(now.id)
    return now.update_time_ms is not None and first is not None and now.update_time_ms > first


def classify(
    unresolved: Sequence[Unresolved],
    *,
    sandbox: str | None,
    previous: PreviousExports | None,
    orphans: Sequence[AepAudienceNow],
    suggestions: Mapping[int, tuple[str, ...]],
) -> list[MissingAudience]:
    """Say for each unresolved selector whether it is deleted, renamed or unknown (a typo).

    :param previous: the job's earlier snapshot exports (None: they could not be looked up).
    :param orphans: what AEP says now about the audiences ``previous`` lists that no selector of the
        job resolved to (the candidates for a name that matches nothing).
    :param suggestions: selector index -> close names (name selectors).
    """
    where = f"sandbox {sandbox!r}" if sandbox else "the sandbox"
    history = (
        "this job has no earlier snapshot in AEP"
        if previous is None or not previous.snapshots
        else f"none of this job's {previous.snapshots} earlier snapshot(s) in AEP exported it"
    )
    out: list[MissingAudience] = []
    for item in (u for u in unresolved if u.by == "id"):
        if previous is not None and previous.exported(item.value):
            out.append(
                MissingAudience(
                    item.field,
                    item.value,
                    item.display_name,
                    "deleted",
                    f"audience {item.value}{_named(item.display_name)} is no longer in AEP ({where}): it was deleted "
                    f"after export job {previous.audience_ids[item.value]} of an earlier run exported it. The run "
                    f"refreshes the other audiences; remove it from the job",
                )
            )
        else:
            out.append(
                MissingAudience(
                    item.field,
                    item.value,
                    item.display_name,
                    "unknown",
                    f"no audience {item.value!r} in {where}, and {history}: a typo, or an id "
                    f"from another sandbox?",
                )
            )

    names = [u for u in unresolved if u.by == "name"]
    candidates = [
        o for o in orphans if o.gone or (previous is not None and _renamed_since_exported(o, previous))
    ]
    pairs = _pair(names, candidates) if names and len(names) == len(candidates) else None
    gone_ids = ", ".join(sorted(c.id for c in candidates if c.gone))
    for item, now in pairs or ():
        found = suggestions.get(item.index, ())
        if now is None:  # several names, several deleted audiences: which is which is not recorded
            out.append(
                MissingAudience(
                    item.field,
                    None,
                    item.value,
                    "deleted",
                    f"no audience named {item.value!r} in {where}: it is one of the audiences this job exported before "
                    f"that no selector matches now and AEP no longer has ({gone_ids}). The run refreshes the other "
                    f"audiences; remove it from the job",
                    found,
                )
            )
        elif now.gone:
            out.append(
                MissingAudience(
                    item.field,
                    now.id,
                    item.value,
                    "deleted",
                    f"no audience named {item.value!r} in {where}: audience {now.id}, which this job exported before "
                    f"and no other selector matches, is no longer in AEP (deleted). The run refreshes the other "
                    f"audiences; remove it from the job",
                    found,
                )
            )
        else:
            out.append(
                MissingAudience(
                    item.field,
                    now.id,
                    item.value,
                    "renamed",
                    f"no audience named {item.value!r} in {where}: audience {now.id}, which this job exported before, "
                    f"was renamed to {now.name!r} since. The run keeps refreshing {now.id} under its new name; "
                    f"update the job to {{id: {now.id}}} (or name {now.name!r})",
                    found,
                    new_name=now.name,
                )
            )
    if names and pairs is None:
        hint = ""
        if candidates:
            hint = (
                "; this job exported before "
                + ", ".join(
                    f"{c.id} ({'deleted' if c.gone else f'now named {c.name!r}'})" for c in candidates
                )
                + ": if it is one of them, select it by id"
            )
        for item in names:
            found = suggestions.get(item.index, ())
            out.append(
                MissingAudience(
                    item.field,
                    None,
                    item.value,
                    "unknown",
                    f"no audience named {item.value!r} in {where}; {did_you_mean(found)}{hint}",
                    found,
                )
            )
    order = {u.field: i for i, u in enumerate(sorted(unresolved, key=lambda u: u.index))}
    return sorted(out, key=lambda m: order[m.field])


def _pair(
    names: Sequence[Unresolved], candidates: Sequence[AepAudienceNow]
) -> list[tuple[Unresolved, AepAudienceNow | None]] | None:
    """Pair names that match nothing with as many audiences AEP deleted or renamed since this job
    exported them; None when the pairing is not certain enough to act on.

    One name and one candidate pair directly. With several, each renamed audience takes the name
    closest to its new one (none close: no pairing); the names left over are the deleted ones (with
    their id when only one is left, else ``None``: AEP keeps no name for a deleted audience).
    """
    if len(names) == 1 and len(candidates) == 1:
        return [(names[0], candidates[0])]
    free = list(names)
    pairs: list[tuple[Unresolved, AepAudienceNow | None]] = []
    for now in (c for c in candidates if not c.gone):
        match = close_matches(now.name or "", [n.value for n in free], limit=1)
        if not match:
            return None
        item = next(n for n in free if n.value == match[0])
        free.remove(item)
        pairs.append((item, now))
    gone = [c for c in candidates if c.gone]
    if len(gone) == 1 and len(free) == 1:
        pairs.append((free[0], gone[0]))
    else:
        pairs += [(item, None) for item in free]
    return pairs


def _named(name: str | None) -> str:
    return f" ({name!r})" if name else ""
