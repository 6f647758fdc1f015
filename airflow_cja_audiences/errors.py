"""Typed errors that carry Adobe's own error body and request id.

Pure module (no Airflow import). AEP answers errors in three shapes (https://experienceleague.adobe.com/en/docs/experience-platform/landing/troubleshooting,
https://experienceleague.adobe.com/en/docs/experience-platform/xdm/troubleshooting-guide and the IMS OAuth Server-to-Server API reference,
https://developer.adobe.com/developer-console/docs/guides/authentication/ServerToServerAuthentication/ims):
gateway ``{"error_code", "message"}``, problem details ``{"type", "title", "status", "detail"}`` and
IMS/OAuth ``{"error", "error_description"}``; :func:`api_error_from_response` reads all of them so
a failure message always says what Adobe said, and the request id to quote to Adobe support.
"""

from __future__ import annotations

import json
import math
import time
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

_MAX_BODY_CHARS = 2000
_MAX_LOCATION_CHARS = 300


class AepError(Exception):
    """Base class of everything this package raises about Adobe."""


class AepConfigError(AepError, ValueError):
    """Configuration or input that is wrong before anything is sent (names the field)."""


class AepTransportError(AepError):
    """The request did not get an HTTP answer: connection refused or reset, timeout, TLS failure."""

    def __init__(self, message: str, *, method: str = "", url: str = "", ambiguous: bool = True):
        super().__init__(message)
        self.method = method
        self.url = url
        # True when the request may have reached the server (reset or read timeout), so a
        # non-idempotent call must be reconciled before it is sent again.
        self.ambiguous = ambiguous


class AepDeadlineError(AepTransportError):
    """The call's wall-clock deadline (connection extra ``call_deadline``) passed: no more tries.

    The hook never retries it (the deadline bounds the call, retries included); a task retry may.
    """


class AepResponseError(AepError):
    """Adobe's answer is not what the API documents: not JSON, the wrong shape, an unusable IMS token.

    Usually something else answered (a proxy, a captive portal, a gateway); retrying will not help.
    """


class AepResponseTooLargeError(AepResponseError):
    """The answer is larger than the connection's ``max_response_bytes``; it was not read into memory."""


class AepPagingError(AepResponseError):
    """A list did not end: more pages than ``max_pages``, or the next page was one already read."""


class AepWaitError(AepError):
    """A wait for an AEP object (export job, batch) did not end in success.

    ``permanent``: whether a task retry can help (see :func:`is_permanent`); the code that waited
    decides, since only it knows whether a retry reads the same object again or makes a new one.
    """

    def __init__(
        self,
        message: str,
        *,
        what: str,
        state: str | None = None,
        permanent: bool = False,
        advice: str | None = None,
    ):
        super().__init__(message)
        self.what = what
        self.state = state
        self.permanent = permanent
        self.advice = advice  # what a person should do (the fail-fast message appends it)


class AepWaitTimeoutError(AepWaitError):
    """The wait's deadline passed while the object was still running: a task retry waits again."""

    def __init__(self, message: str, *, what: str, state: str | None = None):
        super().__init__(message, what=what, state=state, permanent=False)


class AepObjectFailedError(AepWaitError):
    """The object waited for ended in a failed (or reverted/deleted) status."""


class AepApiError(AepError):
    """An HTTP error answer from an Adobe API."""

    def __init__(
        self,
        *,
        status: int,
        method: str,
        url: str,
        code: str | None,
        message: str,
        body: Any = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ):
        self.status = status
        self.method = method
        self.url = url
        self.code = code
        self.message = message
        self.body = body
        self.request_id = request_id
        self.retry_after = retry_after
        self.hint: str | None = None
        super().__init__(self._render())

    def _render(self) -> str:
        code = f" {self.code}" if self.code else ""
        rid = f" (x-request-id {self.request_id})" if self.request_id else ""
        hint = f". {self.hint}" if self.hint else ""
        return f"{self.method} {self.url} -> HTTP {self.status}{code}: {self.message}{rid}{hint}"

    def add_hint(self, hint: str | None) -> None:
        """Say what to do next (e.g. which connection field to check) after Adobe's own message."""
        if hint:
            self.hint = hint
            self.args = (self._render(),)

    @property
    def retryable(self) -> bool:
        return False


class AepBadRequestError(AepApiError):
    """400/409/415/422: the request itself is wrong; retrying will not help."""


class AepAuthError(AepApiError):
    """401/403: token, API key, org, product profile or sandbox permissions."""


class AepNotFoundError(AepApiError):
    """404: the resource does not exist (in this sandbox)."""


class AepRateLimitError(AepApiError):
    """429: throttled; retried honouring ``Retry-After``."""

    @property
    def retryable(self) -> bool:
        return True


class AepServerError(AepApiError):
    """5xx: Adobe's side failed; retried with backoff."""

    @property
    def retryable(self) -> bool:
        return True


class AepNotImplementedError(AepApiError):
    """501: a call the Adobe API (or the emulator) does not offer."""


class AepRedirectError(AepApiError):
    """3xx: redirects are never followed (they would carry credentials to wherever they point)."""


def _shown_location(url: str, location: str | None) -> str:
    """The redirect target as scheme://host/path (no user info, query or fragment), bounded in length."""
    if not location:
        return "(no Location header)"
    try:
        parts = urlsplit(urljoin(url, location.strip()))
        shown = urlunsplit((parts.scheme, parts.hostname or "", parts.path, "", ""))
        if parts.port:
            shown = urlunsplit((parts.scheme, f"{parts.hostname}:{parts.port}", parts.path, "", ""))
    except ValueError:
        shown = "(an unparsable Location)"
    return shown if len(shown) <= _MAX_LOCATION_CHARS else shown[:_MAX_LOCATION_CHARS] + "..."


def redirect_error(
    *, status: int, method: str, url: str, location: str | None, request_id: str | None = None
) -> AepRedirectError:
    """The error for a 3xx answer: names the status and where it pointed; nothing was sent there."""
    target = _shown_location(url, location)
    message = (
        f"redirect to {target} refused (redirects are never followed, so neither credentials nor "
        f"request bodies travel to another URL). Something other than Adobe answered: check the "
        f"connection's base URLs, or a proxy or captive portal on the way"
    )
    return AepRedirectError(
        status=status, method=method, url=url, code=None, message=message, body=None, request_id=request_id
    )


def _error_class(status: int) -> type[AepApiError]:
    if status == 429:
        return AepRateLimitError
    if status in (401, 403):
        return AepAuthError
    if status == 404:
        return AepNotFoundError
    if status == 501:
        return AepNotImplementedError
    if status >= 500:
        return AepServerError
    return AepBadRequestError


def parse_error_body(body: Any) -> tuple[str | None, str | None]:
    """Return (code, message) from any of Adobe's error shapes, or (None, None)."""
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]
    if not isinstance(body, dict):
        return None, None
    if "error_code" in body:  # gateway shape
        return str(body["error_code"]), str(body.get("message", ""))
    if "error" in body and isinstance(body["error"], str):  # IMS / OAuth shape
        return body["error"], str(body.get("error_description", body["error"]))
    if "title" in body or "detail" in body or "type" in body:  # problem details
        type_uri = str(body.get("type", ""))
        code = type_uri.rsplit("/", 1)[-1] if type_uri and "placeholder" not in type_uri else None
        parts = [str(body[k]) for k in ("title", "detail") if body.get(k)]
        return code or body.get("code"), ": ".join(parts) or type_uri
    for key in ("errorMessage", "message", "msg"):
        if key in body:
            return body.get("code"), str(body[key])
    return None, None


def api_error_from_response(
    *, status: int, method: str, url: str, text: str, headers: dict[str, str] | Any
) -> AepApiError:
    """Build the typed error for an HTTP error answer (headers: any case-insensitive mapping)."""
    try:
        body: Any = json.loads(text) if text else None
    except ValueError:
        body = text[:_MAX_BODY_CHARS]
    code, message = parse_error_body(body)
    if message is None:
        message = (text[:_MAX_BODY_CHARS] if text else "") or "no error body"
    request_id = headers.get("x-request-id") or headers.get("X-Request-Id")
    if request_id is None and isinstance(body, dict):
        report = body.get("report")
        if isinstance(report, dict):
            request_id = report.get("requestId") or report.get("x-request-id")
        request_id = request_id or body.get("requestId")
    retry_after = parse_retry_after(headers.get("Retry-After") or headers.get("retry-after"))
    return _error_class(status)(
        status=status,
        method=method,
        url=url,
        code=code,
        message=message,
        body=body,
        request_id=request_id,
        retry_after=retry_after,
    )


def parse_retry_after(raw: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP-date), or None.

    None (the caller backs off exponentially) for anything that is not a finite, non-negative delay:
    ``nan``, ``inf``, negative numbers, garbage. The caller clamps what it gets between its shortest
    and longest wait, so a hostile ``0`` or ``1e9`` neither busy-loops nor sleeps for hours.
    """
    if raw is None or not str(raw).strip():
        return None
    text = str(raw).strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None or when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
        seconds = max(0.0, seconds)  # a date in the past means "now"
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def is_permanent(exc: BaseException) -> bool:
    """True when trying the same task again cannot succeed: bad configuration or input, credentials or
    permissions (a 401 is answered only after one token refresh), a resource that does not exist, a
    request AEP rejects (4xx other than 429). Throttling, server errors, dropped connections and
    timeouts are not permanent. Other errors of this package say so with a ``permanent`` attribute
    (e.g. a Query Service authentication failure)."""
    if isinstance(exc, AepConfigError):
        return True
    if isinstance(exc, AepApiError):
        return not exc.retryable
    flag = getattr(exc, "permanent", None)
    return flag if isinstance(flag, bool) else False


def permanent_reason(exc: BaseException) -> str:
    """What a person should do about a permanent error (appended to the task's failure message)."""
    if isinstance(exc, AepAuthError):
        return (
            "credentials or permissions: check the connection's client id and secret, IMS org, API key, the "
            "product profile's permissions and the sandbox"
        )
    if isinstance(exc, AepNotFoundError):
        return "it does not exist in this sandbox: check the ids in the jobs file and the sandbox"
    if isinstance(exc, AepApiError):
        return "AEP rejects this request as it is: retrying it unchanged cannot succeed"
    advice = getattr(exc, "advice", None)  # AepWaitError, the pipeline's refusals: the code that raised knows
    if isinstance(advice, str) and advice:
        return advice
    return "the configuration or input is wrong: fix it, then run again"
