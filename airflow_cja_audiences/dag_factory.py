"""Build one refresh DAG per job of a validated jobs file.

The DAG wires the package's operators (README.md and docs/ARCHITECTURE.md describe each step)::

    resolve_audiences -> plan_run -> ensure datasets -> export (deferred)
        -> prepare_snapshot -> load_snapshot[partition...] -> publish_snapshot (guard, deferred, replace)
           (path: server -> prepare_snapshot -> distill_snapshot (one batch query, deferred) -> publish_snapshot)
        -> prepare_events   -> load_events[partition...]   -> publish_events   (replace the interval)
           (path: server -> prepare_events -> distill_events (one batch query, deferred) -> publish_events)
        -> check_cja -> report (Asset event)       abort_open_batches runs only when something failed

Work that grows with audience size (the partitions) is a mapped task under a pool sized to Query
Service concurrency, so more workers mean more throughput. Importing this module must stay cheap:
it runs every time the DAG processor parses the DAG file.
"""

from __future__ import annotations

import gc
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Asset, BaseOperator, Context, Param, literal
from airflow.sdk.definitions.timetables.interval import CronDataIntervalTimetable
from airflow.sdk.exceptions import AirflowFailException

from airflow_cja_audiences.config import JobError, RefreshJob, read_jobs_file
from airflow_cja_audiences.operators.cja import CheckCjaOperator
from airflow_cja_audiences.operators.distill import DistillEventsOperator, DistillSnapshotOperator
from airflow_cja_audiences.operators.export import ExportAudiencesOperator
from airflow_cja_audiences.operators.load import (
    CheckExportReadOperator,
    LoadPartitionOperator,
    PrepareLoadOperator,
)
from airflow_cja_audiences.operators.publish import AbortOpenBatchesOperator, PublishBatchOperator
from airflow_cja_audiences.operators.report import ReportOperator
from airflow_cja_audiences.operators.retention import PruneExportsOperator
from airflow_cja_audiences.operators.setup import (
    EnsureCjaDatasetOperator,
    EnsureExportDatasetOperator,
    PlanRunOperator,
    ResolveAudiencesOperator,
)

DAG_ID_PREFIX = "cja_audiences__"
log = logging.getLogger(__name__)


def dag_id_for(job: RefreshJob) -> str:
    return f"{DAG_ID_PREFIX}{job.job_id}"


def asset_for(job: RefreshJob) -> Asset:
    """The Asset each successful run updates (schedule other DAGs on it)."""
    return Asset(
        uri=f"aep://{job.sandbox or 'default'}/cja-audiences/{job.job_id}",
        name=f"cja_audiences_{job.job_id}",
        group="adobe",
    )


# The trigger form's schemas say which JSON Schema draft they are written in: Airflow validates each
# Param with ``jsonschema.validate``, which first checks the schema against its draft's meta-schema,
# and for the default draft (2020-12) that check costs about twice draft-07's (a tenth of the time to
# build a DAG; benchmarks/dag_import.py). These schemas use nothing newer than draft-07.
_DRAFT = {"$schema": "http://json-schema.org/draft-07/schema#"}


def _params() -> dict[str, Param]:
    return {
        name: Param(p.value, p.description, schema={**_DRAFT, **p.schema})
        for name, p in {
            "force_replace": Param(
                False,
                type="boolean",
                title="Replace even if the snapshot shrinks",
                description="The shrink guard refuses to replace the live snapshot when the new one "
                "is much smaller. Tick this when the drop is real.",
            ),
            "publish_snapshot": Param(
                True,
                type="boolean",
                title="Refresh the profile snapshot",
                description="Untick to publish only the events interval below (backfill runs never "
                "touch the snapshot).",
            ),
            "events_interval_start": Param(
                None,
                type=["null", "string"],
                format="date-time",
                title="Events interval start (manual runs)",
                description="Publish the audience entries and exits that happened in [start, end) "
                "(each event once, whatever was published before). Scheduled runs use "
                "their data interval; backfill runs always do and ignore this.",
            ),
            "events_interval_end": Param(
                None,
                type=["null", "string"],
                format="date-time",
                title="Events interval end (manual runs)",
                description="End (exclusive) of the events interval; required with the start.",
            ),
        }.items()
    }


def _doc(job: RefreshJob) -> str:
    names = ", ".join(a.display_name or a.name or a.id or "?" for a in job.audiences)
    return (
        f"### CJA audience refresh: `{job.job_id}`\n\n{job.description or ''}\n\n"
        f"Keeps CJA's profile dataset *{job.names.profile_dataset}* in sync with the AEP audiences "
        f"{names} (sandbox `{job.sandbox or 'from the connection'}`), and publishes each interval's "
        f"entries and exits to *{job.names.event_dataset}*.\n\n"
        "Backfill from the UI (Trigger > Backfill) or `airflow backfill create --dag-id <this DAG> "
        "--from-date ... --to-date ...`: backfill runs fill their intervals' events and never touch the "
        "snapshot."
    )


def build_dag(job: RefreshJob) -> DAG:
    """The refresh DAG of one job."""
    names = job.names
    common: dict[str, Any] = {
        "adobe_conn_id": job.conn_id,
        "sandbox": job.sandbox,
        "hook_params": job.api_retries.hook_params(),
    }
    schedule = CronDataIntervalTimetable(job.schedule, timezone="UTC") if job.schedule else None
    start = datetime(job.start_date.year, job.start_date.month, job.start_date.day, tzinfo=timezone.utc)
    with DAG(
        dag_id=dag_id_for(job),
        schedule=schedule,
        start_date=start,
        catchup=False,
        max_active_runs=1,
        tags=["adobe", "cja", "audiences"],
        doc_md=_doc(job),
        default_args={
            "retries": job.retries,
            "retry_delay": timedelta(seconds=job.retry_delay_seconds),
            "retry_exponential_backoff": True,
            "max_retry_delay": timedelta(minutes=10),
        },
    ) as dag:
        # Names and titles from the jobs file are data: passed as literals, they are never rendered as
        # Jinja templates ("{{ conn.x.password }}" in a display name stays that text; "{{" in an AEP
        # audience name is no template error). The operators validate them again after rendering.
        resolve = ResolveAudiencesOperator(
            task_id="resolve_audiences",
            **common,
            audiences=literal([a.model_dump(exclude_none=True) for a in job.audiences]),
            identity_field=job.identity.field,
            tenant=job.tenant,
            job_id=job.job_id,
            profile_dataset_name=literal(names.profile_dataset),
            pool=job.query_service_pool,
        )  # it opens a Query Service session
        plan = PlanRunOperator(task_id="plan_run", publish_events=job.publish_events)
        # Find-or-create is not atomic in AEP (Catalog allows two datasets with one name, the Schema
        # Registry two schemas with one title): runs that overlap (scheduled, manual, backfill) would
        # each create one, and every later run would refuse the duplicate. One instance of each
        # ensure_* task at a time across the DAG's runs: the second finds what the first created.
        one_at_a_time = {"max_active_tis_per_dag": 1}
        export_dataset = EnsureExportDatasetOperator(
            task_id="ensure_export_dataset",
            **common,
            **one_at_a_time,
            dataset_name=literal(names.export_dataset),
        )

        def cja_dataset(
            task_id: str, kind: str, dataset: str, schema: str, field_group: str
        ) -> EnsureCjaDatasetOperator:
            # A CJA dataset the job writes (profile: the snapshot; events: the change events).
            return EnsureCjaDatasetOperator(
                task_id=task_id,
                **common,
                **one_at_a_time,
                kind=kind,
                tenant=resolve.output["tenant"],
                dataset_name=literal(dataset),
                schema_title=literal(schema),
                field_group_title=literal(field_group),
                identity_namespace=job.identity.namespace,
                output_fields=job.output.model_dump(),
                job_id=job.job_id,
            )

        profile_dataset = cja_dataset(
            "ensure_profile_dataset",
            "profile",
            names.profile_dataset,
            names.profile_schema,
            names.field_group,
        )
        export = ExportAudiencesOperator(
            task_id="export_audiences",
            **common,
            dataset_id=export_dataset.output["dataset_id"],
            audience_ids=resolve.output["audience_ids"],
            fields=resolve.output["export_fields"],
            statuses=plan.output["export_statuses"],
            merge_policy_id=job.merge_policy_id,
            qualification_start=plan.output["qualification_start"],
            qualification_end=plan.output["qualification_end"],
            wait_timeout=timedelta(minutes=job.export_timeout_minutes),
            poll_interval=job.poll_interval_seconds,
            deferrable=True,
        )
        # Nothing that writes starts before the job is validated: resolve_audiences (audiences, tenant,
        # identity field, sandbox, credentials) and plan_run (the trigger form's values) only read.
        resolve >> plan >> [export_dataset, profile_dataset, export]

        job_json = job.model_dump(mode="json")
        # Once per run, before either prepare: the export is live and the batch filter reads what the
        # export job wrote (one scan of the export, instead of one in each prepare).
        check_export = CheckExportReadOperator(
            task_id="check_export_read",
            **common,
            job=job_json,
            tenant=resolve.output["tenant"],
            table_name=export_dataset.output["table_name"],
            export_batch_id=export.output["export_batch_id"],
            export_job_id=export.output["export_job_id"],
            audiences=resolve.output["audiences"],
            pool=job.query_service_pool,
        )
        loads = {}
        for kind, dataset, enabled, guard in (
            ("snapshot", profile_dataset, plan.output["snapshot"], job.shrink_guard),
            ("events", None, plan.output["events"], None),
        ):
            if kind == "events":
                if not job.publish_events:
                    continue
                dataset = cja_dataset(
                    "ensure_event_dataset",
                    "events",
                    names.event_dataset,
                    names.event_schema,
                    names.event_field_group,
                )
                plan >> dataset
            query_args = {
                "job": job_json,
                "kind": kind,
                "tenant": resolve.output["tenant"],
                "table_name": export_dataset.output["table_name"],
                "export_batch_id": export.output["export_batch_id"],
                "audiences": resolve.output["audiences"],
                "dataset_id": dataset.output["dataset_id"],
                "interval_start": plan.output["interval_start"],
                "interval_end": plan.output["interval_end"],
                "enabled": enabled,
            }
            server = job.path == "server"
            # Every task that opens a Query Service session is in the pool, so the pool bounds the org's
            # sessions from Airflow (Adobe refuses more than the licence's with "Session Limit Reached").
            prepare = PrepareLoadOperator(
                task_id=f"prepare_{kind}",
                **common,
                **query_args,
                export_dataset_id=export.output["export_dataset_id"],
                check_export=False,  # check_export_read did
                pool=job.query_service_pool,
                force="{{ params.force_replace }}",
                open_batch=not server,
            )
            check_export >> prepare
            # The loads read what prepare decided: the events interval may be widened over live
            # batches it overlaps, and the events are read from several exports.
            load_args = {
                **query_args,
                "interval_start": prepare.output["interval_start"],
                "interval_end": prepare.output["interval_end"],
                "sources": prepare.output["sources"],
            }
            load: Any
            if server:
                # Server path (Data Distiller): one batch query writes the batch; no row reaches a worker.
                # It opens no Query Service session (REST only), so it is not in the sessions' pool.
                load = (DistillSnapshotOperator if kind == "snapshot" else DistillEventsOperator)(
                    task_id=f"distill_{kind}",
                    **common,
                    **load_args,
                    external_id=prepare.output["external_id"],
                    memberships=prepare.output["memberships"],
                    replaced_batch_ids=prepare.output["previous_batch_ids"],
                    wait_timeout=timedelta(minutes=job.batch_query_timeout_minutes),
                    poll_interval=job.poll_interval_seconds,
                    deferrable=True,
                )
                prepare >> load
                batch_id = load.output["batch_id"]
            else:
                load = LoadPartitionOperator.partial(
                    task_id=f"load_{kind}",
                    **common,
                    **load_args,
                    batch_id=prepare.output["batch_id"],
                    pool=job.query_service_pool,
                ).expand(partition=prepare.output)
                batch_id = prepare.output["batch_id"]
            publish = PublishBatchOperator(
                task_id=f"publish_{kind}",
                **common,
                dataset_id=dataset.output["dataset_id"],
                batch_id=batch_id,
                external_id=prepare.output["external_id"],
                load_results=load.output,
                shrink_guard=guard,
                enabled=enabled,
                force="{{ params.force_replace }}",
                wait_timeout=timedelta(minutes=job.ingestion_timeout_minutes),
                poll_interval=job.poll_interval_seconds,
                deferrable=True,
                trigger_rule="none_failed",
            )
            load >> publish
            loads[kind] = (dataset, prepare, publish, load)

        check = CheckCjaOperator(
            task_id="check_cja",
            **common,
            connection_id=job.cja_connection_id,
            data_view_id=job.cja_data_view_id,
            tenant=resolve.output["tenant"],
            datasets={kind: ds.output["dataset_id"] for kind, (ds, _, _, _) in loads.items()},
            dimension_fields=_dimension_fields(job),
            trigger_rule="none_failed",
        )
        report = ReportOperator(
            task_id="report",
            job_id=job.job_id,
            sandbox=job.sandbox,
            trigger_rule="none_failed",
            outlets=[asset_for(job)],
            task_ids={
                "resolve": resolve.task_id,
                "plan": plan.task_id,
                "export": export.task_id,
                "check_cja": check.task_id,
                **{
                    role: task.task_id
                    for kind, (ds, prep, pub, _) in loads.items()
                    for role, task in (
                        (f"prepare_{kind}", prep),
                        (f"publish_{kind}", pub),
                        ("profile_dataset" if kind == "snapshot" else "event_dataset", ds),
                    )
                },
            },
        )
        [publish for _, _, publish, _ in loads.values()] >> check >> report
        # After the publishes (and only when none failed): this job's old export batches that no live
        # batch needs are reverted. Its own task, so a failure to prune never turns a publish red.
        prune = PruneExportsOperator(
            task_id="prune_exports",
            **common,
            job=job_json,
            export_dataset_id=export.output["export_dataset_id"],
            dataset_ids=[ds.output["dataset_id"] for ds, _, _, _ in loads.values()],
        )
        [publish for _, _, publish, _ in loads.values()] >> prune
        # Pulled by the template (None when absent), not as XComArgs: a prepare_* that failed before it
        # pushed its batch id must not fail this clean-up with XComNotFound, leaving the other open.
        abort = AbortOpenBatchesOperator(
            task_id="abort_open_batches",
            **common,
            batch_ids=[
                f"{{{{ ti.xcom_pull(task_ids='{prep.task_id}', key='batch_id') or '' }}}}"
                for _, prep, _, _ in loads.values()
            ],
        )
        [task for _, _, publish, load in loads.values() for task in (load, publish)] >> abort
    # Set once the tasks exist, so they hold no copies: Airflow merges the DAG's params into each task's
    # at run time (and the trigger form is the DAG's). A copy per task (and per class of its hierarchy)
    # made building and serializing a DAG about 4x slower: a jobs file of 1,000 jobs would outgrow the DAG
    # processor's time limits (benchmarks/dag_import.py).
    dag.params = _params()
    return dag


def _dimension_fields(job: RefreshJob) -> list[str]:
    """Fields (under the tenant namespace) a data view needs as dimensions for this job's layout."""
    f = job.output
    fields = (
        [f.audience_names, f.audience_ids] if job.layout == "per_person" else [f.audience_name, f.audience_id]
    )
    if job.publish_events:
        fields.append(f.event_type)
    return fields


def dags_from_file(path: str | Path) -> dict[str, DAG]:
    """``{dag_id: DAG}`` for every job in a YAML/JSON jobs file.

    A problem with the file as a whole (unreadable, too big, not YAML/JSON, too many jobs) raises
    ``ValueError`` naming the file: the DAG processor shows it as the DAG file's import error. An
    invalid job does not hide the others: the valid jobs get their DAGs, and the invalid one gets a
    placeholder DAG under the same id (:func:`config_error_dag`) that shows the error, naming the file,
    the job and the field, in the DAG list and on its page, and fails if run.
    """
    result = read_jobs_file(path)
    # A DAG is thousands of long-lived objects, none of them garbage: with the cyclic GC on, each of its
    # full collections rescans everything built so far, so building N DAGs grew faster than N.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        dags = {dag_id_for(job): build_dag(job) for job in result.jobs}
    finally:
        if gc_was_enabled:
            gc.enable()
    broken: dict[str, list[JobError]] = {}
    for error in result.errors:
        dag_id = (
            f"{DAG_ID_PREFIX}{error.job_id}" if error.job_id else f"{DAG_ID_PREFIX}invalid_job_{error.index}"
        )
        broken.setdefault(dag_id, []).append(error)
    for dag_id, errors in broken.items():
        dags[dag_id] = config_error_dag(dag_id, result.path, errors)
    return dags


class JobConfigErrorOperator(BaseOperator):
    """Stands in for the pipeline of a job whose configuration is invalid: fails, saying why."""

    ui_color = "#ffd6d6"

    def __init__(self, *, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("retries", 0)
        super().__init__(**kwargs)
        self.message = message

    def execute(self, context: Context) -> None:
        raise AirflowFailException(self.message)


def config_error_dag(dag_id: str, path: Path, errors: list[JobError]) -> DAG:
    """A placeholder DAG for an invalid job: the error is its description (the DAG list), its doc (the
    DAG page) and the failure of its only task; it has no schedule and touches nothing in AEP."""
    details = "\n".join(f"{e.label}: {e.message}" for e in errors)
    message = (
        f"Invalid job in the jobs file {path}, so its refresh DAG was not built:\n{details}\n"
        f"Fix the jobs file: the real DAG replaces this placeholder once the job validates."
    )
    log.error("%s", message)
    first = f"{errors[0].label}: {errors[0].message}"
    description = f"CONFIG ERROR in {path.name}: {first}"
    fence = "~~~~"
    with DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=datetime(2026, 1, 1, tzinfo=timezone.utc),
        catchup=False,
        description=description if len(description) <= 1000 else description[:997] + "...",
        tags=["adobe", "cja", "audiences", "config-error"],
        doc_md=(
            f"### Configuration error\n\nThe job of this DAG in `{path}` is invalid, so its refresh DAG "
            f"was not built. Fix the jobs file; the real DAG replaces this one once the job validates."
            f"\n\n{fence}text\n{details.replace(fence, '~~~')}\n{fence}\n"
        ),
    ) as dag:
        JobConfigErrorOperator(task_id="config_error", message=message)
    return dag
