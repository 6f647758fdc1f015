"""Query Service emulator: a PostgreSQL wire-protocol server over DuckDB speaking Query Service's SQL.

Modules: :mod:`.server` (listener, startup/TLS/auth, message loop), :mod:`.protocol` (message
encoding/decoding), :mod:`.session` (per-connection state, limits, cursors), :mod:`.results` (row
sources: buffered, streamed, FETCH slices), :mod:`.translate` (Spark SQL -> DuckDB),
:mod:`.encoding` (value rendering and DataRow encoding in SQL), :mod:`.errors` (SQLSTATEs). Importing this package loads none of them (no DuckDB, no sqlglot).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from aep_emulator.query_service.server import QueryServiceServer

__all__ = ["QueryServiceServer"]


def __getattr__(name: str) -> Any:
    if name == "QueryServiceServer":
        from aep_emulator.query_service.server import QueryServiceServer

        return QueryServiceServer
    raise AttributeError(name)
