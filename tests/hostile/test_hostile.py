"""The hooks against a hostile HTTPS server, sync (requests) and async (aiohttp) paths, each with its bound.

What is bounded and how it is checked: requests counted by the server (redirects never followed,
retries within ``max_attempts``, paging within ``max_pages``), bytes the server managed to send
(size cap), wall-clock time against ``call_deadline`` plus generous slack (a behavioural bound on a
server that would otherwise keep the call forever, not a speed target).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from airflow_cja_audiences.errors import (
    AepDeadlineError,
    AepError,
    AepPagingError,
    AepRateLimitError,
    AepRedirectError,
    AepResponseError,
    AepResponseTooLargeError,
    AepServerError,
    AepTransportError,
)
from airflow_cja_audiences.hooks.catalog import CatalogHook
from airflow_cja_audiences.hooks.cja import CjaHook
from airflow_cja_audiences.hooks.platform import AdobePlatformHook
from airflow_cja_audiences.hooks.segmentation import SegmentationHook

from server import CLIENT_SECRET, FAST, IMS_PATH, TOKEN, HostileSite, Reply, Request, ims_ok

BATCH = "/data/foundation/catalog/batches/b1"
DATASETS = "/data/foundation/catalog/dataSets"
PATHS = ["sync", "async"]
SLACK = 5.0  # seconds beyond a deadline a call may take to notice and clean up (generous on 2 shared cores)
MiB = 1024 * 1024


def ok_batch() -> Reply:
    return Reply(200, {"b1": {"status": "success", "created": 1}})


def platform(answer: Callable[[Request], Reply | None]) -> Callable[[Request], Reply | None]:
    """A script: IMS answers a good token, every other request goes to ``answer``."""
    return lambda request: ims_ok() if request.path == IMS_PATH else answer(request)


def get_batch(path: str, **hook_kwargs: Any) -> tuple[CatalogHook, Callable[[], Any]]:
    """The hook and a call reading batch b1 on the given path."""
    hook = CatalogHook(**{**FAST, **hook_kwargs})
    if path == "sync":
        return hook, lambda: hook.get_batch("b1")

    async def read() -> Any:
        async with hook.async_session():
            return await hook.aget_batch("b1")

    return hook, lambda: asyncio.run(read())


def get_token(path: str, **hook_kwargs: Any) -> Callable[[], str]:
    hook = AdobePlatformHook(**{**FAST, **hook_kwargs})
    if path == "sync":
        return hook.get_access_token

    async def fetch() -> str:
        async with hook.async_session():
            return await hook.aget_access_token()

    return lambda: asyncio.run(fetch())


def timed(call: Callable[[], Any]) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - the test inspects it
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


# ------------------------------------------------------------------ redirects are never followed


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_ims_redirect_is_refused_and_the_form_goes_nowhere_else(site: HostileSite, connect, path, status):
    site.adobe.script = lambda r: Reply(status, b"", {"Location": site.other.url + IMS_PATH + "?steal=1"})
    site.other.script = lambda r: ims_ok()
    with pytest.raises(AepRedirectError) as info:
        get_token(path)()
    message = str(info.value)
    assert f"HTTP {status}" in message and f"redirect to {site.other.url}{IMS_PATH} refused" in message
    assert "steal" not in message  # the query of the target is not repeated
    assert site.other.calls() == 0 and site.adobe.calls(IMS_PATH) == 1  # not followed, not retried
    assert CLIENT_SECRET not in message


@pytest.mark.parametrize("path", PATHS)
def test_platform_redirect_to_plain_http_is_refused(site: HostileSite, connect, path):
    site.adobe.script = platform(lambda r: Reply(302, b"", {"Location": site.plain.url + "/portal"}))
    site.plain.script = lambda r: Reply(200, {"b1": {"status": "success"}})
    _, call = get_batch(path)
    with pytest.raises(AepRedirectError, match=rf"HTTP 302: redirect to {site.plain.url}/portal refused"):
        call()
    assert site.plain.calls() == 0  # no API key, org, sandbox or token went there
    assert site.adobe.calls(BATCH) == 1


# ------------------------------------------------------------------ one retry layer: max_attempts bounds requests


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("attempts", [1, 3, 5])
def test_failing_ims_is_called_max_attempts_times(site: HostileSite, connect, path, attempts):
    """Before: the token fetch retried inside the request retry (3 attempts -> 9 IMS calls)."""
    site.adobe.script = lambda r: Reply(500, {"error": "server_error", "error_description": "down"})
    _, call = get_batch(path, max_attempts=attempts)
    with pytest.raises(AepServerError, match="HTTP 500"):
        call()
    assert site.adobe.calls(IMS_PATH) == attempts and site.adobe.calls() == attempts


@pytest.mark.parametrize("path", PATHS)
def test_hanging_ims_is_called_max_attempts_times(site: HostileSite, connect, path):
    """Before: IMS not answering cost max_attempts squared timeouts (8 x 8 x 60 s, about 70 min with
    the defaults); now max_attempts timeouts, and never more than the call deadline."""
    connect(timeout=0.5, call_deadline=30)
    site.adobe.script = lambda r: site.adobe.hang(r, limit_seconds=5)
    _, call = get_batch(path, max_attempts=3)
    error, seconds = timed(call)
    assert isinstance(error, AepTransportError) and not isinstance(error, AepDeadlineError), error
    assert site.adobe.calls(IMS_PATH) == 3
    assert seconds < 3 * 0.5 + 2 * FAST["max_retry_wait"] + SLACK


@pytest.mark.parametrize("path", PATHS)
def test_failing_read_with_cold_token_stays_within_max_attempts(site: HostileSite, connect, path):
    site.adobe.script = platform(lambda r: Reply(503, {"error_code": "503000", "message": "unavailable"}))
    hook, call = get_batch(path, max_attempts=4)
    with pytest.raises(AepServerError):
        call()
    assert site.adobe.calls() == 4 and site.adobe.calls(IMS_PATH) == 1  # the token fetch is one of the 4
    assert hook.retry_counts == {"catalog.get_batch": 2}


@pytest.mark.parametrize("path", PATHS)
def test_api_that_always_answers_401_gets_one_token_refresh(site: HostileSite, connect, path):
    """A 401 replaces the token once per call, inside the budget: max_attempts + 1 requests at most
    (the resend is the request the refreshed token is for), and the auth error is final."""
    from airflow_cja_audiences.errors import AepAuthError

    site.adobe.script = platform(
        lambda r: Reply(401, {"error_code": "401013", "message": "Oauth token is not valid"})
    )
    _, call = get_batch(path, max_attempts=3)
    with pytest.raises(AepAuthError, match="401013"):
        call()
    assert site.adobe.calls(IMS_PATH) == 2 and site.adobe.calls(BATCH) == 2


@pytest.mark.parametrize("status, posts", [(429, 3), (500, 2)])
def test_create_sends_at_most_max_attempts_requests(site: HostileSite, connect, status, posts):
    """Before: create_once wrapped a call that retried itself (3 attempts -> 9 POSTs of one create).

    A 429 proves the POST was not processed, so it is sent again at once; after a 500 the create may
    have happened, so a look-up comes first (and counts)."""
    site.adobe.script = platform(
        lambda r: (
            Reply(status, {"error_code": str(status), "message": "no"})
            if r.method == "POST"
            else Reply(200, {})
        )
    )
    hook = CatalogHook(max_attempts=3, **FAST)
    hook.get_access_token()
    with pytest.raises((AepRateLimitError, AepServerError)):
        hook.create_dataset("d", schema_id="_xdm.context.profile__union")
    api = [r for r in site.adobe.requests if r.path != IMS_PATH]
    assert len(api) == 3
    assert sum(r.method == "POST" for r in api) == posts


def test_create_whose_answer_was_lost_is_found_not_duplicated(site: HostileSite, connect):
    created: list[str] = []

    def answer(request: Request) -> Reply | None:
        if request.method == "POST":
            created.append("ds1")
            request.handler.close_connection = True  # processed, then the answer is lost
            return None
        if request.path == f"{DATASETS}/ds1":
            return Reply(200, {"ds1": {"name": "d"}})
        return Reply(200, {"ds1": {"name": "d"}} if created else {})

    site.adobe.script = platform(answer)
    dataset = CatalogHook(max_attempts=3, **FAST).create_dataset("d", schema_id="_xdm.context.profile__union")
    assert dataset.id == "ds1" and created == ["ds1"]


# ------------------------------------------------------------------ deadline per call


def _drip(site: HostileSite) -> Callable[[Request], Reply | None]:
    return platform(lambda r: site.adobe.drip(r, content_length=10_000, interval=0.5))


@pytest.mark.parametrize("path", PATHS)
def test_dripping_body_ends_at_the_call_deadline(site: HostileSite, connect, path):
    """Before (sync): a body dripping one byte a second ran 45 s with a 3 s timeout, and forever if
    the drip did not end: requests' timeout is per read."""
    connect(timeout=30, call_deadline=2)
    site.adobe.script = _drip(site)
    _, call = get_batch(path, max_attempts=5)
    error, seconds = timed(call)
    assert isinstance(error, AepDeadlineError), error
    assert "call deadline of 2 s" in str(error) and "call_deadline" in str(error)
    assert seconds < 2 + SLACK
    assert site.adobe.calls(BATCH) == 1  # the deadline ends the call: no retry after it


@pytest.mark.parametrize("path", PATHS)
def test_silent_server_ends_at_the_call_deadline(site: HostileSite, connect, path):
    connect(timeout=30, call_deadline=1.5)
    site.adobe.script = platform(lambda r: site.adobe.hang(r))
    _, call = get_batch(path)
    error, seconds = timed(call)
    assert isinstance(error, AepDeadlineError), error
    assert seconds < 1.5 + SLACK


@pytest.mark.parametrize("path", PATHS)
def test_tls_handshake_that_drips_ends_at_the_call_deadline(connect, path):
    """Each handshake read returns within the per-read timeout; the handshake as a whole may not."""
    from server import HandshakeDripServer

    slow = HandshakeDripServer(interval=0.3)
    try:
        connect(ims_url=slow.url, timeout=30, call_deadline=1.5)
        error, seconds = timed(get_token(path, max_attempts=3))
        assert isinstance(error, AepDeadlineError), error
        assert seconds < 1.5 + SLACK
        assert slow.connections == 1  # the deadline ends the call: no second connection
    finally:
        slow.close()


@pytest.mark.parametrize("path", PATHS)
def test_deadline_bounds_retries_and_their_waits(site: HostileSite, connect, path):
    """20 attempts with a huge Retry-After: the deadline, not the attempts, ends the call."""
    connect(call_deadline=2)
    site.adobe.script = platform(
        lambda r: Reply(429, {"error_code": "429", "message": "slow down"}, {"Retry-After": "1"})
    )
    _, call = get_batch(path, max_attempts=20, initial_retry_wait=0.05, max_retry_wait=0.8)
    error, seconds = timed(call)
    assert isinstance(error, AepRateLimitError), error
    assert seconds < 2 + SLACK
    assert 2 <= site.adobe.calls(BATCH) <= 4  # waits of 0.8 s (Retry-After 1 capped) within 2 s


# ------------------------------------------------------------------ size cap


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_oversized_body_is_refused_not_buffered(site: HostileSite, connect, path, declared):
    """Before: a 300-400 MiB body grew memory by 0.7-1.3 GiB."""
    connect(max_response_bytes=MiB)
    total = 200 * MiB
    offered = [0]  # bytes the server has handed to its socket so far

    def chunks() -> Iterator[bytes]:
        for _ in range(200):
            offered[0] += MiB
            yield b" " * MiB

    site.adobe.script = platform(
        lambda r: site.adobe.stream(r, chunks(), content_length=total if declared else None)
    )
    _, call = get_batch(path)
    with pytest.raises(AepResponseTooLargeError, match=r"max_response_bytes"):
        call()
    # The client stopped reading at the cap: the server got rid of the cap plus what socket buffers
    # hold, nowhere near 200 MiB (the handler stays blocked on a full socket until the client closes).
    assert offered[0] < 64 * MiB
    assert site.adobe.calls(BATCH) == 1  # not retried


# ------------------------------------------------------------------ bounded paging


def test_list_that_never_ends_stops_at_max_pages(site: HostileSite, connect):
    """Before: a list always answering a full page was read forever (12,000 requests in 20 s)."""
    connect(max_pages=5)
    pages = iter(range(10**6))

    def full_page(request: Request) -> Reply:
        n = next(pages)
        return Reply(200, {f"ds{n}-{i}": {"name": "x"} for i in range(100)})

    site.adobe.script = platform(full_page)
    with pytest.raises(AepPagingError, match=r"did not end after 5 pages .*max_pages"):
        CatalogHook(**FAST).find_datasets_by_name("x")
    assert site.adobe.calls(DATASETS) == 5


def test_list_that_ignores_the_offset_stops_at_once(site: HostileSite, connect):
    site.adobe.script = platform(lambda r: Reply(200, {f"ds{i}": {"name": "x"} for i in range(100)}))
    with pytest.raises(AepPagingError, match="same 100 items"):
        CatalogHook(**FAST).find_datasets_by_name("x")
    assert site.adobe.calls(DATASETS) == 2


def test_cursor_that_does_not_advance_is_an_error(site: HostileSite, connect):
    """Segmentation's ``_page.next`` pointing back at a page already read (it used to end silently)."""

    def audiences(request: Request) -> Reply:
        start = int(request.query.get("start", ["0"])[0])
        return Reply(
            200,
            {"children": [{"id": f"a{start}", "name": "A"}], "_page": {"next": "1" if start == 0 else "0"}},
        )

    site.adobe.script = platform(audiences)
    with pytest.raises(AepPagingError, match="does not advance"):
        list(SegmentationHook(**FAST).iter_audiences())
    assert site.adobe.calls("/data/core/ups/audiences") == 2


def test_export_job_offset_that_repeats_is_an_error(site: HostileSite, connect):
    def jobs(request: Request) -> Reply:
        offset = request.query.get("offset", ["0"])[0]
        return Reply(
            200,
            {
                "records": [{"id": int(offset) + 1, "status": "SUCCEEDED"}],
                "link": {"next": "/export/jobs/?limit=50&offset=7"},
            },
        )

    site.adobe.script = platform(jobs)
    with pytest.raises(AepPagingError, match="does not advance"):
        list(SegmentationHook(**FAST).iter_export_jobs())
    assert site.adobe.calls("/data/core/ups/export/jobs") == 2


def test_cja_dimensions_that_never_reach_the_last_page_stop(site: HostileSite, connect):
    connect(max_pages=3)
    site.adobe.script = platform(
        lambda r: Reply(200, {"content": [{"id": f"d{r.query['page'][0]}"}], "lastPage": False})
    )
    with pytest.raises(AepPagingError, match="3 pages"):
        CjaHook(**FAST).list_dimensions("dv1")
    assert site.adobe.calls("/data/dataviews/dv1/dimensions") == 3


# ------------------------------------------------------------------ IMS answers are validated


BAD_IMS = {
    "expires_in 0": {"access_token": TOKEN, "expires_in": 0},
    "expires_in negative": {"access_token": TOKEN, "expires_in": -60},
    "expires_in NaN": {"access_token": TOKEN, "expires_in": float("nan")},
    "expires_in 'nan'": {"access_token": TOKEN, "expires_in": "nan"},
    "expires_in missing": {"access_token": TOKEN},
    "expires_in true": {"access_token": TOKEN, "expires_in": True},
    "access_token null": {"access_token": None, "expires_in": 86399},
    "access_token number": {"access_token": 12345, "expires_in": 86399},
    "access_token empty": {"access_token": "", "expires_in": 86399},
    "a list": [TOKEN],
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", [*BAD_IMS, "HTML"])
def test_unusable_ims_answer_is_a_clear_error_not_a_token_per_call(site: HostileSite, connect, path, case):
    body = BAD_IMS.get(case)
    site.adobe.script = lambda r: (
        (
            Reply(200, "<html>Sign in to the Wi-Fi</html>", {"Content-Type": "text/html"})
            if body is None
            else Reply(200, body)
        )
        if r.path == IMS_PATH
        else ok_batch()
    )
    _, call = get_batch(path, max_attempts=5)
    for _ in range(3):  # no loop of token fetches: each call fails at once, nothing is cached
        with pytest.raises(AepResponseError, match=r"ims/token/v3: (IMS answered 200|expected JSON)") as info:
            call()
        assert TOKEN not in str(info.value)
    assert site.adobe.calls(IMS_PATH) == 3 and site.adobe.calls(BATCH) == 0  # nothing sent as 'Bearer None'


@pytest.mark.parametrize("path", PATHS)
def test_short_but_valid_token_lifetime_is_used(site: HostileSite, connect, path):
    site.adobe.script = lambda r: ims_ok(expires_in="3600") if r.path == IMS_PATH else ok_batch()
    _, call = get_batch(path)
    assert call().id == "b1"
    assert site.adobe.calls(BATCH) == 1
    assert site.adobe.requests[-1].headers["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("retry_after", ["nan", "-5", "0", "garbage", "1e9", "inf"])
def test_hostile_retry_after_neither_busy_loops_nor_sleeps_for_hours(
    site: HostileSite, connect, path, retry_after
):
    site.adobe.script = platform(
        lambda r: Reply(429, {"error_code": "429", "message": "slow"}, {"Retry-After": retry_after})
    )
    hook, call = get_batch(path, max_attempts=4, initial_retry_wait=0.1, max_retry_wait=0.3)
    error, seconds = timed(call)
    assert isinstance(error, AepRateLimitError), error
    assert site.adobe.calls(BATCH) == 3 and hook.retry_counts["catalog.get_batch"] == 2
    assert 0.2 <= seconds < 0.6 + SLACK  # two waits, each within [initial, max]: not 0 s, not 1e9 s


# ------------------------------------------------------------------ no secret in errors or reprs


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        todo += [current.__cause__, current.__context__]
    return seen


def _assert_clean(exc: BaseException) -> None:
    for link in _chain(exc):
        assert isinstance(link, AepError), (
            f"{type(link).__module__}.{type(link).__name__} in the chain of {exc!r}"
        )
        text = f"{link!r} {link} {link.args!r} {vars(link)!r}"
        assert CLIENT_SECRET not in text and TOKEN not in text, text
        assert "Bearer" not in text and "client_secret" not in text, text


def _reset_mid_body(request: Request) -> None:
    handler = request.handler
    handler.send_response(200)
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    handler.wfile.write(b'{"b1": ')
    handler.wfile.flush()
    handler.close_connection = True
    handler.connection.shutdown(2)


FAILURES: dict[str, tuple[Callable[[HostileSite], Callable[[Request], Reply | None]], dict[str, Any]]] = {
    "IMS resets mid-answer": (lambda site: lambda r: _reset_mid_body(r), {}),
    "IMS 401": (
        lambda site: lambda r: Reply(401, {"error": "invalid_client", "error_description": "bad"}),
        {},
    ),
    "IMS redirect": (lambda site: lambda r: Reply(307, b"", {"Location": site.other.url + IMS_PATH}), {}),
    "IMS drips": (lambda site: lambda r: site.adobe.drip(r, interval=0.3), {"call_deadline": 1}),
    "API resets mid-answer": (lambda site: platform(_reset_mid_body), {}),
    "API answers HTML": (
        lambda site: platform(lambda r: Reply(200, "<html>portal</html>", {"Content-Type": "text/html"})),
        {},
    ),
    "API too large": (lambda site: platform(lambda r: Reply(200, b" " * 2048)), {"max_response_bytes": 1024}),
    "API drips": (lambda site: _drip(site), {"call_deadline": 1}),
    "API 403": (
        lambda site: platform(
            lambda r: Reply(403, {"error_code": "403025", "message": "Profile is not valid"})
        ),
        {},
    ),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", FAILURES)
def test_errors_carry_no_secret_token_or_library_exception(site: HostileSite, connect, path, case):
    """The raised error and its whole __cause__/__context__ chain: only our errors (a requests or aiohttp
    exception holds the request, with the token header or IMS's form body), and no secret in any text."""
    script, extra = FAILURES[case]
    connect(**extra)
    site.adobe.script = script(site)
    _, call = get_batch(path, max_attempts=2)
    with pytest.raises(AepError) as info:
        call()
    _assert_clean(info.value)


def test_connection_refused_error_is_clean(site: HostileSite, connect):
    connect(platform_url="https://127.0.0.1:9")
    hook = CatalogHook(max_attempts=2, **FAST)
    with pytest.raises(AepTransportError, match="before sending") as info:
        hook.get_batch("b1")
    _assert_clean(info.value)


def test_reprs_show_no_secret_or_token(site: HostileSite, connect):
    from airflow_cja_audiences.hooks.query_service import QueryServiceHook

    connect(query_service_host="127.0.0.1", query_service_port=5432)
    hook = CatalogHook()
    assert hook.get_access_token() == TOKEN
    query = QueryServiceHook(platform_hook=hook)
    connection = query.connection
    assert connection.password == TOKEN  # it is there, for psycopg...
    for text in (
        repr(hook),
        str(hook),
        repr(hook.settings),
        repr(query),
        repr(connection),
        str(connection),
        f"{connection}",
    ):
        assert TOKEN not in text and CLIENT_SECRET not in text, text
    assert "adobe_conn_id=" in repr(hook) and "password='***'" in repr(connection)


@pytest.mark.parametrize("how", ["query_all", "stream"])
def test_query_service_connection_error_does_not_carry_the_token(site: HostileSite, connect, how):
    """psycopg's error for a failed connection attempt holds the libpq connection, password (the access
    token) included; what the hook raises must not chain it."""
    from airflow_cja_audiences.hooks.query_service import QueryServiceError, QueryServiceHook

    connect(query_service_host="127.0.0.1", query_service_port=9)  # nothing listens there
    hook = QueryServiceHook(platform_hook=AdobePlatformHook(max_attempts=1))
    with pytest.raises(QueryServiceError, match="Query Service error") as info:
        hook.query_all("SELECT 1") if how == "query_all" else list(hook.stream("SELECT 1"))
    _assert_clean(info.value)


@pytest.mark.parametrize(
    "extra",
    [
        {"call_deadline": "nan"},
        {"call_deadline": 0},
        {"max_response_bytes": -1},
        {"max_pages": 0},
        {"timeout": "inf"},
    ],
)
def test_bad_limits_in_the_connection_name_the_field(site: HostileSite, connect, extra):
    from airflow_cja_audiences.errors import AepConfigError

    connect(**extra)
    with pytest.raises(AepConfigError, match=next(iter(extra))) as info:
        AdobePlatformHook().settings
    _assert_clean(info.value)
