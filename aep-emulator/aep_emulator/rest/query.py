"""Query Service REST (https://developer.adobe.com/experience-platform-apis/references/query-service/): ``connection_parameters`` and batch queries (``/queries``).

Query Service REST never returns rows; ad hoc reads go over the PostgreSQL wire protocol, served by
:mod:`aep_emulator.query_service` on ``--pg-port``. ``/queries`` runs batch queries
(``INSERT INTO <dataset table> SELECT ...``) that write a batch into a dataset:
:mod:`aep_emulator.query_service.batch`. Other calls (schedules, templates) answer 501.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.responses import Response

from aep_emulator.errors import NotModelled, ServiceError
from aep_emulator.query_service import batch as batch_queries
from aep_emulator.rest.common import Body, Call, Endpoint, ok

if TYPE_CHECKING:  # pragma: no cover
    from aep_emulator.state import SandboxState

PREFIX = "/data/foundation/query"


def connection_parameters(call: Call) -> Response:
    state = call.state
    if state.pg_port is None:
        raise NotModelled(
            "Query Service connection parameters: this emulator runs without its PostgreSQL "
            "endpoint (start it with --pg-port)"
        )
    token = call.headers.get("authorization", "").partition(" ")[2].strip()
    return ok(
        {
            "host": state.pg_host,
            "port": state.pg_port,
            "dbName": f"{call.sandbox.name}:all",
            "username": state.settings.org_id,
            "token": token,
            "compressedToken": token,
            "websocketHost": None,
            "sslmode": "require" if state.settings.tls else "disable",
        }
    )


# -- batch queries ---------------------------------------------------------------------------------
# Error bodies: Query Service's own error shape for /queries is not documented; these use the
# platform's problem shape with guessed codes (marked as guesses).
_BODY_FIELDS = {
    "dbName",
    "sql",
    "name",
    "description",
    "queryParameters",
    "templateId",
    "ctasParameters",
    "insertIntoParameters",
}


def _sandbox(call: Call) -> SandboxState:
    assert call.sandbox is not None  # every /queries route authenticates with a sandbox (Auth.PLATFORM)
    return call.sandbox


def _bad_request(detail: str) -> ServiceError:
    return ServiceError(400, "QS-1400-400", "Bad request", detail)  # code: guess


def _base_url(call: Call) -> str:
    return f"https://{call.headers.get('host', 'platform.adobe.io')}"


def create_query(call: Call) -> Response:
    body = call.json()
    if not isinstance(body, dict):
        raise _bad_request("the request body must be a JSON object")
    unknown = sorted(set(body) - _BODY_FIELDS)
    if unknown:
        raise _bad_request(f"unknown fields {unknown}")
    sandbox = _sandbox(call)
    db_name = body.get("dbName")
    if db_name != f"{sandbox.name}:all":
        raise _bad_request(
            f"dbName must be '{sandbox.name}:all' (the sandbox of x-sandbox-name), got {db_name!r}"
        )
    if body.get("templateId") is not None:
        raise NotModelled("Query Service query templates (templateId)")
    if body.get("ctasParameters") is not None or body.get("insertIntoParameters") is not None:
        raise NotModelled(
            "Query Service ctasParameters/insertIntoParameters (write the INSERT INTO in the sql)"
        )
    if body.get("queryParameters"):
        raise NotModelled("Query Service queryParameters (parameter substitution)")
    if not isinstance(body.get("sql"), str) or not body["sql"].strip():
        raise _bad_request("sql (or templateId) is required")
    for key in ("name", "description"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise _bad_request(f"{key} must be a string")
    query = batch_queries.submit(call.state, sandbox, body, user_id=f"{call.client_id}@AdobeID")
    return ok(query.to_json(_base_url(call)), status=202)


def _query(call: Call) -> Any:
    query = _sandbox(call).batch_queries.get(call.path_params["id"])
    if query is None:
        raise ServiceError(
            404, "QS-1404-404", "Not found", f"query {call.path_params['id']} was not found"
        )  # guess
    return query


def get_query(call: Call) -> Response:
    return ok(_query(call).to_json(_base_url(call)))


def list_queries(call: Call) -> Response:
    order = call.param("orderby") or "-created"
    if order.lstrip("-") not in ("created", "updated"):
        raise _bad_request(f"orderby must be created or updated (optionally with '-'), got {order!r}")
    limit = call.int_param("limit", 20, minimum=1, maximum=1000)
    start = call.int_param("start", 0, minimum=0)
    key = order.lstrip("-")
    queries = sorted(
        _sandbox(call).batch_queries.values(),
        key=lambda q: (getattr(q, key), q.id),
        reverse=order.startswith("-"),
    )
    page = queries[start : start + limit]
    # Adobe pages by timestamps (_page.next is a created time); offsets here are a simplification (guess).
    body: dict[str, Any] = {
        "queries": [q.to_json(_base_url(call)) for q in page],
        "_page": {"orderby": order, "start": start, "count": len(page)},
        "_links": {},
        "version": 1,
    }
    if start + limit < len(queries):
        body["_page"]["next"] = start + limit
        body["_links"]["next"] = {
            "href": f"/data/foundation/query/queries?orderby={order}&limit={limit}&start={start + limit}"
        }
    return ok(body)


def patch_query(call: Call) -> Response:
    query = _query(call)
    body = call.json()
    op = body.get("op") if isinstance(body, dict) else None
    if op == "cancel":
        if query.state in batch_queries.TERMINAL:
            raise ServiceError(
                409, "QS-1409-409", "Conflict", f"query {query.id} is already {query.state}"
            )  # guess
        batch_queries.cancel(call.state, query)
        return ok({"message": "Query cancel request received", "statusCode": 202}, status=202)
    if op == "soft_delete":
        raise NotModelled("soft_delete of queries")
    raise _bad_request(f"op must be 'cancel' or 'soft_delete', got {op!r}")


ENDPOINTS = [
    Endpoint(
        "GET", "/connection_parameters", "query.connection_parameters", connection_parameters, locked=False
    ),
    Endpoint(
        "POST",
        "/queries",
        "query.create_query",
        create_query,
        body=Body.BYTES,
        content_types=("application/json",),
    ),
    Endpoint("GET", "/queries", "query.list_queries", list_queries),
    Endpoint("GET", "/queries/{id}", "query.get_query", get_query),
    Endpoint(
        "PATCH",
        "/queries/{id}",
        "query.patch_query",
        patch_query,
        body=Body.BYTES,
        content_types=("application/json",),
    ),
]
