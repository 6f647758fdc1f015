"""Customer Journey Analytics API (https://developer.adobe.com/cja-apis/docs/): ``/data/connections`` and
``/data/dataviews``.

Connections are read-only (as in the public API); data views can be read and updated with PUT.
The 12 requests / 6 s limit (429050) applies when the ``cja_rate_limit`` knob is on.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from starlette.responses import Response

from aep_emulator.cja_model import Connection, DataView, spring_page
from aep_emulator.errors import NotModelled
from aep_emulator.rest import errors
from aep_emulator.rest.common import Auth, Body, Call, Endpoint, ok

log = logging.getLogger("aep_emulator.cja")


def _expansion(call: Call) -> set[str]:
    return {e.strip() for e in (call.param("expansion") or "").split(",") if e.strip()}


def _page(call: Call) -> tuple[int, int]:
    return (
        call.int_param("page", 0, service="CJA"),
        call.int_param("limit", 10, minimum=1, maximum=1000, service="CJA"),
    )


def _connection(call: Call, conn_id: str) -> Connection:
    conn = call.state.cja.connections.get(conn_id)
    if conn is None:
        raise errors.cja_error(
            404, "resource_not_found", f"Connection {conn_id} was not found", call.request_id
        )
    return conn


def _data_view(call: Call, dv_id: str) -> DataView:
    view = call.state.cja.data_views.get(dv_id)
    if view is None:
        raise errors.cja_error(404, "resource_not_found", f"Data view {dv_id} was not found", call.request_id)
    return view


def _sorted(call: Call, items: list[dict]) -> list[dict]:
    prop = call.param("sortProperty")
    if prop:
        items.sort(
            key=lambda i: str(i.get(prop, "")), reverse=(call.param("sortDirection") or "").upper() == "DESC"
        )
    return items


def list_connections(call: Call) -> Response:
    expansion = _expansion(call)
    items = _sorted(call, [c.to_json(expansion | {"name"}) for c in call.state.cja.connections.values()])
    page, limit = _page(call)
    return ok(spring_page(items, page, limit))


def get_connection(call: Call) -> Response:
    return ok(_connection(call, call.path_params["id"]).to_json(_expansion(call)))


def list_data_views(call: Call) -> Response:
    org = call.state.settings.org_id
    parent = call.param("parentDataGroupId")
    items = [
        v.to_json(org) for v in call.state.cja.data_views.values() if not parent or v.parent_id == parent
    ]
    page, limit = _page(call)
    return ok(spring_page(_sorted(call, items), page, limit))


def get_data_view(call: Call) -> Response:
    return ok(_data_view(call, call.path_params["id"]).to_json(call.state.settings.org_id))


def update_data_view(call: Call) -> Response:
    view = _data_view(call, call.path_params["id"])
    body = call.json()
    if not isinstance(body, dict):
        raise errors.cja_error(
            400, "invalid_request", "the request body must be a JSON object", call.request_id
        )
    unknown = set(body) - set(DataView.EDITABLE) - {"id"}
    if unknown:
        raise errors.cja_error(
            400,
            "invalid_request",
            f"fields {sorted(unknown)} cannot be updated (editable: {sorted(DataView.EDITABLE)})",
            call.request_id,
        )
    if "parentDataGroupId" in body:
        _connection(call, body["parentDataGroupId"])
    for key, attr in DataView.EDITABLE.items():
        if key in body:
            setattr(view, attr, body[key])
    view.modified = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    log.info("data view %s updated: %s", view.id, sorted(body))
    return ok(
        {
            "id": view.id,
            **{k: body[k] for k in body if k != "id"},
            "modifiedDate": view.modified,
            "modifiedBy": call.client_id,
        }
    )


def list_dimensions(call: Call) -> Response:
    view = _data_view(call, call.path_params["id"])
    page, limit = _page(call)
    return ok(spring_page(_sorted(call, [dict(d) for d in view.dimensions]), page, limit))


def search_connections(call: Call) -> Response:
    raise NotModelled("CJA connection search")


ENDPOINTS = [
    Endpoint("GET", "/data/connections", "cja.list_connections", list_connections, auth=Auth.CJA),
    Endpoint("GET", "/data/connections/search", "cja.search_connections", search_connections, auth=Auth.CJA),
    Endpoint("GET", "/data/connections/{id}", "cja.get_connection", get_connection, auth=Auth.CJA),
    Endpoint("GET", "/data/dataviews", "cja.list_dataviews", list_data_views, auth=Auth.CJA),
    Endpoint("GET", "/data/dataviews/{id}", "cja.get_dataview", get_data_view, auth=Auth.CJA),
    Endpoint(
        "PUT",
        "/data/dataviews/{id}",
        "cja.update_dataview",
        update_data_view,
        auth=Auth.CJA,
        body=Body.BYTES,
        content_types=("application/json",),
    ),
    Endpoint("GET", "/data/dataviews/{id}/dimensions", "cja.list_dimensions", list_dimensions, auth=Auth.CJA),
]
