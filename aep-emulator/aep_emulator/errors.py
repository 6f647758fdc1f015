"""Errors raised by the emulator's service models; the REST layer renders them in Adobe's shapes.

Models stay free of HTTP: they raise :class:`ServiceError` (a service "problem details" error such
as ``XDM-1521-400``) and the REST layer adds the request id, timestamps and the exact body shape.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """A service-level error. ``code`` is the full Adobe code, e.g. ``XDM-1521-400``."""

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str,
        *,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code}: {detail}")
        self.headers = headers or {}  # e.g. Retry-After on a 429
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.extra = extra or {}


class NotModelled(Exception):
    """A request the emulator recognises but does not model (answered with 501, never faked)."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def not_found(service: str, number: int, detail: str, title: str = "Resource not found") -> ServiceError:
    return ServiceError(404, f"{service}-{number}-404", title, detail)
