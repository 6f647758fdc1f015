"""Settings tests may change while the emulator runs (``POST /emulator/knobs``).

Its own module so that the lifecycles (:mod:`aep_emulator.lifecycle`) can name the type without
importing :mod:`aep_emulator.state`, which imports them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Knobs:
    """Settings tests may change at run time (``POST /emulator/knobs``)."""

    token_lifetime: float
    export_job_seconds: float  # durations in Adobe seconds; real = value * time_scale
    batch_seconds: float
    cja_rate_limit: bool
    time_scale: float = 1.0
    export_batch_seconds: float = 0.0
    intermediate_statuses: bool = False
    platform_rate_limit: int = 0  # requests per second per client id (0 = unlimited)
    batch_create_rate_limit: int = 0  # POST /batches per minute per client id (0 = unlimited)
    export_job_failures: int = 0  # the next N export jobs end FAILED
    export_batch_failures: int = 0  # the next N export jobs SUCCEED but their Catalog batch fails
    ingestion_failures: int = 0  # the next N completed ingestion batches fail (internal error)
    # The next N completed ingestion batches reject their first record and still succeed, as AEP
    # reports a batch ingested with partial ingestion allowed: success, with failedRecordCount > 0.
    partial_ingestion_failures: int = 0
    qs_max_sessions: int = 0  # Query Service sessions per org at once (0 = no limit); see realistic_qs.py
    distinct_batch_ids: bool = False  # exports write a physical _acp_batchid unlike their logical batch id
    # Batch-query timing, Adobe seconds (query_service/batch.py; 0 = none).
    qs_batch_start_seconds: float = 0.0
    qs_batch_write_seconds_per_million_records: float = 0.0
    qs_batch_promote_seconds: float = 0.0
    qs_batch_concurrency: int = 0
    qs_batch_max_seconds: float = 0.0

    def update(self, changes: Any) -> None:
        if not isinstance(changes, dict):
            raise ValueError("knobs must be a JSON object")
        unknown = set(changes) - set(asdict(self))
        if unknown:
            raise ValueError(f"unknown knobs {sorted(unknown)}; known: {sorted(asdict(self))}")
        for key, value in changes.items():
            current = getattr(self, key)
            if isinstance(current, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"knob {key} must be true or false")
            elif not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"knob {key} must be a non-negative number")
            setattr(self, key, type(current)(value))

    def real_seconds(self, adobe_seconds: float) -> float:
        """An Adobe duration on the compressed clock (real seconds)."""
        return adobe_seconds * self.time_scale
