"""AdobePlatformHook against the emulator over real HTTPS: auth, errors, retries, secrets."""

from __future__ import annotations

import base64
import json
import logging
import time

import pytest

from airflow_cja_audiences import DEFAULT_CONN_ID
from airflow_cja_audiences.errors import (
    AepAuthError,
    AepBadRequestError,
    AepConfigError,
    AepNotFoundError,
    AepNotImplementedError,
    AepRateLimitError,
    AepServerError,
    AepTransportError,
)
from airflow_cja_audiences.hooks.catalog import CatalogHook
from airflow_cja_audiences.hooks.platform import AdobePlatformHook


def _claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_token_is_jwt_shaped_cached_and_counted(emu):
    before = emu.admin.stats()["tokensIssued"]
    hook = AdobePlatformHook()
    token = hook.get_access_token()
    claims = _claims(token)
    assert int(claims["expires_in"]) > 3_600_000  # milliseconds in the token, seconds in the answer
    assert AdobePlatformHook().get_access_token() == token  # process-wide cache: no second IMS call
    assert emu.admin.stats()["tokensIssued"] == before + 1


def test_test_connection_reports_org_and_sandbox(emu):
    ok, message = AdobePlatformHook().test_connection()
    assert ok, message
    assert emu.credentials.org_id in message and "'prod'" in message


def test_wrong_secret_fails_with_ims_message(emu, adobe_conn, monkeypatch):
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{DEFAULT_CONN_ID.upper()}", json.dumps({**adobe_conn, "password": "wrong-secret"})
    )
    ok, message = AdobePlatformHook().test_connection()
    assert not ok
    assert "invalid_client" in message and "HTTP 401" in message
    assert "wrong-secret" not in message


def test_missing_org_id_names_the_field(adobe_conn, monkeypatch):
    conn = {**adobe_conn, "extra": {k: v for k, v in adobe_conn["extra"].items() if k != "org_id"}}
    monkeypatch.setenv(f"AIRFLOW_CONN_{DEFAULT_CONN_ID.upper()}", json.dumps(conn))
    with pytest.raises(AepConfigError, match="org_id"):
        AdobePlatformHook().settings


def test_http_urls_are_refused(adobe_conn, monkeypatch):
    conn = {**adobe_conn, "extra": {**adobe_conn["extra"], "platform_url": "http://127.0.0.1:1"}}
    monkeypatch.setenv(f"AIRFLOW_CONN_{DEFAULT_CONN_ID.upper()}", json.dumps(conn))
    with pytest.raises(AepConfigError, match="https"):
        AdobePlatformHook().settings


def test_tls_is_verified_without_the_ca_bundle(adobe_conn, monkeypatch):
    conn = {**adobe_conn, "extra": {k: v for k, v in adobe_conn["extra"].items() if k != "ca_bundle"}}
    monkeypatch.setenv(f"AIRFLOW_CONN_{DEFAULT_CONN_ID.upper()}", json.dumps(conn))
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    with pytest.raises(AepConfigError, match="TLS verification failed"):
        AdobePlatformHook(max_attempts=1).get_access_token()


def test_not_found_is_typed_with_aep_message_and_request_id():
    with pytest.raises(AepNotFoundError) as info:
        CatalogHook().get_dataset("000000000000000000000000")
    err = info.value
    assert err.status == 404 and err.request_id
    assert err.message and "000000000000000000000000" in str(err)


def test_problem_details_code_is_parsed():
    hook = AdobePlatformHook()
    with pytest.raises(AepBadRequestError) as info:
        # Schema Registry lookups without a versioned Accept header are refused (XDM-100x-400).
        hook.request(
            "GET",
            "/data/foundation/schemaregistry/tenant/schemas/_xdm.context.profile__union",
            route="schema_registry.get_schemas",
            accept="application/json",
        )
    assert info.value.code and info.value.code.startswith("XDM-")


def test_unmodelled_call_is_501():
    with pytest.raises(AepNotImplementedError, match="501"):
        AdobePlatformHook().request("GET", "/data/foundation/query/schedules", route="query.list_schedules")


def test_unknown_sandbox_is_an_auth_or_request_error():
    with pytest.raises((AepAuthError, AepBadRequestError, AepNotFoundError)) as info:
        CatalogHook(sandbox="no-such-sandbox").find_dataset("x")
    assert "no-such-sandbox" in str(info.value) or info.value.message


def test_429_with_retry_after_is_honoured(emu, fast_retries):
    emu.admin.set_faults([{"route": "catalog.list_datasets", "kind": "429", "retry_after": 0.4, "times": 2}])
    hook = CatalogHook(**fast_retries)
    started = time.monotonic()
    assert hook.find_datasets_by_name("nothing-here") == []
    assert time.monotonic() - started >= 0.75  # two waits of Retry-After, not the 0.05 s backoff
    assert hook.retry_counts["catalog.list_datasets"] == 2


@pytest.mark.parametrize("kind", ["429", "500", "502", "503", "reset", "truncate"])
def test_transient_faults_on_reads_are_retried(emu, fast_retries, kind):
    emu.admin.set_faults([{"route": "catalog.list_datasets", "kind": kind, "times": 3}])
    hook = CatalogHook(**fast_retries)
    assert hook.find_datasets_by_name("nothing-here") == []
    assert hook.retry_counts["catalog.list_datasets"] == 3


def test_retries_are_bounded(emu, fast_retries):
    """max_attempts bounds the HTTP requests of one call, the token fetch included."""
    emu.admin.set_faults([{"route": "catalog.list_datasets", "kind": "503"}])
    hook = CatalogHook(max_attempts=3, **fast_retries)
    hook.get_access_token()  # a call of its own: the list call below starts with a cached token
    with pytest.raises(AepServerError, match="503"):
        hook.find_datasets_by_name("x")
    assert hook.retry_counts["catalog.list_datasets"] == 2  # 3 requests: the first try and 2 retries
    from airflow_cja_audiences.hooks.platform import clear_token_cache

    clear_token_cache()  # cold: the token fetch is one of the 3 requests
    hook = CatalogHook(max_attempts=3, **fast_retries)
    with pytest.raises(AepServerError, match="503"):
        hook.find_datasets_by_name("x")
    assert hook.retry_counts["catalog.list_datasets"] == 1


def test_rate_limit_without_retry_after_backs_off(emu, fast_retries):
    emu.admin.set_faults([{"route": "catalog.list_datasets", "kind": "429"}])
    with pytest.raises(AepRateLimitError):
        CatalogHook(max_attempts=2, **fast_retries).find_datasets_by_name("x")


def test_connection_refused_is_a_transport_error(adobe_conn, monkeypatch, fast_retries):
    extra = {**adobe_conn["extra"], "platform_url": "https://127.0.0.1:9"}
    monkeypatch.setenv(f"AIRFLOW_CONN_{DEFAULT_CONN_ID.upper()}", json.dumps({**adobe_conn, "extra": extra}))
    with pytest.raises(AepTransportError, match="before sending"):
        CatalogHook(max_attempts=2, **fast_retries).find_datasets_by_name("x")


def test_rejected_token_is_refreshed_once(emu):
    """A token the client still thinks valid but Adobe rejects (revoked, rotated): one 401, one refresh."""
    from airflow_cja_audiences.hooks import platform

    hook = CatalogHook()
    real = hook.get_access_token()
    header, payload, _ = real.split(".")
    forged = f"{header}.{payload}.{'A' * 43}"  # same claims, signature the emulator did not make
    key = platform._token_key(hook.settings)
    platform._TOKENS[key] = platform._CachedToken(value=forged, expires_at=time.time() + 3600, lifetime=3600)
    before = emu.admin.stats()["tokensIssued"]
    assert hook.find_datasets_by_name("x") == []
    assert hook.get_access_token() not in (forged,)
    assert emu.admin.stats()["tokensIssued"] == before + 1


def test_persistent_401_is_not_retried_forever(emu, adobe_conn, monkeypatch):
    hook = CatalogHook()
    hook.get_access_token()
    monkeypatch.setattr(
        type(hook),
        "_headers",
        lambda self, *a, **k: {
            "Authorization": "Bearer nope",
            "x-api-key": self.settings.client_id,
            "x-gw-ims-org-id": self.settings.org_id,
            "x-sandbox-name": "prod",
        },
    )
    with pytest.raises(AepAuthError, match="401013"):
        hook.find_datasets_by_name("x")


def test_lost_create_answer_does_not_duplicate(emu, fast_retries):
    """The create went through but the answer was lost: the hook finds it instead of creating twice."""
    emu.admin.set_faults([{"route": "catalog.create_dataset", "kind": "lost_response", "times": 1}])
    hook = CatalogHook(**fast_retries)
    dataset = hook.create_dataset("lost answer", schema_id="_xdm.context.profile__union")
    assert [d.id for d in hook.find_datasets_by_name("lost answer")] == [dataset.id]


def test_failed_create_is_retried_after_checking(emu, fast_retries):
    emu.admin.set_faults([{"route": "catalog.create_dataset", "kind": "500", "times": 2}])
    hook = CatalogHook(**fast_retries)
    hook.create_dataset("retried create", schema_id="_xdm.context.profile__union")
    assert len(hook.find_datasets_by_name("retried create")) == 1
    assert hook.retry_counts["catalog.create_dataset"] == 2  # counted under the route, like any call


def test_no_secret_or_token_in_logs_or_errors(emu, adobe_conn, caplog, fast_retries):
    caplog.set_level(logging.DEBUG)
    emu.admin.set_faults([{"route": "catalog.list_datasets", "kind": "500", "times": 1}])
    hook = CatalogHook(**fast_retries)
    token = hook.get_access_token()
    hook.find_datasets_by_name("x")
    errors = []
    for call in (
        lambda: hook.get_dataset("000000000000000000000000"),
        lambda: hook.request("GET", "/data/foundation/nowhere", route="x"),
    ):
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - we inspect every error text
            errors.append(f"{exc!r} {exc}")
    text = caplog.text + "\n".join(errors)
    assert errors and caplog.text
    assert emu.credentials.client_secret not in text
    assert token not in text
