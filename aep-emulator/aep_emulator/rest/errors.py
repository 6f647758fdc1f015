"""Adobe's error body shapes (https://experienceleague.adobe.com/en/docs/experience-platform/landing/troubleshooting,
https://experienceleague.adobe.com/en/docs/experience-platform/xdm/troubleshooting-guide) plus the emulator's 501.

1. gateway: ``{"error_code": "401013", "message": "Oauth token is not valid"}``
2. problem details: ``{"type": "http://ns.adobe.com/aep/errors/XDM-1521-400", "title", "status",
   "detail", "report": {...}, "error-chain": [...]}`` (the request id goes into ``report``)
3. legacy: ``{"type": "/placeholder/type/uri", "status": 400, "title": "BadRequestError", "detail": ...}``

plus IMS's OAuth errors (``{"error", "error_description"}``) and CJA's (a guess, see ``cja_error``).
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from starlette.responses import Response

from aep_emulator.errors import ServiceError

ERRORS_NS = "http://ns.adobe.com/aep/errors/"


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None, media_type: str = "application/json"
) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":"), default=str).encode("utf-8"),
        status_code=status,
        headers=headers,
        media_type=media_type,
    )


class HttpError(Exception):
    """An error whose body is already in its final shape."""

    def __init__(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status}: {body}")
        self.status, self.body, self.headers = status, body, headers or {}

    def response(self) -> Response:
        return json_response(self.body, self.status, self.headers)


def gateway(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> HttpError:
    return HttpError(status, {"error_code": code, "message": message}, headers)


def ims(status: int, error: str, description: str) -> HttpError:
    # UNCONFIRMED shape: OAuth 2 style, the likely form (Adobe's IMS OAuth Server-to-Server API reference:
    # https://developer.adobe.com/developer-console/docs/guides/authentication/ServerToServerAuthentication/ims).
    return HttpError(status, {"error": error, "error_description": description})


def legacy(status: int, title: str, detail: str) -> HttpError:
    return HttpError(
        status, {"type": "/placeholder/type/uri", "status": status, "title": title, "detail": detail}
    )


def missing_content_type(expected: str) -> HttpError:
    return legacy(400, "BadRequestError", f"A valid content-type must be specified (expected {expected})")


def cja_error(status: int, code: str, description: str, request_id: str) -> HttpError:
    # Guess: the CJA API's error body is not in the sources read; this mirrors Adobe Analytics 2.0.
    return HttpError(status, {"errorCode": code, "errorDescription": description, "errorId": request_id})


def problem(err: ServiceError, request_id: str, *, sandbox: str | None, org_id: str) -> Response:
    """Problem details (shape 2) with the request id in ``report``."""
    now = datetime.now(timezone.utc)
    service = err.code.split("-", 1)[0]
    report: dict[str, Any] = {
        "requestId": request_id,
        "timestamp": now.strftime("%m-%d-%Y %H:%M:%S"),
        "detailed-message": err.detail,
        "sub-errors": [],
        "tenantInfo": {"sandboxName": sandbox, "imsOrgId": org_id},
    }
    if service == "XDM":
        report["registryRequestId"] = request_id
    report.update(err.extra)
    body = {
        "type": ERRORS_NS + err.code,
        "title": err.title,
        "status": err.status,
        "detail": err.detail,
        "report": report,
        "error-chain": [
            {
                "serviceId": service,
                "errorCode": err.code,
                "invokingServiceId": service,
                "unixTimeStampMs": int(time.time() * 1000),
            }
        ],
    }
    return json_response(body, err.status, err.headers or None)


def not_implemented(method: str, path: str, request_id: str, what: str | None = None) -> Response:
    detail = f"{method} {path} is not modelled by the AEP emulator"
    if what:
        detail += f": {what}"
    detail += (
        ". The emulator answers 501 instead of pretending; see docs/ARCHITECTURE.md (The emulator) for what "
        "it models"
    )
    return json_response(
        {
            "type": ERRORS_NS + "EMULATOR-501",
            "title": "Not implemented by the emulator",
            "status": 501,
            "detail": detail,
            "report": {"requestId": request_id},
        },
        501,
    )


def internal_error(request_id: str, exc: BaseException) -> Response:
    return json_response(
        {
            "type": ERRORS_NS + "EMULATOR-500",
            "title": "Internal emulator error",
            "status": 500,
            "detail": f"{type(exc).__name__}: {exc}",
            "report": {"requestId": request_id},
        },
        500,
    )


def new_request_id() -> str:
    return str(uuid.uuid4())
