"""Query Service REST (reference section 8.3): only ``connection_parameters`` is modelled.

Query Service REST never returns rows; the pipeline reads over the PostgreSQL wire protocol, served by
:mod:`aep_emulator.query_service` on ``--pg-port``. Other calls answer 501.
"""

from __future__ import annotations

from starlette.responses import Response

from aep_emulator.errors import NotModelled
from aep_emulator.rest.common import Call, Endpoint, ok

PREFIX = "/data/foundation/query"


def connection_parameters(call: Call) -> Response:
    state = call.state
    if state.pg_port is None:
        raise NotModelled("Query Service connection parameters: this emulator runs without its PostgreSQL "
                          "endpoint (start it with --pg-port)")
    token = call.headers.get("authorization", "").partition(" ")[2].strip()
    return ok({"host": state.pg_host, "port": state.pg_port, "dbName": f"{call.sandbox.name}:all",
               "username": state.settings.org_id, "token": token, "compressedToken": token,
               "websocketHost": None, "sslmode": "require" if state.settings.tls else "disable"})


ENDPOINTS = [
    Endpoint("GET", "/connection_parameters", "query.connection_parameters", connection_parameters, locked=False),
]
