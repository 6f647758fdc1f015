"""The emulator's ASGI app: every service's routes, 501 catch-alls, and the outer middleware that
sets the request id, logs each request and injects faults."""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders, QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route
from starlette.types import Message, Receive, Scope, Send

from aep_emulator.faults import QUERY_SERVICE_ROUTE, STATUS_KINDS, FaultRule
from aep_emulator.rest import (
    admin,
    catalog,
    cja,
    common,
    ims,
    ingestion,
    query,
    schema_registry,
    segmentation,
)
from aep_emulator.rest.errors import new_request_id

if TYPE_CHECKING:  # pragma: no cover
    from aep_emulator.state import EmulatorState

log = logging.getLogger("aep_emulator.http")

# (prefix, endpoints, service name of the 501 catch-all)
SERVICES = [
    ("/ims", ims.ENDPOINTS, "ims"),
    (catalog.PREFIX, catalog.ENDPOINTS, "catalog"),
    (segmentation.PREFIX, segmentation.ENDPOINTS, "segmentation"),
    (schema_registry.PREFIX, schema_registry.ENDPOINTS, "schema_registry"),
    (ingestion.PREFIX, ingestion.ENDPOINTS, "ingestion"),
    (ingestion.EXPORT_PREFIX, ingestion.EXPORT_ENDPOINTS, "export"),
    (query.PREFIX, query.ENDPOINTS, "query"),
    ("", cja.ENDPOINTS, "cja"),
    (admin.PREFIX, admin.ENDPOINTS, "admin"),
]
CATCH_ALLS = [(p, s) for p, _, s in SERVICES if p] + [
    ("/data/connections", "cja"),
    ("/data/dataviews", "cja"),
]
# One route serves several ?action= verbs; faults and stats name them apart, as the hooks' logs do.
ACTION_NAMES = {
    "ingestion.file_action": {
        "INITIALIZE": "ingestion.initialize_file",
        "COMPLETE": "ingestion.complete_file",
    },
    "ingestion.batch_action": {
        a: f"ingestion.{a.lower()}_batch" for a in ("COMPLETE", "ABORT", "FAIL", "REVERT")
    },
}
UNFAULTED_PREFIX = "/emulator/"  # the admin API and /health are never faulted
_STATUS_TEXT = {
    429: "Too many requests",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service unavailable",
}


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def build_app(state: EmulatorState) -> EmulatorMiddleware:
    routes: list[Route] = [Route("/health", health, methods=["GET"], name="health")]
    for prefix, endpoints, _ in SERVICES:
        routes += common.routes(prefix, endpoints, state)
    for prefix, service in sorted(CATCH_ALLS, key=lambda ps: -len(ps[0])):
        routes.append(common.unmodelled_route(prefix, f"{service}.unmodelled"))
    routes.append(common.unmodelled_route("", "unknown"))
    state.route_table = [{"name": r.name, "path": r.path, "methods": sorted(r.methods or [])} for r in routes]
    state.route_table += [
        {
            "name": name,
            "path": next(r.path for r in routes if r.name == route) + f"?action={action}",
            "methods": ["POST"],
        }
        for route, names in ACTION_NAMES.items()
        for action, name in names.items()
    ]
    state.route_table.append(
        {"name": QUERY_SERVICE_ROUTE, "path": "(PostgreSQL protocol: each statement)", "methods": ["QUERY"]}
    )
    return EmulatorMiddleware(Starlette(routes=routes), state)


class EmulatorMiddleware:
    """Outermost ASGI layer: it must see uvicorn's own ``send`` to drop connections on purpose."""

    def __init__(self, app: Starlette, state: EmulatorState) -> None:
        self.app, self.state = app, state

    def route_name(self, scope: Scope) -> str:
        for route in self.app.router.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                actions = ACTION_NAMES.get(route.name)
                if actions:
                    action = QueryParams(scope.get("query_string", b"")).get("action", "").upper()
                    return actions.get(action, route.name)
                return route.name
        return "unknown"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope = _without_trailing_slash(scope)
        request_id = Headers(scope=scope).get("x-request-id") or new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        method, path = scope["method"], scope["path"]
        name = self.route_name(scope)
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["x-request-id"] = request_id
            await send(message)

        if path == "/health" or path.startswith(UNFAULTED_PREFIX):
            await self.app(scope, receive, send_with_id)
            return
        faults = self.state.faults
        faults.started(name)
        try:
            decision = faults.decide(name, method, path)
            if decision.delay:
                await faults.ahold(decision.delay)
            if decision.fault is not None and decision.fault.kind == "lost_response":
                await self.app(scope, receive, _swallow)  # processed; the answer never leaves
                _abort(send)
                return
            if decision.fault is not None:
                await self._inject(decision.fault, send, request_id)
                return
            await self.app(scope, receive, send_with_id)
        finally:
            faults.finished(name)
        level = logging.INFO if self.state.settings.log_requests else logging.DEBUG
        log.log(
            level,
            "%s %s -> %s [%s] %.1f ms x-request-id=%s",
            method,
            path,
            status,
            name,
            (time.perf_counter() - started) * 1000,
            request_id,
        )

    async def _inject(self, rule: FaultRule, send: Send, request_id: str) -> None:
        if rule.kind in STATUS_KINDS:
            code = int(rule.kind)
            body = json.dumps(
                {"error_code": f"{code}050" if code == 429 else f"{code}000", "message": _STATUS_TEXT[code]}
            ).encode()
            headers: list[tuple[bytes, bytes]] = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode()),
            ]
            if rule.retry_after is not None:
                value = int(rule.retry_after) if float(rule.retry_after).is_integer() else rule.retry_after
                headers.append((b"retry-after", str(value).encode()))
            await send({"type": "http.response.start", "status": code, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        # Connection-level faults: the client must see a broken connection, not an HTTP status.
        if rule.kind == "truncate":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", b"4096"),
                        (b"x-request-id", request_id.encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b'{"partial": "', "more_body": True})
        _abort(send)


def _without_trailing_slash(scope: Scope) -> Scope:
    """``/stats/`` is ``/stats``: Adobe's gateway answers both alike, and its own documented paging
    links carry the slash (``"next": "/export/jobs/?limit=2&offset=..."``)."""
    path = scope["path"]
    if len(path) <= 1 or not path.endswith("/"):
        return scope
    trimmed = path.rstrip("/") or "/"
    raw = scope.get("raw_path")
    changed: dict[str, Any] = {"path": trimmed}
    if isinstance(raw, bytes):
        changed["raw_path"] = raw.rstrip(b"/") or b"/"
    return {**scope, **changed}


async def _swallow(message: Message) -> None:
    """An ASGI ``send`` that drops the response (for ``lost_response``)."""


def _abort(send: Send) -> None:
    """Close the client's connection at once (uvicorn's ``send`` is bound to its request cycle)."""
    transport: Any = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None:
        raise ConnectionAbortedError("injected connection fault (no transport to abort)")
    transport.abort()
