"""Which errors a task retry can fix: the classification behind the operators' fail-fast."""

from __future__ import annotations

import pytest

from airflow_cja_audiences.errors import (
    AepConfigError,
    AepError,
    AepTransportError,
    api_error_from_response,
    is_permanent,
    permanent_reason,
)


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
