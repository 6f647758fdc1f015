"""Test administration API under ``/emulator`` (no auth, never faulted). Times are RFC 3339 strings.

Inspection
  ``GET  /emulator/state``                     datasets (tags, schema, table), batches (status, files,
                                               counts), export jobs, schemas, field groups, descriptors,
                                               CJA connections/data views, tokens issued, knobs, clock
  ``GET  /emulator/stats``                     requests and injected faults per route, 429s of the rate
                                               limits per route (``throttled``), tokens issued
  ``GET  /emulator/routes``                    the stable route names (for fault rules)
  ``GET|POST|DELETE /emulator/query-service/scans``  the Query Service scan-cost model: totals of
                                               queries, scans (queries reading export batches), batch
                                               scans, rows scanned, modelled seconds, and the cost in
                                               force; POST ``{"seconds_per_million_rows": 5,
                                               "seconds_per_query": 2}`` sets the cost, DELETE zeroes
                                               the totals (see query_service/scans.py)
  ``GET  /emulator/tokens``                    the access tokens issued (the last 1000), for secret scans
  ``GET  /emulator/datasets/{id}/records``     JSON Lines: records of the dataset's live batches
  ``GET  /emulator/batches/{id}/rows``         JSON Lines: the rows an export batch appended

Ground truth (JSON Lines; ``audience`` may repeat, default all audiences)
  ``GET  /emulator/truth/snapshot?audience=&status=realized&status=existing&at=``
  ``GET  /emulator/truth/transitions?audience=&start=&end=``
  ``GET  /emulator/truth/profiles/{index}``    one profile's synthetic attributes (JSON)

AEP UI stand-ins (targets of the operators' extra links; HTML)
  ``GET  /emulator/ui/dataset/browse/{id}``, ``/emulator/ui/monitoring/batches/{id}``,
  ``/emulator/ui/segmentation/export-jobs/{id}`` (``?sandbox=``, default prod)

Control
  ``GET|POST /emulator/clock``      ``{"advance_seconds": 86400}`` or ``{"set": "2026-01-01T00:00:00Z"}``,
                                    with ``"frozen": true`` to stop data time there (an export then
                                    reflects exactly that instant), ``false`` to let it run again
                                    (emulator time = real time + offset; data time only, see clock.py)
  ``POST   /emulator/memberships``  ``{"profile_index": 7, "audience_id": "...", "member": false, "at": "..."}``
  ``PATCH  /emulator/audiences/{id}``  ``{"name": "New name"}``: rename an audience as a user would in
                                    the AEP UI (its ``updateTime`` moves to the emulator's now; another
                                    live audience's name is refused, 409). 404 when unknown or deleted.
  ``DELETE /emulator/audiences/{id}``  delete an audience: from then on ``GET /audiences/{id}`` answers
                                    404 with AEP's "audience entity ... is not found" body (the same
                                    as for an id that never existed), ``GET /audiences`` and
                                    ``/segment/definitions/{id}`` no longer show it, and a new export
                                    job naming it fails with 400 on ``filter.segments[i].segmentId``
                                    (a guess, see rest/segmentation.py). Export jobs created before
                                    keep running; exported profiles keep the membership rows (AEP's
                                    purge of them is not modelled). ``POST /emulator/reset`` undoes
                                    renames and deletions.
  ``GET|POST /emulator/knobs``      ``{"token_lifetime": 5, "export_job_seconds": 0.5, "batch_seconds": 0.2,
                                    "cja_rate_limit": true, "export_job_failures": 1,
                                    "export_batch_failures": 1, "ingestion_failures": 1,
                                    "partial_ingestion_failures": 1}`` (failures: the next N jobs or
                                    batches; a partial one succeeds with its first record rejected);
                                    realistic mode's ``time_scale``, ``export_batch_seconds``,
                                    ``intermediate_statuses``, ``platform_rate_limit``,
                                    ``batch_create_rate_limit`` (durations are Adobe seconds: real
                                    seconds = value * time_scale)
  ``GET|POST|DELETE /emulator/faults``  rules as in :mod:`aep_emulator.faults`
                                    (POST ``{"seed": 1, "rules": [...]}`` replaces the rules; kinds
                                    429/500/502/503, reset, truncate, lost_response, latency)
  ``POST   /emulator/reset``        forget everything created; keep the synthetic data
  ``POST   /emulator/cja/connections/{id}/datasets``  UI action "add dataset to connection":
                                    ``{"dataSetId": "...", "type": "profile", "visitorId": "personID",
                                    "identityNamespace": "Email"}``
  ``POST   /emulator/cja/dataviews/{id}/dimensions``  UI action "add dimension":
                                    ``{"schemaPath": "_tenant.audienceMembershipId", "name": "...",
                                    "dataSetType": "profile"}``
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, replace
from datetime import datetime, timezone
from typing import Any

from starlette.responses import Response, StreamingResponse

from aep_emulator import groundtruth
from aep_emulator.cja_model import dimension
from aep_emulator.clock import iso, parse_instant
from aep_emulator.rest.common import Auth, Body, Call, Endpoint, ok

log = logging.getLogger("aep_emulator.admin")
PREFIX = "/emulator"


class AdminError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _body(call: Call) -> dict:
    try:
        data = json.loads(call.body or b"{}")
    except json.JSONDecodeError as exc:
        raise AdminError(400, f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise AdminError(400, "body must be a JSON object")
    return data


def _instant(value: Any, name: str) -> int | None:
    if value is None:
        return None
    try:
        return int(parse_instant(str(value)).timestamp())
    except ValueError:
        raise AdminError(400, f"{name} must be an RFC 3339 instant, got {value!r}") from None


def _jsonable(value: Any) -> Any:
    """Timestamps as RFC 3339 UTC strings, recursively (DuckDB TIMESTAMPs are naive UTC)."""
    if isinstance(value, datetime):
        return iso(value if value.tzinfo else value.replace(tzinfo=timezone.utc))
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _jsonl(rows: Iterator[Any]) -> StreamingResponse:
    def lines() -> Iterator[bytes]:
        for row in rows:
            text = row if isinstance(row, str) else json.dumps(_jsonable(row), default=str)
            yield (text + "\n").encode("utf-8")

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def admin(handler: Any) -> Any:
    """Render admin errors as ``{"error": message}``."""

    def run(call: Call) -> Response:
        try:
            return handler(call)
        except AdminError as exc:
            return ok({"error": str(exc)}, exc.status)
        except (ValueError, KeyError) as exc:
            return ok({"error": str(exc).strip("'\"")}, 404 if isinstance(exc, KeyError) else 400)

    return run


# -- inspection ----------------------------------------------------------------------------------
def state_view(call: Call) -> Response:
    return ok(call.state.describe())


def stats(call: Call) -> Response:
    state = call.state
    return ok(
        {
            **state.faults.stats(),
            "tableScans": dict(state.table_scans),
            "throttled": dict(state.throttled),
            "tokensIssued": state.tokens.issued,
            "tokenTimes": [t for t, _ in state.tokens.issued_log],
        }
    )


def query_service_scans(call: Call) -> Response:
    model = call.state.qs_scans
    if call.method == "POST":
        body = _body(call)
        unknown = set(body) - {"seconds_per_million_rows", "seconds_per_query"}
        if unknown:
            raise AdminError(
                400, f"unknown fields {sorted(unknown)}; use seconds_per_million_rows, seconds_per_query"
            )
        model.configure(replace(model.cost, **body))
        log.info("Query Service scan cost now %s", model.cost)
    elif call.method == "DELETE":
        model.reset()
    return ok(model.stats())


def issued_tokens(call: Call) -> Response:
    return ok({"tokens": list(call.state.tokens.issued_tokens)})


def route_names(call: Call) -> Response:
    return ok(call.state.route_table)


def dataset_records(call: Call) -> Response:
    dataset_id = call.path_params["id"]
    rows = call.state.dataset_records(dataset_id)
    first = next(rows, None)  # a failing read errors before the response starts

    def chain() -> Iterator[str]:
        if first is not None:
            yield first
            yield from rows

    return _jsonl(chain())


def batch_rows(call: Call) -> Response:
    return _jsonl(iter(call.state.export_rows(call.path_params["id"])))


# -- "AEP UI" pages: where the operators' extra links point when the connection's ui_url is
# ``{base}/emulator/ui``. A page shows the resource as the emulator holds it (404 when unknown).
_UI_KINDS = {"dataset": "datasets", "batches": "batches", "export-jobs": "exportJobs"}


def ui_page(call: Call, kind: str) -> Response:
    import html

    key, resource_id = _UI_KINDS[kind], call.path_params["id"]
    sandbox = call.param("sandbox") or "prod"
    objects = (call.state.describe().get("sandboxes") or {}).get(sandbox, {}).get(key) or {}
    if isinstance(objects, list):  # export jobs are a list of jobs with integer ids
        objects = {str(o.get("id")): o for o in objects}
    found = objects.get(resource_id)
    if found is None:
        raise AdminError(404, f"no {kind} {resource_id!r} in sandbox {sandbox!r}")
    body = (
        f"<!doctype html><title>AEP emulator: {html.escape(kind)} {html.escape(resource_id)}</title>"
        f"<h1>{html.escape(kind)} {html.escape(resource_id)}</h1><p>sandbox {html.escape(sandbox)}</p>"
        f"<pre>{html.escape(json.dumps(_jsonable(found), indent=2, sort_keys=True))}</pre>"
    )
    return Response(body, media_type="text/html")


# -- ground truth ----------------------------------------------------------------------------------
def _audiences(call: Call) -> list[str] | None:
    return call.query.getlist("audience") or None


def truth_snapshot(call: Call) -> Response:
    sql = groundtruth.snapshot_sql(
        call.state, _audiences(call), call.query.getlist("status") or None, _instant(call.param("at"), "at")
    )
    return _jsonl(groundtruth.iter_rows(call.state, sql))


def _window(call: Call) -> tuple[int, int]:
    start, end = _instant(call.param("start"), "start"), _instant(call.param("end"), "end")
    if start is None or end is None:
        raise AdminError(400, "start and end are required")
    return start, end


def truth_transitions(call: Call) -> Response:
    start, end = _window(call)
    return _jsonl(
        groundtruth.iter_rows(
            call.state, groundtruth.transitions_sql(call.state, _audiences(call), start, end)
        )
    )


def truth_profile(call: Call) -> Response:
    raw = call.path_params["index"]
    if not raw.isdigit():
        raise AdminError(400, "profile index must be an integer")
    return ok(call.state.profile(int(raw)))


# -- control -----------------------------------------------------------------------------------------
def clock(call: Call) -> Response:
    state = call.state
    if call.method == "POST":
        body = _body(call)
        if "frozen" in body and not isinstance(body["frozen"], bool):
            raise AdminError(400, "frozen must be true or false")
        if "advance_seconds" in body:
            seconds = body["advance_seconds"]
            if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
                raise AdminError(400, "advance_seconds must be a number")
            state.clock.advance(float(seconds))
        elif "set" in body:
            state.clock.set(parse_instant(str(body["set"])))
        elif "frozen" not in body:
            raise AdminError(
                400, 'give {"advance_seconds": n}, {"set": "<RFC 3339 instant>"} and/or {"frozen": bool}'
            )
        if "frozen" in body:
            state.clock.freeze(body["frozen"])
        log.info("clock now %s%s", iso(state.clock.now()), " (frozen)" if state.clock.frozen else "")
    return ok(
        {
            "now": iso(state.clock.now()),
            "anchor": iso(state.settings.anchor),
            "offsetSeconds": state.clock.offset_seconds,
            "frozen": state.clock.frozen,
        }
    )


def memberships(call: Call) -> Response:
    body = _body(call)
    try:
        index, audience, member = int(body["profile_index"]), str(body["audience_id"]), body["member"]
    except (KeyError, TypeError, ValueError):
        raise AdminError(400, "give profile_index (int), audience_id and member (bool)") from None
    if not isinstance(member, bool):
        raise AdminError(400, "member must be true or false")
    try:
        intervals = call.state.set_membership(index, audience, member, _instant(body.get("at"), "at"))
    except KeyError:
        raise AdminError(404, f"unknown audience {audience}") from None
    return ok(
        {
            "profile_index": index,
            "audience_id": audience,
            "intervals": [{"enter": iso_s(e), "exit": iso_s(x)} for e, x in intervals],
        }
    )


def audience(call: Call) -> Response:
    audience_id = call.path_params["id"]
    state = call.state
    if call.method == "DELETE":
        try:
            state.delete_audience(audience_id)
        except KeyError as exc:
            raise AdminError(404, str(exc).strip("'\"")) from None
        return ok({"id": audience_id, "deleted": True})
    body = _body(call)
    name = body.get("name")
    if not isinstance(name, str) or set(body) != {"name"}:
        raise AdminError(400, 'give {"name": "<new name>"} (only the name can be changed)')
    try:
        renamed = state.rename_audience(audience_id, name)
    except KeyError as exc:
        raise AdminError(404, str(exc).strip("'\"")) from None
    except ValueError as exc:
        raise AdminError(409 if "already named" in str(exc) else 400, str(exc)) from None
    return ok({"id": renamed.id, "name": renamed.name, "updateTime": state.audience_updated_ms(renamed.id)})


def iso_s(seconds: int | None) -> str | None:
    return None if seconds is None else iso(datetime.fromtimestamp(seconds, tz=timezone.utc))


def knobs(call: Call) -> Response:
    if call.method == "POST":
        call.state.knobs.update(_body(call))
        log.info("knobs now %s", asdict(call.state.knobs))
    return ok(asdict(call.state.knobs))


def faults(call: Call) -> Response:
    injector = call.state.faults
    if call.method == "POST":
        previous = injector.stats()["rules"]
        injector.configure(_body(call), replace=True)
        unknown = injector.unknown_routes({r["name"] for r in call.state.route_table})
        if unknown:
            injector.configure({"rules": [{k: v for k, v in r.items() if k != "injected"} for r in previous]})
            raise AdminError(400, f"unknown route names {unknown}; see GET /emulator/routes")
    elif call.method == "DELETE":
        injector.clear()
    return ok(injector.stats()["rules"])


def reset(call: Call) -> Response:
    call.state.reset()
    return ok({"reset": True})


def add_connection_dataset(call: Call) -> Response:
    state = call.state
    conn = state.cja.connections.get(call.path_params["id"])
    if conn is None:
        raise AdminError(404, f"unknown connection {call.path_params['id']}")
    body = _body(call)
    dataset = state.sandboxes[conn.sandbox].catalog.datasets.get(str(body.get("dataSetId")))
    if dataset is None:
        raise AdminError(
            400, f"dataSetId {body.get('dataSetId')!r} is not a dataset of sandbox {conn.sandbox}"
        )
    kind = body.get("type", "profile")
    if kind not in ("event", "profile", "lookup", "summary"):
        raise AdminError(400, "type must be event, profile, lookup or summary")
    conn.datasets = [d for d in conn.datasets if d["dataSetId"] != dataset.id] + [
        {
            "dataSetId": dataset.id,
            "type": kind,
            "domain": "catalog",
            "name": dataset.name,
            "visitorId": body.get("visitorId", "personID"),
            "identityNamespace": body.get("identityNamespace"),
            "usePrimaryIdNamespace": body.get("identityNamespace") is None,
            "schemaId": dataset.schema_id,
            "timestampId": body.get("timestampId"),
            "streaming": False,
            "backfills": [],
        }
    ]
    log.info("CJA UI action: dataset %s added to connection %s as %s", dataset.id, conn.id, kind)
    return ok(conn.to_json({"name", "dataSets"}))


def add_view_dimension(call: Call) -> Response:
    view = call.state.cja.data_views.get(call.path_params["id"])
    if view is None:
        raise AdminError(404, f"unknown data view {call.path_params['id']}")
    body = _body(call)
    path = body.get("schemaPath")
    if not isinstance(path, str) or not path:
        raise AdminError(400, "schemaPath is required")
    dim = dimension(path, body.get("name"), body.get("dataSetType", "profile"), body.get("type", "string"))
    view.dimensions = [d for d in view.dimensions if d["id"] != dim["id"]] + [dim]
    log.info("CJA UI action: dimension %s added to data view %s", dim["id"], view.id)
    return ok(dim)


def _ep(
    method: Any, path: str, name: str, handler: Any, *, body: bool = False, locked: bool = True
) -> Endpoint:
    return Endpoint(
        method,
        path,
        f"admin.{name}",
        admin(handler),
        auth=Auth.NONE,
        body=Body.BYTES if body else Body.NONE,
        locked=locked,
    )


ENDPOINTS = [
    _ep("GET", "/state", "state", state_view, locked=False),
    _ep("GET", "/stats", "stats", stats, locked=False),
    _ep("GET", "/routes", "routes", route_names, locked=False),
    _ep("GET", "/tokens", "tokens", issued_tokens, locked=False),
    _ep(
        ("GET", "POST", "DELETE"),
        "/query-service/scans",
        "query_service_scans",
        query_service_scans,
        body=True,
        locked=False,
    ),
    _ep("GET", "/datasets/{id}/records", "dataset_records", dataset_records, locked=False),
    _ep("GET", "/batches/{id}/rows", "batch_rows", batch_rows, locked=False),
    _ep("GET", "/truth/snapshot", "truth_snapshot", truth_snapshot, locked=False),
    _ep("GET", "/truth/transitions", "truth_transitions", truth_transitions, locked=False),
    _ep("GET", "/truth/profiles/{index}", "truth_profile", truth_profile, locked=False),
    _ep(("GET", "POST"), "/clock", "clock", clock, body=True),
    _ep("POST", "/memberships", "memberships", memberships, body=True, locked=False),
    _ep(("PATCH", "DELETE"), "/audiences/{id}", "audience", audience, body=True),
    _ep(("GET", "POST"), "/knobs", "knobs", knobs, body=True),
    _ep(("GET", "POST", "DELETE"), "/faults", "faults", faults, body=True),
    _ep("POST", "/reset", "reset", reset, locked=False),
    _ep(
        "POST", "/cja/connections/{id}/datasets", "add_connection_dataset", add_connection_dataset, body=True
    ),
    _ep("POST", "/cja/dataviews/{id}/dimensions", "add_view_dimension", add_view_dimension, body=True),
    *(
        _ep("GET", path, f"ui_{kind}", lambda call, kind=kind: ui_page(call, kind), locked=False)
        for path, kind in (
            ("/ui/dataset/browse/{id}", "dataset"),
            ("/ui/monitoring/batches/{id}", "batches"),
            ("/ui/segmentation/export-jobs/{id}", "export-jobs"),
        )
    ),
]
