"""The request pipeline shared by every service: auth and header checks, body handling, error rendering.

A service module declares :class:`Endpoint` objects (method, path, stable route name, handler); the
app turns each into a Starlette route whose async wrapper checks headers on the event loop, reads
the body (streamed to a file for uploads), then runs the synchronous handler in a worker thread
under the state lock after advancing lazy jobs and batches.
"""

from __future__ import annotations

import enum
import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aep_emulator.errors import NotModelled, ServiceError
from aep_emulator.rest import errors
from aep_emulator.tokens import InvalidToken, TokenInfo

if TYPE_CHECKING:  # pragma: no cover
    from aep_emulator.state import EmulatorState, SandboxState

log = logging.getLogger("aep_emulator.rest")
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class Auth(enum.Enum):
    NONE = "none"  # IMS token endpoint, health, admin
    PLATFORM = "platform"  # token, api key, org, sandbox
    CJA = "cja"  # token, api key, org (no sandbox header)


class Body(enum.Enum):
    NONE = "none"
    BYTES = "bytes"
    FILE = "file"  # streamed to a temporary file (uploads up to 256 MB)


@dataclass
class Call:
    """What a handler gets: the parsed request and the authenticated context."""

    state: EmulatorState
    method: str
    path: str
    path_params: dict[str, Any]
    query: QueryParams
    headers: Headers
    request_id: str
    body: bytes = b""
    body_file: Path | None = None
    token: TokenInfo | None = None
    sandbox: SandboxState | None = None

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise errors.legacy(
                400, "BadRequestError", f"The request body is not valid JSON: {exc}"
            ) from None

    def param(self, name: str, default: str | None = None) -> str | None:
        return self.query.get(name, default)

    def int_param(
        self,
        name: str,
        default: int,
        *,
        minimum: int = 0,
        maximum: int | None = None,
        service: str = "EMULATOR",
    ) -> int:
        raw = self.query.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ServiceError(
                400,
                f"{service}-1000-400",
                "Bad request",
                f"query parameter {name} must be an integer, got {raw!r}",
            ) from None
        if value < minimum:
            raise ServiceError(
                400,
                f"{service}-1000-400",
                "Bad request",
                f"query parameter {name} must be >= {minimum}, got {value}",
            )
        return min(value, maximum) if maximum is not None else value

    @property
    def client_id(self) -> str:
        return self.token.client_id if self.token else "anonymous"


Handler = Callable[[Call], Response]


@dataclass(frozen=True)
class Endpoint:
    method: str | tuple[str, ...]
    path: str
    name: str  # stable route name (faults, stats)
    handler: Handler
    auth: Auth = Auth.PLATFORM
    body: Body = Body.NONE
    content_types: tuple[str, ...] = ()  # accepted request Content-Types (empty = no check)
    locked: bool = True  # run under the state lock, after tick()


def authenticate(state: EmulatorState, headers: Headers, auth: Auth) -> tuple[TokenInfo, SandboxState | None]:
    """The gateway's checks, in the gateway's order (shape 1 errors)."""
    authz = headers.get("authorization")
    if not authz:
        raise errors.gateway(403, "403010", "Oauth token is missing.")
    scheme, _, token = authz.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.gateway(401, "401013", "Oauth token is not valid")
    try:
        info = state.tokens.validate(token.strip())
    except InvalidToken as exc:
        log.debug("token rejected: %s", exc)
        raise errors.gateway(401, "401013", "Oauth token is not valid") from None
    check_scopes(state, info)
    api_key = headers.get("x-api-key")
    if not api_key:
        raise errors.gateway(403, "403000", "Api Key is required")
    if api_key != info.client_id:
        raise errors.gateway(403, "403003", "Api Key is invalid")
    org = headers.get("x-gw-ims-org-id")
    if not org:
        raise errors.gateway(400, "400003", "Missing header")
    if org != info.org_id or org != state.settings.org_id:
        raise errors.gateway(403, "403025", "Profile is not valid")
    if auth is not Auth.PLATFORM:
        return info, None
    name = headers.get("x-sandbox-name")
    if not name:
        # Guess: the gateway's generic missing-header answer (the sandbox header is required).
        raise errors.gateway(400, "400003", "Missing header")
    sandbox = state.sandbox(name)
    if sandbox is None:
        # Guess: no public source shows the answer for an unknown sandbox; a problem-details 403
        # naming the sandbox is the most useful plausible form.
        raise ServiceError(
            403,
            "SMS-1003-403",
            "Sandbox validation error",
            f"Sandbox '{name}' does not exist or is not enabled for organization {org}.",
        )
    return info, sandbox


# Guess: the gateway's answer to a valid token lacking a scope the API needs is not documented. A
# token without the product context cannot be mapped to a product profile: the reference's 403027
# "User region is missing" row ("no AEP product profile"); without the identity scopes the token
# is not an Adobe ID access token at all: 401013.
_MISSING_SCOPE = {"additional_info.projectedProductContext": (403, "403027", "User region is missing")}


def check_scopes(state: EmulatorState, info: TokenInfo) -> None:
    """Realistic mode: the token must carry every scope in ``settings.required_scopes``."""
    required = state.settings.required_scopes
    if not required:
        return
    granted = {s.strip() for s in info.scope.split(",") if s.strip()}
    missing = [s for s in required if s not in granted]
    if missing:
        log.info("token of %s lacks required scope(s) %s", info.client_id, missing)
        status, code, message = _MISSING_SCOPE.get(missing[0], (401, "401013", "Oauth token is not valid"))
        raise errors.gateway(status, code, message)


def throttle(state: EmulatorState, auth: Auth, client_id: str, route: str) -> None:
    """429 with ``Retry-After`` past the per-client request rates (windows in real time).

    CJA: 12 requests / 6 s per user, body ``{"error_code": "429050", "message": "Too many requests"}``
    (documented). Platform: ``knobs.platform_rate_limit`` per second (a guess, see settings.REALISTIC),
    same gateway shape with code 429001 (guess). Retry-After on either: a guess (Adobe documents the
    header on no AEP 429), the whole seconds until the window has room again.
    """
    knobs = state.knobs
    if auth is Auth.CJA and knobs.cja_rate_limit:
        limiter, limit, code = state.cja.limiter, None, "429050"
    elif auth is Auth.PLATFORM and knobs.platform_rate_limit > 0:
        limiter, limit, code = state.platform_limiter, knobs.platform_rate_limit, "429001"
    else:
        return
    if not limiter.allow(client_id, limit):
        retry_after = limiter.retry_after(client_id, limit)
        state.count_throttled(route)
        log.info("throttled %s on %s: Retry-After %ss", client_id, route, retry_after)
        raise errors.gateway(429, code, "Too many requests", {"Retry-After": str(retry_after)})


def _check_content_type(headers: Headers, accepted: tuple[str, ...]) -> None:
    media = headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in accepted:
        if accepted == ("application/octet-stream",):
            raise errors.legacy(
                415,
                "UnsupportedMediaTypeError",
                f"Content-Type must be application/octet-stream, got {media or 'none'}",
            )
        raise errors.missing_content_type(" or ".join(accepted))


async def _stream_to_file(request: Request, directory: Path, limit: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - a local directory, mostly there already
    handle = tempfile.NamedTemporaryFile(dir=directory, delete=False, prefix="upload-")
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ServiceError(
                    400,
                    "INGEST-1413-400",
                    "Payload too large",
                    f"the request body exceeds {limit} bytes; split the file or use the "
                    f"large-file upload (INITIALIZE / PATCH / COMPLETE)",
                )
            handle.write(chunk)
    except BaseException:
        handle.close()
        Path(handle.name).unlink(missing_ok=True)  # noqa: ASYNC240 - the error path of one local file
        raise
    handle.close()
    return Path(handle.name)


UPLOAD_LIMIT = 256 * 1024 * 1024


def _run(endpoint: Endpoint, call: Call) -> Response:
    state = call.state
    if not endpoint.locked:
        return endpoint.handler(call)
    with state.lock:
        state.tick()
        return endpoint.handler(call)


def wrap(endpoint: Endpoint, state: EmulatorState, upload_limit: int = UPLOAD_LIMIT) -> Callable:
    """The Starlette endpoint for one :class:`Endpoint`."""

    async def run(request: Request) -> Response:
        request_id = request.scope.get("state", {}).get("request_id") or errors.new_request_id()
        call = Call(
            state=state,
            method=request.method,
            path=request.url.path,
            path_params=dict(request.path_params),
            query=request.query_params,
            headers=request.headers,
            request_id=request_id,
        )
        try:
            if endpoint.auth is not Auth.NONE:
                call.token, call.sandbox = authenticate(state, request.headers, endpoint.auth)
                throttle(state, endpoint.auth, call.client_id, endpoint.name)
            if endpoint.content_types and request.method in ("POST", "PUT", "PATCH"):
                _check_content_type(request.headers, endpoint.content_types)
            if endpoint.body is Body.BYTES:
                call.body = await request.body()
            elif endpoint.body is Body.FILE:
                call.body_file = await _stream_to_file(request, state.state_dir / "uploads", upload_limit)
            return await run_in_threadpool(_run, endpoint, call)
        except errors.HttpError as exc:
            return exc.response()
        except ServiceError as exc:
            return errors.problem(
                exc,
                request_id,
                sandbox=call.sandbox.name if call.sandbox else None,
                org_id=state.settings.org_id,
            )
        except NotModelled as exc:
            return errors.not_implemented(request.method, request.url.path, request_id, exc.what)
        except Exception as exc:  # a bug in the emulator: say so instead of hanging up
            log.exception("unhandled error in %s %s", request.method, request.url.path)
            return errors.internal_error(request_id, exc)
        finally:
            if call.body_file is not None:
                call.body_file.unlink(missing_ok=True)

    return run


def routes(prefix: str, endpoints: list[Endpoint], state: EmulatorState) -> list[Route]:
    out = []
    for ep in endpoints:
        methods = [ep.method] if isinstance(ep.method, str) else list(ep.method)
        out.append(Route(prefix + ep.path, wrap(ep, state), methods=methods, name=ep.name))
    return out


def unmodelled_route(prefix: str, name: str) -> Route:
    """Catch-all under a known prefix: any other method or path answers 501."""

    async def run(request: Request) -> Response:
        request_id = request.scope.get("state", {}).get("request_id") or errors.new_request_id()
        return errors.not_implemented(request.method, request.url.path, request_id)

    path = (prefix.rstrip("/") or "") + "/{rest:path}"
    return Route(path, run, methods=ALL_METHODS, name=name)


def ok(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return errors.json_response(body, status, headers)


def empty(status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(b"", status_code=status, headers=headers)
