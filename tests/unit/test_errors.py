"""errors.py (pure): Retry-After parsing and redirect errors, on values a hostile server sends."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from airflow_cja_audiences.errors import (
    AepConfigError,
    AepError,
    AepRedirectError,
    AepTransportError,
    api_error_from_response,
    is_permanent,
    parse_retry_after,
    permanent_reason,
    redirect_error,
)


@pytest.mark.parametrize("raw, expected", [("3", 3.0), ("0", 0.0), ("1.5", 1.5), (" 7 ", 7.0), ("1e9", 1e9)])
def test_retry_after_seconds(raw, expected):
    assert parse_retry_after(raw) == expected


@pytest.mark.parametrize("raw", ["nan", "NaN", "-1", "-0.5", "inf", "-inf", "soon", "", None, "Mon, 99 Foo"])
def test_retry_after_that_is_no_delay_is_ignored(raw):
    assert parse_retry_after(raw) is None


def test_retry_after_http_date():
    now = 1_800_000_000.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0  # in the past: now


def test_nan_retry_after_header_does_not_become_zero():
    error = api_error_from_response(
        status=429, method="GET", url="https://x/y", text="", headers={"Retry-After": "nan"}
    )
    assert error.retry_after is None  # before: max(0.0, nan) == 0.0, a busy loop of retries


def test_redirect_error_names_status_and_target_without_query_or_user_info():
    error = redirect_error(
        status=307,
        method="POST",
        url="https://ims.example/ims/token/v3",
        location="https://user:pw@evil.example:8443/grab?secret=1#x",
    )
    assert isinstance(error, AepRedirectError) and error.status == 307
    text = str(error)
    assert "HTTP 307" in text and "redirect to https://evil.example:8443/grab refused" in text
    assert "pw" not in text and "secret=1" not in text


def test_relative_and_missing_locations():
    assert "https://ims.example/elsewhere" in str(
        redirect_error(status=302, method="GET", url="https://ims.example/a/b", location="/elsewhere")
    )
    assert "(no Location header)" in str(
        redirect_error(status=301, method="GET", url="https://x/", location=None)
    )
    long = redirect_error(status=302, method="GET", url="https://x/", location="https://x/" + "a" * 5000)
    assert len(str(long)) < 1000


# --------------------------------------------------------------------------------------------------
# Which errors a task retry can fix: the classification behind the operators' fail-fast.


def _api(status: int):
    return api_error_from_response(
        status=status, method="GET", url="https://x/y", text='{"title": "t"}', headers={}
    )


@pytest.mark.parametrize(
    "status, permanent",
    [
        (400, True),
        (401, True),
        (403, True),
        (404, True),
        (409, True),
        (422, True),
        (501, True),
        (429, False),
        (500, False),
        (502, False),
        (503, False),
    ],
)
def test_http_errors(status, permanent):
    assert is_permanent(_api(status)) is permanent


def test_other_errors():
    assert is_permanent(AepConfigError("identity.field: bad"))
    assert not is_permanent(AepTransportError("reset", ambiguous=True))
    assert not is_permanent(AepError("unexpected answer"))
    assert not is_permanent(ValueError("some library's value error"))
    flagged = AepError("refused")
    flagged.permanent = True  # e.g. a Query Service authentication failure
    assert is_permanent(flagged)


def test_reasons_say_what_to_check():
    assert "client id and secret" in permanent_reason(_api(401))
    assert "does not exist in this sandbox" in permanent_reason(_api(404))
    assert "fix it" in permanent_reason(AepConfigError("x"))
