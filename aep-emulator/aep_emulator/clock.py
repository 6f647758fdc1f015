"""The emulator's controllable clock: emulator time = real time + an offset tests can move.

Only data time follows this clock (membership statuses, Catalog/Segmentation timestamps).
Access-token expiry and job/batch progress use real time, so advancing the clock by days to change
memberships neither expires every token nor finishes every job at once.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone


def parse_instant(value: str) -> datetime:
    """RFC 3339 / ISO 8601 instant; naive values are taken as UTC."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def iso(instant: datetime) -> str:
    """``2026-01-02T03:04:05Z`` (seconds precision, the form AEP prints)."""
    return instant.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Clock:
    """Emulator time. ``start`` (if given) is where the clock starts; else it starts at real now."""

    def __init__(self, start: datetime | None = None) -> None:
        self._lock = threading.Lock()
        self._offset = 0.0 if start is None else start.timestamp() - time.time()
        self._frozen: float | None = None  # a test's "AEP evaluated exactly at T" (data time stands still)

    def epoch(self) -> float:
        with self._lock:
            return self._frozen if self._frozen is not None else time.time() + self._offset

    @property
    def frozen(self) -> bool:
        with self._lock:
            return self._frozen is not None

    def freeze(self, frozen: bool) -> datetime:
        """Stop data time where it is (``True``) or let it run on from there (``False``)."""
        with self._lock:
            if frozen and self._frozen is None:
                self._frozen = time.time() + self._offset
            elif not frozen and self._frozen is not None:
                self._offset, self._frozen = self._frozen - time.time(), None
        return self.now()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.epoch(), tz=timezone.utc)

    def epoch_ms(self) -> int:
        return int(self.epoch() * 1000)

    def advance(self, seconds: float) -> datetime:
        with self._lock:
            self._offset += seconds
            if self._frozen is not None:
                self._frozen += seconds
        return self.now()

    def set(self, instant: datetime) -> datetime:
        with self._lock:
            self._offset = instant.timestamp() - time.time()
            if self._frozen is not None:
                self._frozen = instant.timestamp()
        return self.now()

    @property
    def offset_seconds(self) -> float:
        with self._lock:
            return self._offset
