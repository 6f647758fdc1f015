"""Segmentation Service: audiences and profile export jobs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlparse

from airflow_cja_audiences.config import AudienceSelector
from airflow_cja_audiences.errors import AepConfigError, AepError, AepNotFoundError
from airflow_cja_audiences.hooks.platform import AdobePlatformHook, path_segment
from airflow_cja_audiences.missing import (
    DELETED_STATES,
    AepAudienceNow,
    MissingAudience,
    PreviousExports,
    Unresolved,
    classify,
    close_matches,
)
from airflow_cja_audiences.models import Audience, ExportJob, ExportJobRequest
from airflow_cja_audiences.validation import shown

log = logging.getLogger(__name__)

BASE = "/data/core/ups"
AUDIENCE_PAGE = 100
JOB_PAGE = 50


@dataclass(frozen=True)
class ResolvedAudience:
    """An audience the job exports: its id, the name written to CJA, and AEP's own name."""

    id: str
    name: str
    aep_name: str
    lifecycle_state: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "aep_name": self.aep_name,
            "lifecycle_state": self.lifecycle_state,
        }


@dataclass(frozen=True)
class AudienceResolution:
    """The audiences a run exports (config order), and the selected ones AEP deleted or renamed."""

    resolved: list[ResolvedAudience]
    missing: list[MissingAudience] = field(default_factory=list)  # reasons "deleted" and "renamed"


class SegmentationHook(AdobePlatformHook):
    """Segmentation Service API (audiences, export jobs)."""

    hook_name = "Adobe Experience Platform Segmentation"

    # ------------------------------------------------------------------ audiences

    def get_audience(self, audience_id: str) -> Audience:
        payload = self.request_json(
            "GET", f"{BASE}/audiences/{path_segment(audience_id)}", route="segmentation.get_audience"
        )
        audience = Audience.model_validate(payload)
        if audience.id != audience_id:  # it goes into the export job and into SQL as the one asked for
            raise AepError(
                f"GET audience {audience_id!r} answered with audience {shown(audience.id)}; not using it"
            )
        return audience

    def iter_audiences(self, *, name_contains: str | None = None) -> Iterator[Audience]:
        start: Any = 0
        guard = self.page_guard("segmentation.list_audiences")
        while True:
            guard.next_page(str(start))
            params: dict[str, Any] = {"start": start, "limit": AUDIENCE_PAGE}
            if name_contains:
                params["name"] = name_contains
            payload = self.request_json(
                "GET", f"{BASE}/audiences", route="segmentation.list_audiences", params=params
            )
            children = payload.get("children", []) if isinstance(payload, dict) else []
            audiences = [Audience.model_validate(child) for child in children]
            guard.seen(a.id for a in audiences)
            yield from audiences
            page = (payload.get("_page") if isinstance(payload, dict) else None) or {}
            next_start = page.get("next") if isinstance(page, dict) else None
            if not children or next_start in (None, ""):
                return
            start = next_start  # a repeated cursor fails in the guard instead of ending the list silently

    def find_audiences_by_name(self, name: str) -> list[Audience]:
        """Audiences whose name is exactly ``name`` (the API filter is 'contains', case-insensitive)."""
        return [a for a in self.iter_audiences(name_contains=name) if a.name == name]

    def resolve_audiences(self, selectors: Sequence[AudienceSelector]) -> list[ResolvedAudience]:
        """Look up every configured audience; fail listing *all* problems before anything is written.

        Strict: any selected audience AEP does not answer for is an error (see
        :meth:`resolve_selection` to tell deleted and renamed audiences from typos).
        """
        resolution = self.resolve_selection(selectors)
        if resolution.missing:
            raise AepConfigError(
                "invalid audiences:\n  " + "\n  ".join(m.message() for m in resolution.missing)
            )
        return resolution.resolved

    def resolve_selection(
        self,
        selectors: Sequence[AudienceSelector],
        *,
        previous_exports: Callable[[], PreviousExports | None] | None = None,
    ) -> AudienceResolution:
        """Resolve the selectors, telling audiences deleted or renamed in AEP from typos.

        :param previous_exports: called only when a selector matches nothing: what this job's earlier
            snapshots exported, per AEP (see :mod:`airflow_cja_audiences.missing`).
        :raises AepConfigError: listing every unknown (typo), ambiguous or duplicate selector, with
            close-match suggestions for names; or when every selected audience is missing.
        """
        problems: list[str] = []
        found: dict[int, ResolvedAudience] = {}
        unresolved: list[Unresolved] = []
        missing: list[MissingAudience] = []
        for index, selector in enumerate(selectors):
            if selector.id is not None:
                where = f"audiences[{index}].id"
                try:
                    audience = self.get_audience(selector.id)
                except AepNotFoundError:
                    unresolved.append(Unresolved(index, "id", selector.id, selector.display_name))
                    continue
            else:
                where = f"audiences[{index}].name"
                matches = self.find_audiences_by_name(selector.name or "")
                if not matches:
                    unresolved.append(Unresolved(index, "name", selector.name or "", selector.display_name))
                    continue
                if len(matches) > 1:
                    problems.append(
                        f"{where}: {len(matches)} audiences ({', '.join(a.id for a in matches)}) named "
                        f"{selector.name!r} in sandbox {self.sandbox!r}; use the id instead"
                    )
                    continue
                audience = matches[0]
            state = (audience.lifecycle_state or "").lower()
            if state in DELETED_STATES:  # AEP itself says it is deleted: no history needed
                missing.append(
                    MissingAudience(
                        where,
                        audience.id,
                        selector.display_name or audience.name,
                        "deleted",
                        f"audience {audience.id} ({audience.name!r}) is {audience.lifecycle_state} in AEP (deleted). "
                        f"The run refreshes the other audiences; remove it from the job",
                    )
                )
                continue
            if state and state not in ("published", "active"):
                log.warning(
                    "Audience %s (%r) is %s; its export may be empty",
                    audience.id,
                    audience.name,
                    audience.lifecycle_state,
                )
            found[index] = ResolvedAudience(
                id=audience.id,
                name=selector.display_name or audience.name,
                aep_name=audience.name,
                lifecycle_state=audience.lifecycle_state,
            )
        if unresolved:
            by_field = {u.field: u for u in unresolved}
            for item in self._classify(unresolved, found, missing, previous_exports):
                if item.reason == "unknown":
                    problems.append(item.message())
                    continue
                missing.append(item)
                if item.reason == "renamed" and item.id and item.new_name:
                    selector_index = by_field[item.field].index
                    found[selector_index] = ResolvedAudience(
                        id=item.id,
                        name=selectors[selector_index].display_name or item.new_name,
                        aep_name=item.new_name,
                    )
        ids = [a.id for a in found.values()]
        for dup in sorted({i for i in ids if ids.count(i) > 1}):
            problems.append(f"audiences: {dup} is selected twice (by id and by name)")
        if problems:
            raise AepConfigError("invalid audiences:\n  " + "\n  ".join(problems))
        missing.sort(key=lambda m: int(m.field.split("[", 1)[1].split("]", 1)[0]))
        if not found:
            raise AepConfigError(
                "every audience of the job is missing in AEP, nothing to refresh:\n  "
                + "\n  ".join(m.message() for m in missing)
            )
        return AudienceResolution(resolved=[found[i] for i in sorted(found)], missing=missing)

    def _classify(
        self,
        unresolved: list[Unresolved],
        found: dict[int, ResolvedAudience],
        missing: list[MissingAudience],
        previous_exports: Callable[[], PreviousExports | None] | None,
    ) -> list[MissingAudience]:
        previous = previous_exports() if previous_exports is not None else None
        names = [u for u in unresolved if u.by == "name"]
        orphans: list[AepAudienceNow] = []
        if previous is not None and names:
            taken = (
                {a.id for a in found.values()}
                | {u.value for u in unresolved if u.by == "id"}
                | {m.id for m in missing if m.id}
            )
            for audience_id in sorted(set(previous.audience_ids) - taken):
                try:
                    now = self.get_audience(audience_id)
                except AepNotFoundError:
                    orphans.append(AepAudienceNow(audience_id, None))
                    continue
                orphans.append(AepAudienceNow(audience_id, now.name, now.update_time, now.lifecycle_state))
        suggestions: dict[int, tuple[str, ...]] = {}
        if names:
            every_name = [a.name for a in self.iter_audiences()]
            suggestions = {u.index: close_matches(u.value, every_name) for u in names}
        return classify(
            unresolved, sandbox=self.sandbox, previous=previous, orphans=orphans, suggestions=suggestions
        )

    # ------------------------------------------------------------------ export jobs

    def get_export_job(self, job_id: int) -> ExportJob:
        payload = self.request_json(
            "GET", f"{BASE}/export/jobs/{int(job_id)}", route="segmentation.get_export_job"
        )
        return ExportJob.model_validate(payload)

    async def aget_export_job(self, job_id: int) -> ExportJob:
        payload = await self.arequest_json(
            "GET", f"{BASE}/export/jobs/{int(job_id)}", route="segmentation.get_export_job"
        )
        return ExportJob.model_validate(payload)

    def wait_for_export_job(
        self, job_id: int, *, deadline: float, poll_interval: float = 30.0, first: ExportJob | None = None
    ) -> ExportJob:
        """Poll the job until it is terminal (see ``ExportJob.outcome``) and return it; the synchronous
        twin of ``ExportJobTrigger``. ``deadline`` (epoch seconds) is required: past it,
        :class:`~airflow_cja_audiences.errors.AepWaitTimeoutError`."""
        from airflow_cja_audiences.waits import wait_until_terminal

        return wait_until_terminal(
            lambda: self.get_export_job(job_id),
            status_type=ExportJob.STATUS,
            what=f"export job {int(job_id)}",
            deadline=deadline,
            poll_interval=poll_interval,
            first=first,
        )

    def cancel_export_job(self, job_id: int) -> None:
        self.request_json(
            "DELETE", f"{BASE}/export/jobs/{int(job_id)}", route="segmentation.cancel_export_job"
        )

    async def acancel_export_job(self, job_id: int) -> None:
        await self.arequest_json(
            "DELETE", f"{BASE}/export/jobs/{int(job_id)}", route="segmentation.cancel_export_job"
        )

    def iter_export_jobs(self, *, status: str | None = None) -> Iterator[ExportJob]:
        """Export jobs, newest first (paging through ``link.next``'s offset)."""
        params: dict[str, Any] = {"limit": JOB_PAGE}
        if status:
            params["status"] = status
        guard = self.page_guard("segmentation.list_export_jobs")
        while True:
            guard.next_page(str(params.get("offset")))
            payload = self.request_json(
                "GET", f"{BASE}/export/jobs", route="segmentation.list_export_jobs", params=params
            )
            records = payload.get("records", []) if isinstance(payload, dict) else []
            jobs = [ExportJob.model_validate(r) for r in records]
            guard.seen(j.id for j in jobs)
            yield from jobs
            next_link = ((payload or {}).get("link") or {}).get("next")
            offset = parse_qs(urlparse(next_link).query).get("offset", [None])[0] if next_link else None
            if not records or not offset:
                return
            params["offset"] = offset

    def _recent_jobs(self, request: ExportJobRequest, created_after_ms: int) -> Iterator[ExportJob]:
        for job in self.iter_export_jobs():
            if job.creation_time is not None and job.creation_time < created_after_ms:
                return  # newest first: everything further is older
            if request.matches(job):
                yield job

    def export_job_ids(self, request: ExportJobRequest, *, created_after_ms: int) -> set[int]:
        """Ids of the jobs made from ``request`` since ``created_after_ms`` (whatever their status)."""
        return {job.id for job in self._recent_jobs(request, created_after_ms)}

    def find_export_job(
        self, request: ExportJobRequest, *, created_after_ms: int, exclude: Collection[int] = ()
    ) -> ExportJob | None:
        """The newest job made from ``request`` since ``created_after_ms`` that has not failed, and
        is not one of ``exclude`` (the jobs that existed before ours was created).

        This is how a retried task re-attaches to the job it started instead of starting another.
        """
        return next(
            (
                job
                for job in self._recent_jobs(request, created_after_ms)
                if not job.is_failed and job.id not in exclude
            ),
            None,
        )

    def create_export_job(
        self, request: ExportJobRequest, *, created_after_ms: int, exclude: Collection[int] = ()
    ) -> ExportJob:
        """Create the export job (never twice: an ambiguous failure is reconciled by listing jobs;
        ``exclude``: matching jobs that existed before, which are never taken for this one)."""

        def create() -> ExportJob:
            payload = self.request_json(
                "POST", f"{BASE}/export/jobs", route="segmentation.create_export_job", json=request.to_body()
            )
            return ExportJob.model_validate(payload)

        job = self.create_once(
            "create export job",
            create,
            lambda: self.find_export_job(request, created_after_ms=created_after_ms, exclude=exclude),
            route="segmentation.create_export_job",
        )
        log.info(
            "Export job %s created for %d audiences into dataset %s (status %s)",
            job.id,
            len(request.segment_ids),
            request.dataset_id,
            job.status,
        )
        return job

    def require_export_fields(self, union_schema: dict[str, Any], fields: Sequence[str]) -> None:
        """Fail before exporting when a field is not in the profile union schema."""
        from airflow_cja_audiences.xdm import schema_has_path

        missing = [f for f in fields if not schema_has_path(union_schema, f)]
        if missing:
            raise AepConfigError(
                f"identity.field: {', '.join(missing)} is not a field of the profile union "
                f"schema in sandbox {self.sandbox!r}, so the export would not contain it"
            )
