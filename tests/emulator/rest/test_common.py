"""IMS tokens, the gateway's header checks and error shapes, request ids, and 501 for the unmodelled."""

from __future__ import annotations

import base64
import json
import time

import pytest

from emulator_testkit import CATALOG

DATASETS = f"{CATALOG}/dataSets"


def _payload(token: str) -> dict:
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def _token_request(api, **overrides):
    c = api.credentials
    form = {
        "grant_type": "client_credentials",
        "client_id": c.client_id,
        "client_secret": c.client_secret,
        "scope": c.scope,
        **overrides,
    }
    return api.request("POST", "/ims/token/v3", data={k: v for k, v in form.items() if v is not None})


def test_token_is_a_jwt_with_millisecond_claims(emu, api):
    response = _token_request(api)
    body = response.json()
    assert response.status_code == 200 and body["token_type"] == "bearer"
    assert body["expires_in"] == 86399  # seconds on /ims/token/v3
    claims = _payload(body["access_token"])
    assert claims["type"] == "access_token" and claims["client_id"] == api.credentials.client_id
    assert claims["expires_in"] == "86399000" and isinstance(claims["created_at"], str)
    assert abs(int(claims["created_at"]) / 1000 - time.time()) < 60
    assert emu.admin.stats()["tokensIssued"] == 1
    assert emu.admin.tokens() == [body["access_token"]]  # what secret scans search for


@pytest.mark.parametrize(
    "overrides,status,error",
    [
        ({"client_id": "someone-else"}, 400, "invalid_client"),
        ({"client_secret": "wrong"}, 401, "invalid_client"),
        ({"grant_type": "password"}, 400, "unsupported_grant_type"),
        ({"scope": None}, 400, "invalid_scope"),
    ],
)
def test_token_errors_are_oauth_shaped(api, overrides, status, error):
    response = _token_request(api, **overrides)
    assert response.status_code == status
    assert response.json()["error"] == error and response.json()["error_description"]


@pytest.mark.parametrize(
    "change,status,code,message",
    [
        ({"Authorization": None}, 403, "403010", "Oauth token is missing."),
        ({"Authorization": "Bearer not-a-token"}, 401, "401013", "Oauth token is not valid"),
        ({"x-api-key": None}, 403, "403000", "Api Key is required"),
        ({"x-api-key": "another-client"}, 403, "403003", "Api Key is invalid"),
        ({"x-gw-ims-org-id": None}, 400, "400003", "Missing header"),
        ({"x-gw-ims-org-id": "OTHER0000000000000000000@AdobeOrg"}, 403, "403025", "Profile is not valid"),
        ({"x-sandbox-name": None}, 400, "400003", "Missing header"),
    ],
)
def test_gateway_errors(api, change, status, code, message):
    headers = api.headers()
    for key, value in change.items():
        if value is None:
            headers.pop(key)
        else:
            headers[key] = value
    response = api.request("GET", DATASETS, headers=headers)
    assert response.status_code == status
    assert response.json() == {"error_code": code, "message": message}


def test_forged_and_expired_tokens_are_401(emu, api):
    token = api.token()
    header, payload, signature = token.split(".")
    claims = _payload(token)
    claims["expires_in"] = str(10**12)
    forged = ".".join(
        [header, base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("="), signature]
    )
    response = api.request("GET", DATASETS, headers={**api.headers(), "Authorization": f"Bearer {forged}"})
    assert response.status_code == 401 and response.json()["error_code"] == "401013"
    emu.admin.knobs(token_lifetime=1)
    short = api.token(refresh=True)
    assert _payload(short)["expires_in"] == "1000"
    assert api.call("GET", DATASETS).status_code == 200
    time.sleep(1.1)
    expired = api.call("GET", DATASETS)
    assert expired.status_code == 401 and expired.json()["error_code"] == "401013"


def test_unknown_sandbox_is_refused_and_sandboxes_are_isolated(api, aep):
    response = api.call("GET", DATASETS, sandbox="nosuchbox")
    assert response.status_code == 403 and "nosuchbox" in response.json()["detail"]
    prod = aep.union_dataset("Only in prod")
    assert prod in aep.ok(api.call("GET", DATASETS))
    assert aep.ok(api.call("GET", DATASETS, sandbox="dev")) == {}
    assert api.call("GET", f"{DATASETS}/{prod}", sandbox="dev").status_code == 404


def test_cja_routes_need_no_sandbox_header(api):
    assert api.call("GET", "/data/connections", cja=True).status_code == 200
    headers = api.headers(cja=True)
    headers.pop("x-api-key")
    assert api.request("GET", "/data/connections", headers=headers).json()["error_code"] == "403000"


def test_json_bodies_need_a_json_content_type(api):
    response = api.call("POST", DATASETS, data=b'{"name": "x"}', headers={"Content-Type": "text/plain"})
    assert response.status_code == 400
    assert (
        response.json()["type"] == "/placeholder/type/uri" and response.json()["title"] == "BadRequestError"
    )


def test_request_id_is_echoed_and_lands_in_problem_reports(api):
    response = api.call("GET", f"{DATASETS}/000000000000000000000000", headers={"x-request-id": "test-rid-1"})
    assert response.status_code == 404
    assert response.headers["x-request-id"] == "test-rid-1"
    assert response.json()["report"]["requestId"] == "test-rid-1"
    generated = api.call("GET", DATASETS)
    assert len(generated.headers["x-request-id"]) >= 16


@pytest.mark.parametrize(
    "path", ["/data/foundation/schemaregistry/stats/", "/data/core/ups/export/jobs/", f"{DATASETS}/"]
)
def test_a_trailing_slash_is_the_same_path(api, path):
    """Adobe answers ``/stats/`` as ``/stats`` (its own paging links read ``/export/jobs/?limit=...``)."""
    headers = {"Accept": "application/json"}
    slashed, plain = (
        api.call("GET", path, headers=headers),
        api.call("GET", path.rstrip("/"), headers=headers),
    )
    assert slashed.status_code == plain.status_code == 200, slashed.text
    assert slashed.json().keys() == plain.json().keys()


@pytest.mark.parametrize(
    "method,path",
    [
        ("PUT", f"{DATASETS}/0123"),
        ("GET", "/data/foundation/query/schedules"),  # scheduled queries (batch queries are modelled)
        ("POST", "/data/core/ups/segment/jobs"),
        ("GET", "/data/foundation/flowservice/flows"),
        ("DELETE", "/data/connections/dg_x"),
        ("GET", "/data/dataviews/dv_x/metrics"),
    ],
)
def test_unmodelled_calls_answer_501_naming_method_and_path(api, method, path):
    response = api.call(method, path)
    assert response.status_code == 501
    body = response.json()
    assert body["type"].endswith("EMULATOR-501") and f"{method} {path}" in body["detail"]


def test_health_needs_no_auth(api):
    assert api.request("GET", "/health").json() == {"status": "ok"}
