"""The emulator's state: sandboxes (Catalog, Schema Registry, export jobs), CJA, tokens, knobs, DuckDB.

One :class:`EmulatorState` per process. Request handlers run in worker threads and take
``state.lock`` around every read-modify-write of the Python objects. Long work (computing an export,
validating an uploaded batch) runs in a small executor; job and batch statuses advance lazily in
:meth:`EmulatorState.tick` from timestamps, so no thread polls or busy-waits.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from aep_emulator import groundtruth, lifecycle
from aep_emulator.catalog import Catalog, Dataset, new_object_id, table_name_for
from aep_emulator.cja_model import (
    CjaStore,
    Connection,
    DataView,
    RateLimiter,
    connection_id,
    data_view_id,
    dimension,
)
from aep_emulator.clock import Clock
from aep_emulator.exports import ExportJob, table_ddl
from aep_emulator.faults import QUERY_SERVICE_ROUTE, STATUS_KINDS, FaultInjector
from aep_emulator.knobs import Knobs
from aep_emulator.memberships import OVERRIDE_TABLE, Timeline
from aep_emulator.query_service.errors import QueryServiceError
from aep_emulator.query_service.scans import Scan, ScanCost, ScanModel
from aep_emulator.query_service.translate import sql_spans
from aep_emulator.registry import SchemaRegistry
from aep_emulator.settings import AudienceSpec, EmulatorSettings
from aep_emulator.synthetic import default_audiences
from aep_emulator.tokens import InvalidToken, TokenService
from aep_emulator.xdm import EVENT_CLASS

log = logging.getLogger("aep_emulator.state")
NAMESPACE = uuid.UUID("9a4c3e2b-1f6d-4e8a-b7c5-3d2e1f0a9b8c")
EXPORT_TEMPLATE = "_emu_export_template"  # empty table with the export columns (typed empty datasets)
FIRST_EXPORT_JOB_ID = 24115  # the id of Adobe's documented example, for familiar-looking ids


@dataclass
class SandboxState:
    name: str
    sandbox_id: str
    default: bool
    catalog: Catalog
    registry: SchemaRegistry
    merge_policy_id: str
    export_jobs: dict[int, ExportJob] = field(default_factory=dict)
    batch_queries: dict[str, Any] = field(default_factory=dict)  # id -> query_service.batch.BatchQuery

    def info(self) -> dict:
        return {
            "sandboxId": self.sandbox_id,
            "sandboxName": self.name,
            "type": "production" if self.default else "development",
            "default": self.default,
        }


class EmulatorState:
    def __init__(self, settings: EmulatorSettings, state_dir: Path) -> None:
        self.settings = settings
        self.state_dir = state_dir
        self.files_dir = state_dir / "batches"
        self.clock = Clock(settings.clock_start)
        self.audiences = settings.audiences if settings.audiences is not None else default_audiences()
        self.timeline = Timeline(
            seed=settings.seed,
            profiles=settings.profiles,
            audiences=self.audiences,
            anchor=int(settings.anchor.timestamp()),
        )
        self.tokens = TokenService(settings.org_id)
        self.faults = FaultInjector(settings.faults)
        self.lock = threading.RLock()
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="emulator-work")
        self._db_lock = threading.Lock()
        if settings.db_path is not None and Path(settings.db_path).exists():
            # The emulator's state is not persistent; reusing a file would clash with its tables.
            raise ValueError(f"DuckDB file {settings.db_path} already exists; give a new path")
        self.db = duckdb.connect(str(settings.db_path) if settings.db_path else ":memory:")
        if settings.db_memory_limit:
            self.db.execute(f"SET memory_limit = '{settings.db_memory_limit}'")
        self.db.execute(
            f"CREATE TABLE IF NOT EXISTS {OVERRIDE_TABLE} "
            f"(idx BIGINT, aud INTEGER, ivs STRUCT(e BIGINT, x BIGINT)[])"
        )
        self.db.execute(f'CREATE TABLE "{EXPORT_TEMPLATE}" ({table_ddl(settings.tenant)})')
        self.pg_host: str | None = None
        self.pg_port: int | None = None
        # Query Service scan-cost model and statistics (kept across resets, like the route stats).
        self.qs_scans = ScanModel(
            self.qs_scan,
            ScanCost(
                seconds_per_million_rows=settings.qs_seconds_per_million_rows,
                seconds_per_query=settings.qs_seconds_per_query,
            ),
        )
        self.route_table: list[dict] = []  # filled by the app (GET /emulator/routes)
        self._init_objects()

    # -- construction / reset -----------------------------------------------------------
    def _init_objects(self) -> None:
        s = self.settings
        self.knobs = Knobs(
            token_lifetime=s.token_lifetime,
            export_job_seconds=s.export_job_seconds,
            batch_seconds=s.batch_seconds,
            cja_rate_limit=s.cja_rate_limit,
            time_scale=s.time_scale,
            export_batch_seconds=s.export_batch_seconds,
            intermediate_statuses=s.intermediate_statuses,
            platform_rate_limit=s.platform_rate_limit,
            batch_create_rate_limit=s.batch_create_rate_limit,
            qs_max_sessions=s.qs_max_sessions,
            distinct_batch_ids=s.distinct_batch_ids,
            qs_batch_start_seconds=s.qs_batch_start_seconds,
            qs_batch_write_seconds_per_million_records=s.qs_batch_write_seconds_per_million_records,
            qs_batch_promote_seconds=s.qs_batch_promote_seconds,
            qs_batch_concurrency=s.qs_batch_concurrency,
            qs_batch_max_seconds=s.qs_batch_max_seconds,
        )
        self.throttled: dict[str, int] = {}  # route -> 429s answered by the rate limits (GET /emulator/stats)
        # Throttling windows run on real time: they limit the client's pace, which is not compressed.
        self.platform_limiter = RateLimiter(limit=max(1, s.platform_rate_limit), window=1.0)
        self.batch_create_limiter = RateLimiter(limit=max(1, s.batch_create_rate_limit), window=60.0)
        self.sandboxes: dict[str, SandboxState] = {}
        for i, name in enumerate(s.sandboxes):
            self.sandboxes[name] = SandboxState(
                name=name,
                sandbox_id=str(uuid.uuid5(NAMESPACE, f"{s.org_id}/sandbox/{name}")),
                default=i == 0,
                catalog=Catalog(),
                registry=SchemaRegistry(tenant=s.tenant, org_id=s.org_id),
                merge_policy_id=str(uuid.uuid5(NAMESPACE, f"{s.org_id}/{name}/merge-policy/default")),
            )
        self.tables: dict[str, tuple[str, str]] = {}  # DuckDB table -> (sandbox, dataset id)
        self.table_scans: dict[str, int] = {}  # "adhoc:<table>" / "batch:<table>" -> statements reading it
        self.cja = CjaStore()
        self.next_job_id = FIRST_EXPORT_JOB_ID
        self.pending_jobs: set[tuple[str, int]] = set()
        self.pending_batches: set[tuple[str, str]] = set()
        self.drop_later: list[tuple[Any, str]] = []  # (future, batch table) to drop once computed
        # Audiences renamed or deleted through the admin API (the synthetic timelines keep every
        # audience: memberships are data, the audience definition is what AEP forgets).
        self.audience_renames: dict[str, tuple[str, int]] = {}  # id -> (new name, update time ms)
        self.deleted_audiences: dict[str, int] = {}  # id -> deletion time ms
        self._seed_cja()

    def _seed_cja(self) -> None:
        """Seed the configured CJA connections, each with a real event dataset in Catalog."""
        s = self.settings
        now_ms = self.clock.epoch_ms()
        created = self.clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")
        owner = {"id": 1, "name": "Emulator Admin", "login": f"{s.client_id}@techacct.adobe.com"}
        for spec in s.cja_connections:
            sandbox = self.sandboxes.get(spec.sandbox or s.default_sandbox)
            if sandbox is None:
                raise ValueError(f"CJA connection {spec.name!r} names an unknown sandbox {spec.sandbox!r}")
            schema = sandbox.registry.create_schema(
                {
                    "title": f"{spec.name} events",
                    "type": "object",
                    "description": "Seeded by the emulator: the connection's event dataset",
                    "allOf": [{"$ref": EVENT_CLASS}],
                },
                now_ms,
                s.client_id,
            )
            dataset = self.create_dataset(
                sandbox,
                name=f"{spec.name} events",
                schema_id=schema["$id"],
                content_type="application/vnd.adobe.xed+json;version=1",
                has_table=False,
                now_ms=now_ms,
                data_behavior="time-series",
            )
            conn = Connection(
                id=connection_id(s.org_id, spec.name),
                name=spec.name,
                sandbox=sandbox.name,
                sandbox_id=sandbox.sandbox_id,
                owner=owner,
                created=created,
                datasets=[
                    {
                        "dataSetId": dataset.id,
                        "type": "event",
                        "domain": "catalog",
                        "name": dataset.name,
                        "timestampId": "timestamp",
                        "visitorId": "identityMap",
                        "usePrimaryIdNamespace": True,
                        "identityNamespace": None,
                        "schemaId": schema["$id"],
                        "streaming": False,
                        "backfills": [],
                    }
                ],
            )
            self.cja.connections[conn.id] = conn
            for view in spec.data_views:
                dv = DataView(
                    id=data_view_id(s.org_id, view.name),
                    name=view.name,
                    parent_id=conn.id,
                    owner=owner,
                    created=created,
                    modified=created,
                    dimensions=[dimension(p) for p in view.dimensions],
                )
                self.cja.data_views[dv.id] = dv

    def reset(self) -> None:
        """Forget everything created (datasets, batches, jobs, schemas, tokens, overrides, faults,
        knobs, clock offset, audience renames and deletions); keep the synthetic profiles and audiences."""
        with self.lock:
            for table in list(self.tables):
                self.execute(f'DROP VIEW IF EXISTS "{table}"')
            # Exports still computing write their staging tables later: drop those when done.
            in_flight = [
                (job.work, lifecycle.batch_table(job.batch_id))
                for sb in self.sandboxes.values()
                for job in sb.export_jobs.values()
                if job.work is not None and not job.terminal
            ]
            in_flight += self.drop_later
            self.execute(f"DELETE FROM {OVERRIDE_TABLE}")
            shutil.rmtree(self.files_dir, ignore_errors=True)
            self.tokens.reset()
            self.faults.clear()
            self.faults.reset_counters()
            self.clock = Clock(self.settings.clock_start)
            self._init_objects()
            self.drop_later = in_flight
            self.tick()
        log.info("state reset")

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.db.close()

    def count_throttled(self, route: str) -> None:
        with self._db_lock:  # a small lock any thread may take; the state lock may not be held here
            self.throttled[route] = self.throttled.get(route, 0) + 1

    # -- DuckDB ----------------------------------------------------------------------------
    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new cursor on the shared database (one per thread / session)."""
        with self._db_lock:
            return self.db.cursor()

    def execute(self, sql: str, params: list | None = None) -> list[tuple]:
        cur = self.cursor()
        try:
            return cur.execute(sql, params or []).fetchall()
        finally:
            cur.close()

    # -- audiences as the Segmentation API shows them -----------------------------------------
    def live_audiences(self) -> list[AudienceSpec]:
        """The audiences AEP still has, under their current names (renames applied, deleted ones gone)."""
        return [
            replace(a, name=self.audience_renames[a.id][0]) if a.id in self.audience_renames else a
            for a in self.audiences
            if a.id not in self.deleted_audiences
        ]

    def live_audience(self, audience_id: str) -> AudienceSpec | None:
        return next((a for a in self.live_audiences() if a.id == audience_id), None)

    def audience_updated_ms(self, audience_id: str) -> int | None:
        """When the audience was last changed (renamed), or None when never changed since start-up."""
        renamed = self.audience_renames.get(audience_id)
        return renamed[1] if renamed else None

    def rename_audience(self, audience_id: str, name: str) -> AudienceSpec:
        """Rename a live audience (the AEP UI's "edit audience" -> name). Call under the lock."""
        if self.live_audience(audience_id) is None:
            raise KeyError(f"no audience {audience_id} (unknown or deleted)")
        if not name.strip() or len(name) > 256 or any(ord(c) < 32 for c in name):
            raise ValueError("name must be 1-256 printable characters")
        # Guess: AEP refuses two audiences with the same name in one sandbox (the UI does; the API
        # answer for it is not in the sources read), so the emulator refuses it too.
        if any(a.name == name and a.id != audience_id for a in self.live_audiences()):
            raise ValueError(f"another audience is already named {name!r}")
        self.audience_renames[audience_id] = (name, self.now_ms())
        log.info("audience %s renamed to %r", audience_id, name)
        return self.live_audience(audience_id)  # type: ignore[return-value]

    def delete_audience(self, audience_id: str) -> None:
        """Delete a live audience (``DELETE /audiences/{id}`` in AEP). Call under the lock."""
        if self.live_audience(audience_id) is None:
            raise KeyError(f"no audience {audience_id} (unknown or already deleted)")
        self.deleted_audiences[audience_id] = self.now_ms()
        log.info("audience %s deleted", audience_id)

    # -- lookups ---------------------------------------------------------------------------
    def sandbox(self, name: str | None) -> SandboxState | None:
        return self.sandboxes.get(name or "")

    def create_dataset(
        self,
        sandbox: SandboxState,
        *,
        name: str,
        schema_id: str,
        content_type: str,
        has_table: bool,
        now_ms: int,
        description: str = "",
        tags: dict | None = None,
        extra: dict | None = None,
        data_source_id: int | None = None,
        data_behavior: str = "record",
    ) -> Dataset:
        """Register a dataset (and its DuckDB table for profile-union datasets). Call under the lock."""
        table = table_name_for(
            name,
            set(self.tables)
            | {t.table for sb in self.sandboxes.values() for t in sb.catalog.datasets.values()},
        )
        dataset = Dataset(
            id=new_object_id(),
            sandbox=sandbox.name,
            name=name,
            schema_id=schema_id,
            content_type=content_type,
            table=table,
            has_table=has_table,
            created=now_ms,
            updated=now_ms,
            description=description,
            tags=dict(tags or {}),
            extra=dict(extra or {}),
            data_source_id=data_source_id,
            data_behavior=data_behavior,
        )
        sandbox.catalog.datasets[dataset.id] = dataset
        if has_table:
            self.tables[table] = (sandbox.name, dataset.id)
            self.refresh_export_view(sandbox, dataset)
        return dataset

    # -- what the lifecycles ask of the state (lifecycle.Host) -------------------------------
    def new_export_job_id(self) -> int:
        job_id = self.next_job_id
        self.next_job_id += 1
        return job_id

    def watch_job(self, sandbox: str, job_id: int) -> None:
        """``tick`` advances the job until it is terminal."""
        self.pending_jobs.add((sandbox, job_id))

    def watch_batch(self, sandbox: str, batch_id: str) -> None:
        """``tick`` advances the batch until it settles."""
        self.pending_batches.add((sandbox, batch_id))

    def drop_when_done(self, work: Future[Any], table: str) -> None:
        """Drop ``table`` once ``work`` (the export computing it) has finished."""
        self.drop_later.append((work, table))

    def refresh_export_view(self, sandbox: lifecycle.Sandbox, dataset: Dataset) -> None:
        """(Re)define a profile-union dataset's table: a view over the tables of its live export batches.

        Appending or reverting a batch is then a change of the view, never a copy of rows; an empty
        dataset reads the typed, empty template table.
        """
        parts = [f'SELECT * FROM "{EXPORT_TEMPLATE}"'] + [
            f'SELECT * FROM "{lifecycle.batch_table(b.id)}"'
            for b in sandbox.catalog.dataset_batches(dataset.id)
            if b.origin == "export" and b.status == "success"
        ]
        self.execute(f'CREATE OR REPLACE VIEW "{dataset.table}" AS ' + " UNION ALL BY NAME ".join(parts))

    def delete_dataset(self, sandbox: SandboxState, dataset: Dataset) -> None:
        if dataset.has_table:
            self.execute(f'DROP VIEW IF EXISTS "{dataset.table}"')
            self.tables.pop(dataset.table, None)
        for batch in sandbox.catalog.dataset_batches(dataset.id):
            if batch.origin == "export":
                self.execute(f'DROP TABLE IF EXISTS "{lifecycle.batch_table(batch.id)}"')
            del sandbox.catalog.batches[batch.id]
            self.pending_batches.discard((sandbox.name, batch.id))
        del sandbox.catalog.datasets[dataset.id]

    # -- lazy progress -----------------------------------------------------------------------
    def tick(self) -> None:
        """Advance export jobs and batches whose time has come. Cheap; call under ``self.lock``."""
        for key in list(self.pending_jobs):
            sandbox = self.sandboxes[key[0]]
            job = sandbox.export_jobs[key[1]]
            lifecycle.advance_export_job(self, sandbox, job)
            if job.terminal:
                self.pending_jobs.discard(key)
        for key in list(self.pending_batches):
            sandbox = self.sandboxes[key[0]]
            batch = sandbox.catalog.batches.get(key[1])
            if batch is None or lifecycle.advance_batch(self, sandbox, batch):
                self.pending_batches.discard(key)
        still = []
        for future, table in self.drop_later:
            if future.done():
                self.execute(f'DROP TABLE IF EXISTS "{table}"')
            else:
                still.append((future, table))
        self.drop_later = still

    # -- Query Service hooks (see query_service.server.QueryServiceServer) -------------------
    def qs_connect(self) -> duckdb.DuckDBPyConnection:
        return self.cursor()

    def qs_authenticate(self, user: str, password: str, database: str) -> None:
        """Accept exactly what production accepts from a PostgreSQL client with expiring credentials."""
        try:
            info = self.tokens.validate(password)
        except InvalidToken as exc:
            raise PermissionError(
                f"password is not a valid access token issued by this emulator ({exc})"
            ) from None
        if user != self.settings.org_id or info.org_id != self.settings.org_id:
            raise PermissionError(f"user must be the org id {self.settings.org_id}")
        sandbox, _, suffix = database.partition(":")
        if suffix != "all" or sandbox not in self.sandboxes:
            raise PermissionError(
                f"database must be '<sandbox>:all' for one of {sorted(self.sandboxes)}, got {database!r}"
            )

    def count_scans(self, sql: str, kind: str) -> None:
        """Count the dataset tables a statement reads (``kind``: "adhoc" or "batch"), for
        ``GET /emulator/stats`` ``tableScans``: how often a pipeline reads each dataset."""
        with self.lock:
            for table in self.tables:
                if re.search(rf"\b{re.escape(table)}\b", sql, re.IGNORECASE):
                    key = f"{kind}:{table}"
                    self.table_scans[key] = self.table_scans.get(key, 0) + 1

    def qs_statement(self, sql: str) -> None:
        """Query Service fault injection, before each statement runs (rules as in faults.py)."""
        self.count_scans(sql, "adhoc")
        route = QUERY_SERVICE_ROUTE
        self.faults.started(route)
        try:
            decision = self.faults.decide(route, "QUERY", " ".join(sql.split()))
            if decision.delay:
                self.faults.hold(decision.delay)
        finally:
            self.faults.finished(route)
        fault = decision.fault
        if fault is None:
            return
        if fault.kind in STATUS_KINDS:  # the service is busy or failing: the statement fails
            raise QueryServiceError(
                "57P03", f"Query Service is temporarily unavailable (injected {fault.kind})"
            )
        raise ConnectionResetError(f"injected {fault.kind}")  # the server drops the connection

    def qs_session_limit(self) -> int:
        """Query Service sessions the org may have at once (0 = no limit): a knob tests may change."""
        return self.knobs.qs_max_sessions

    def qs_scan(self, sql: str, params: Sequence[Any] = ()) -> Scan:
        """The export rows a Query Service statement reads (for the scan-cost model).

        A dataset table named in the statement's code counts with its live export batches: only the
        batches whose id appears as a string literal or bound parameter (a batch filter), else all
        of them. That Query
        Service prunes a scan to the batches a ``_acp_batchid``/``acp_sourceBatchId`` filter names is
        a GUESS (the data lake stores files per batch; Adobe documents no pruning); without it every
        query would read the whole dataset, which only makes scans dearer.
        """
        code: list[str] = []
        literals = {p for p in params if isinstance(p, str)}
        for start, end, kind in sql_spans(sql):
            if kind == "code":
                code.append(sql[start:end])
            elif kind == "string":
                literals.add(sql[start + 1 : end - 1].replace("''", "'"))
            elif kind == "ident":  # a quoted table name
                code.append(" " + sql[start + 1 : end - 1] + " ")
        words = {w.lower() for w in re.findall(r"[A-Za-z_][A-Za-z0-9_$]*", " ".join(code))}
        rows = batches = 0
        with self.lock:
            for table, (sandbox_name, dataset_id) in self.tables.items():
                if table.lower() not in words:
                    continue
                sandbox = self.sandboxes.get(sandbox_name)
                if sandbox is None:
                    continue
                live = [
                    b
                    for b in sandbox.catalog.dataset_batches(dataset_id)
                    if b.origin == "export" and b.status == "success"
                ]
                read = [b for b in live if b.id in literals] or live
                batches += len(read)
                rows += sum(int((b.metrics or {}).get("outputRecordCount") or 0) for b in read)
        return Scan(rows=rows, batches=batches)

    def qs_list_tables(self) -> list[dict]:
        with self.lock:
            out = []
            for table, (sandbox, dataset_id) in sorted(self.tables.items()):
                dataset = self.sandboxes[sandbox].catalog.datasets.get(dataset_id)
                if dataset is not None:
                    out.append(
                        {
                            "name": table,
                            "dataSetId": dataset.id,
                            "dataSet": dataset.name,
                            "description": dataset.description,
                        }
                    )
            return out

    # -- ground truth (see groundtruth.py for the semantics) ------------------------------------
    def snapshot(
        self,
        audience_ids: list[str] | None = None,
        statuses: list[str] | None = None,
        at: datetime | int | None = None,
    ) -> list[dict]:
        return groundtruth.snapshot(self, audience_ids, statuses, at)

    def transitions(
        self, audience_ids: list[str] | None, start: datetime | int, end: datetime | int
    ) -> list[dict]:
        return groundtruth.transitions(self, audience_ids, start, end)

    def export_rows(self, batch_id: str) -> list[dict]:
        with self.lock:
            table = None
            for sandbox in self.sandboxes.values():
                batch = sandbox.catalog.batches.get(batch_id)
                if batch is not None and batch.origin == "export":
                    dataset = sandbox.catalog.datasets.get(batch.dataset_id)
                    table = dataset.table if dataset is not None else None
            if table is None:
                raise KeyError(f"no export batch {batch_id}")
        return groundtruth.export_rows(self, table, batch_id)

    def dataset_records(self, dataset_id: str) -> Iterator[str]:
        """JSON Lines of the records in the dataset's live batches (see ``groundtruth.dataset_records``)."""
        with self.lock:
            self.tick()
            found = [
                (sb, sb.catalog.datasets[dataset_id])
                for sb in self.sandboxes.values()
                if dataset_id in sb.catalog.datasets
            ]
            if not found:
                raise KeyError(f"no dataset {dataset_id}")
            sandbox, dataset = found[0]
            live = [b for b in sandbox.catalog.dataset_batches(dataset_id) if b.status == "success"]
        return groundtruth.dataset_records(self, dataset.table if dataset.has_table else None, live)

    def set_membership(
        self, profile_index: int, audience_id: str, member: bool, at: datetime | int | None = None
    ) -> list[tuple[int, int | None]]:
        return groundtruth.set_membership(self, profile_index, audience_id, member, at)

    def profile(self, profile_index: int) -> dict:
        return groundtruth.profile(self, profile_index)

    # -- inspection --------------------------------------------------------------------------
    def describe(self) -> dict:
        """Everything a test may want to look at (``GET /emulator/state``)."""
        with self.lock:
            self.tick()
            org = self.settings.org_id
            sandboxes = {}
            for name, sb in self.sandboxes.items():
                sandboxes[name] = {
                    "sandbox": sb.info(),
                    "mergePolicyId": sb.merge_policy_id,
                    "datasets": {
                        d.id: {
                            **d.to_json(org, self.settings.client_id, sb.catalog.last_batch(d.id)),
                            "table": d.table if d.has_table else None,
                        }
                        for d in sb.catalog.datasets.values()
                    },
                    "batches": {
                        b.id: {
                            **b.to_json(org),
                            "origin": b.origin,
                            # monotonic seconds: visible from / until (admin only)
                            "emulatorLive": {"since": b.live_since, "until": b.live_until},
                            "files": {
                                p: {"size": f.size, "complete": f.complete, "large": f.large}
                                for p, f in b.files.items()
                            },
                        }
                        for b in sb.catalog.batches.values()
                    },
                    "exportJobs": [j.to_json(org, sb.info()) for j in sb.export_jobs.values()],
                    "schemas": [r.body for r in sb.registry.listing("schemas")],
                    "fieldGroups": [r.body for r in sb.registry.listing("mixins")],
                    "descriptors": list(sb.registry.descriptors.values()),
                }
            return {
                "mode": self.settings.mode,
                "clock": {
                    "now": self.clock.now().isoformat(),
                    "anchor": self.settings.anchor.isoformat(),
                    "offsetSeconds": self.clock.offset_seconds,
                    "timeScale": self.knobs.time_scale,
                },
                "profiles": self.settings.profiles,
                "seed": self.settings.seed,
                "audiences": [asdict(a) for a in self.audiences],  # as configured (ids, timelines)
                "liveAudiences": [asdict(a) for a in self.live_audiences()],  # as AEP shows them now
                "deletedAudiences": sorted(self.deleted_audiences),
                "tokensIssued": self.tokens.issued,
                "knobs": asdict(self.knobs),
                "sandboxes": sandboxes,
                "cja": self.cja.to_json(org),
                "tables": {t: {"sandbox": s, "dataSetId": d} for t, (s, d) in self.tables.items()},
            }

    def now_ms(self) -> int:
        return self.clock.epoch_ms()

    @staticmethod
    def monotonic() -> float:
        return time.monotonic()
