"""DuckDB SQL that renders values the way Query Service returns them, and encodes whole DataRows.

Everything here builds SQL text from DuckDB types, so the per-value work runs vectorised inside
DuckDB instead of in Python:

* :func:`pg_text_sql` - PostgreSQL text output of a top-level value (``t``/``f`` booleans, ``\\x``
  bytea, ``Infinity``/``NaN``); complex values as Query Service prints them: tuple text by default,
  JSON text after ``SET auto_to_json=true``.
* :func:`spark_json_sql` - Spark's ``to_json`` (null struct fields dropped, ISO-8601 timestamps).
* :func:`datarow_sql` - one BLOB per row that *is* the PostgreSQL DataRow message, so the server
  only concatenates bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aep_emulator.query_service import protocol as pg

COMPLEX_IDS = frozenset({"struct", "map", "list", "array", "union"})
_TIMESTAMP_IDS = frozenset({"timestamp", "timestamp_s", "timestamp_ms", "timestamp_ns"})

_OIDS: dict[str, int] = {
    "boolean": pg.BOOL,
    "tinyint": pg.INT2,
    "smallint": pg.INT2,
    "utinyint": pg.INT2,
    "integer": pg.INT4,
    "usmallint": pg.INT4,
    "bigint": pg.INT8,
    "uinteger": pg.INT8,
    "ubigint": pg.NUMERIC,
    "hugeint": pg.NUMERIC,
    "uhugeint": pg.NUMERIC,
    "decimal": pg.NUMERIC,
    "float": pg.FLOAT4,
    "double": pg.FLOAT8,
    "varchar": pg.TEXT,
    "blob": pg.BYTEA,
    "date": pg.DATE,
    "time": pg.TIME,
    "timestamp": pg.TIMESTAMP,
    "timestamp_s": pg.TIMESTAMP,
    "timestamp_ms": pg.TIMESTAMP,
    "timestamp_ns": pg.TIMESTAMP,
    "timestamp with time zone": pg.TIMESTAMPTZ,
    "interval": pg.INTERVAL,
    "uuid": pg.UUID,
}


def type_id(duck_type: Any) -> str:
    """DuckDB's lower-case type family name ("varchar", "struct", "map", ...)."""
    return str(getattr(duck_type, "id", duck_type)).lower()


def pg_type_oid(duck_type: Any) -> int:
    """The PostgreSQL type OID a client sees for a DuckDB column (complex values are text)."""
    return _OIDS.get(type_id(duck_type), pg.TEXT)


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _children(duck_type: Any) -> list[tuple[str, Any]]:
    return list(getattr(duck_type, "children", []) or [])


def _field(expr: str, name: str) -> str:
    return f"struct_extract({expr}, {quote_literal(name)})"


def _element_type(duck_type: Any) -> Any:
    return _children(duck_type)[0][1]  # list: [("child", T)]; array: [("child", T), ("size", n)]


def _map_types(duck_type: Any) -> tuple[Any, Any]:
    kids = dict(_children(duck_type))
    return kids["key"], kids["value"]


def _not_null(expr: str, rendered: str) -> str:
    return f"CASE WHEN ({expr}) IS NULL THEN NULL ELSE {rendered} END"


# --- scalar text ------------------------------------------------------------------------------


def _scalar_text(expr: str, duck_type: Any) -> str:
    tid = type_id(duck_type)
    if tid == "varchar":
        return expr
    if tid == "boolean":
        return f"CASE WHEN ({expr}) THEN 't' WHEN NOT ({expr}) THEN 'f' END"
    if tid in ("float", "double"):
        # PostgreSQL spells the special values out; DuckDB prints inf/nan.
        return (
            f"CASE WHEN isnan({expr}) THEN 'NaN' WHEN isinf({expr}) AND ({expr}) > 0 THEN 'Infinity' "
            f"WHEN isinf({expr}) THEN '-Infinity' ELSE CAST({expr} AS VARCHAR) END"
        )
    if tid == "blob":
        return f"'\\x' || lower(hex({expr}))"
    if tid in _TIMESTAMP_IDS:
        # Microsecond precision: nanosecond text breaks PostgreSQL clients' parsers.
        return f"CAST(CAST({expr} AS TIMESTAMP) AS VARCHAR)"
    return f"CAST({expr} AS VARCHAR)"


# --- Spark to_json ----------------------------------------------------------------------------


def spark_json_sql(expr: str, duck_type: Any, depth: int = 0) -> str:
    """JSON text of ``expr`` as Spark's ``to_json`` writes it; NULL stays NULL.

    Struct fields that are NULL are left out (Spark's default ``ignoreNullFields``), timestamps are
    ISO-8601 with milliseconds and ``Z`` (UTC session time zone), binary is base64. (``json_quote``
    is DuckDB's ``to_json``; the other name keeps the translator from rewriting it a second time.)
    """
    tid = type_id(duck_type)
    var = f"_e{depth}"
    if tid == "struct":
        parts = []
        for name, child in _children(duck_type):
            value = spark_json_sql(_field(expr, name), child, depth + 1)
            parts.append(
                f"CASE WHEN {value} IS NULL THEN NULL "
                f"ELSE {quote_literal(_json_string(name) + ':')} || {value} END"
            )
        body = f"concat_ws(',', {', '.join(parts)})" if parts else "''"
        return _not_null(expr, f"'{{' || {body} || '}}'")
    if tid in ("list", "array"):
        element = spark_json_sql(var, _element_type(duck_type), depth + 1)
        return _not_null(
            expr,
            f"'[' || array_to_string(list_transform({expr}, lambda {var}: "
            f"coalesce({element}, 'null')), ',') || ']'",
        )
    if tid == "map":
        key_type, value_type = _map_types(duck_type)
        key = f"CAST(json_quote({_scalar_text(_field(var, 'key'), key_type)}) AS VARCHAR)"
        value = spark_json_sql(_field(var, "value"), value_type, depth + 1)
        return _not_null(
            expr,
            f"'{{' || array_to_string(list_transform(map_entries({expr}), lambda {var}: "
            f"{key} || ':' || coalesce({value}, 'null')), ',') || '}}'",
        )
    if tid in _TIMESTAMP_IDS or tid == "timestamp with time zone":
        return _not_null(
            expr, f"'\"' || strftime(CAST({expr} AS TIMESTAMP), '%Y-%m-%dT%H:%M:%S.%gZ') || '\"'"
        )
    if tid == "date":
        return _not_null(expr, f"'\"' || strftime({expr}, '%Y-%m-%d') || '\"'")
    if tid == "blob":
        return _not_null(expr, f"'\"' || to_base64({expr}) || '\"'")
    if tid in (
        "boolean",
        "tinyint",
        "smallint",
        "integer",
        "bigint",
        "hugeint",
        "utinyint",
        "usmallint",
        "uinteger",
        "ubigint",
        "uhugeint",
        "decimal",
        "float",
        "double",
    ):
        return f"CAST(json_quote({expr}) AS VARCHAR)"
    return f"CAST(json_quote(CAST({expr} AS VARCHAR)) AS VARCHAR)"


def _json_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- Query Service tuple text -----------------------------------------------------------------


def _tuple_text(expr: str, duck_type: Any, depth: int) -> str:
    """Composite text as production prints complex columns without ``auto_to_json``.

    From the Query Service SQL syntax page ("auto_to_json" example): structs as ``(a,b)``, nested
    composites wrapped in double quotes, maps as ``[key -> value]``, arrays as ``{a,b}``, NULL fields
    as ``NULL``, booleans ``t``/``f``. Production does not escape quotes inside nested values and
    the entry separator of maps with several keys is not shown there; ``", "`` is a guess.
    """
    tid = type_id(duck_type)
    var = f"_e{depth}"
    if tid == "struct":
        parts = [
            _nested_text(_field(expr, name), child, depth + 1, quote_complex=True)
            for name, child in _children(duck_type)
        ]
        body = f"concat_ws(',', {', '.join(parts)})" if parts else "''"
        return _not_null(expr, f"'(' || {body} || ')'")
    if tid in ("list", "array"):
        element = _nested_text(var, _element_type(duck_type), depth + 1, quote_complex=False)
        return _not_null(
            expr, f"'{{' || array_to_string(list_transform({expr}, lambda {var}: {element}), ',') || '}}'"
        )
    if tid == "map":
        key_type, value_type = _map_types(duck_type)
        key = _nested_text(_field(var, "key"), key_type, depth + 1, quote_complex=True)
        value = _nested_text(_field(var, "value"), value_type, depth + 1, quote_complex=True)
        return _not_null(
            expr,
            f"'[' || array_to_string(list_transform(map_entries({expr}), lambda {var}: "
            f"{key} || ' -> ' || {value}), ', ') || ']'",
        )
    if tid == "union":
        return f"CAST({expr} AS VARCHAR)"
    return _scalar_text(expr, duck_type)


def _nested_text(expr: str, duck_type: Any, depth: int, *, quote_complex: bool) -> str:
    tid = type_id(duck_type)
    if tid in COMPLEX_IDS:
        rendered = _tuple_text(expr, duck_type, depth)
        # Struct elements of an array print bare ({(a,t)}); every other nested composite is quoted.
        if quote_complex or tid != "struct":
            rendered = f"'\"' || {rendered} || '\"'"
        return f"coalesce({rendered}, 'NULL')"
    text = _scalar_text(expr, duck_type)
    if tid == "varchar":
        text = f"CASE WHEN regexp_matches({expr}, '[,(){{}}\"]') THEN '\"' || {expr} || '\"' ELSE {expr} END"
    return f"coalesce({text}, 'NULL')"


def pg_text_sql(expr: str, duck_type: Any, *, auto_to_json: bool) -> str:
    """VARCHAR expression with the text a PostgreSQL client receives for this value (NULL = NULL)."""
    if type_id(duck_type) in COMPLEX_IDS:
        return spark_json_sql(expr, duck_type) if auto_to_json else _tuple_text(expr, duck_type, 0)
    return _scalar_text(expr, duck_type)


# --- DataRow messages -------------------------------------------------------------------------


def _int32_bytes(expr: str) -> str:
    # DuckDB has no integer-to-bytes cast, but INTEGER -> BIT -> BLOB yields the 4 big-endian bytes
    # (-1 gives ff ff ff ff, PostgreSQL's NULL length); ~3x cheaper than printf('%08x') + unhex.
    return f"CAST(CAST(CAST({expr} AS INTEGER) AS BIT) AS BLOB)"


def datarow_sql(source_sql: str, column_types: Sequence[Any], *, auto_to_json: bool) -> str:
    """Query returning one BLOB per row of ``source_sql``: the complete DataRow ('D') message.

    ``source_sql`` must yield exactly ``len(column_types)`` columns; they are renamed positionally
    (``_q(c0, c1, ...)``) so duplicate or odd output names cannot collide.
    """
    n = len(column_types)
    if n == 0:
        raise ValueError("a result needs at least one column")
    names = ", ".join(f"c{i}" for i in range(n))
    encoded = ", ".join(
        f"encode({pg_text_sql(f'c{i}', t, auto_to_json=auto_to_json)}) AS b{i}"
        for i, t in enumerate(column_types)
    )
    total = " + ".join(["6"] + [f"coalesce(octet_length(b{i}), 0)" for i in range(n)]) + f" + {4 * n}"
    pieces = ["'D'::BLOB", _int32_bytes(total), f"'\\x{n >> 8:02x}\\x{n & 255:02x}'::BLOB"]
    for i in range(n):
        pieces.append(_int32_bytes(f"coalesce(octet_length(b{i}), -1)"))
        pieces.append(f"coalesce(b{i}, ''::BLOB)")
    return f"SELECT {' || '.join(pieces)} FROM (SELECT {encoded} FROM ({source_sql}) AS _q({names}))"


def values_sql(
    source_sql: str, column_types: Sequence[Any], text_columns: Sequence[bool], *, auto_to_json: bool
) -> str:
    """Query for the binary-format path: text columns rendered in SQL, binary ones returned raw."""
    n = len(column_types)
    names = ", ".join(f"c{i}" for i in range(n))
    exprs = [
        pg_text_sql(f"c{i}", t, auto_to_json=auto_to_json) if as_text else f"c{i}"
        for i, (t, as_text) in enumerate(zip(column_types, text_columns))
    ]
    return f"SELECT {', '.join(exprs)} FROM ({source_sql}) AS _q({names})"
