"""Emulator settings: one frozen dataclass shared by the CLI, the in-process server and the tests."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aep_emulator.query_service.scans import REALISTIC_SECONDS_PER_MILLION_ROWS
from aep_emulator.realistic_qs import REALISTIC_QUERY_SERVICE

TENANT_RE = re.compile(r"[a-z0-9][a-z0-9_]{0,63}")
SANDBOX_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
ORG_RE = re.compile(r"[A-Za-z0-9]{1,64}@AdobeOrg")


@dataclass(frozen=True)
class AudienceSpec:
    """One synthetic audience: ``probability`` = share of profiles with a membership timeline in it."""

    id: str
    name: str
    probability: float
    description: str = ""

    def __post_init__(self) -> None:
        if not (0.0 <= self.probability <= 1.0):
            raise ValueError(f"audience {self.name!r}: probability must be within [0, 1]")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}", self.id):
            raise ValueError(f"audience id {self.id!r} is not a valid segment id")


@dataclass(frozen=True)
class CjaDataViewSpec:
    name: str
    dimensions: tuple[str, ...] = ()  # schema paths seeded as dimensions


@dataclass(frozen=True)
class CjaConnectionSpec:
    """A seeded CJA connection (ids derive from the org and the name, so they are stable)."""

    name: str
    sandbox: str | None = None  # default: the first sandbox
    data_views: tuple[CjaDataViewSpec, ...] = (CjaDataViewSpec("Emulator data view", ("eventType",)),)


MODES = ("default", "realistic")

# Realistic mode (``--realistic`` / ``--mode realistic`` / ``EmulatorSettings.realistic()``): the value
# of every setting that differs from the default, ONE LINE PER KNOB, each with its source or "guess".
# A new realistic behaviour adds its line here (and keeps its default off, so the default mode does
# not change). Durations are in Adobe seconds; ``time_scale`` turns them into real seconds.
REALISTIC: dict[str, Any] = {
    # Compressed clock: 1 Adobe minute = 0.1 real s, so a 20-min export job takes 2 s and spans about
    # two polls of a 1 s poll interval (every intermediate status is seen) while a run gains seconds.
    "time_scale": 0.1 / 60,
    # Documented SUCCEEDED export job: totalTimeInMs 1,204,365 = 20 min (https://experienceleague.adobe.com/en/docs/experience-platform/segmentation/api/export-jobs).
    "export_job_seconds": 20 * 60,
    # Guess: how long Catalog shows the export's batch "staging" after its job SUCCEEDED (undocumented).
    "export_batch_seconds": 2 * 60,
    # Guess: from COMPLETE to success for a small ingestion batch (Adobe documents no duration).
    "batch_seconds": 5 * 60,
    # Batches pass Catalog's intermediate statuses (loaded, staging; names from the Catalog spec's
    # enum, https://experienceleague.adobe.com/en/docs/experience-platform/ingestion/batch-ingestion/
    # troubleshooting; their order a guess).
    "intermediate_statuses": True,
    # CJA: 12 requests / 6 s per user, over it 429 429050 (https://developer.adobe.com/cja-apis/docs/getting-started/faq/).
    "cja_rate_limit": True,
    # Guess: Platform publishes no per-client request budget; 20 requests/s per client id is the one
    # Adobe documents for its Admin (Storage Management) APIs, answered 429 with Retry-After.
    "platform_rate_limit": 20,
    # Batch ingestion: max 138 batches per minute per user (https://experienceleague.adobe.com/en/docs/experience-platform/ingestion/batch-ingestion/overview).
    "batch_create_rate_limit": 138,
    # IMS: the credential's scopes as Developer Console lists them for an AEP project (the usual AEP
    # set, UNCONFIRMED; https://developer.adobe.com/developer-console/docs/guides/authentication/ServerToServerAuthentication/); a token request asking for others is refused.
    "ims_scopes": (
        "openid",
        "session",
        "AdobeID",
        "read_organizations",
        "additional_info.projectedProductContext",
    ),
    # Scopes an API call's token must carry: those both Adobe's documented Analytics/CJA set and the
    # AEP set contain (DC: "OAuth 2.0 Scopes"); which of them Platform enforces is a guess.
    "required_scopes": ("openid", "AdobeID", "read_organizations", "additional_info.projectedProductContext"),
    # Query Service: at most 5 sessions per org, distinct physical/logical export batch ids
    # (emulator/realistic_qs.py has the sources and guesses).
    **REALISTIC_QUERY_SERVICE,
    # Guess: scan-cost model, 5 s per million export rows read (query_service/scans.py). It runs on real
    # time, not the compressed clock: it is what the partition planner measures.
    "qs_seconds_per_million_rows": REALISTIC_SECONDS_PER_MILLION_ROWS,
    # Guess: a query's start-up. scans.REALISTIC_SECONDS_PER_QUERY (2 s) is the benchmarks' value; 0.2 s
    # here keeps the end-to-end suites (hundreds of queries) within CI's time while still costing each query.
    "qs_seconds_per_query": 0.2,
    # Batch queries (Data Distiller INSERT INTO, query_service/batch.py). Their scan pays the scan-cost
    # model above, like an ad hoc query; the other phases are Adobe seconds on the compressed clock.
    # Guess: queueing and Spark start-up of a batch query (SUBMITTED); Adobe publishes no figure.
    "qs_batch_start_seconds": 2 * 60,
    # Guess: writing the result batch to the data lake, 1 min per million records (undocumented).
    "qs_batch_write_seconds_per_million_records": 60,
    # Guess: the written batch's promotion (staging -> success) before the query reports SUCCESS, as
    # long as an ingested batch's ("batch_seconds"); Adobe documents neither duration nor order.
    "qs_batch_promote_seconds": 5 * 60,
    # Batch queries of the org running at once, the rest wait SUBMITTED: Adobe documents the concurrency
    # as licensed ("Concurrent batch users", EPE:query-service/guardrails.md) and excess queries queued;
    # 5 (the smallest licensed step Adobe names for users) is a guess.
    "qs_batch_concurrency": 5,
    # Batch queries run at most 24 hours, then end TIMEOUT (EPE:query-service/guardrails.md).
    "qs_batch_max_seconds": 24 * 60 * 60,
}


def _midnight_utc() -> datetime:
    now = datetime.now(timezone.utc)
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class EmulatorSettings:
    """Everything that configures one emulator process. Defaults give a working local setup."""

    host: str = "127.0.0.1"
    port: int = 0  # 0 = pick a free port
    profiles: int = 1000
    seed: int = 42
    client_id: str = "emulator-client-id"
    client_secret: str = "emulator-client-secret"
    org_id: str = "EMULATOR0000000000000000@AdobeOrg"
    sandboxes: tuple[str, ...] = ("prod",)
    tenant: str = "demoemea"
    token_lifetime: float = 86399.0  # seconds, as /ims/token/v3 reports them
    tls: bool = True
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None  # CA bundle to advertise when tls_cert is given (default: tls_cert)
    tls_hostnames: tuple[
        str, ...
    ] = ()  # extra names the generated certificate is valid for (e.g. a service name)
    state_dir: Path | None = None  # default: a fresh temporary directory
    pg_port: int | None = None  # None = no Query Service; 0 = pick a free port
    qs_max_rows: int = 50_000
    qs_over_limit: str = "truncate"  # production's implicit LIMIT, or "error"
    qs_timeout_seconds: float = 600.0
    # Query Service realistic-mode knobs (see emulator/realistic_qs.py for sources and guesses):
    qs_max_sessions: int = 0  # sessions per org at once, past it "Session Limit Reached"; 0 = no limit
    distinct_batch_ids: bool = False  # export rows' _acp_batchid (physical) differs from the job's batch id
    # Scan-cost model (query_service/scans.py): 0 = no modelled scan time (realistic: scans.REALISTIC).
    qs_seconds_per_million_rows: float = 0.0
    qs_seconds_per_query: float = 0.0
    # Batch-query timing (query_service/batch.py), Adobe seconds; 0 = none (realistic: see REALISTIC).
    qs_batch_start_seconds: float = 0.0  # SUBMITTED: queueing and start-up
    qs_batch_write_seconds_per_million_records: float = 0.0  # IN_PROGRESS, batch loading: the write
    qs_batch_promote_seconds: float = 0.0  # IN_PROGRESS, batch staging/processing: its promotion
    qs_batch_concurrency: int = 0  # batch queries running at once; the rest wait SUBMITTED; 0 = no limit
    qs_batch_max_seconds: float = 0.0  # modelled run time past which a query ends TIMEOUT; 0 = no limit
    clock_start: datetime | None = None  # anchor of the membership timelines; default today 00:00 UTC
    mode: str = "default"  # "realistic": the REALISTIC preset (use EmulatorSettings.realistic())
    # Durations below are in emulated (Adobe) seconds; real seconds = value * time_scale.
    time_scale: float = 1.0
    export_job_seconds: float = 2.0
    export_batch_seconds: float = 0.0  # the export batch stays "staging" this long after its job SUCCEEDED
    batch_seconds: float = 1.0
    intermediate_statuses: bool = False  # batches pass loaded/staging, not just processing
    platform_rate_limit: int = 0  # Platform requests per second per client id; 0 = unlimited
    batch_create_rate_limit: int = 0  # POST /batches per minute per client id; 0 = unlimited
    ims_scopes: tuple[str, ...] = ()  # the credential's scopes; empty = IMS grants any non-empty scope
    required_scopes: tuple[str, ...] = ()  # scopes every API call's token must carry
    audiences: tuple[AudienceSpec, ...] | None = None  # None = the built-in realistic set
    faults: dict[str, Any] | None = None
    cja_rate_limit: bool = False  # enforce CJA's 12 requests / 6 s per client
    cja_connections: tuple[CjaConnectionSpec, ...] = (CjaConnectionSpec("Emulator connection"),)
    db_path: Path | None = None  # DuckDB file; None = in memory
    db_memory_limit: str | None = None  # e.g. "2GB"; DuckDB spills to disk beyond it (file databases)
    log_requests: bool = False  # one DEBUG line per request is always logged; this raises it to INFO

    def __post_init__(self) -> None:
        if not TENANT_RE.fullmatch(self.tenant):
            raise ValueError(f"tenant {self.tenant!r} must match {TENANT_RE.pattern} (no leading '_')")
        if not self.sandboxes:
            raise ValueError("at least one sandbox is required")
        for sandbox in self.sandboxes:
            if not SANDBOX_RE.fullmatch(sandbox):
                raise ValueError(f"sandbox {sandbox!r} must be lower case ({SANDBOX_RE.pattern})")
        if len(set(self.sandboxes)) != len(self.sandboxes):
            raise ValueError("sandboxes repeat a name")
        if not ORG_RE.fullmatch(self.org_id):
            raise ValueError(f"org id {self.org_id!r} must look like XXXX@AdobeOrg")
        if self.profiles < 0 or self.profiles > 2_000_000_000:
            raise ValueError("profiles must be within [0, 2e9]")
        if self.token_lifetime <= 0:
            raise ValueError("token lifetime must be positive")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give both --tls-cert and --tls-key, or neither")
        if self.qs_max_sessions < 0:
            raise ValueError("qs_max_sessions must be >= 0 (0 = no limit)")
        if not 0 <= self.qs_seconds_per_million_rows <= 3600 or not 0 <= self.qs_seconds_per_query <= 3600:
            raise ValueError("qs_seconds_per_million_rows and qs_seconds_per_query must be within [0, 3600]")
        for name in (
            "qs_batch_start_seconds",
            "qs_batch_write_seconds_per_million_records",
            "qs_batch_promote_seconds",
            "qs_batch_max_seconds",
        ):
            if not 0 <= getattr(self, name) <= 7 * 86400:
                raise ValueError(
                    f"{name} must be within [0, 604800] Adobe seconds, got {getattr(self, name)!r}"
                )
        if self.qs_batch_concurrency < 0:
            raise ValueError(
                f"qs_batch_concurrency must be >= 0 (0 = no limit), got {self.qs_batch_concurrency}"
            )
        if self.export_job_seconds < 0 or self.batch_seconds < 0 or self.export_batch_seconds < 0:
            raise ValueError("timing knobs must not be negative")
        if not self.time_scale > 0:
            raise ValueError(
                f"time_scale must be positive (real seconds per Adobe second), got {self.time_scale}"
            )
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {list(MODES)}")
        if self.platform_rate_limit < 0 or self.batch_create_rate_limit < 0:
            raise ValueError("rate limits must not be negative (0 = unlimited)")
        missing = set(self.required_scopes) - set(self.ims_scopes) if self.ims_scopes else set()
        if missing:
            raise ValueError(f"required scopes {sorted(missing)} are not among the credential's ims_scopes")
        if self.audiences is not None:
            ids = [a.id for a in self.audiences]
            if len(set(ids)) != len(ids):
                raise ValueError("audience ids repeat")
        if self.clock_start is not None and self.clock_start.tzinfo is None:
            object.__setattr__(self, "clock_start", self.clock_start.replace(tzinfo=timezone.utc))

    @property
    def anchor(self) -> datetime:
        """The clock anchor: membership timelines spread around it."""
        return self.clock_start or _midnight_utc()

    @property
    def default_sandbox(self) -> str:
        return self.sandboxes[0]

    def with_changes(self, **changes: Any) -> EmulatorSettings:
        return replace(self, **changes)

    @classmethod
    def realistic(cls, **overrides: Any) -> EmulatorSettings:
        """Realistic mode: the REALISTIC preset, then ``overrides``."""
        return cls(**{**REALISTIC, "mode": "realistic", **overrides})

    @classmethod
    def for_mode(cls, mode: str, **overrides: Any) -> EmulatorSettings:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {list(MODES)}")
        return cls.realistic(**overrides) if mode == "realistic" else cls(**overrides)

    def real_seconds(self, adobe_seconds: float) -> float:
        """An Adobe duration on the compressed clock."""
        return adobe_seconds * self.time_scale


def load_audiences_file(path: str | Path) -> tuple[AudienceSpec, ...]:
    """``[{"id": ..., "name": ..., "probability": 0.1, "description": ...}, ...]`` from a JSON file."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON list of audiences")
    out = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not {"id", "name", "probability"} <= item.keys():
            raise ValueError(f"{path}: item {i} needs id, name and probability")
        out.append(
            AudienceSpec(
                id=str(item["id"]),
                name=str(item["name"]),
                probability=float(item["probability"]),
                description=str(item.get("description", "")),
            )
        )
    return tuple(out)


def load_faults(value: str) -> dict[str, Any]:
    """``--faults`` takes inline JSON or a path to a JSON file."""
    text = value.strip()
    if not text.startswith("{"):
        text = Path(value).read_text(encoding="utf-8")
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("--faults must be a JSON object")
    return data
