"""AdobePlatformHook: OAuth Server-to-Server auth, one HTTP session, bounded calls, typed errors.

Every service hook (Catalog, Segmentation, ...) subclasses this one. The sync path (``requests``)
runs in workers; the async path (``aiohttp``) runs in the triggerer. Both build requests, classify
errors and decide retries with the same functions, so a trigger behaves exactly like a task.

Every call (one public hook method: a read, a create, a token fetch) is bounded:

* **One retry layer.** 429 (honouring ``Retry-After``, clamped), 5xx and connection errors are
  retried with exponential backoff, by the outermost call only: what runs inside it (the IMS token
  fetch, the look-up that reconciles a create) makes single attempts and shares the call's budget.
  A call retries only while it has sent fewer than ``max_attempts`` HTTP requests (token fetches and
  creates included), so it sends at most ``max_attempts`` of them, plus the one request a token
  fetched on its last try is for.
* **A wall-clock deadline** (connection extra ``call_deadline``) on the whole call, both paths. The
  sync path enforces it with a watchdog that shuts the socket down, since ``requests``' timeout is
  per read and a body dripping one byte a second never trips it.
* **A size cap** (``max_response_bytes``): bodies are streamed and a larger one fails the call.
* **No redirects**, ever: a 3xx is an error naming the status and the target. Following one would
  send the API key, org, sandbox and token, or IMS's form body with the client secret, elsewhere.
* **Clean errors**: what the hook raises never chains the transport library's exception (which
  holds the request, its headers and body), so no traceback carries a token or the client secret.

A create (POST) that fails ambiguously - a 5xx, a reset or a read timeout after the request may have
been processed - is not blindly sent again: before the next try the service hook looks for what the
create would have made (:meth:`AdobePlatformHook.create_once`), so a retry never duplicates a
dataset, schema or export job.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import logging
import math
import random
import socket
import ssl
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import quote

import requests
import tenacity
import urllib3

from airflow.sdk import BaseHook
from airflow.sdk.log import amask_secret, mask_secret

from airflow_cja_audiences import CONN_TYPE, DEFAULT_CONN_ID
from airflow_cja_audiences.errors import (
    AepApiError,
    AepAuthError,
    AepConfigError,
    AepDeadlineError,
    AepError,
    AepPagingError,
    AepResponseError,
    AepResponseTooLargeError,
    AepTransportError,
    api_error_from_response,
    redirect_error,
)
from airflow_cja_audiences.models import AdobeConnectionSettings

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)

Service = Literal["platform", "cja", "ims"]
T = TypeVar("T")

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
JSON = "application/json"
_CHUNK = 64 * 1024  # body read size (sync and async)
MIN_TOKEN_LIFETIME = 1.0  # seconds; IMS answers 86399, tests go down to 1


# ------------------------------------------------------------------------------ token cache


@dataclass
class _CachedToken:
    value: str
    expires_at: float  # wall clock (time.time()), so a token outlives no process by accident
    lifetime: float

    def fresh(self, now: float) -> bool:
        # Refresh ahead of expiry: 5 minutes for day-long tokens, 10% for short test lifetimes.
        margin = min(300.0, self.lifetime * 0.1)
        return now < self.expires_at - margin


# Process-wide: all hooks (and all triggers in one triggerer) of one credential share one token,
# so 500 concurrent triggers cost one IMS call, not 500.
_TOKENS: dict[str, _CachedToken] = {}
_TOKENS_LOCK = threading.Lock()
_ASYNC_TOKEN_LOCKS: dict[tuple[int, str], asyncio.Lock] = {}


def _token_key(settings: AdobeConnectionSettings) -> str:
    secret_digest = hashlib.sha256(settings.client_secret.get_secret_value().encode()).hexdigest()
    return "|".join((settings.ims_url, settings.client_id, settings.scopes, secret_digest))


def clear_token_cache() -> None:
    """Forget every cached access token (tests; credential rotation)."""
    with _TOKENS_LOCK:
        _TOKENS.clear()


@functools.lru_cache(maxsize=8)
def _ssl_context(ca_bundle: str | None) -> ssl.SSLContext:
    """One verifying context per CA bundle, shared by every async session of the process: loading a
    trust store costs milliseconds, which 500 triggers starting together would spend on the loop."""
    return ssl.create_default_context(cafile=ca_bundle) if ca_bundle else ssl.create_default_context()


# ------------------------------------------------------------------------------ shared async sessions


@dataclass
class _SharedSession:
    loop: asyncio.AbstractEventLoop
    session: aiohttp.ClientSession
    users: int = 0


# One aiohttp session per event loop and (CA bundle, timeout), shared by every trigger of a triggerer:
# hundreds of waits polling the same Adobe hosts reuse warm keep-alive connections (no TLS handshake
# per poll) and hold one pool between them instead of one each. Closed when its last user leaves.
_SHARED_SESSIONS: dict[tuple[int, str | None, float], _SharedSession] = {}
_SHARED_POOL_SIZE = 100  # connections per shared session; requests beyond it wait for a free one


# ------------------------------------------------------------------------------ one call's budget


@dataclass
class _Call:
    """What one call may still spend: HTTP requests and wall-clock time (shared by what runs inside it)."""

    route: str
    max_requests: int
    deadline_seconds: float
    deadline: float = 0.0  # time.monotonic()
    requests: int = 0
    token_refreshed: bool = False

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.deadline_seconds

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


# The call in progress in this thread / asyncio task. A hook method called inside another call (the
# token fetch of a request, the look-up that reconciles a create) joins it: one attempt, one budget.
_CALL: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("aep_call", default=None)
_ROUTE_ATTR = "aep_route"  # set on an error: the route of the request that failed (retry counts, logs)


def _tag(exc: AepError, route: str) -> None:
    exc.__dict__.setdefault(_ROUTE_ATTR, route)


def _text(response: requests.Response) -> str:
    """The body as text: the declared charset, else UTF-8 (no charset sniffing over a big body)."""
    try:
        return response.content.decode(response.encoding or "utf-8", errors="replace")
    except LookupError:  # an unknown charset name
        return response.content.decode("utf-8", errors="replace")


def _deadline_error(call: _Call, method: str, url: str) -> AepDeadlineError:
    return AepDeadlineError(
        f"{method} {url}: no answer within the call deadline of {call.deadline_seconds:g} s ({call.requests} "
        f"request(s) sent by {call.route}); raise the connection's 'call_deadline' extra if Adobe is just slow",
        method=method,
        url=url,
        ambiguous=True,
    )


# ------------------------------------------------------------------------------ sync deadline watchdog


class _Watch:
    """Shuts the socket of one sync request down when the call deadline passes (a drip never trips
    ``requests``' per-read timeout). Attached by the connection when the request goes out; connecting
    and the TLS handshake before that are bounded as a whole by the connect timeout, which is never
    longer than what is left of the deadline (CPython applies a socket timeout to the whole handshake)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.expired = False

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.expired:
                _shutdown(sock)

    def expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._sock is not None:
                _shutdown(self._sock)

    def close(self) -> None:
        with self._lock:
            self._sock = None


def _shutdown(sock: socket.socket) -> None:
    try:
        # socket.socket's own shutdown, also for an SSLSocket: it wakes a blocked read on the same
        # descriptor without touching the TLS object the reading thread is using.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed: nothing left to stop


_WATCH = threading.local()


class _WatchedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        watch: _Watch | None = getattr(_WATCH, "current", None)
        if watch is not None and self.sock is not None:
            watch.attach(self.sock)
        super().request(*args, **kwargs)


class _WatchedHTTPSConnectionPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _WatchedAdapter(requests.adapters.HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            **self.poolmanager.pool_classes_by_scheme,
            "https": _WatchedHTTPSConnectionPool,
        }


# ------------------------------------------------------------------------------ retry policy


def _is_transient(exc: BaseException, idempotent: bool) -> bool:
    """Retry decision shared by the sync and async paths."""
    if isinstance(exc, AepDeadlineError):
        return False  # the deadline bounds the call, retries included
    if isinstance(exc, AepApiError):
        if exc.status == 429:
            return True  # throttled: the request was not processed
        return exc.retryable and idempotent
    if isinstance(exc, AepTransportError):
        return idempotent or not exc.ambiguous
    return False


def _not_processed(exc: AepError, route: str) -> bool:
    """True when ``exc`` proves the create request itself (``route``) was not processed: throttled, or
    the connection failed before sending. Anything else (a 5xx, a reset, another request of the create
    failing afterwards) leaves the create's fate unknown, so a look-up comes before trying again."""
    if exc.__dict__.get(_ROUTE_ATTR) != route:
        return False
    if isinstance(exc, AepApiError):
        return exc.status == 429
    return isinstance(exc, AepTransportError) and not exc.ambiguous


def retry_wait(error: BaseException | None, failures: int, initial: float, maximum: float) -> float:
    """Seconds before the next try: ``Retry-After`` clamped to [initial, maximum] (a hostile 0 does not
    busy-loop, a hostile 1e9 does not sleep for hours), else exponential backoff with jitter."""
    retry_after = getattr(error, "retry_after", None)
    if isinstance(retry_after, (int, float)) and math.isfinite(retry_after) and retry_after >= 0:
        return min(max(float(retry_after), initial), maximum)
    # Jitter in proportion to the first wait (1 s at the default 0.5 s), so short waits stay short.
    exponential = initial * 2 ** min(max(failures - 1, 0), 30)
    return min(exponential + random.uniform(0, 2 * initial), maximum)


class _WaitRetryAfterOrExponential(tenacity.wait.wait_base):
    """:func:`retry_wait` for tenacity (Query Service statements retry with it)."""

    def __init__(self, initial: float, maximum: float):
        self.initial, self.maximum = initial, maximum

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        return retry_wait(exc, retry_state.attempt_number, self.initial, self.maximum)


class PageGuard:
    """Bounds one list call's paging: at most ``max_pages`` pages, and each page must move on.

    Call :meth:`next_page` with the cursor (offset, page number, ``next`` token) before fetching each
    page, and :meth:`seen` with the ids a page returned: a cursor asked for twice, or a full page
    with exactly the ids of the page before, is a list that does not advance and fails at once.
    """

    def __init__(self, route: str, max_pages: int) -> None:
        self.route = route
        self.max_pages = max_pages
        self.pages = 0
        self._cursors: set[Hashable] = set()
        self._last_ids: tuple[Any, ...] | None = None

    def next_page(self, cursor: Hashable) -> None:
        if self.pages >= self.max_pages:
            raise AepPagingError(
                f"{self.route}: the list did not end after {self.max_pages} pages (connection "
                f"extra 'max_pages'); narrow the query or raise the limit if that many is real"
            )
        if cursor in self._cursors:
            raise AepPagingError(
                f"{self.route}: the list does not advance: page {self.pages + 1} asks for "
                f"cursor {str(cursor)[:80]!r} again; the service's paging is broken"
            )
        self._cursors.add(cursor)
        self.pages += 1

    def seen(self, ids: Any) -> None:
        ids = tuple(ids)
        if ids and ids == self._last_ids:
            raise AepPagingError(
                f"{self.route}: the list does not advance: page {self.pages} returned the same "
                f"{len(ids)} items as the page before; the service ignores the paging parameter"
            )
        self._last_ids = ids


# ------------------------------------------------------------------------------ the hook


class AdobePlatformHook(BaseHook):
    """Authenticated access to Adobe Experience Platform and CJA APIs.

    :param adobe_conn_id: Airflow connection of type ``adobe_experience_platform``.
    :param sandbox: overrides the connection's sandbox.
    :param max_attempts: HTTP requests one call may send before a transient failure is final (token
        fetches and the look-ups that reconcile a create included; the first try counts).
    :param max_retry_wait: longest wait between attempts, seconds (also caps ``Retry-After``).
    :param initial_retry_wait: first backoff wait, seconds (also the shortest ``Retry-After`` honoured).
    """

    conn_name_attr = "adobe_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = CONN_TYPE
    hook_name = "Adobe Experience Platform"

    def __init__(
        self,
        adobe_conn_id: str = DEFAULT_CONN_ID,
        *,
        sandbox: str | None = None,
        max_attempts: int = 8,
        max_retry_wait: float = 60.0,
        initial_retry_wait: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if max_attempts < 1:
            raise AepConfigError("max_attempts must be >= 1")
        if not (0 < initial_retry_wait <= max_retry_wait) or not math.isfinite(max_retry_wait):
            raise AepConfigError("retry waits must satisfy 0 < initial_retry_wait <= max_retry_wait (finite)")
        self.adobe_conn_id = adobe_conn_id
        self.sandbox_override = sandbox
        self.max_attempts = max_attempts
        self.max_retry_wait = max_retry_wait
        self.initial_retry_wait = initial_retry_wait
        # route -> number of retries made; operators log it (and reliability tests read it).
        self.retry_counts: Counter[str] = Counter()
        self._aiohttp_session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        # Never the settings' values beyond ids: no token or secret lives on the hook, and none is shown.
        sandbox = f", sandbox={self.sandbox_override!r}" if self.sandbox_override else ""
        return f"{type(self).__name__}(adobe_conn_id={self.adobe_conn_id!r}{sandbox})"

    # ---------------------------------------------------------------- connection settings

    _EXTRAS = (
        "sandbox",
        "scopes",
        "ims_url",
        "platform_url",
        "cja_url",
        "ui_url",
        "query_service_host",
        "query_service_port",
        "query_service_database",
        "ca_bundle",
        "timeout",
        "call_deadline",
        "max_response_bytes",
        "max_pages",
    )

    @classmethod
    def _settings_from(cls, conn: Any, extra: dict[str, Any], sandbox: str | None) -> AdobeConnectionSettings:
        def pick(key: str) -> Any:
            value = extra.get(key)
            return None if value in ("", None) else value

        values: dict[str, Any] = {
            "client_id": conn.login or "",
            "client_secret": conn.password or "",
            "org_id": pick("org_id") or "",
        }
        for key in cls._EXTRAS:
            if pick(key) is not None:
                values[key] = pick(key)
        if sandbox:
            values["sandbox"] = sandbox
        missing = [
            label
            for key, label in (
                ("client_id", "login (Client ID)"),
                ("client_secret", "password (Client secret)"),
                ("org_id", "extra 'org_id' (IMS org ID)"),
            )
            if not values[key]
        ]
        if missing:
            raise AepConfigError(f"Airflow connection {conn.conn_id!r} is missing {', '.join(missing)}")
        message = ""
        try:
            return AdobeConnectionSettings.model_validate(values)
        except ValueError as exc:  # pydantic names the field (a SecretStr never shows the secret)
            message = f"Airflow connection {conn.conn_id!r} is invalid: {exc}"
        raise AepConfigError(message)  # unchained: pydantic's error holds the values it was given

    @cached_property
    def settings(self) -> AdobeConnectionSettings:
        conn = self.get_connection(self.adobe_conn_id)
        return self._settings_from(conn, conn.extra_dejson, self.sandbox_override)

    async def aget_settings(self) -> AdobeConnectionSettings:
        """Async twin of :attr:`settings` for the triggerer (fills the same cache slot)."""
        if "settings" not in self.__dict__:
            conn = await BaseHook.aget_connection(self.adobe_conn_id)
            extra = await conn.aextra_dejson()
            self.__dict__["settings"] = self._settings_from(conn, extra, self.sandbox_override)
        return self.__dict__["settings"]

    @property
    def sandbox(self) -> str:
        return self.settings.sandbox

    def page_guard(self, route: str) -> PageGuard:
        """A :class:`PageGuard` for one list call, bounded by the connection's ``max_pages``."""
        return PageGuard(route, self.settings.max_pages)

    # ---------------------------------------------------------------- request building (shared)

    def _base_url(self, service: Service) -> str:
        s = self.settings
        return {"platform": s.platform_url, "cja": s.cja_url, "ims": s.ims_url}[service]

    def _headers(
        self,
        service: Service,
        token: str,
        *,
        accept: str | None,
        content_type: str | None,
        extra: dict[str, str] | None,
    ) -> dict[str, str]:
        s = self.settings
        headers = {
            "Authorization": f"Bearer {token}",
            "x-api-key": s.client_id,
            "x-gw-ims-org-id": s.org_id,
            "x-request-id": str(uuid.uuid4()),
            "Accept": accept or JSON,
        }
        if service == "platform":  # CJA takes no sandbox header
            headers["x-sandbox-name"] = s.sandbox
        if content_type:
            headers["Content-Type"] = content_type
        if extra:
            headers.update(extra)
        return headers

    def _token_form(self) -> dict[str, str]:
        s = self.settings
        return {
            "grant_type": "client_credentials",
            "client_id": s.client_id,
            "client_secret": s.client_secret.get_secret_value(),
            "scope": s.scopes,
        }

    def _retrying_args(self, route: str, idempotent: bool) -> dict[str, Any]:
        """tenacity arguments with this hook's policy, for work that is not an HTTP call (Query Service
        statements, which open their own connections); HTTP calls retry in :meth:`_run`."""

        def before_sleep(state: tenacity.RetryCallState) -> None:
            self.retry_counts[route] += 1
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "%s: attempt %d/%d failed (%s); retrying in %.1f s",
                route,
                state.attempt_number,
                self.max_attempts,
                exc,
                state.upcoming_sleep,
            )

        return {
            "stop": tenacity.stop_after_attempt(self.max_attempts),
            "wait": _WaitRetryAfterOrExponential(self.initial_retry_wait, self.max_retry_wait),
            "retry": tenacity.retry_if_exception(lambda e: _is_transient(e, idempotent)),
            "before_sleep": before_sleep,
            "reraise": True,
        }

    @staticmethod
    def _is_idempotent(method: str, idempotent: bool | None) -> bool:
        return method in IDEMPOTENT_METHODS if idempotent is None else idempotent

    def _url(self, service: Service, path: str) -> str:
        return self._base_url(service) + path

    @staticmethod
    def _token_from_response(payload: Any, url: str) -> _CachedToken:
        """Validate IMS's answer: a non-empty string token and a finite lifetime of at least a second
        (0, negative or NaN would mean a token fetch per call; ``None`` would be sent as ``Bearer None``)."""
        if not isinstance(payload, dict):
            raise AepResponseError(
                f"POST {url}: IMS answered 200 with a JSON {type(payload).__name__}, not the "
                f"token object; check the connection's 'ims_url'"
            )
        value = payload.get("access_token")
        if not isinstance(value, str) or not value.strip() or any(c in value for c in "\r\n "):
            raise AepResponseError(
                f"POST {url}: IMS answered 200 without a usable access_token "
                f"({type(value).__name__}); check the connection's 'ims_url'"
            )
        raw = payload.get("expires_in")
        lifetime = math.nan
        if isinstance(raw, (int, float, str)) and not isinstance(raw, bool):
            try:
                lifetime = float(raw)  # seconds on /ims/token/v3 (ms was JWT-era)
            except ValueError:
                pass
        if not math.isfinite(lifetime) or lifetime < MIN_TOKEN_LIFETIME:
            raise AepResponseError(
                f"POST {url}: IMS answered 200 with expires_in {str(raw)[:40]!r}; expected a "
                f"number of seconds >= {MIN_TOKEN_LIFETIME:g}"
            )
        return _CachedToken(value=value, expires_at=time.time() + lifetime, lifetime=lifetime)

    @staticmethod
    def _parse_json(text: str, method: str, url: str, content_type: str | None) -> Any:
        """JSON of a 2xx answer, or a clear error that shows a short excerpt (never the whole body)."""
        import json as _json

        if not text:
            return None
        excerpt = None
        try:
            return _json.loads(text)
        except ValueError:
            excerpt = " ".join(text[:200].split())
        raise AepResponseError(
            f"{method} {url}: expected JSON, got {content_type or 'no content type'}: "
            f"{excerpt!r}; something other than Adobe may have answered (a proxy or portal)"
        )

    def _too_large(self, method: str, url: str, size: int | None) -> AepResponseTooLargeError:
        cap = self.settings.max_response_bytes
        what = f"{size} bytes, more" if size is not None else "more"
        return AepResponseTooLargeError(
            f"{method} {url}: the answer is {what} than the connection's limit of "
            f"{cap} bytes (extra 'max_response_bytes'); not read any further"
        )

    def _declared_too_large(self, headers: Any, method: str, url: str) -> AepResponseTooLargeError | None:
        length = headers.get("Content-Length")
        if length and str(length).strip().isdigit() and int(length) > self.settings.max_response_bytes:
            return self._too_large(method, url, int(length))
        return None

    def _check_redirect(self, status: int, headers: Any, method: str, url: str) -> None:
        if 300 <= status < 400:
            raise redirect_error(
                status=status,
                method=method,
                url=url,
                location=headers.get("Location"),
                request_id=headers.get("x-request-id"),
            )

    def _new_call(self, route: str) -> _Call:
        return _Call(route, self.max_attempts, self.settings.call_deadline)

    def _next_wait(self, call: _Call, error: AepError, idempotent: bool, failures: int) -> float | None:
        """Seconds to wait before the next try of ``call``, or None when ``error`` is final."""
        if not _is_transient(error, idempotent) or call.requests >= call.max_requests:
            return None
        wait = retry_wait(error, failures, self.initial_retry_wait, self.max_retry_wait)
        if wait >= call.remaining():
            log.warning(
                "%s: not retrying: the next try would start after the call deadline (%g s)",
                call.route,
                call.deadline_seconds,
            )
            return None
        route = error.__dict__.get(_ROUTE_ATTR, call.route)
        self.retry_counts[route] += 1
        log.warning(
            "%s: attempt %d/%d failed (%s); retrying in %.1f s",
            route,
            call.requests,
            call.max_requests,
            error,
            wait,
        )
        return wait

    def _run(self, route: str, idempotent: bool, attempt: Callable[[_Call], T]) -> T:
        """Run ``attempt`` as one call: retried here when outermost, a single attempt inside another call."""
        outer = _CALL.get()
        if outer is not None:
            try:
                return attempt(outer)
            except AepError as exc:
                _tag(exc, route)
                raise
        call = self._new_call(route)
        reset = _CALL.set(call)
        try:
            failures = 0
            while True:
                try:
                    return attempt(call)
                except AepError as exc:
                    _tag(exc, route)
                    error = exc
                failures += 1
                wait = self._next_wait(call, error, idempotent, failures)
                if wait is None:
                    raise error
                time.sleep(wait)
        finally:
            _CALL.reset(reset)

    async def _arun(self, route: str, idempotent: bool, attempt: Callable[[_Call], Awaitable[T]]) -> T:
        """Async twin of :meth:`_run` (the same budget, policy and counts)."""
        outer = _CALL.get()
        if outer is not None:
            try:
                return await attempt(outer)
            except AepError as exc:
                _tag(exc, route)
                raise
        call = self._new_call(route)
        reset = _CALL.set(call)
        try:
            failures = 0
            while True:
                try:
                    return await attempt(call)
                except AepError as exc:
                    _tag(exc, route)
                    error = exc
                failures += 1
                wait = self._next_wait(call, error, idempotent, failures)
                if wait is None:
                    raise error
                await asyncio.sleep(wait)
        finally:
            _CALL.reset(reset)

    # ---------------------------------------------------------------- sync path

    @cached_property
    def session(self) -> requests.Session:
        session = requests.Session()
        session.verify = self.settings.verify  # the CA bundle or the system store; never False
        session.trust_env = False  # no proxies or CA overrides from the environment behind our back
        adapter = _WatchedAdapter(pool_connections=4, pool_maxsize=16, max_retries=0)
        session.mount("https://", adapter)
        return session

    def _send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """One HTTP request of the current call, body read (streamed, capped) before the deadline."""
        call = _CALL.get()
        if call is None:
            raise AepError("internal: an HTTP request outside a call")
        remaining = call.remaining()
        if remaining <= 0:
            raise _deadline_error(call, method, url)
        call.requests += 1
        body = kwargs.get("data")
        handle = body.open("rb") if isinstance(body, Path) else None  # streamed, reopened per attempt
        if handle is not None:
            kwargs["data"] = handle
        timeout = self.settings.timeout
        watch = _Watch()
        timer = threading.Timer(remaining, watch.expire)
        timer.daemon = True
        _WATCH.current = watch
        timer.start()
        response: requests.Response | None = None
        error: AepError | None = None
        done = False
        try:
            # verify per request: requests lets REQUESTS_CA_BUNDLE override a Session's verify.
            response = self.session.request(
                method,
                url,
                timeout=(min(10.0, timeout, remaining), min(timeout, remaining)),
                verify=self.settings.verify,
                allow_redirects=False,
                stream=True,
                **kwargs,
            )
            self._check_redirect(response.status_code, response.headers, method, url)
            if too_large := self._declared_too_large(response.headers, method, url):
                raise too_large
            chunks, size = [], 0
            for chunk in response.iter_content(_CHUNK):
                size += len(chunk)
                if size > self.settings.max_response_bytes:
                    raise self._too_large(method, url, None)
                chunks.append(chunk)
            response._content = b"".join(chunks)  # what .content/.text/.json() read from now on
            done = True
            return response
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            # Build our own error and raise it *outside* this block: the library's exception (holding
            # the prepared request: headers with the token, IMS's form with the secret) must not end
            # up as its __context__.
            error = self._transport_error(exc, method, url, call, watch, sent=response is not None)
        finally:
            timer.cancel()
            _WATCH.current = None
            watch.close()
            if handle is not None:
                handle.close()
            if response is not None and not done:
                response.close()  # never return a half-read connection to the pool
        raise error

    def _transport_error(
        self, exc: BaseException, method: str, url: str, call: _Call, watch: _Watch, *, sent: bool
    ) -> AepError:
        if watch.expired or call.remaining() <= 0:
            return _deadline_error(call, method, url)
        name = exc.__class__.__name__
        if isinstance(exc, requests.exceptions.SSLError) and not sent:
            return AepConfigError(
                f"{method} {url}: TLS verification failed ({name}). If this is the emulator or a proxy with "
                f"its own CA, set the connection's 'ca_bundle' extra."
            )
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return AepTransportError(
                f"{method} {url}: connect timeout ({name})", method=method, url=url, ambiguous=False
            )
        not_sent = not sent and ("NewConnectionError" in repr(exc) or "Failed to establish" in str(exc))
        return AepTransportError(
            f"{method} {url}: {name}: connection failed{' before sending' if not_sent else ''}",
            method=method,
            url=url,
            ambiguous=not not_sent,
        )

    def _raise_for(self, response: requests.Response, method: str, url: str) -> None:
        if response.status_code >= 400:
            raise self._api_error(
                status=response.status_code,
                method=method,
                url=url,
                text=_text(response),
                headers=response.headers,
            )

    def _api_error(self, *, status: int, method: str, url: str, text: str, headers: Any) -> AepApiError:
        """The typed error; when Adobe refused the credentials, it also names what to check."""
        error = api_error_from_response(status=status, method=method, url=url, text=text, headers=headers)
        if isinstance(error, AepAuthError):
            error.add_hint(self._auth_hint(error))
        return error

    def _auth_hint(self, error: AepAuthError) -> str | None:
        conn = f"Airflow connection {self.adobe_conn_id!r}"
        if error.url.endswith("/ims/token/v3"):
            return (
                f"Adobe IMS refused the credentials: check the login (client id) and password (client "
                f"secret) of {conn}; they must be an OAuth Server-to-Server credential"
            )
        if error.code == "403025":  # the gateway's "Profile is not valid"
            return (
                f"check the 'org_id' extra of {conn} (the IMS org of the credential), and that the "
                f"credential's product profiles include sandbox {self.sandbox!r}"
            )
        if error.code == "403003":  # "Api Key is invalid"
            return f"the API key (the login of {conn}) is not the client id the token was issued to"
        return None

    def _usable(self, key: str, stale: str | None) -> _CachedToken | None:
        cached = _TOKENS.get(key)
        if cached and cached.value != stale and cached.fresh(time.time()):
            return cached
        return None

    def _store_token(self, key: str, token: _CachedToken) -> None:
        _TOKENS[key] = token
        log.info(
            "Obtained an IMS access token for client %s (valid %.0f s)",
            self.settings.client_id,
            token.lifetime,
        )

    def get_access_token(self, *, stale: str | None = None) -> str:
        """A valid IMS access token from the process cache, fetched when missing or expiring.

        Inside another call (a request needing a token) this is one attempt of that call; on its own
        it is a call of its own, retried under route ``ims.token``.

        :param stale: a token Adobe just rejected (401); never returned again.
        """

        def attempt(call: _Call) -> str:
            key = _token_key(self.settings)
            with _TOKENS_LOCK:  # held across the fetch: concurrent callers wait for one IMS call
                if cached := self._usable(key, stale):
                    return cached.value
                url = self._url("ims", "/ims/token/v3")
                response = self._send("POST", url, data=self._token_form(), headers={"Accept": JSON})
                self._raise_for(response, "POST", url)
                payload = self._parse_json(_text(response), "POST", url, response.headers.get("Content-Type"))
                token = self._token_from_response(payload, url)
                mask_secret(token.value)
                self._store_token(key, token)
                return token.value

        return self._run("ims.token", True, attempt)

    def request(
        self,
        method: str,
        path: str,
        *,
        route: str,
        service: Service = "platform",
        params: dict[str, Any] | None = None,
        json: Any = None,
        data: bytes | Path | None = None,
        accept: str | None = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
        idempotent: bool | None = None,
    ) -> requests.Response:
        """Send one API call with auth, retries and typed errors; returns the 2xx response (body read).

        :param route: stable name of the call (``catalog.get_dataset``) used in logs and retry counts.
        :param idempotent: whether a transient failure may be retried blindly (default: by method).
        """
        method = method.upper()
        url = self._url(service, path)
        if json is not None and content_type is None:
            content_type = JSON

        def send(token: str) -> requests.Response:
            return self._send(
                method,
                url,
                params=params,
                json=json,
                data=data,
                headers=self._headers(
                    service, token, accept=accept, content_type=content_type, extra=headers
                ),
            )

        def attempt(call: _Call) -> requests.Response:
            token = self.get_access_token()
            response = send(token)
            if response.status_code == 401 and not call.token_refreshed and call.requests < call.max_requests:
                call.token_refreshed = True  # once per call: a token Adobe rejects although still valid
                log.info("%s: 401 from Adobe; refreshing the access token once", route)
                response = send(self.get_access_token(stale=token))
            self._raise_for(response, method, url)
            log.debug("%s %s -> %d (%s)", method, path, response.status_code, route)
            return response

        return self._run(route, self._is_idempotent(method, idempotent), attempt)

    def request_json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        return self._parse_json(_text(response), method.upper(), path, response.headers.get("Content-Type"))

    def create_once(
        self, what: str, create: Callable[[], T], find: Callable[[], T | None], *, route: str
    ) -> T:
        """Run a non-idempotent create so that retries never duplicate.

        One call (one budget): after a try that failed transiently, the next try first runs ``find``;
        if the failed try did create the object (the answer was lost), that object is returned,
        otherwise ``create`` is sent again. ``create`` and ``find`` make single attempts inside it.
        Retries are counted under the route of the request that failed.
        """
        unsure = False

        def attempt(call: _Call) -> T:
            nonlocal unsure
            if unsure:
                existing = find()
                if existing is not None:
                    log.warning("%s: the create went through before the error; using it", what)
                    return existing
                unsure = False
            try:
                return create()
            except AepError as exc:
                unsure = _is_transient(exc, idempotent=True) and not _not_processed(exc, route)
                raise

        return self._run(route, True, attempt)

    # ---------------------------------------------------------------- async path (triggerer)

    def _ssl_context(self) -> ssl.SSLContext:
        return _ssl_context(self.settings.ca_bundle)

    @asynccontextmanager
    async def async_session(self) -> AsyncIterator[AdobePlatformHook]:
        """Enable the ``a*`` methods in this block, on the HTTP session this event loop shares with
        every other hook of the same CA bundle and timeout (a trigger holds it across its polls)."""
        import aiohttp

        settings = await self.aget_settings()
        loop = asyncio.get_running_loop()
        key = (id(loop), settings.ca_bundle, settings.timeout)
        shared = _SHARED_SESSIONS.get(key)
        if shared is None or shared.loop is not loop or shared.session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl_context(), limit=_SHARED_POOL_SIZE)
            timeout = aiohttp.ClientTimeout(total=settings.timeout, connect=min(10.0, settings.timeout))
            # No cookie jar: nothing of one trigger's responses may travel with another's requests.
            session = aiohttp.ClientSession(
                connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
            )
            shared = _SHARED_SESSIONS[key] = _SharedSession(loop, session)
        shared.users += 1
        self._aiohttp_session = shared.session
        try:
            yield self
        finally:
            self._aiohttp_session = None
            shared.users -= 1
            if shared.users == 0:
                if _SHARED_SESSIONS.get(key) is shared:
                    del _SHARED_SESSIONS[key]
                await shared.session.close()

    async def _asend(self, method: str, url: str, **kwargs: Any) -> tuple[int, str, Any]:
        """One HTTP request of the current call: (status, text, headers), within the call deadline.

        aiohttp's ``total`` timeout covers connecting, sending and reading the whole body; it is the
        connection's ``timeout`` or what is left of the call deadline, whichever is shorter (no extra
        task per request, which 500 triggers polling at once would pay for)."""
        import aiohttp

        if self._aiohttp_session is None:
            raise AepError("async call outside 'async with hook.async_session()'")
        call = _CALL.get()
        if call is None:
            raise AepError("internal: an HTTP request outside a call")
        remaining = call.remaining()
        if remaining <= 0:
            raise _deadline_error(call, method, url)
        call.requests += 1
        timeout = self.settings.timeout
        bound = aiohttp.ClientTimeout(total=min(timeout, remaining), connect=min(10.0, timeout, remaining))
        error: AepError | None = None
        try:
            async with self._aiohttp_session.request(
                method, url, allow_redirects=False, timeout=bound, **kwargs
            ) as response:
                self._check_redirect(response.status, response.headers, method, url)
                if too_large := self._declared_too_large(response.headers, method, url):
                    raise too_large
                body = bytearray()
                async for chunk in response.content.iter_chunked(_CHUNK):
                    if len(body) + len(chunk) > self.settings.max_response_bytes:
                        raise self._too_large(method, url, None)
                    body += chunk
                try:
                    text = body.decode(response.charset or "utf-8", errors="replace")
                except LookupError:  # an unknown charset name
                    text = body.decode("utf-8", errors="replace")
                return response.status, text, response.headers
        except asyncio.TimeoutError as exc:
            if call.remaining() <= 0.05:  # the bound was the call deadline, and it has passed
                error = _deadline_error(call, method, url)
            else:
                error = AepTransportError(
                    f"{method} {url}: {exc.__class__.__name__}: no complete answer within "
                    f"the timeout of {timeout:g} s",
                    method=method,
                    url=url,
                    ambiguous=True,
                )
        except aiohttp.ClientConnectorCertificateError as exc:
            error = AepConfigError(
                f"{method} {url}: TLS verification failed ({exc.__class__.__name__}); "
                f"set the connection's 'ca_bundle' extra for a private CA"
            )
        except aiohttp.ClientConnectorError as exc:
            error = AepTransportError(
                f"{method} {url}: {exc.__class__.__name__}: connection failed before sending",
                method=method,
                url=url,
                ambiguous=False,
            )
        except (aiohttp.ClientError, OSError) as exc:
            error = AepTransportError(
                f"{method} {url}: {exc.__class__.__name__}: connection failed",
                method=method,
                url=url,
                ambiguous=True,
            )
        raise error  # outside the except blocks: aiohttp's exception (with the request) is not chained

    async def aget_access_token(self, *, stale: str | None = None) -> str:
        """Async twin of :meth:`get_access_token`, sharing its process-wide cache."""

        async def attempt(call: _Call) -> str:
            key = _token_key(await self.aget_settings())
            if cached := self._usable(key, stale):
                return cached.value
            lock = _ASYNC_TOKEN_LOCKS.setdefault((id(asyncio.get_running_loop()), key), asyncio.Lock())
            async with lock:  # one IMS call per event loop, however many triggers wait for it
                if cached := self._usable(key, stale):
                    return cached.value
                url = self._url("ims", "/ims/token/v3")
                status, text, headers = await self._asend(
                    "POST", url, data=self._token_form(), headers={"Accept": JSON}
                )
                if status >= 400:
                    raise self._api_error(status=status, method="POST", url=url, text=text, headers=headers)
                token = self._token_from_response(
                    self._parse_json(text, "POST", url, headers.get("Content-Type")), url
                )
                await amask_secret(token.value)
                with _TOKENS_LOCK:
                    self._store_token(key, token)
                return token.value

        return await self._arun("ims.token", True, attempt)

    async def arequest_json(
        self,
        method: str,
        path: str,
        *,
        route: str,
        service: Service = "platform",
        params: dict[str, Any] | None = None,
        json: Any = None,
        accept: str | None = None,
        idempotent: bool | None = None,
    ) -> Any:
        """Async twin of :meth:`request_json` (same headers, budget, retries and errors)."""
        method = method.upper()
        url = self._url(service, path)

        async def send(token: str) -> tuple[int, str, Any]:
            return await self._asend(
                method,
                url,
                params=params,
                json=json,
                headers=self._headers(
                    service, token, accept=accept, content_type=JSON if json is not None else None, extra=None
                ),
            )

        async def attempt(call: _Call) -> Any:
            token = await self.aget_access_token()
            status, text, headers = await send(token)
            if status == 401 and not call.token_refreshed and call.requests < call.max_requests:
                call.token_refreshed = True
                log.info("%s: 401 from Adobe; refreshing the access token once", route)
                status, text, headers = await send(await self.aget_access_token(stale=token))
            if status >= 400:
                raise self._api_error(status=status, method=method, url=url, text=text, headers=headers)
            return self._parse_json(text, method, url, headers.get("Content-Type"))

        return await self._arun(route, self._is_idempotent(method, idempotent), attempt)

    # ---------------------------------------------------------------- connection test

    def test_connection(self) -> tuple[bool, str]:
        """Get a token, read one cheap resource (one dataset id from Catalog), and run ``SELECT 1`` on Query
        Service (TLS, authentication): the pipeline needs both."""
        try:
            with _TOKENS_LOCK:  # prove the credentials now, not with a cached token
                _TOKENS.pop(_token_key(self.settings), None)
            self.get_access_token()
            self.request_json(
                "GET",
                "/data/foundation/catalog/dataSets",
                route="catalog.list_datasets",
                params={"limit": 1, "properties": "name"},
            )
        except AepError as exc:
            return False, str(exc)
        from airflow_cja_audiences.hooks.query_service import QueryServiceHook  # it imports this module

        qs_ok, query_service = QueryServiceHook(
            self.adobe_conn_id, platform_hook=self, connect_timeout=10
        ).test_connection()
        if not qs_ok:
            return False, f"The AEP APIs answered, but Query Service did not: {query_service}"
        s = self.settings
        return True, (
            f"Connected to AEP org {s.org_id}, sandbox {s.sandbox!r} as client {s.client_id}; {query_service}"
        )


def path_segment(value: str) -> str:
    """Quote one URL path segment (ids, ``$id`` URIs of Schema Registry) so it cannot change the path."""
    return quote(value, safe="")
