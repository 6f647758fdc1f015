"""Schema Registry (https://developer.adobe.com/experience-platform-apis/references/schema-registry/) under ``/data/foundation/schemaregistry``.

Resource ids in paths are the URL-encoded ``$id`` or the ``meta:altId``. GETs require an ``Accept``
header: listings take ``application/vnd.adobe.xed-id+json`` or ``...xed+json`` (no version), lookups
``...xed[-full][-notext][-desc]+json; version=1``; descriptors use the ``xdm`` media types.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from starlette.responses import Response

from aep_emulator import xdm
from aep_emulator.errors import ServiceError
from aep_emulator.filters import FilterError, apply_property_filters
from aep_emulator.registry import Resource, not_found
from aep_emulator.rest.common import Body, Call, Endpoint, empty, ok

log = logging.getLogger("aep_emulator.schema_registry")
PREFIX = "/data/foundation/schemaregistry"
JSON = ("application/json",)
LIST_CAP = 300
LOOKUP_MEDIA = {"xed", "xed-full", "xed-notext", "xed-full-notext", "xed-full-desc"}
DESCRIPTOR_LIST_MEDIA = {"xdm-id", "xdm-link", "xdm", "xdm-v2-id", "xdm-v2-link", "xdm-v2"}


def _accept_error(number: int, detail: str) -> ServiceError:
    return ServiceError(400, f"XDM-{number}-400", "Accept header invalid", detail)


def parse_accept(call: Call) -> tuple[str, str | None]:
    """``application/vnd.adobe.xed-full+json; version=1`` -> ("xed-full", "1")."""
    raw = call.headers.get("accept", "")
    media, *params = [p.strip() for p in raw.split(";")]
    media = media.lower()
    prefix, suffix = "application/vnd.adobe.", "+json"
    if not media.startswith(prefix) or not media.endswith(suffix):
        raise _accept_error(
            1006,
            f"The supplied Accept header is not valid: {raw or '(none)'} - A valid Accept "
            f"value should look like application/vnd.adobe.{{xed|xdm}}+json",
        )
    version = None
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "version":
            version = value.strip()
    return media[len(prefix) : -len(suffix)], version


def _list_accept(call: Call, allowed: set[str]) -> str:
    kind, version = parse_accept(call)
    if version is not None:
        raise _accept_error(
            1009,
            "version must not be supplied in the accept header. Example: application/vnd.adobe.xed-id+json",
        )
    if kind not in allowed:
        raise _accept_error(1006, f"Unknown Accept media supplied: {kind}; use one of {sorted(allowed)}")
    return kind


def _lookup_accept(call: Call) -> str:
    kind, version = parse_accept(call)
    if kind not in LOOKUP_MEDIA:
        raise _accept_error(1006, f"Unknown Accept media supplied: {kind}; use one of {sorted(LOOKUP_MEDIA)}")
    if version is None:
        raise _accept_error(
            1008,
            "version must be supplied in the accept header. Example: "
            "application/vnd.adobe.xed-full-notext+json; version=1",
        )
    if version.split(".")[0] != "1":
        raise not_found("resource", f"{call.path_params.get('ref', '')} with version {version}")
    return kind


def _render(call: Call, res: Resource, kind: str) -> dict:
    registry = call.sandbox.registry
    if kind == "xed":
        return dict(res.body)
    return registry.full(res, with_text="notext" not in kind, with_descriptors=kind.endswith("desc"))


def _list(call: Call, kind: str, extra: list[dict] | None = None) -> Response:
    media = _list_accept(call, {"xed-id", "xed"})
    registry = call.sandbox.registry
    items = [r.body for r in registry.listing(kind)] + (extra or [])
    try:
        items = apply_property_filters(items, call.query.getlist("property"))
    except FilterError as exc:
        raise ServiceError(400, "XDM-1001-400", "Invalid request", str(exc)) from None
    order = call.param("orderby") or "title"
    descending = order.startswith("-")
    key = order.lstrip("-")
    items.sort(key=lambda b: str(b.get(key, "")), reverse=descending)
    start = call.param("start")
    if start:
        items = [
            b for b in items if (str(b.get(key, "")) <= start if descending else str(b.get(key, "")) >= start)
        ]
    limit = (
        call.int_param("limit", LIST_CAP, minimum=0, maximum=LIST_CAP, service="XDM")
        if call.param("orderby")
        else LIST_CAP
    )  # limit is only honoured together with orderby
    page, rest = items[:limit], items[limit:]
    if media == "xed-id":
        page = [
            {
                "$id": b["$id"],
                "meta:altId": b["meta:altId"],
                "version": b.get("version", "1.0"),
                "title": b.get("title"),
            }
            for b in page
        ]
    next_start = str(rest[0].get(key, "")) if rest else None
    links = {"global_schemas": {"href": f"{PREFIX}/global/{kind}"}}
    if next_start is not None:
        links["next"] = {"href": f"{PREFIX}/tenant/{kind}?orderby={order}&start={next_start}"}
    return ok(
        {
            "results": page,
            "_page": {"orderby": order, "next": next_start, "count": len(page)},
            "_links": links,
        }
    )


def list_schemas(call: Call) -> Response:
    return _list(call, "schemas")


def list_field_groups(call: Call) -> Response:
    return _list(call, "mixins")


def get_schema(call: Call) -> Response:
    kind = _lookup_accept(call)
    ref = call.path_params["ref"]
    if ref in (xdm.UNION_ID, xdm.UNION_ALT_ID):
        return get_union(call)
    return ok(_render(call, call.sandbox.registry.get("schemas", ref), kind))


def get_field_group(call: Call) -> Response:
    kind = _lookup_accept(call)
    return ok(_render(call, call.sandbox.registry.get("mixins", call.path_params["ref"]), kind))


def get_union(call: Call) -> Response:
    _lookup_accept(call)
    ref = call.path_params["ref"]
    if ref not in (xdm.UNION_ID, xdm.UNION_ALT_ID):
        raise not_found("union", ref)
    return ok(xdm.union_schema(call.state.settings.tenant, call.state.settings.org_id))


def list_unions(call: Call) -> Response:
    media = _list_accept(call, {"xed-id", "xed"})
    union = xdm.union_schema(call.state.settings.tenant, call.state.settings.org_id)
    item = {k: union[k] for k in ("$id", "meta:altId", "version", "title")} if media == "xed-id" else union
    return ok({"results": [item], "_page": {"orderby": "title", "next": None, "count": 1}, "_links": {}})


def get_class(call: Call) -> Response:
    _lookup_accept(call)
    cls = xdm.class_by_ref(call.path_params["ref"])
    if cls is None:
        raise not_found("class", call.path_params["ref"])
    return ok(cls.to_json())


def create_schema(call: Call) -> Response:
    body = call.sandbox.registry.create_schema(call.json(), call.state.now_ms(), call.client_id)
    log.info("schema %s %r created in %s", body["$id"], body.get("title"), call.sandbox.name)
    return ok(body, 201)


def create_field_group(call: Call) -> Response:
    body = call.sandbox.registry.create_field_group(call.json(), call.state.now_ms(), call.client_id)
    log.info("field group %s %r created in %s", body["$id"], body.get("title"), call.sandbox.name)
    return ok(body, 201)


def patch_schema(call: Call) -> Response:
    body = call.sandbox.registry.patch_schema(
        call.path_params["ref"], call.json(), call.state.now_ms(), call.client_id
    )
    log.info("schema %s patched (version %s)", body["$id"], body.get("version"))
    return ok(body)


def stats(call: Call) -> Response:
    registry, settings = call.sandbox.registry, call.state.settings
    counts = Counter(r.kind for r in registry.resources.values())
    recent = sorted(registry.resources.values(), key=lambda r: r.created_ms, reverse=True)[:5]
    class_usage: dict[str, list] = {}
    for res in registry.listing("schemas"):
        class_usage.setdefault(res.body.get("meta:class", ""), []).append(
            {"$id": res.id, "title": res.title, "description": res.body.get("description", "")}
        )
    return ok(
        {
            "imsOrg": settings.org_id,
            "tenantId": settings.tenant,
            "counts": {
                "schemas": counts["schemas"],
                "mixins": counts["mixins"],
                "datatypes": 0,
                "classes": 0,
                "unions": 1,
                "descriptors": len(registry.descriptors),
            },
            "recentlyCreatedResources": [
                {
                    "$id": r.id,
                    "title": r.title,
                    "meta:resourceType": r.kind,
                    "meta:altId": r.alt_id,
                    "version": r.body.get("version"),
                }
                for r in recent
            ],
            "recentlyUpdatedResources": [],
            "classUsage": class_usage,
        }
    )


# -- descriptors -----------------------------------------------------------------------------
def list_descriptors(call: Call) -> Response:
    media = _list_accept(call, DESCRIPTOR_LIST_MEDIA)
    items = list(call.sandbox.registry.descriptors.values())
    try:
        # Guess: the generic property filter applies to descriptors too (UNCONFIRMED).
        items = apply_property_filters(items, call.query.getlist("property"))
    except FilterError as exc:
        raise ServiceError(400, "XDM-1001-400", "Invalid request", str(exc)) from None

    def shape(d: dict) -> object:
        if media.endswith("-id"):
            return d["@id"]
        if media.endswith("-link"):
            return f"/descriptors/{d['@id']}"
        return d

    if media.startswith("xdm-v2"):
        return ok(
            {"results": [shape(d) for d in items], "_page": {"count": len(items), "next": None}, "_links": {}}
        )
    grouped: dict[str, list] = {}
    for d in items:
        grouped.setdefault(d["@type"], []).append(shape(d))
    return ok(grouped)


def _descriptor_accept(call: Call) -> None:
    kind, _ = parse_accept(call)
    if kind not in ("xdm", "xdm-v2"):
        raise _accept_error(
            1006, f"Unknown Accept format available: {kind}; use application/vnd.adobe.xdm+json"
        )


def get_descriptor(call: Call) -> Response:
    _descriptor_accept(call)
    return ok(call.sandbox.registry.get_descriptor(call.path_params["id"]))


def create_descriptor(call: Call) -> Response:
    body = call.sandbox.registry.create_descriptor(call.json())
    log.info(
        "descriptor %s (%s on %s%s) created",
        body["@id"],
        body["@type"],
        body["xdm:sourceSchema"],
        body["xdm:sourceProperty"],
    )
    return ok(body, 201)


def update_descriptor(call: Call) -> Response:
    return ok(call.sandbox.registry.update_descriptor(call.path_params["id"], call.json()), 201)


def delete_descriptor(call: Call) -> Response:
    call.sandbox.registry.delete_descriptor(call.path_params["id"])
    return empty(204)


def _json_body(
    method: str, path: str, operation: str, handler: Callable[[Call], Response], *, also: tuple[str, ...] = ()
) -> Endpoint:
    """A route taking a JSON body (raw bytes, parsed by the handler's ``call.json()``); ``also``:
    further accepted content types (PATCH takes ``application/json-patch+json``)."""
    return Endpoint(method, path, operation, handler, body=Body.BYTES, content_types=JSON + also)


ENDPOINTS = [
    Endpoint("GET", "/stats", "schema_registry.stats", stats),
    Endpoint("GET", "/tenant/schemas", "schema_registry.list_schemas", list_schemas),
    _json_body("POST", "/tenant/schemas", "schema_registry.create_schemas", create_schema),
    Endpoint("GET", "/tenant/schemas/{ref:path}", "schema_registry.get_schemas", get_schema),
    _json_body(
        "PATCH",
        "/tenant/schemas/{ref:path}",
        "schema_registry.patch_schemas",
        patch_schema,
        also=("application/json-patch+json",),
    ),
    *[
        e
        for path in ("fieldgroups", "mixins")
        for e in (
            Endpoint("GET", f"/tenant/{path}", "schema_registry.list_fieldgroups", list_field_groups),
            _json_body("POST", f"/tenant/{path}", "schema_registry.create_fieldgroups", create_field_group),
            Endpoint(
                "GET", f"/tenant/{path}/{{ref:path}}", "schema_registry.get_fieldgroups", get_field_group
            ),
        )
    ],
    Endpoint("GET", "/tenant/unions", "schema_registry.list_unions", list_unions),
    Endpoint("GET", "/tenant/unions/{ref:path}", "schema_registry.get_union", get_union),
    Endpoint("GET", "/global/classes/{ref:path}", "schema_registry.get_class", get_class),
    Endpoint("GET", "/tenant/descriptors", "schema_registry.list_descriptors", list_descriptors),
    _json_body("POST", "/tenant/descriptors", "schema_registry.create_descriptor", create_descriptor),
    Endpoint("GET", "/tenant/descriptors/{id}", "schema_registry.get_descriptor", get_descriptor),
    _json_body("PUT", "/tenant/descriptors/{id}", "schema_registry.update_descriptor", update_descriptor),
    Endpoint("DELETE", "/tenant/descriptors/{id}", "schema_registry.delete_descriptor", delete_descriptor),
]
