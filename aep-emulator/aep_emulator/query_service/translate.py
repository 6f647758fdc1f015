"""Spark SQL as Query Service receives it -> DuckDB SQL, plus statement splitting.

sqlglot's ``spark -> duckdb`` transpiler does most of the work; this module fixes what it gets
wrong or what only Query Service does (docs/ARCHITECTURE.md, "Query Service (pgwire)"):

* tokenizer: ``'x''y'`` is one literal containing a quote (PostgreSQL clients escape that way) and
  a backslash is literal (``standard_conforming_strings=on``);
* generators: ``explode``/``explode_outer``/``posexplode[_outer]``/``inline[_outer]`` in a select
  list and ``LATERAL VIEW [OUTER]``; maps and arrays are told apart with a ``LIMIT 0`` type probe
  over the same FROM clause;
* ``size`` (map or array, -1 for NULL), ``hash`` (a signed 32-bit value like Spark's, so ``pmod``
  matters), ``pmod`` (never negative), ``date_format`` with Java patterns, ``to_json`` as Spark
  prints it;
* PostgreSQL session functions (``version()``, ``current_schema()``, ...) answered from the session;
* ``SELECT *`` leaves out the system columns ``_acp_batchid``/``_acp_system_metadata`` unless the
  session ran ``set drop_system_columns=false``; filtering on them always works;
* only the sandbox's tables (and the ``range``/``generate_series``/``unnest`` table functions) can be
  read, so DuckDB's file readers and the emulator's internal tables stay out of reach.

Translations are cached (clients send the same statements again and again).
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import sqlglot
from sqlglot import exp
from sqlglot.dialects.spark import Spark
from sqlglot.errors import ParseError, SqlglotError, TokenError
from sqlglot.tokens import TokenType

from aep_emulator.query_service import errors as err
from aep_emulator.query_service.encoding import spark_json_sql, type_id
from aep_emulator.query_service.errors import QueryServiceError

log = logging.getLogger(__name__)

SYSTEM_COLUMNS = ("_acp_batchid", "_acp_system_metadata")
ALLOWED_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest"})

_GENERATORS = frozenset(
    {"EXPLODE", "EXPLODE_OUTER", "POSEXPLODE", "POSEXPLODE_OUTER", "INLINE", "INLINE_OUTER"}
)
_TYPED_SCALARS = frozenset({"SIZE", "TO_JSON"})
_PLAIN_REWRITES = frozenset({"HASH", "PMOD", "DATE_FORMAT"})


def _keep_raw(name: str) -> Callable[[list[exp.Expression]], exp.Expression]:
    return lambda args: exp.Anonymous(this=name, expressions=args)


class QueryServiceSpark(Spark):
    """Spark SQL with the string rules PostgreSQL clients rely on."""

    class Tokenizer(Spark.Tokenizer):
        # psycopg/psycopg2 quote a value as 'it''s' and send backslashes as they are
        # (standard_conforming_strings=on), so '' is the only escape; Spark's \ escapes would
        # corrupt every bound parameter that contains a quote or a backslash.
        STRING_ESCAPES = ["'"]
        # Spark's TIMESTAMP is an instant shown in the session zone; sqlglot makes it TIMESTAMPTZ.
        # Query Service sessions are UTC and report the type as plain timestamp, so keep it naive.
        KEYWORDS = {**Spark.Tokenizer.KEYWORDS, "TIMESTAMP": TokenType.TIMESTAMP}

    class Parser(Spark.Parser):
        # Functions rewritten here rather than by sqlglot's generic transpilation, kept raw.
        FUNCTIONS = {
            **Spark.Parser.FUNCTIONS,
            **{name: _keep_raw(name) for name in _GENERATORS | _TYPED_SCALARS | _PLAIN_REWRITES},
        }


# --- statement splitting ----------------------------------------------------------------------

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z_0-9]*)?\$")


def _scan(sql: str) -> list[tuple[int, int, str]]:
    """Split ``sql`` into (start, end, kind) spans: kind is 'code', 'string', 'ident' or 'comment'."""
    spans: list[tuple[int, int, str]] = []
    i, n, code_start = 0, len(sql), 0

    def close_code(at: int) -> None:
        if at > code_start:
            spans.append((code_start, at, "code"))

    while i < n:
        ch = sql[i]
        end = -1
        kind = ""
        if ch == "-" and sql.startswith("--", i):
            nl = sql.find("\n", i)
            end, kind = (n if nl < 0 else nl + 1), "comment"
        elif ch == "/" and sql.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if sql.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif sql.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            end, kind = j, "comment"
        elif ch in "'\"`":
            backslash = ch == "'" and i > 0 and sql[i - 1] in "eE" and (i < 2 or not sql[i - 2].isalnum())
            j = i + 1
            while j < n:
                if backslash and sql[j] == "\\":
                    j += 2
                    continue
                if sql[j] == ch:
                    if j + 1 < n and sql[j + 1] == ch:
                        j += 2
                        continue
                    break
                j += 1
            end, kind = min(j + 1, n), ("string" if ch == "'" else "ident")
        elif ch == "$":
            m = _DOLLAR_TAG.match(sql, i)
            if m and not (i > 0 and (sql[i - 1].isalnum() or sql[i - 1] == "_")):
                close_tag = sql.find(m.group(0), m.end())
                end, kind = (n if close_tag < 0 else close_tag + len(m.group(0))), "string"
        if end >= 0:
            close_code(i)
            spans.append((i, end, kind))
            i = code_start = end
        else:
            i += 1
    close_code(n)
    return spans


def split_statements(sql: str) -> list[str]:
    """Split a simple-query string at top-level semicolons; empty statements are dropped."""
    statements: list[str] = []
    start = 0
    for s, e, kind in _scan(sql):
        if kind != "code":
            continue
        pos = sql.find(";", s, e)
        while pos >= 0:
            statements.append(sql[start:pos])
            start = pos + 1
            pos = sql.find(";", start, e)
    statements.append(sql[start:])
    return [stmt.strip() for stmt in statements if strip_comments(stmt).strip()]


def strip_comments(sql: str) -> str:
    return "".join(sql[s:e] if kind != "comment" else " " for s, e, kind in _scan(sql))


def sql_spans(sql: str) -> list[tuple[int, int, str]]:
    """``sql`` as (start, end, kind) spans, kind 'code', 'string', 'ident' or 'comment' (quotes included)."""
    return _scan(sql)


def code_only(sql: str) -> str:
    """``sql`` with comments, string literals and quoted identifiers blanked (for keyword checks)."""
    return "".join(sql[s:e] if kind == "code" else " " for s, e, kind in _scan(sql))


def leading_words(sql: str, count: int = 3) -> list[str]:
    words = re.findall(r"[A-Za-z_][A-Za-z_0-9]*", code_only(sql).lstrip(" \t\r\n("))
    return [w.upper() for w in words[:count]]


# --- Java date patterns -----------------------------------------------------------------------

_JAVA_LETTERS: dict[str, Callable[[int], str]] = {
    "y": lambda n: "%y" if n == 2 else "%Y",
    "u": lambda n: "%y" if n == 2 else "%Y",  # Spark 3: 'u' is the year too
    "M": lambda n: {1: "%-m", 2: "%m", 3: "%b"}.get(n, "%B"),
    "L": lambda n: {1: "%-m", 2: "%m", 3: "%b"}.get(n, "%B"),
    "d": lambda n: "%-d" if n == 1 else "%d",
    "D": lambda n: "%-j" if n == 1 else "%j",
    "H": lambda n: "%-H" if n == 1 else "%H",
    "h": lambda n: "%-I" if n == 1 else "%I",
    "m": lambda n: "%-M" if n == 1 else "%M",
    "s": lambda n: "%-S" if n == 1 else "%S",
    # Fractions: strftime has milli/micro/nanoseconds only; 1-2 S print milliseconds (approximation).
    "S": lambda n: "%g" if n <= 3 else ("%f" if n <= 6 else "%n"),
    "a": lambda n: "%p",
    "E": lambda n: "%A" if n >= 4 else "%a",
    "G": lambda n: "AD",
    # Zone letters print the session zone, which is always UTC here.
    "z": lambda n: "UTC",
    "V": lambda n: "UTC",
    "O": lambda n: "GMT",
    "X": lambda n: "Z",
    "x": lambda n: {1: "+00", 2: "+0000"}.get(n, "+00:00"),
    "Z": lambda n: "+0000" if n <= 3 else ("GMT" if n == 4 else "Z"),
}


def java_to_strftime(pattern: str) -> str:
    """Convert a Spark/Java datetime pattern to a DuckDB strftime format."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "'":
            j = i + 1
            text: list[str] = []
            while j < n:
                if pattern[j] == "'":
                    if j + 1 < n and pattern[j + 1] == "'":
                        text.append("'")
                        j += 2
                        continue
                    break
                text.append(pattern[j])
                j += 1
            out.append("'" if j == i + 1 else "".join(text).replace("%", "%%"))
            i = j + 1
        elif ch.isalpha():
            j = i
            while j < n and pattern[j] == ch:
                j += 1
            convert = _JAVA_LETTERS.get(ch)
            if convert is None:
                raise QueryServiceError(
                    err.FEATURE_NOT_SUPPORTED,
                    f"date_format pattern letter '{ch}' is not supported by the emulator",
                )
            out.append(convert(j - i))
            i = j
        else:
            out.append("%%" if ch == "%" else ch)
            i += 1
    return "".join(out)


# --- translation ------------------------------------------------------------------------------


class TranslateContext(Protocol):
    """What the translator needs from the session."""

    drop_system_columns: bool

    def describe(self, sql: str) -> list[tuple[str, Any]]:
        """Column names and DuckDB types of a DuckDB query (run with LIMIT 0)."""

    def tables(self) -> Mapping[str, str]:
        """Readable tables: lower-case name -> name."""

    def session_function(self, name: str, args: Sequence[str]) -> str | None:
        """Value of a PostgreSQL session function (version, current_user, ...), or None."""


@dataclass(frozen=True)
class Translation:
    """A query ready for DuckDB."""

    sql: str
    explicit_limit: int | None  # literal LIMIT of the outermost query (None: no LIMIT)
    lift_row_cap: bool  # Query Service's documented `LIMIT 0` override of the row cap
    param_count: int


# Session functions: sqlglot class -> PostgreSQL name; values that differ per session are not cached.
_SESSION_FUNCTION_CLASSES: dict[type[exp.Expression], str] = {
    exp.CurrentSchema: "current_schema",
    exp.CurrentDatabase: "current_database",
    exp.CurrentCatalog: "current_database",
    exp.CurrentUser: "current_user",
    exp.SessionUser: "session_user",
}
_SESSION_FUNCTION_NAMES = frozenset({"version", "current_setting", "pg_backend_pid", "current_schemas"})
_CONSTANT_SESSION_FUNCTIONS = frozenset({"version", "current_schema"})


def _fragment(template: str, **nodes: exp.Expression) -> exp.Expression:
    """Parse a DuckDB expression template and put copies of ``nodes`` where ``__name`` columns are."""
    tree = sqlglot.parse_one(template, read="duckdb")
    for column in list(tree.find_all(exp.Column)):
        name = column.name
        if name.startswith("__") and not column.table and name[2:] in nodes:
            column.replace(nodes[name[2:]].copy())
    return tree


def _literal_int(node: exp.Expression | None) -> int | None:
    if isinstance(node, exp.Literal) and not node.is_string:
        try:
            return int(node.this)
        except ValueError:
            return None
    return None


class _Job:
    """One translation: the parsed tree plus the probes it needed."""

    def __init__(self, sql: str, ctx: TranslateContext) -> None:
        self.sql = sql
        self.ctx = ctx
        self.session_dependent = False
        self._table_columns: dict[str, list[str]] = {}
        self._tables = ctx.tables()
        self._cte_names: set[str] = set()

    # -- entry point --
    def run(self) -> Translation:
        if re.search(r"\bSNAPSHOT\s+(SINCE|AS\s+OF|BETWEEN)\b", code_only(self.sql), re.I):
            raise QueryServiceError(
                err.FEATURE_NOT_SUPPORTED, "SNAPSHOT clauses are not supported by the Query Service emulator"
            )
        tree = self._parse()
        self._replace_session_functions(tree)
        self._preserve_item_names(tree)
        self._cte_names = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
        self._resolve_tables(tree)
        self._rewrite_plain_functions(tree)
        for select in sorted(tree.find_all(exp.Select), key=lambda s: -s.depth):
            self._rewrite_select(select)
        self._rewrite_typed_scalars(tree)  # leftovers: outside any SELECT (VALUES) or in LATERAL VIEW args
        explicit_limit, lift = self._top_limit(tree)
        params = [_literal_int(p.this) or 0 for p in tree.find_all(exp.Parameter)]
        return Translation(
            sql=tree.sql(dialect="duckdb"),
            explicit_limit=explicit_limit,
            lift_row_cap=lift,
            param_count=max(params, default=0),
        )

    def _parse(self) -> exp.Expression:
        try:
            trees = [t for t in sqlglot.parse(self.sql, read=QueryServiceSpark) if t is not None]
        except (ParseError, TokenError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else "syntax error"
            raise QueryServiceError(err.SYNTAX_ERROR, f"syntax error: {_plain(message)}") from exc
        if len(trees) != 1:
            raise QueryServiceError(
                err.SYNTAX_ERROR, "cannot insert multiple commands into a prepared statement"
            )
        tree = trees[0]
        if not isinstance(tree, (exp.Query, exp.Values)):
            raise QueryServiceError(
                err.FEATURE_NOT_SUPPORTED,
                f"{type(tree).__name__.upper()} statements are not supported by the Query Service emulator "
                "(it serves ad hoc SELECT queries; batch queries are not modelled)",
            )
        return tree

    # -- session functions --
    def _replace_session_functions(self, tree: exp.Expression) -> None:
        for node in list(tree.find_all(exp.Func, exp.Dot)):
            name: str | None = None
            args: list[str] = []
            target = node
            if isinstance(node, exp.Dot):
                if (
                    isinstance(node.this, (exp.Identifier, exp.Column))
                    and node.this.name.lower() == "pg_catalog"
                    and isinstance(node.expression, exp.Anonymous)
                ):
                    name = node.expression.name.lower()
                    args = [a.name for a in node.expression.expressions]
            elif type(node) in _SESSION_FUNCTION_CLASSES:
                name = _SESSION_FUNCTION_CLASSES[type(node)]
            elif (
                isinstance(node, exp.Anonymous)
                and node.name.lower() in _SESSION_FUNCTION_NAMES
                and not isinstance(node.parent, exp.Dot)
            ):
                name = node.name.lower()
                args = [a.name for a in node.expressions]
            if name is None:
                continue
            value = self.ctx.session_function(name, args)
            if value is None:
                raise QueryServiceError(
                    err.UNDEFINED_OBJECT,
                    f'unrecognized configuration parameter "{args[0] if args else name}"',
                )
            if name not in _CONSTANT_SESSION_FUNCTIONS:
                self.session_dependent = True
            target.replace(exp.Literal.string(value))

    # -- tables --
    def _resolve_tables(self, tree: exp.Expression) -> None:
        for table in list(tree.find_all(exp.Table)):
            if isinstance(table.this, exp.Func):
                fname = (
                    table.this.name if isinstance(table.this, exp.Anonymous) else table.this.sql_name()
                ).lower()
                if fname not in ALLOWED_TABLE_FUNCTIONS:
                    raise QueryServiceError(
                        err.FEATURE_NOT_SUPPORTED,
                        f"table function {fname}() is not supported by the Query Service emulator",
                    )
                continue
            name = table.name
            if not name:
                continue
            schema = table.db.lower() if table.db else ""
            if not schema and name.lower() in self._cte_names:
                continue
            if table.catalog or schema not in ("", "public"):
                raise QueryServiceError(
                    err.UNDEFINED_TABLE,
                    f'relation "{table.sql(dialect="spark")}" does not exist',
                    hint="SHOW TABLES lists the datasets of this sandbox.",
                )
            actual = self._tables.get(name.lower())
            if actual is None:
                raise QueryServiceError(
                    err.UNDEFINED_TABLE,
                    f'Table not found: relation "{name}" does not exist',
                    hint="SHOW TABLES lists the datasets of this sandbox.",
                )
            table.set("db", None)

    def _columns_of(self, table: str) -> list[str]:
        key = table.lower()
        if key not in self._table_columns:
            ident = exp.to_identifier(self._tables[key]).sql(dialect="duckdb")
            self._table_columns[key] = [
                name for name, _ in self.ctx.describe(f"SELECT * FROM {ident} LIMIT 0")
            ]
        return self._table_columns[key]

    # -- rewrites without types --
    def _rewrite_plain_functions(self, tree: exp.Expression) -> None:
        nodes = [n for n in tree.find_all(exp.Anonymous) if n.name.upper() in _PLAIN_REWRITES]
        for node in sorted(nodes, key=lambda n: -n.depth):  # innermost first
            name = node.name.upper()
            args = node.expressions
            if name == "HASH":
                if not args:
                    raise QueryServiceError(err.UNDEFINED_FUNCTION, "hash() needs at least one argument")
                # Spark's hash is a signed 32-bit murmur3; any deterministic hash will do here, but it
                # must be able to go negative so that pmod() (not %) is what keeps buckets >= 0.
                placeholders = ", ".join(f"__a{i}" for i in range(len(args)))
                new = _fragment(
                    f"(CAST(hash({placeholders}) % 4294967296 AS BIGINT) - 2147483648)",
                    **{f"a{i}": a for i, a in enumerate(args)},
                )
            elif name == "PMOD":
                self._arity(name, args, 2)
                new = _fragment("(((__a % __n) + __n) % __n)", a=args[0], n=args[1])
            else:  # DATE_FORMAT
                self._arity(name, args, 2)
                if not (isinstance(args[1], exp.Literal) and args[1].is_string):
                    raise QueryServiceError(
                        err.FEATURE_NOT_SUPPORTED, "date_format() needs a literal pattern in the emulator"
                    )
                fmt = java_to_strftime(args[1].this).replace("'", "''")
                new = _fragment(f"strftime(CAST(__x AS TIMESTAMP), '{fmt}')", x=args[0])
            node.replace(new)

    @staticmethod
    def _arity(name: str, args: Sequence[exp.Expression], count: int) -> None:
        if len(args) != count:
            raise QueryServiceError(
                err.UNDEFINED_FUNCTION, f"{name.lower()}() takes {count} arguments, got {len(args)}"
            )

    @staticmethod
    def _preserve_item_names(tree: exp.Expression) -> None:
        """Alias unaliased select items that get rewritten with the name Spark would give them."""
        rewritten = _PLAIN_REWRITES | _TYPED_SCALARS
        for select in list(tree.find_all(exp.Select)):
            items = []
            for item in select.expressions:
                if not isinstance(item, (exp.Alias, exp.Aliases, exp.Star, exp.Column)) and any(
                    n.name.upper() in rewritten for n in item.find_all(exp.Anonymous)
                ):
                    name = item.sql(dialect="spark", normalize_functions="lower")
                    item = exp.alias_(item, name, quoted=True)
                items.append(item)
            select.set("expressions", items)

    # -- per SELECT --
    def _rewrite_select(self, select: exp.Select) -> None:
        self._rewrite_lateral_views(select)
        self._rewrite_generators(select)
        self._rewrite_typed_scalars(select, select)
        self._exclude_system_columns(select)

    def _owned(self, select: exp.Select | None, node: exp.Expression) -> bool:
        return node.find_ancestor(exp.Select) is select

    def _probe_types(self, select: exp.Select | None, exprs: Sequence[exp.Expression]) -> list[Any]:
        """DuckDB types of ``exprs`` evaluated over ``select``'s FROM clause (LIMIT 0)."""
        probe = exp.Select(expressions=[e.copy() for e in exprs])
        if select is not None:
            if select.args.get("from_"):
                probe.set("from_", select.args["from_"].copy())
            if select.args.get("joins"):
                probe.set("joins", [j.copy() for j in select.args["joins"]])
            ctes: list[exp.Expression] = []
            node: exp.Expression | None = select
            while node is not None:  # CTEs of this query and every enclosing one
                with_ = node.args.get("with_")
                if with_ is not None:
                    ctes = [c.copy() for c in with_.expressions] + ctes
                node = node.parent
            if ctes:
                probe.set("with_", exp.With(expressions=ctes))
        probe.set("limit", exp.Limit(expression=exp.Literal.number(0)))
        for param in list(probe.find_all(exp.Parameter, exp.Placeholder)):
            param.replace(exp.Null())
        return [t for _, t in self.ctx.describe(probe.sql(dialect="duckdb"))]

    def _rewrite_generators(self, select: exp.Select) -> None:
        found = {
            id(n): n
            for n in select.find_all(exp.Anonymous)
            if n.name.upper() in _GENERATORS and self._owned(select, n)
        }
        if not found:
            return

        def generator_of(item: exp.Expression) -> exp.Anonymous | None:
            inner = item.this if isinstance(item, (exp.Alias, exp.Aliases)) else item
            return found.get(id(inner))  # type: ignore[return-value]

        items = list(select.expressions)
        calls = [(item, call) for item in items if (call := generator_of(item)) is not None]
        if len(calls) != len(found):
            name = next(n for i, n in found.items() if all(i != id(c) for _, c in calls)).name.lower()
            raise QueryServiceError(
                err.FEATURE_NOT_SUPPORTED,
                f"{name}() is only supported as a whole SELECT item or in LATERAL VIEW",
            )
        for _, call in calls:
            self._arity(call.name, call.expressions, 1)
        types = dict(
            zip((id(c) for _, c in calls), self._probe_types(select, [c.expressions[0] for _, c in calls]))
        )
        new_items: list[exp.Expression] = []
        for item in items:
            call = generator_of(item)
            if call is None:
                new_items.append(item)
                continue
            if isinstance(item, exp.Aliases):
                aliases: list[str] | None = [a.name for a in item.expressions]
            elif isinstance(item, exp.Alias):
                aliases = [item.alias]
            else:
                aliases = None
            new_items.extend(
                self._expand_generator(
                    call.name.upper(), call.expressions[0], types[id(call)], aliases, outer=False
                )
            )
        select.set("expressions", new_items)

    def _expand_generator(
        self, name: str, arg: exp.Expression, ty: Any, aliases: list[str] | None, *, outer: bool
    ) -> list[exp.Expression]:
        """Select items (UNNEST ... AS name) equivalent to one Spark generator call."""
        tid = type_id(ty)
        outer = outer or name.endswith("_OUTER")
        base = name.removesuffix("_OUTER")
        if tid not in ("map", "list", "array"):
            raise QueryServiceError(
                err.DATATYPE_MISMATCH,
                f"cannot resolve {name.lower()}(): input must be an array or a map, not {ty}",
            )
        count = "cardinality(__x)" if tid == "map" else "len(__x)"

        def guard(list_expr: str) -> str:
            # Spark's *_outer / LATERAL VIEW OUTER keep a row (of NULLs) for an empty or NULL input.
            return f"CASE WHEN {count} > 0 THEN {list_expr} ELSE [NULL] END" if outer else list_expr

        columns: list[tuple[str, str]] = []
        if base == "POSEXPLODE":
            columns.append((f"UNNEST({guard(f'range({count})')})", "pos"))
        if base == "INLINE":
            element = ty.children[0][1] if tid != "map" else None
            if element is None or type_id(element) != "struct":
                raise QueryServiceError(
                    err.DATATYPE_MISMATCH,
                    f"cannot resolve {name.lower()}(): input must be an array of structs",
                )
            for field, _ in element.children:
                lit = "'" + field.replace("'", "''") + "'"
                columns.append(
                    (f"UNNEST({guard(f'list_transform(__x, lambda _g: struct_extract(_g, {lit}))')})", field)
                )
        elif tid == "map":
            columns += [
                (f"UNNEST({guard('map_keys(__x)')})", "key"),
                (f"UNNEST({guard('map_values(__x)')})", "value"),
            ]
        else:
            columns.append((f"UNNEST({guard('__x')})", "col"))
        if aliases is not None:
            if len(aliases) != len(columns):
                raise QueryServiceError(
                    err.SYNTAX_ERROR,
                    f"The number of aliases supplied in the AS clause does not match the number of columns "
                    f"output by the UDTF expected {len(columns)} aliases but got {', '.join(aliases)}",
                )
            columns = [(sql, alias) for (sql, _), alias in zip(columns, aliases)]
        return [exp.alias_(_fragment(sql, x=arg), alias) for sql, alias in columns]

    def _rewrite_lateral_views(self, select: exp.Select) -> None:
        laterals = [lat for lat in select.args.get("laterals") or [] if lat.args.get("view")]
        if not laterals:
            return
        joins = list(select.args.get("joins") or [])
        for index, lateral in enumerate(laterals):
            func = lateral.this
            if not (isinstance(func, exp.Anonymous) and func.name.upper() in _GENERATORS):
                raise QueryServiceError(
                    err.FEATURE_NOT_SUPPORTED, "LATERAL VIEW supports explode/posexplode/inline[_outer] only"
                )
            self._arity(func.name, func.expressions, 1)
            select.set("joins", list(joins))
            (ty,) = self._probe_types(select, [func.expressions[0]])
            alias = lateral.args.get("alias")
            names = [c.name for c in alias.columns] if alias is not None and alias.columns else None
            items = self._expand_generator(
                func.name.upper(), func.expressions[0], ty, names, outer=bool(lateral.args.get("outer"))
            )
            table_alias = alias.name if alias is not None and alias.name else f"_lateral_view{index}"
            sub = exp.Select(expressions=items)
            joins.append(
                exp.Join(
                    this=exp.Lateral(
                        this=exp.Subquery(this=sub), alias=exp.TableAlias(this=exp.to_identifier(table_alias))
                    ),
                    kind="CROSS",
                )
            )
        select.set("joins", joins)
        select.set("laterals", [lat for lat in select.args.get("laterals") or [] if not lat.args.get("view")])

    def _rewrite_typed_scalars(self, scope: exp.Expression, select: exp.Select | None = None) -> None:
        """Rewrite size()/to_json() under ``scope``: of ``select`` only, or (select=None) all left."""
        nodes = [
            n
            for n in scope.find_all(exp.Anonymous)
            if n.name.upper() in _TYPED_SCALARS and (select is None or self._owned(select, n))
        ]
        for node in sorted(nodes, key=lambda n: -n.depth):  # innermost first: outer probes see rewritten args
            self._arity(node.name, node.expressions, 1)
            arg = node.expressions[0]
            (ty,) = self._probe_types(node.find_ancestor(exp.Select), [arg])
            tid = type_id(ty)
            if node.name.upper() == "SIZE":
                if tid == "map":
                    new = _fragment("coalesce(cardinality(__x), -1)", x=arg)
                elif tid in ("list", "array"):
                    new = _fragment("coalesce(len(__x), -1)", x=arg)
                else:
                    raise QueryServiceError(
                        err.DATATYPE_MISMATCH,
                        f"cannot resolve size(): input must be an array or a map, not {ty}",
                    )
            else:  # TO_JSON
                new = _fragment(spark_json_sql("__x", ty), x=arg)
            node.replace(new)

    def _exclude_system_columns(self, select: exp.Select) -> None:
        if not self.ctx.drop_system_columns:
            return
        sources: dict[str, str] = {}  # alias (lower) -> table (lower), base tables only
        from_ = select.args.get("from_")
        for source in ([from_.this] if from_ else []) + [j.this for j in select.args.get("joins") or []]:
            if (
                isinstance(source, exp.Table)
                and not isinstance(source.this, exp.Func)
                and source.name
                and source.name.lower() not in self._cte_names
                and source.name.lower() in self._tables
            ):
                sources[source.alias_or_name.lower()] = source.name.lower()
        if not sources:
            return
        for item in select.expressions:
            if isinstance(item, exp.Star):
                excluded = [
                    exp.column(col, table=alias)
                    for alias, table in sources.items()
                    for col in self._system_columns(table)
                ]
                star = item
            elif (
                isinstance(item, exp.Column)
                and isinstance(item.this, exp.Star)
                and item.table.lower() in sources
            ):
                excluded = [exp.column(col) for col in self._system_columns(sources[item.table.lower()])]
                star = item.this
            else:
                continue
            if excluded:
                star.set("except_", list(star.args.get("except_") or []) + excluded)

    def _system_columns(self, table: str) -> list[str]:
        return [c for c in self._columns_of(table) if c.lower() in SYSTEM_COLUMNS]

    # -- limits --
    @staticmethod
    def _top_limit(tree: exp.Expression) -> tuple[int | None, bool]:
        limit = tree.args.get("limit")
        if limit is None:
            return None, False
        value = _literal_int(limit.expression)
        if value == 0 and not tree.args.get("offset"):
            # Query Service docs: "To override the maximum rows limitation, include LIMIT 0 in your
            # query" (writing-queries.md, troubleshooting-guide.md). Emulated literally.
            tree.set("limit", None)
            return None, True
        return value, False


def _plain(message: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", message)


class Translator:
    """Thread-safe, caching Spark SQL -> DuckDB translator shared by all sessions."""

    def __init__(self, cache_size: int = 1024) -> None:
        self._cache: OrderedDict[tuple[Any, ...], Translation] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def translate(self, sql: str, ctx: TranslateContext) -> Translation:
        key = (sql, ctx.drop_system_columns, tuple(sorted(ctx.tables().values())))
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        job = _Job(sql, ctx)
        try:
            translation = job.run()
        except SqlglotError as exc:  # anything sqlglot could not make sense of is the SQL's fault
            raise QueryServiceError(
                err.SYNTAX_ERROR, f"syntax error: {_plain(str(exc).splitlines()[0])}"
            ) from exc
        log.debug("translated %r -> %r", sql, translation.sql)
        if not job.session_dependent:
            with self._lock:
                self._cache[key] = translation
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return translation

    def forget(self, sql: str) -> None:
        """Drop cached translations of ``sql`` (after the tables behind it changed)."""
        with self._lock:
            for key in [k for k in self._cache if k[0] == sql]:
                del self._cache[key]
