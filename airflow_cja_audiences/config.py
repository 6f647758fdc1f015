"""Refresh-job configuration: the validated contract between a config file and the pipeline.

Pure module (pydantic only, no Airflow import). Every string that reaches a URL, SQL or an XDM path
is checked against a strict grammar here (:mod:`airflow_cja_audiences.validation`), so bad input
fails with a message naming the field before anything is written to AEP.
"""

from __future__ import annotations

import math
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from airflow_cja_audiences import validation as v

DEFAULT_CONN_ID = "adobe_experience_platform_default"
# Query Service returns at most 50,000 rows per ad hoc query; stay well below it so that hash
# buckets of uneven size still fit (an overfull bucket is split again at run time).
QUERY_SERVICE_ROW_LIMIT = 50_000
SMALL_FILE_LIMIT = 256 * 1024 * 1024

AudienceId = Annotated[str, AfterValidator(v.audience_id)]
FieldName = Annotated[str, AfterValidator(v.field_name)]
FieldPath = Annotated[str, AfterValidator(v.field_path)]
DisplayText = Annotated[str, AfterValidator(lambda s: v.display_text(s, "name"))]
MembershipStatus = Literal["realized", "existing"]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class AudienceSelector(StrictModel):
    """One audience: by id (preferred) or by exact name; ``display_name`` overrides AEP's name."""

    id: AudienceId | None = None
    name: DisplayText | None = Field(default=None, description="Exact AEP audience name, when no id is given")
    display_name: DisplayText | None = Field(default=None, description="Name written to CJA instead of AEP's")

    @model_validator(mode="after")
    def _id_or_name(self) -> AudienceSelector:
        if (self.id is None) == (self.name is None):
            raise ValueError("give exactly one of 'id' or 'name' for each audience")
        return self

    @property
    def key(self) -> str:
        return f"id:{self.id}" if self.id is not None else f"name:{self.name}"


class IdentitySpec(StrictModel):
    """Which exported field becomes CJA's ``personID``, and its identity namespace."""

    field: FieldPath = Field(description="Dot path in the exported profile, e.g. _{tenant}.identification.core.email")
    namespace: Annotated[str, AfterValidator(v.namespace_code)] = Field(
        default="Email", description="Identity namespace code of personID: Email, ECID, CRMID, Phone, ...")


class OutputFields(StrictModel):
    """Field names of the CJA records (under the tenant namespace)."""

    memberships: FieldName = "audienceMembership"
    audience_ids: FieldName = "audienceMembershipIds"
    audience_names: FieldName = "audienceMembershipNames"
    audience_id: FieldName = "audienceMembershipId"
    audience_name: FieldName = "audienceMembershipName"
    status: FieldName = "status"
    qualification_time: FieldName = "lastQualificationTime"
    # change events (ExperienceEvent layout)
    event_type: FieldName = "audienceEventType"

    @model_validator(mode="after")
    def _distinct(self) -> OutputFields:
        names = list(self.model_dump().values())
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"output field names must be distinct; repeated: {dupes}")
        return self


class ApiRetries(StrictModel):
    """How each Adobe API call is retried on throttling (429), server errors and dropped connections.

    Waits grow exponentially from ``initial_wait_seconds`` (with jitter) up to ``max_wait_seconds``,
    which also caps a ``Retry-After`` header. The defaults suit real Adobe; tests shorten them.
    """

    max_attempts: int = Field(default=8, ge=1, le=20, description="Attempts per call, the first included")
    initial_wait_seconds: float = Field(default=0.5, gt=0.0, le=60.0)
    max_wait_seconds: float = Field(default=60.0, gt=0.0, le=600.0)

    def hook_params(self) -> dict[str, float | int]:
        """The :class:`~airflow_cja_audiences.hooks.platform.AdobePlatformHook` keyword arguments."""
        return {"max_attempts": self.max_attempts, "initial_retry_wait": self.initial_wait_seconds,
                "max_retry_wait": self.max_wait_seconds}


class Naming(StrictModel):
    """Names of what the pipeline creates in AEP; ``{job_id}`` is substituted."""

    export_dataset: DisplayText = "CJA audiences export - {job_id}"
    field_group: DisplayText = "CJA audience membership - {job_id}"
    profile_schema: DisplayText = "CJA audience profiles - {job_id}"
    profile_dataset: DisplayText = "CJA audience profiles - {job_id}"
    event_field_group: DisplayText = "CJA audience membership events - {job_id}"
    event_schema: DisplayText = "CJA audience events - {job_id}"
    event_dataset: DisplayText = "CJA audience membership events - {job_id}"

    def render(self, job_id: str) -> Naming:
        return self.model_copy(update={k: val.replace("{job_id}", job_id) for k, val in self.model_dump().items()})

    @model_validator(mode="after")
    def _titles_unique(self) -> Naming:
        # Schema Registry titles are unique across schemas and field groups (XDM-1521-400).
        titles = [self.field_group, self.profile_schema, self.event_field_group, self.event_schema]
        if len(set(titles)) != len(titles):
            raise ValueError("field group and schema titles must all differ (Schema Registry titles are "
                             "unique across resource types)")
        return self


class RefreshJob(StrictModel):
    """One refresh job: a set of audiences of one sandbox kept in one CJA profile dataset."""

    job_id: Annotated[str, AfterValidator(v.job_id)]
    description: str = ""
    conn_id: str = Field(default=DEFAULT_CONN_ID, pattern=r"^[A-Za-z0-9_.-]{1,250}$")
    sandbox: Annotated[str, AfterValidator(v.sandbox)] | None = Field(
        default=None, description="AEP sandbox; default: the connection's sandbox")
    audiences: list[AudienceSelector] = Field(min_length=1, max_length=500)
    identity: IdentitySpec
    tenant: Annotated[str, AfterValidator(v.tenant_id)] | None = Field(
        default=None, description="Tenant id (without '_'); default: read from Schema Registry")
    statuses: list[MembershipStatus] = Field(default_factory=lambda: ["realized", "existing"], min_length=1)
    layout: Literal["per_person", "per_membership"] = "per_person"
    merge_policy_id: Annotated[str, AfterValidator(v.audience_id)] | None = None
    schedule: str | None = Field(default="@daily", description="Cron expression or preset; null = manual only")
    cja_connection_id: Annotated[str, AfterValidator(lambda s: v._check(
        v.CJA_CONNECTION_ID, s, "CJA connection id", "dg_0123abcd-..."))] | None = None
    cja_data_view_id: Annotated[str, AfterValidator(lambda s: v._check(
        v.CJA_DATA_VIEW_ID, s, "CJA data view id", "dv_0123abcd"))] | None = None
    shrink_guard: float = Field(default=0.5, ge=0.0, le=1.0, description=(
        "Refuse to replace the snapshot when it would shrink by more than this fraction"))
    publish_events: bool = Field(default=True, description="Publish entered/exited events for each interval")
    max_rows_per_query: int = Field(default=40_000, ge=100, description=(
        "Rows one partition query should return; must leave headroom below query_service_row_limit"))
    query_service_row_limit: int = Field(default=QUERY_SERVICE_ROW_LIMIT, ge=101, description=(
        "Query Service's cap on an ad hoc result (50,000); a partition that returns this many rows may "
        "have been cut and is split"))
    max_file_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, le=SMALL_FILE_LIMIT)
    batch_id_column: Literal["_acp_system_metadata.acp_sourceBatchId", "_acp_batchid"] = (
        "_acp_system_metadata.acp_sourceBatchId")
    output: OutputFields = OutputFields()
    naming: Naming = Naming()
    start_date: date = Field(default=date(2026, 1, 1), description="First data interval of the schedule")
    query_service_pool: str = Field(default="cja_audiences_query_service", pattern=r"^[A-Za-z0-9_.-]{1,100}$",
                                    description="Airflow pool bounding concurrent Query Service queries")
    retries: int = Field(default=3, ge=0, le=20, description="Task retries (each step is idempotent)")
    retry_delay_seconds: float = Field(default=30.0, ge=0.0, le=3600.0,
                                       description="Wait before a task's first retry (doubling, up to 10 min)")
    api_retries: ApiRetries = ApiRetries()
    poll_interval_seconds: float = Field(default=30.0, ge=1.0, le=3600.0,
                                         description="How often deferred waits ask AEP for news")
    export_timeout_minutes: int = Field(default=180, ge=1, le=24 * 60)
    ingestion_timeout_minutes: int = Field(default=180, ge=1, le=24 * 60)

    @model_validator(mode="after")
    def _headroom(self) -> RefreshJob:
        if self.max_rows_per_query >= self.query_service_row_limit:
            raise ValueError(f"max_rows_per_query ({self.max_rows_per_query}) must be below "
                             f"query_service_row_limit ({self.query_service_row_limit})")
        return self

    @field_validator("description")
    @classmethod
    def _description(cls, value: str) -> str:
        return v.display_text(value, "description", 1024) if value else value

    @field_validator("statuses")
    @classmethod
    def _unique_statuses(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"statuses repeat a value: {value}")
        return value

    @field_validator("audiences")
    @classmethod
    def _unique_audiences(cls, value: list[AudienceSelector]) -> list[AudienceSelector]:
        seen: set[str] = set()
        for aud in value:
            if aud.key in seen:
                raise ValueError(f"audience {aud.key} is listed twice")
            seen.add(aud.key)
        return value

    @property
    def names(self) -> Naming:
        return self.naming.render(self.job_id)

    def identity_path(self, tenant: str) -> str:
        """The identity field path with ``_{tenant}`` resolved."""
        return v.resolve_tenant_path(self.identity.field, tenant)

    def partitions_for(self, row_count: int) -> int:
        """Hash buckets needed so that each query stays under ``max_rows_per_query`` on average."""
        return max(1, math.ceil(row_count / self.max_rows_per_query))


class JobsFile(StrictModel):
    """The DAG config file: a list of refresh jobs (one DAG each)."""

    version: Literal[1] = 1
    jobs: list[RefreshJob] = Field(min_length=1)

    @field_validator("jobs")
    @classmethod
    def _unique_job_ids(cls, value: list[RefreshJob]) -> list[RefreshJob]:
        ids = [j.job_id for j in value]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"job ids must be unique; repeated: {dupes}")
        return value

    @field_validator("jobs")
    @classmethod
    def _own_cja_datasets(cls, value: list[RefreshJob]) -> list[RefreshJob]:
        """Two jobs must not write into one CJA dataset: each replaces only its own batches, so the
        dataset would hold both jobs' snapshots (two records per person) or both jobs' events."""
        owner: dict[tuple[str, str | None, str], str] = {}
        for job in value:
            names = job.names
            for kind, name in (("profile_dataset", names.profile_dataset), ("event_dataset", names.event_dataset)):
                key = (job.conn_id, job.sandbox, name)
                if key in owner and owner[key] != job.job_id:
                    raise ValueError(f"jobs {owner[key]!r} and {job.job_id!r} both write CJA dataset {name!r} "
                                     f"(naming.{kind}); give each job its own dataset (keep {{job_id}} in the name)")
                owner[key] = job.job_id
        return value


def load_jobs_file(path: str | Path) -> JobsFile:
    """Read and validate a YAML or JSON jobs file; errors name the file and the field."""
    import json

    import yaml  # PyYAML ships with Airflow; imported lazily to keep this module cheap
    from pydantic import ValidationError

    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not valid UTF-8 at byte {exc.start}") from None
    try:
        data: Any = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot be parsed: {exc}") from None
    try:
        return JobsFile.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"{path}: invalid jobs file: {exc}") from None
