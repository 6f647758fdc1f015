"""Emulator settings: one frozen dataclass shared by the CLI, the in-process server and the tests."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

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
    tls_hostnames: tuple[str, ...] = ()  # extra names the generated certificate is valid for (e.g. a service name)
    state_dir: Path | None = None  # default: a fresh temporary directory
    pg_port: int | None = None  # None = no Query Service; 0 = pick a free port
    qs_max_rows: int = 50_000
    qs_over_limit: str = "truncate"  # production's implicit LIMIT, or "error"
    qs_timeout_seconds: float = 600.0
    clock_start: datetime | None = None  # anchor of the membership timelines; default today 00:00 UTC
    export_job_seconds: float = 2.0
    batch_seconds: float = 1.0
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
        if self.export_job_seconds < 0 or self.batch_seconds < 0:
            raise ValueError("timing knobs must not be negative")
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


def load_audiences_file(path: str | Path) -> tuple[AudienceSpec, ...]:
    """``[{"id": ..., "name": ..., "probability": 0.1, "description": ...}, ...]`` from a JSON file."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON list of audiences")
    out = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not {"id", "name", "probability"} <= item.keys():
            raise ValueError(f"{path}: item {i} needs id, name and probability")
        out.append(AudienceSpec(id=str(item["id"]), name=str(item["name"]),
                                probability=float(item["probability"]),
                                description=str(item.get("description", ""))))
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

