"""AdobePlatformHook: OAuth Server-to-Server auth, one HTTP session, bounded retries, typed errors.

Every service hook (Catalog, Segmentation, ...) subclasses this one. The sync path (``requests``)
runs in workers; the async path (``aiohttp``) runs in the triggerer. Both build requests, classify
errors and decide retries with the same functions, so a trigger behaves exactly like a task.

Retries: 429 (honouring ``Retry-After``), 5xx and connection errors are retried with exponential
backoff for idempotent calls. A create (POST) that fails ambiguously - a 5xx, a reset or a read
timeout after the request may have been processed - is not blindly sent again: the service hook
first looks for what the create would have made (:meth:`AdobePlatformHook.create_once`), so a retry
never duplicates a dataset, schema or export job.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import ssl
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import quote

import requests
import tenacity
from airflow.sdk import BaseHook
from airflow.sdk.log import amask_secret, mask_secret

from airflow_cja_audiences import CONN_TYPE, DEFAULT_CONN_ID
from airflow_cja_audiences.errors import (
    AepApiError,
    AepAuthError,
    AepConfigError,
    AepError,
    AepTransportError,
    api_error_from_response,
)
from airflow_cja_audiences.models import AdobeConnectionSettings

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)

Service = Literal["platform", "cja", "ims"]
T = TypeVar("T")

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
JSON = "application/json"


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


# ------------------------------------------------------------------------------ retry policy


def _is_transient(exc: BaseException, idempotent: bool) -> bool:
    """Retry decision shared by the sync and async paths."""
    if isinstance(exc, AepApiError):
        if exc.status == 429:
            return True  # throttled: the request was not processed
        return exc.retryable and idempotent
    if isinstance(exc, AepTransportError):
        return idempotent or not exc.ambiguous
    return False


class _WaitRetryAfterOrExponential(tenacity.wait.wait_base):
    """Honour ``Retry-After`` (capped); otherwise exponential backoff with jitter."""

    def __init__(self, initial: float, maximum: float):
        self.maximum = maximum
        # Jitter in proportion to the first wait (1 s at the default 0.5 s), so short waits stay short.
        # (wait_exponential + wait_random rather than wait_exponential_jitter, whose 'initial' is
        # deprecated in tenacity 9.2 while its replacement does not exist in 9.0.)
        self.exponential = (tenacity.wait_exponential(multiplier=initial, max=maximum)
                            + tenacity.wait_random(0, 2 * initial))

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return min(float(retry_after), self.maximum)
        return min(self.exponential(retry_state), self.maximum)


# ------------------------------------------------------------------------------ the hook


class AdobePlatformHook(BaseHook):
    """Authenticated access to Adobe Experience Platform and CJA APIs.

    :param adobe_conn_id: Airflow connection of type ``adobe_experience_platform``.
    :param sandbox: overrides the connection's sandbox.
    :param max_attempts: attempts per request (first try included) for transient errors.
    :param max_retry_wait: longest wait between attempts, seconds (also caps ``Retry-After``).
    """

    conn_name_attr = "adobe_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = CONN_TYPE
    hook_name = "Adobe Experience Platform"

    def __init__(self, adobe_conn_id: str = DEFAULT_CONN_ID, *, sandbox: str | None = None,
                 max_attempts: int = 8, max_retry_wait: float = 60.0, initial_retry_wait: float = 0.5,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if max_attempts < 1:
            raise AepConfigError("max_attempts must be >= 1")
        self.adobe_conn_id = adobe_conn_id
        self.sandbox_override = sandbox
        self.max_attempts = max_attempts
        self.max_retry_wait = max_retry_wait
        self.initial_retry_wait = initial_retry_wait
        # route -> number of retries made; operators log it (and reliability tests read it).
        self.retry_counts: Counter[str] = Counter()
        self._aiohttp_session: aiohttp.ClientSession | None = None

    # ---------------------------------------------------------------- connection settings

    @staticmethod
    def _settings_from(conn: Any, extra: dict[str, Any], sandbox: str | None) -> AdobeConnectionSettings:
        def pick(key: str) -> Any:
            value = extra.get(key)
            return None if value in ("", None) else value

        values: dict[str, Any] = {"client_id": conn.login or "", "client_secret": conn.password or "",
                                  "org_id": pick("org_id") or ""}
        for key in ("sandbox", "scopes", "ims_url", "platform_url", "cja_url", "ui_url", "query_service_host",
                    "query_service_port", "query_service_database", "ca_bundle", "timeout"):
            if pick(key) is not None:
                values[key] = pick(key)
        if sandbox:
            values["sandbox"] = sandbox
        missing = [label for key, label in (("client_id", "login (Client ID)"),
                                            ("client_secret", "password (Client secret)"),
                                            ("org_id", "extra 'org_id' (IMS org ID)")) if not values[key]]
        if missing:
            raise AepConfigError(f"Airflow connection {conn.conn_id!r} is missing {', '.join(missing)}")
        try:
            return AdobeConnectionSettings.model_validate(values)
        except ValueError as exc:  # pydantic names the field; keep the secret out of the message
            raise AepConfigError(f"Airflow connection {conn.conn_id!r} is invalid: {exc}") from None

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

    # ---------------------------------------------------------------- request building (shared)

    def _base_url(self, service: Service) -> str:
        s = self.settings
        return {"platform": s.platform_url, "cja": s.cja_url, "ims": s.ims_url}[service]

    def _headers(self, service: Service, token: str, *, accept: str | None, content_type: str | None,
                 extra: dict[str, str] | None) -> dict[str, str]:
        s = self.settings
        headers = {"Authorization": f"Bearer {token}", "x-api-key": s.client_id,
                   "x-gw-ims-org-id": s.org_id, "x-request-id": str(uuid.uuid4()),
                   "Accept": accept or JSON}
        if service == "platform":  # CJA takes no sandbox header
            headers["x-sandbox-name"] = s.sandbox
        if content_type:
            headers["Content-Type"] = content_type
        if extra:
            headers.update(extra)
        return headers

    def _token_form(self) -> dict[str, str]:
        s = self.settings
        return {"grant_type": "client_credentials", "client_id": s.client_id,
                "client_secret": s.client_secret.get_secret_value(), "scope": s.scopes}

    def _retrying_args(self, route: str, idempotent: bool) -> dict[str, Any]:
        def before_sleep(state: tenacity.RetryCallState) -> None:
            self.retry_counts[route] += 1
            exc = state.outcome.exception() if state.outcome else None
            log.warning("%s: attempt %d/%d failed (%s); retrying in %.1f s", route, state.attempt_number,
                        self.max_attempts, exc, state.upcoming_sleep)

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
        try:
            value = payload["access_token"]
            lifetime = float(payload["expires_in"])  # seconds on /ims/token/v3 (ms was JWT-era)
        except (KeyError, TypeError, ValueError):
            raise AepError(f"POST {url}: IMS answered 200 without access_token/expires_in") from None
        return _CachedToken(value=value, expires_at=time.time() + lifetime, lifetime=lifetime)

    # ---------------------------------------------------------------- sync path

    @cached_property
    def session(self) -> requests.Session:
        session = requests.Session()
        session.verify = self.settings.verify  # the CA bundle or the system store; never False
        session.trust_env = False  # no proxies or CA overrides from the environment behind our back
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=16, max_retries=0)
        session.mount("https://", adapter)
        return session

    def _timeout(self) -> tuple[float, float]:
        return (min(10.0, self.settings.timeout), self.settings.timeout)

    def _send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        body = kwargs.get("data")
        handle = body.open("rb") if isinstance(body, Path) else None  # streamed, reopened per attempt
        if handle is not None:
            kwargs["data"] = handle
        try:
            # verify per request: requests lets REQUESTS_CA_BUNDLE override a Session's verify.
            return self.session.request(method, url, timeout=self._timeout(), verify=self.settings.verify,
                                        **kwargs)
        except requests.exceptions.SSLError as exc:
            raise AepConfigError(
                f"{method} {url}: TLS verification failed ({exc.__class__.__name__}). If this is the "
                f"emulator or a proxy with its own CA, set the connection's 'ca_bundle' extra.") from None
        except (requests.exceptions.ConnectTimeout,) as exc:
            raise AepTransportError(f"{method} {url}: connect timeout ({exc.__class__.__name__})",
                                    method=method, url=url, ambiguous=False) from None
        except requests.exceptions.RequestException as exc:
            not_sent = "NewConnectionError" in repr(exc) or "Failed to establish" in str(exc)
            raise AepTransportError(f"{method} {url}: {exc.__class__.__name__}: connection failed"
                                    f"{' before sending' if not_sent else ''}",
                                    method=method, url=url, ambiguous=not not_sent) from None
        finally:
            if handle is not None:
                handle.close()

    def _raise_for(self, response: requests.Response, method: str, url: str) -> None:
        if response.status_code >= 400:
            raise self._api_error(status=response.status_code, method=method, url=url, text=response.text,
                                  headers=response.headers)

    def _api_error(self, *, status: int, method: str, url: str, text: str, headers: Any) -> AepApiError:
        """The typed error; when Adobe refused the credentials, it also names what to check."""
        error = api_error_from_response(status=status, method=method, url=url, text=text, headers=headers)
        if isinstance(error, AepAuthError):
            error.add_hint(self._auth_hint(error))
        return error

    def _auth_hint(self, error: AepAuthError) -> str | None:
        conn = f"Airflow connection {self.adobe_conn_id!r}"
        if error.url.endswith("/ims/token/v3"):
            return (f"Adobe IMS refused the credentials: check the login (client id) and password (client "
                    f"secret) of {conn}; they must be an OAuth Server-to-Server credential")
        if error.code == "403025":  # the gateway's "Profile is not valid"
            return (f"check the 'org_id' extra of {conn} (the IMS org of the credential), and that the "
                    f"credential's product profiles include sandbox {self.sandbox!r}")
        if error.code == "403003":  # "Api Key is invalid"
            return f"the API key (the login of {conn}) is not the client id the token was issued to"
        return None

    def _usable(self, key: str, stale: str | None) -> _CachedToken | None:
        cached = _TOKENS.get(key)
        if cached and cached.value != stale and cached.fresh(time.time()):
            return cached
        return None

    def get_access_token(self, *, stale: str | None = None) -> str:
        """A valid IMS access token from the process cache, fetched when missing or expiring.

        :param stale: a token Adobe just rejected (401); never returned again.
        """
        key = _token_key(self.settings)
        with _TOKENS_LOCK:  # held across the fetch: concurrent callers wait for one IMS call
            if cached := self._usable(key, stale):
                return cached.value
            url = self._url("ims", "/ims/token/v3")

            def fetch() -> _CachedToken:
                response = self._send("POST", url, data=self._token_form(), headers={"Accept": JSON})
                self._raise_for(response, "POST", url)
                return self._token_from_response(response.json(), url)

            token = tenacity.Retrying(**self._retrying_args("ims.token", idempotent=True))(fetch)
            mask_secret(token.value)
            _TOKENS[key] = token
            log.info("Obtained an IMS access token for client %s (valid %.0f s)",
                     self.settings.client_id, token.lifetime)
            return token.value

    def request(self, method: str, path: str, *, route: str, service: Service = "platform",
                params: dict[str, Any] | None = None, json: Any = None, data: bytes | Path | None = None,
                accept: str | None = None, content_type: str | None = None,
                headers: dict[str, str] | None = None, idempotent: bool | None = None) -> requests.Response:
        """Send one API call with auth, retries and typed errors; returns the 2xx response.

        :param route: stable name of the call (``catalog.get_dataset``) used in logs and retry counts.
        :param idempotent: whether a transient failure may be retried blindly (default: by method).
        """
        method = method.upper()
        url = self._url(service, path)
        if json is not None and content_type is None:
            content_type = JSON

        def attempt() -> requests.Response:
            token = self.get_access_token()
            for refreshed in (False, True):
                response = self._send(method, url, params=params, json=json, data=data,
                                      headers=self._headers(service, token, accept=accept,
                                                            content_type=content_type, extra=headers))
                if response.status_code == 401 and not refreshed:
                    log.info("%s: 401 from Adobe; refreshing the access token once", route)
                    token = self.get_access_token(stale=token)
                    continue
                self._raise_for(response, method, url)
                log.debug("%s %s -> %d (%s)", method, path, response.status_code, route)
                return response
            raise AssertionError("unreachable")

        retrying = tenacity.Retrying(**self._retrying_args(route, self._is_idempotent(method, idempotent)))
        return retrying(attempt)

    def request_json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise AepError(f"{method} {path}: expected JSON, got {response.text[:200]!r}") from None

    def create_once(self, what: str, create: Callable[[], T], find: Callable[[], T | None], *, route: str) -> T:
        """Run a non-idempotent create so that retries never duplicate.

        ``create`` is retried only after ``find`` confirmed that the failed attempt left nothing
        behind; if it did create the object (the answer was lost), that object is returned.
        Retries are counted under ``route``, the create call's route, like every other call's.
        """
        def attempt() -> T:
            try:
                return create()
            except (AepApiError, AepTransportError) as exc:
                if not _is_transient(exc, idempotent=True):
                    raise
                existing = find()
                if existing is not None:
                    log.warning("%s: the create went through before the error (%s); using it", what, exc)
                    return existing
                raise

        return tenacity.Retrying(**self._retrying_args(route, idempotent=True))(attempt)

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
            session = aiohttp.ClientSession(connector=connector, timeout=timeout,
                                            cookie_jar=aiohttp.DummyCookieJar())
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
        import aiohttp

        if self._aiohttp_session is None:
            raise AepError("async call outside 'async with hook.async_session()'")
        try:
            async with self._aiohttp_session.request(method, url, **kwargs) as response:
                return response.status, await response.text(), response.headers
        except aiohttp.ClientConnectorCertificateError as exc:
            raise AepConfigError(f"{method} {url}: TLS verification failed ({exc.__class__.__name__}); "
                                 f"set the connection's 'ca_bundle' extra for a private CA") from None
        except aiohttp.ClientConnectorError as exc:
            raise AepTransportError(f"{method} {url}: {exc.__class__.__name__}: connection failed before "
                                    f"sending", method=method, url=url, ambiguous=False) from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise AepTransportError(f"{method} {url}: {exc.__class__.__name__}: connection failed",
                                    method=method, url=url, ambiguous=True) from None

    async def aget_access_token(self, *, stale: str | None = None) -> str:
        """Async twin of :meth:`get_access_token`, sharing its process-wide cache."""
        import json as _json

        key = _token_key(await self.aget_settings())
        if cached := self._usable(key, stale):
            return cached.value
        lock = _ASYNC_TOKEN_LOCKS.setdefault((id(asyncio.get_running_loop()), key), asyncio.Lock())
        async with lock:  # one IMS call per event loop, however many triggers wait for it
            if cached := self._usable(key, stale):
                return cached.value
            url = self._url("ims", "/ims/token/v3")

            async def fetch() -> _CachedToken:
                status, text, headers = await self._asend("POST", url, data=self._token_form(),
                                                          headers={"Accept": JSON})
                if status >= 400:
                    raise self._api_error(status=status, method="POST", url=url, text=text, headers=headers)
                return self._token_from_response(_json.loads(text), url)

            token = await tenacity.AsyncRetrying(**self._retrying_args("ims.token", idempotent=True))(fetch)
            await amask_secret(token.value)
            with _TOKENS_LOCK:
                _TOKENS[key] = token
            log.info("Obtained an IMS access token for client %s (valid %.0f s)",
                     self.settings.client_id, token.lifetime)
            return token.value

    async def arequest_json(self, method: str, path: str, *, route: str, service: Service = "platform",
                            params: dict[str, Any] | None = None, json: Any = None,
                            accept: str | None = None, idempotent: bool | None = None) -> Any:
        """Async twin of :meth:`request_json` (same headers, retries and errors)."""
        import json as _json

        method = method.upper()
        url = self._url(service, path)

        async def attempt() -> Any:
            token = await self.aget_access_token()
            for refreshed in (False, True):
                status, text, headers = await self._asend(
                    method, url, params=params, json=json,
                    headers=self._headers(service, token, accept=accept,
                                          content_type=JSON if json is not None else None, extra=None))
                if status == 401 and not refreshed:
                    log.info("%s: 401 from Adobe; refreshing the access token once", route)
                    token = await self.aget_access_token(stale=token)
                    continue
                if status >= 400:
                    raise self._api_error(status=status, method=method, url=url, text=text, headers=headers)
                return _json.loads(text) if text else None
            raise AssertionError("unreachable")

        retrying = tenacity.AsyncRetrying(**self._retrying_args(route, self._is_idempotent(method, idempotent)))
        return await retrying(attempt)

    # ---------------------------------------------------------------- connection test

    def test_connection(self) -> tuple[bool, str]:
        """Get a token, read one cheap resource (one dataset id from Catalog), and run ``SELECT 1`` on Query
        Service (TLS, authentication): the pipeline needs both."""
        try:
            with _TOKENS_LOCK:  # prove the credentials now, not with a cached token
                _TOKENS.pop(_token_key(self.settings), None)
            self.get_access_token()
            self.request_json("GET", "/data/foundation/catalog/dataSets", route="catalog.list_datasets",
                              params={"limit": 1, "properties": "name"})
        except AepError as exc:
            return False, str(exc)
        from airflow_cja_audiences.hooks.query_service import QueryServiceHook  # it imports this module

        qs_ok, query_service = QueryServiceHook(self.adobe_conn_id, platform_hook=self, connect_timeout=10).test_connection()
        if not qs_ok:
            return False, f"The AEP APIs answered, but Query Service did not: {query_service}"
        s = self.settings
        return True, (f"Connected to AEP org {s.org_id}, sandbox {s.sandbox!r} as client {s.client_id}; "
                      f"{query_service}")


def path_segment(value: str) -> str:
    """Quote one URL path segment (ids, ``$id`` URIs of Schema Registry) so it cannot change the path."""
    return quote(value, safe="")
