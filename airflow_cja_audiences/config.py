"""Refresh-job configuration: the validated contract between a config file and the pipeline.

Pure module (pydantic only, no Airflow import). Every string that reaches a URL, SQL or an XDM path
is checked against a strict grammar here (:mod:`airflow_cja_audiences.validation`), so bad input
fails with a message naming the field before anything is written to AEP.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from airflow_cja_audiences import validation as v
from airflow_cja_audiences.runs import DEFAULT_EXPORT_RETENTION_DAYS

DEFAULT_CONN_ID = "adobe_experience_platform_default"
# Query Service returns at most 50,000 rows per ad hoc query; stay well below it so that hash
# buckets of uneven size still fit (an overfull bucket is split again at run time).
QUERY_SERVICE_ROW_LIMIT = 50_000
SMALL_FILE_LIMIT = 256 * 1024 * 1024
# Jobs file limits: it is read whenever the DAG processor parses the DAG file (see read_jobs_file).
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_JOBS = 1000
# Nodes the YAML document may have once its aliases are expanded: far above any real file (a job is
# a few dozen nodes), far below what an "alias bomb" expands to (billions from a few hundred bytes).
MAX_EXPANDED_NODES = 1_000_000
MAX_ERRORS_SHOWN = 10
_MAX_ERROR_CHARS = 300

AudienceId = Annotated[str, AfterValidator(v.audience_id)]
FieldName = Annotated[str, AfterValidator(v.field_name)]
FieldPath = Annotated[str, AfterValidator(v.field_path)]
DisplayText = Annotated[str, AfterValidator(lambda s: v.display_text(s, "name"))]
MembershipStatus = Literal["realized", "existing"]
#: What an export selects by default (Adobe's own default: realized and existing members).
DEFAULT_STATUSES: tuple[MembershipStatus, ...] = ("realized", "existing")


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

    field: FieldPath = Field(
        description="Dot path in the exported profile, e.g. _{tenant}.identification.core.email"
    )
    namespace: Annotated[str, AfterValidator(v.namespace_code)] = Field(
        default="Email", description="Identity namespace code of personID: Email, ECID, CRMID, Phone, ..."
    )


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

    max_attempts: int = Field(
        default=8, ge=1, le=20, description="HTTP requests per call, the first and any token fetch included"
    )
    initial_wait_seconds: float = Field(default=0.5, gt=0.0, le=60.0)
    max_wait_seconds: float = Field(default=60.0, gt=0.0, le=600.0)

    def hook_params(self) -> dict[str, float | int]:
        """The :class:`~airflow_cja_audiences.hooks.platform.AdobePlatformHook` keyword arguments."""
        return {
            "max_attempts": self.max_attempts,
            "initial_retry_wait": self.initial_wait_seconds,
            "max_retry_wait": self.max_wait_seconds,
        }


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
        return self.model_copy(
            update={k: val.replace("{job_id}", job_id) for k, val in self.model_dump().items()}
        )

    @model_validator(mode="after")
    def _titles_unique(self) -> Naming:
        # Schema Registry titles are unique across schemas and field groups (XDM-1521-400).
        titles = [self.field_group, self.profile_schema, self.event_field_group, self.event_schema]
        if len(set(titles)) != len(titles):
            raise ValueError(
                "field group and schema titles must all differ (Schema Registry titles are "
                "unique across resource types)"
            )
        return self


class RefreshJob(StrictModel):
    """One refresh job: a set of audiences of one sandbox kept in one CJA profile dataset."""

    job_id: Annotated[str, AfterValidator(v.job_id)]
    description: str = ""
    conn_id: str = Field(default=DEFAULT_CONN_ID, pattern=r"^[A-Za-z0-9_.-]{1,250}$")
    sandbox: Annotated[str, AfterValidator(v.sandbox)] | None = Field(
        default=None, description="AEP sandbox; default: the connection's sandbox"
    )
    audiences: list[AudienceSelector] = Field(min_length=1, max_length=500)
    identity: IdentitySpec
    tenant: Annotated[str, AfterValidator(v.tenant_id)] | None = Field(
        default=None, description="Tenant id (without '_'); default: read from Schema Registry"
    )
    statuses: list[MembershipStatus] = Field(default_factory=lambda: list(DEFAULT_STATUSES), min_length=1)
    layout: Literal["per_person", "per_membership"] = "per_person"
    merge_policy_id: Annotated[str, AfterValidator(v.audience_id)] | None = None
    schedule: Annotated[str, AfterValidator(lambda s: cron_schedule(s))] | None = Field(
        default="@daily",
        description="Cron expression (UTC) or preset (@hourly, @daily, ...); null = manual only",
    )
    cja_connection_id: (
        Annotated[
            str,
            AfterValidator(
                lambda s: v._check(v.CJA_CONNECTION_ID, s, "CJA connection id", "dg_0123abcd-...")
            ),
        ]
        | None
    ) = None
    cja_data_view_id: (
        Annotated[
            str, AfterValidator(lambda s: v._check(v.CJA_DATA_VIEW_ID, s, "CJA data view id", "dv_0123abcd"))
        ]
        | None
    ) = None
    shrink_guard: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description=("Refuse to replace the snapshot when it would shrink by more than this fraction"),
    )
    publish_events: bool = Field(default=True, description="Publish entered/exited events for each interval")
    query_partitioning: Literal["time", "rows"] = Field(
        default="time",
        description=(
            "How the load splits the export into Query Service queries: 'time' (each query ends with LIMIT 0, "
            "Query Service's documented override of its row cap, and is sized to query_time_budget_seconds, so "
            "the export is scanned a few times per run) or 'rows' (queries of at most max_rows_per_query rows "
            "under the 50,000-row cap: one scan of the export per 40,000 rows)"
        ),
    )
    query_time_budget_seconds: float = Field(
        default=300.0,
        gt=0.0,
        le=540.0,
        description=(
            "Time one partition query should take at most (partitioning 'time'); well under Query Service's "
            "10-minute limit for ad hoc queries"
        ),
    )
    query_service_rows_per_second: float = Field(
        default=20_000.0,
        gt=0.0,
        le=10_000_000.0,
        description=(
            "Rows per second a load task reads, transforms and writes (partitioning 'time'); the load tasks "
            "log what they achieved"
        ),
    )
    query_service_concurrency: int = Field(
        default=5,
        ge=1,
        le=1000,
        description=(
            "Ad hoc queries Query Service runs at once for the org (licence); partitioning 'time' adds "
            "partitions up to this many to shorten the run while Query Service time stays near one scan"
        ),
    )
    max_rows_per_query: int = Field(
        default=40_000,
        ge=100,
        description=(
            "Rows one partition query should return (partitioning 'rows'); must leave headroom below "
            "query_service_row_limit"
        ),
    )
    query_service_row_limit: int = Field(
        default=QUERY_SERVICE_ROW_LIMIT,
        ge=101,
        description=(
            "Query Service's cap on an ad hoc result (50,000); with partitioning 'rows' a partition that "
            "returns this many rows may have been cut and is split"
        ),
    )
    max_file_bytes: int = Field(default=64 * 1024 * 1024, ge=1024, le=SMALL_FILE_LIMIT)
    batch_id_column: Literal["_acp_system_metadata.acp_sourceBatchId", "_acp_batchid"] = (
        "_acp_system_metadata.acp_sourceBatchId"
    )
    output: OutputFields = OutputFields()
    naming: Naming = Naming()
    start_date: date = Field(default=date(2026, 1, 1), description="First data interval of the schedule")
    query_service_pool: str = Field(
        default="cja_audiences_query_service",
        pattern=r"^[A-Za-z0-9_.-]{1,100}$",
        description="Airflow pool bounding concurrent Query Service queries",
    )
    retries: int = Field(default=3, ge=0, le=20, description="Task retries (each step is idempotent)")
    retry_delay_seconds: float = Field(
        default=30.0,
        ge=0.0,
        le=3600.0,
        description="Wait before a task's first retry (doubling, up to 10 min)",
    )
    api_retries: ApiRetries = ApiRetries()
    poll_interval_seconds: float = Field(
        default=30.0, ge=1.0, le=3600.0, description="How often deferred waits ask AEP for news"
    )
    export_timeout_minutes: int = Field(default=180, ge=1, le=24 * 60)
    ingestion_timeout_minutes: int = Field(default=180, ge=1, le=24 * 60)
    path: Literal["client", "server"] = Field(
        default="client",
        description=(
            "Who builds the CJA records (snapshot and change events): 'client' (partition queries streamed through "
            "Airflow workers, transformed and uploaded) or 'server' (one Query Service batch query per dataset, "
            "INSERT INTO the profile or events dataset; needs the Data Distiller add-on)"
        ),
    )
    batch_query_timeout_minutes: int = Field(
        default=180,
        ge=1,
        le=24 * 60,
        description=("How long the server path waits for its batch query (Query Service allows 24 hours)"),
    )
    export_retention_days: float | None = Field(
        default=DEFAULT_EXPORT_RETENTION_DAYS,
        ge=1,
        le=3650,
        description=(
            "After a successful publish, revert this job's export batches older than this (days), except those "
            "a live batch still needs; null keeps every export"
        ),
    )

    @model_validator(mode="after")
    def _headroom(self) -> RefreshJob:
        if self.max_rows_per_query >= self.query_service_row_limit:
            raise ValueError(
                f"max_rows_per_query ({self.max_rows_per_query}) must be below "
                f"query_service_row_limit ({self.query_service_row_limit})"
            )
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


class JobsFile(StrictModel):
    """The DAG config file: a list of refresh jobs (one DAG each)."""

    version: Literal[1] = 1
    jobs: list[RefreshJob] = Field(min_length=1, max_length=MAX_JOBS)

    @field_validator("jobs")
    @classmethod
    def _unique_job_ids(cls, value: list[RefreshJob]) -> list[RefreshJob]:
        dupes = sorted(i for i, n in Counter(j.job_id for j in value).items() if n > 1)
        if dupes:
            raise ValueError(f"job ids must be unique; repeated: {dupes[:20]}")
        return value

    @field_validator("jobs")
    @classmethod
    def _own_cja_datasets(cls, value: list[RefreshJob]) -> list[RefreshJob]:
        """Two jobs must not write into one CJA dataset: each replaces only its own batches, so the
        dataset would hold both jobs' snapshots (two records per person) or both jobs' events."""
        owner: dict[tuple[str, str | None, str], str] = {}
        for job in value:
            names = job.names
            for kind, name in (
                ("profile_dataset", names.profile_dataset),
                ("event_dataset", names.event_dataset),
            ):
                key = (job.conn_id, job.sandbox, name)
                if key in owner and owner[key] != job.job_id:
                    raise ValueError(
                        f"jobs {owner[key]!r} and {job.job_id!r} both write CJA dataset {name!r} "
                        f"(naming.{kind}); give each job its own dataset (keep {{job_id}} in the name)"
                    )
                owner[key] = job.job_id
        return value


# ---------------------------------------------------------------------------------------------------
# Reading the jobs file. It is read each time the DAG processor parses the DAG file, so reading it is
# bounded in size, in YAML alias expansion, in job count and in error text, and takes linear time.


@dataclass(frozen=True)
class JobError:
    """A job of the file that did not validate: its position, its id when it has a usable one, why."""

    index: int
    job_id: str | None
    message: str

    @property
    def label(self) -> str:
        return f"job #{self.index}" + (f" ({self.job_id!r})" if self.job_id else "")


@dataclass(frozen=True)
class JobsFileResult:
    """What a jobs file holds: the valid jobs, and one error per invalid job (in file order)."""

    path: Path
    jobs: list[RefreshJob]
    errors: list[JobError]

    def error_text(self, limit: int = MAX_ERRORS_SHOWN) -> str:
        lines = [f"{self.path}: {e.label}: {e.message}" for e in self.errors[:limit]]
        if len(self.errors) > limit:
            lines.append(f"... and {len(self.errors) - limit} more invalid jobs")
        return "\n".join(lines)


def cron_schedule(value: str) -> str:
    """A schedule the refresh DAG's cron timetable accepts: an Airflow preset or a cron expression.

    Checked the way Airflow's cron timetable checks it (presets resolved, then croniter), but when
    the file is read, so the error names the job and the field instead of surfacing later from the
    DAG processor without either.
    """
    from croniter import CroniterBadCronError, CroniterBadDateError, croniter  # Airflow's own cron parser

    if not isinstance(value, str):
        raise ValueError(f"schedule must be a string, got {type(value).__name__}")
    expression = CRON_PRESETS.get(value, value)  # exactly as Airflow resolves it
    if len(value) > 100 or not expression.strip():
        raise ValueError(f"schedule {v.shown(value)} is not a cron expression")
    if expression.startswith("@"):
        raise ValueError(
            f"schedule {v.shown(value)} is not a known preset; use one of {sorted(CRON_PRESETS)} or "
            f"a cron expression such as '0 2 * * *' (null for manual runs only)"
        )
    try:
        croniter(expression)
    except (CroniterBadCronError, CroniterBadDateError, ValueError, KeyError) as exc:
        raise ValueError(
            f"schedule {v.shown(value)} is not a valid cron expression ({str(exc)[:120]}); expected "
            f"e.g. '0 2 * * *' (minute hour day month weekday, UTC) or a preset such as '@daily'"
        ) from None
    return value


# Airflow's presets (airflow.sdk.definitions.timetables._cron.CRON_PRESETS), repeated here because
# this module imports no Airflow; tests/unit/test_config.py checks that the two stay equal.
CRON_PRESETS: dict[str, str] = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@quarterly": "0 0 1 */3 *",
    "@yearly": "0 0 1 1 *",
}


def read_jobs_file(path: str | Path) -> JobsFileResult:
    """Read a YAML or JSON jobs file and validate each job on its own.

    Raises ``ValueError`` naming the file for what spoils the whole file (too big, not UTF-8, not
    YAML/JSON, aliases expanding too far, no ``jobs`` list, too many jobs); an invalid job is returned
    as a :class:`JobError` (naming the job and the field) next to the valid ones, so that one job's
    mistake does not hide the others. Two jobs with the same id are both invalid.
    """
    path = Path(path)
    data = _parse(path)
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: expected a mapping with a 'jobs' list at the top, got {type(data).__name__}"
        )
    unknown = sorted(str(k) for k in data if k not in ("version", "jobs"))
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {v.shown(unknown)}; expected 'version' and 'jobs'")
    if data.get("version", 1) != 1:
        raise ValueError(f"{path}: version: {v.shown(data.get('version'))} is not supported; expected 1")
    raw_jobs = data.get("jobs")
    if not isinstance(raw_jobs, list) or not raw_jobs:
        raise ValueError(f"{path}: jobs: expected a non-empty list of jobs")
    if len(raw_jobs) > MAX_JOBS:
        raise ValueError(
            f"{path}: jobs: {len(raw_jobs)} jobs, more than the {MAX_JOBS} one jobs file may hold (each "
            f"is a DAG built whenever the DAG file is parsed); split them over several jobs files, "
            f"each read by its own copy of the DAG file (see the README)"
        )
    from pydantic import ValidationError

    jobs: list[tuple[int, RefreshJob]] = []
    errors: list[JobError] = []
    for index, raw in enumerate(raw_jobs):
        try:
            jobs.append((index, RefreshJob.model_validate(raw)))
        except ValidationError as exc:
            errors.append(JobError(index, _usable_job_id(raw), _describe(exc, f"jobs.{index}")))
    counts = Counter(job.job_id for _, job in jobs)
    good = []
    for index, job in jobs:
        if counts[job.job_id] > 1:
            errors.append(
                JobError(
                    index,
                    job.job_id,
                    f"jobs.{index}.job_id: {job.job_id!r} is used by "
                    f"{counts[job.job_id]} jobs; job ids must be unique",
                )
            )
        else:
            good.append(job)
    errors.sort(key=lambda e: e.index)
    return JobsFileResult(path, good, errors)


def load_jobs_file(path: str | Path) -> JobsFile:
    """Read and validate a YAML or JSON jobs file, all or nothing; errors name the file, job and field."""
    result = read_jobs_file(path)
    if result.errors:
        raise ValueError(f"{result.path}: invalid jobs file:\n{result.error_text()}")
    return JobsFile.model_construct(version=1, jobs=result.jobs)


def _usable_job_id(raw: Any) -> str | None:
    job_id = raw.get("job_id") if isinstance(raw, dict) else None
    return job_id if isinstance(job_id, str) and v.JOB_ID.fullmatch(job_id) else None


def _describe(exc: Any, prefix: str) -> str:
    """pydantic's errors as ``location: message`` lines, bounded, without echoing the input values
    (an input can be huge: pydantic's own text repeats it)."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:MAX_ERRORS_SHOWN]:
        loc = ".".join(str(p) for p in (prefix, *err.get("loc", ())))
        msg = str(err.get("msg", "invalid"))
        parts.append(f"{loc}: {msg if len(msg) <= _MAX_ERROR_CHARS else msg[: _MAX_ERROR_CHARS - 3] + '...'}")
    if exc.error_count() > MAX_ERRORS_SHOWN:
        parts.append(f"... and {exc.error_count() - MAX_ERRORS_SHOWN} more errors")
    return "; ".join(parts)


def _parse(path: Path) -> Any:
    import json

    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ValueError(
            f"{path}: larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB, the limit of a jobs file; split "
            f"the jobs over several files"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not valid UTF-8 at byte {exc.start}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            return _load_yaml(text)
        return json.loads(text)
    except _YamlRefused as exc:
        raise ValueError(f"{path}: {exc}") from None
    except RecursionError:
        raise ValueError(f"{path}: cannot be parsed: nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: cannot be parsed: {exc}") from None


class _YamlRefused(ValueError):
    """The YAML document is malformed or expands too far."""


def _load_yaml(text: str) -> Any:
    """``yaml.safe_load`` with the document's size after alias expansion bounded before it is built."""
    import yaml

    loader_class = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    loader = loader_class(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as exc:
            raise _YamlRefused(f"cannot be parsed: {_bounded(str(exc))}") from None
        if node is None:
            return None
        _check_expansion(node, MAX_EXPANDED_NODES)
        try:
            return loader.construct_document(node)
        except yaml.YAMLError as exc:
            raise _YamlRefused(f"cannot be parsed: {_bounded(str(exc))}") from None
    finally:
        loader.dispose()


def _check_expansion(root: Any, limit: int) -> None:
    """Count the nodes of the document as if every alias were copied out, in time linear in the
    distinct nodes (sizes are memoised per node); refuse recursive aliases and blown-up documents."""
    import yaml

    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            if isinstance(node, yaml.MappingNode):
                children = [c for pair in node.value for c in pair]
            else:
                children = node.value
            size = 1 + sum(sizes[id(c)] for c in children)
            if size > limit:
                raise _YamlRefused(
                    f"YAML aliases expand the document to more than {limit:,} nodes (an 'alias bomb'?); "
                    f"write the values out or use fewer aliases"
                )
            sizes[key] = size
            continue
        if key in sizes:
            continue
        if isinstance(node, yaml.ScalarNode):
            sizes[key] = 1
            continue
        if key in on_path:
            raise _YamlRefused("a YAML alias refers to a node that contains it (recursive document)")
        on_path.add(key)
        stack.append((node, True))
        children = (
            [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else node.value
        )
        for child in children:
            if id(child) in on_path:
                raise _YamlRefused("a YAML alias refers to a node that contains it (recursive document)")
            if id(child) not in sizes:
                stack.append((child, False))


def _bounded(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
