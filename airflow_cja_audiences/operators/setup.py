"""Read-only resolution and find-or-create setup steps (pipeline steps 1, 2 and 4).

Adapters over :mod:`airflow_cja_audiences.pipeline.setup`, which holds the decisions."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, Literal

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowFailException

from airflow_cja_audiences import hooks, validation, xdm
from airflow_cja_audiences.config import AudienceSelector, OutputFields
from airflow_cja_audiences.errors import AepConfigError, AepWaitTimeoutError
from airflow_cja_audiences.links import AepDatasetLink, push_dataset_link
from airflow_cja_audiences.missing import PreviousExports
from airflow_cja_audiences.models import (
    EVENT_CLASS,
    PROFILE_CLASS,
    PROFILE_UNION_ALT_ID,
    PROFILE_UNION_SCHEMA,
)
from airflow_cja_audiences.operators.base import AdobeBaseOperator
from airflow_cja_audiences.pipeline import setup as core
from airflow_cja_audiences.pipeline.refusals import SharedDatasetError


class ResolveAudiencesOperator(AdobeBaseOperator):
    """Validate and resolve the audiences, the tenant and the identity field; writes nothing.

    Fails (without retries: retrying cannot fix a config) before anything is written to AEP when an
    audience id or name is unknown (a typo: names get "did you mean ...?" suggestions) or ambiguous,
    the tenant cannot be found, the identity field is not in the profile union schema, or Query
    Service cannot be reached (TLS, authentication, ``SELECT 1``; ``check_query_service``), so that a
    blocked Query Service port is found before the export job and the datasets are created.

    An audience AEP no longer has that an earlier snapshot of this job exported (evidence read from
    AEP: the job's snapshot batches in ``profile_dataset_name`` and the export jobs that fed them) is
    *deleted*: the run goes on without it and warns. A name that matches nothing but whose audience
    this job exported before and AEP renamed since is *renamed*: the run keeps refreshing that id
    under its new name and warns. Both are listed under ``missing_audiences``. Without ``job_id``
    and ``profile_dataset_name`` no history is read and every unknown audience is an error.

    XCom (keys): ``audiences`` (list of ``{id, name, aep_name}``), ``audience_ids``, ``tenant``,
    ``identity_path``, ``export_fields`` (what the export job must include), ``missing_audiences``
    (list of ``{id, name, reason, suggestions, detail, field, new_name}``, reason ``deleted`` or
    ``renamed``).
    """

    template_fields = ("sandbox", "audiences", "identity_field", "tenant", "profile_dataset_name")

    def __init__(
        self,
        *,
        audiences: Sequence[dict[str, Any]],
        identity_field: str,
        tenant: str | None = None,
        check_identity_field: bool = True,
        check_query_service: bool = True,
        job_id: str | None = None,
        profile_dataset_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # A list, or a value rendered at run time (a template, an XComArg, a literal()).
        self.audiences = list(audiences) if isinstance(audiences, (list, tuple)) else audiences
        self.identity_field = identity_field
        self.tenant = tenant
        self.check_identity_field = check_identity_field
        self.check_query_service = check_query_service
        self.job_id = job_id
        self.profile_dataset_name = profile_dataset_name

    def execute(self, context: Context) -> dict[str, Any]:
        try:
            selectors = [AudienceSelector.model_validate(a) for a in self.audiences]
            if not selectors:
                raise AepConfigError("audiences: the list is empty")
            validation.field_path(self.identity_field)
            registry = self.hook(hooks.schema_registry.SchemaRegistryHook)
            if self.tenant:
                tenant = validation.tenant_id(self.tenant)
                core.check_tenant(registry, tenant)
            else:
                tenant = registry.get_tenant_id()
            identity_path = validation.resolve_tenant_path(self.identity_field, tenant)
        except ValueError as exc:
            raise AirflowFailException(f"invalid input: {exc}") from exc
        # A typo raises AepConfigError: the base operator fails the task at once (no retry can fix it).
        resolution = self.hook(hooks.segmentation.SegmentationHook).resolve_selection(
            selectors, previous_exports=self._previous_exports
        )
        resolved = resolution.resolved
        for gone in resolution.missing:
            self.log.warning(
                "Audience %s (last known as %s) was %s in AEP: %s",
                gone.id or "(id: see below)",
                repr(gone.name) if gone.name else "an unnamed id selector",
                gone.reason.upper(),
                gone.message(),
            )
        if self.check_identity_field:
            union = self.hook(hooks.schema_registry.SchemaRegistryHook).get_profile_union_schema()
            self.hook(hooks.segmentation.SegmentationHook).require_export_fields(union, [identity_path])
        core.check_resolved(resolved)
        if self.check_query_service:
            self.log.info(
                "Query Service: %s",
                hooks.query_service.QueryServiceHook(
                    self.adobe_conn_id,
                    platform_hook=self.hook(hooks.platform.AdobePlatformHook),
                    connect_timeout=15,
                ).check(),
            )
        result = {
            "audiences": [a.to_dict() for a in resolved],
            "audience_ids": [a.id for a in resolved],
            "tenant": tenant,
            "identity_path": identity_path,
            "export_fields": [identity_path],
            "missing_audiences": [m.to_dict() for m in resolution.missing],
        }
        for audience in resolved:
            self.log.info(
                "Audience %s -> %r (AEP name %r, %s)",
                audience.id,
                audience.name,
                audience.aep_name,
                audience.lifecycle_state or "state unknown",
            )
        self.log.info("Tenant _%s; personID from %s", tenant, identity_path)
        self.log_retries()
        return result

    def _previous_exports(self) -> PreviousExports | None:
        """This job's earlier snapshot exports, from AEP (read only when an audience is not found)."""
        if not (self.job_id and self.profile_dataset_name):
            return None
        previous = core.previous_exports(
            self.hook(hooks.catalog.CatalogHook),
            self.hook(hooks.segmentation.SegmentationHook),
            dataset_name=self.profile_dataset_name,
            job_id=self.job_id,
            now_ms=int(time.time() * 1000),
        )
        self.log.info(
            "Earlier snapshots of job %s in AEP: %d, exporting %d audience(s)",
            self.job_id,
            previous.snapshots,
            len(previous.audience_ids),
        )
        return previous


def _refuse_other_jobs(catalog: Any, dataset_id: str, dataset_name: str, job_id: str) -> None:
    """Fail (not retried) when the dataset holds live batches another job wrote."""
    try:
        core.refuse_other_jobs(catalog, dataset_id, dataset_name, job_id)
    except SharedDatasetError as exc:
        raise AirflowFailException(str(exc)) from exc


def _rendered_text(op: Any, name: str) -> None:
    """Names may be templates in a user's own DAG: the rendered value must be a valid name too."""
    try:
        validation.display_text(getattr(op, name), name)
    except ValueError as exc:
        raise AepConfigError(f"{name} as rendered: {exc}") from None


class PlanRunOperator(BaseOperator):
    """Decide what this run publishes: the snapshot, its interval's change events, or both.

    Scheduled runs: both (events for the data interval). Backfill runs: only events, so history never
    overwrites the current snapshot. Manual runs (no data interval): the snapshot, plus events when
    the trigger form gives ``events_interval_start``/``events_interval_end``.

    XCom (keys): ``snapshot``, ``events``, ``interval_start``, ``interval_end``, ``export_statuses``,
    ``qualification_start``, ``qualification_end``, ``warnings``.
    """

    def __init__(self, *, publish_events: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("multiple_outputs", True)
        super().__init__(**kwargs)
        self.publish_events = publish_events

    def execute(self, context: Context) -> dict[str, Any]:
        run_type = core.run_type_name(getattr(context["dag_run"], "run_type", "manual"))
        try:
            plan = core.plan_this_run(
                params=context.get("params") or {},
                data_interval=(context.get("data_interval_start"), context.get("data_interval_end")),
                run_type=run_type,
                publish_events=self.publish_events,
                now=datetime.now(timezone.utc),
            )
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from exc
        for warning in plan.warnings:
            self.log.warning(warning)
        self.log.info(
            "Run type %s: snapshot=%s, events=%s %s",
            run_type,
            plan.snapshot,
            plan.events,
            f"[{plan.interval_start}, {plan.interval_end})" if plan.events else "",
        )
        return plan.to_dict()


class EnsureExportDatasetOperator(AdobeBaseOperator):
    """Find or create the profile-union dataset export jobs write into (pipeline step 2).

    XCom (keys): ``dataset_id``, ``table_name`` (the Query Service table, tag ``adobe/pqs/table``).
    """

    template_fields = ("sandbox", "dataset_name")
    operator_extra_links = (AepDatasetLink(),)

    def __init__(self, *, dataset_name: str, table_name_wait_seconds: float = 120.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dataset_name = dataset_name
        self.table_name_wait_seconds = table_name_wait_seconds

    def execute(self, context: Context) -> dict[str, Any]:
        _rendered_text(self, "dataset_name")
        catalog = self.hook(hooks.catalog.CatalogHook)
        dataset, _ = catalog.ensure_dataset(
            self.dataset_name,
            schema_id=PROFILE_UNION_ALT_ID,
            accepted_schema_ids=(PROFILE_UNION_SCHEMA,),
            description="Segmentation export jobs of airflow-cja-audiences (read back with Query Service)",
        )
        deadline = time.monotonic() + self.table_name_wait_seconds
        while dataset.table_name is None:  # Catalog may add the Query Service tag shortly after creation
            if time.monotonic() > deadline:
                raise AepWaitTimeoutError(
                    f"dataset {dataset.id} has no 'adobe/pqs/table' tag after "
                    f"{self.table_name_wait_seconds:.0f} s; is Query Service enabled?",
                    what=f"dataset {dataset.id}",
                )
            time.sleep(5)
            dataset = catalog.get_dataset(dataset.id)
        validation.table_name(dataset.table_name)
        result = {"dataset_id": dataset.id, "table_name": dataset.table_name}
        push_dataset_link(context, catalog.settings, dataset.id)
        self.log_retries()
        return result


class EnsureCjaDatasetOperator(AdobeBaseOperator):
    """Find or create field group, schema, primary identity descriptor and dataset for CJA (step 4).

    ``kind="profile"``: XDM Individual Profile class with ``personID`` as primary identity.
    ``kind="events"``: ExperienceEvent class with ``_<tenant>.personID`` as primary identity.

    With ``job_id``, an existing dataset that holds live batches of *another* job is refused: each
    job replaces only its own batches, so both jobs' snapshots (or events) would stay live in it.

    XCom (keys): ``dataset_id``, ``schema_id``, ``field_group_id``.
    """

    template_fields = ("sandbox", "tenant", "dataset_name", "schema_title", "field_group_title")
    operator_extra_links = (AepDatasetLink(),)

    def __init__(
        self,
        *,
        kind: Literal["profile", "events"],
        tenant: str,
        dataset_name: str,
        schema_title: str,
        field_group_title: str,
        identity_namespace: str = "Email",
        output_fields: dict[str, str] | None = None,
        job_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.job_id = job_id
        if kind not in ("profile", "events"):
            raise ValueError(f"kind must be 'profile' or 'events', not {kind!r}")
        self.kind = kind
        self.tenant = tenant
        self.dataset_name = dataset_name
        self.schema_title = schema_title
        self.field_group_title = field_group_title
        self.identity_namespace = identity_namespace
        self.output_fields = dict(output_fields or {})

    def execute(self, context: Context) -> dict[str, Any]:
        tenant = validation.tenant_id(self.tenant)
        for name in ("dataset_name", "schema_title", "field_group_title"):
            _rendered_text(self, name)
        fields = OutputFields.model_validate(self.output_fields)
        registry = self.hook(hooks.schema_registry.SchemaRegistryHook)
        if self.kind == "profile":
            group_body = xdm.profile_field_group(self.field_group_title, tenant, fields)
            class_id, identity_property = PROFILE_CLASS, "/personID"
        else:
            group_body = xdm.event_field_group(self.field_group_title, tenant, fields)
            class_id, identity_property = EVENT_CLASS, f"/_{tenant}/personID"
        group, _ = registry.ensure_field_group(group_body, tenant)
        schema, _ = registry.ensure_schema(xdm.schema_body(self.schema_title, class_id, [group.id]))
        registry.ensure_identity_descriptor(
            schema.id, identity_property, validation.namespace_code(self.identity_namespace)
        )
        dataset, _ = self.hook(hooks.catalog.CatalogHook).ensure_dataset(
            self.dataset_name,
            schema_id=schema.id,
            accepted_schema_ids=tuple(i for i in (schema.alt_id,) if i),
            description=f"AEP audience {'memberships' if self.kind == 'profile' else 'entries and exits'} for "
            f"Customer Journey Analytics (airflow-cja-audiences)",
        )
        if self.job_id:
            _refuse_other_jobs(
                self.hook(hooks.catalog.CatalogHook), dataset.id, self.dataset_name, self.job_id
            )
        result = {"dataset_id": dataset.id, "schema_id": schema.id, "field_group_id": group.id}
        push_dataset_link(context, registry.settings, dataset.id)
        self.log_retries()
        return result
