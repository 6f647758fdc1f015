"""SQLSTATEs and the error type the Query Service emulator reports to clients.

Codes follow PostgreSQL's table and the Query Service troubleshooting guide
(experience-platform docs, help/query-service/troubleshooting-guide.md, "PostgreSQL API errors"):
28P01 bad token, 42601 syntax, 42P01 missing table, 53400 limits and statement timeout,
58000 internal failure, 0A000 unsupported feature; 53300 (PostgreSQL's too_many_connections) for
Query Service's "Session Limit Reached" (the text is Adobe's, the code a guess).
"""

from __future__ import annotations

import re

# Class 08/0A/22/25/26/28/34/3B/42/53/55/57/58/XX: only the codes this server emits.
PROTOCOL_VIOLATION = "08P01"
FEATURE_NOT_SUPPORTED = "0A000"
INVALID_PARAMETER_VALUE = "22023"
INVALID_TEXT_REPRESENTATION = "22P02"
DATA_EXCEPTION = "22000"
DIVISION_BY_ZERO = "22012"
NUMERIC_VALUE_OUT_OF_RANGE = "22003"
ACTIVE_SQL_TRANSACTION = "25001"
NO_ACTIVE_SQL_TRANSACTION = "25P01"
IN_FAILED_SQL_TRANSACTION = "25P02"
INVALID_SQL_STATEMENT_NAME = "26000"
INVALID_AUTHORIZATION_SPECIFICATION = "28000"
INVALID_PASSWORD = "28P01"
INVALID_CURSOR_NAME = "34000"
INVALID_SAVEPOINT_SPECIFICATION = "3B001"
SYNTAX_ERROR = "42601"
UNDEFINED_TABLE = "42P01"
UNDEFINED_COLUMN = "42703"
UNDEFINED_FUNCTION = "42883"
UNDEFINED_OBJECT = "42704"
DATATYPE_MISMATCH = "42804"
DUPLICATE_CURSOR = "42P03"
DUPLICATE_PREPARED_STATEMENT = "42P05"
AMBIGUOUS_COLUMN = "42702"
GROUPING_ERROR = "42803"
TOO_MANY_CONNECTIONS = "53300"  # "Session Limit Reached" (guess: PostgreSQL's code; Adobe documents the text)
INSUFFICIENT_RESOURCES = "53400"  # Query Service: row/LIMIT cap and the 10-minute statement timeout
OBJECT_NOT_IN_PREREQUISITE_STATE = "55000"
QUERY_CANCELED = "57014"
ADMIN_SHUTDOWN = "57P01"
SYSTEM_ERROR = "58000"
INTERNAL_ERROR = "XX000"


class QueryServiceError(Exception):
    """An error sent to the client as an ErrorResponse (severity, SQLSTATE, message, detail, hint)."""

    def __init__(
        self,
        sqlstate: str,
        message: str,
        *,
        severity: str = "ERROR",
        detail: str | None = None,
        hint: str | None = None,
        position: int | None = None,
    ) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.severity = severity
        self.detail = detail
        self.hint = hint
        self.position = position

    def __repr__(self) -> str:
        return f"QueryServiceError({self.sqlstate!r}, {self.message!r})"


# DuckDB reports errors as exception classes plus a message; the class alone is too coarse
# (a BinderException is a missing column, a missing function or a type mismatch), so the
# message decides first.
_MESSAGE_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"Table with name .* does not exist|Table .* does not exist", re.S), UNDEFINED_TABLE),
    (
        re.compile(
            r"Referenced column .* not found|Column .* not found|"
            r"Could not find key|does not have a column named|Values list .* does not have a column",
            re.S,
        ),
        UNDEFINED_COLUMN,
    ),
    (re.compile(r"Could not find (struct )?(field|key)", re.S), UNDEFINED_COLUMN),
    (re.compile(r"ambiguous", re.I), AMBIGUOUS_COLUMN),
    (
        re.compile(
            r"No function matches|Scalar Function with name .* does not exist|"
            r"Function with name .* does not exist|Table Function with name .* does not exist",
            re.S,
        ),
        UNDEFINED_FUNCTION,
    ),
    (re.compile(r"must appear in the GROUP BY clause|GROUP BY", re.S), GROUPING_ERROR),
    (re.compile(r"Could not convert|Conversion Error|Could not parse", re.S), INVALID_TEXT_REPRESENTATION),
    (re.compile(r"Division by zero", re.I), DIVISION_BY_ZERO),
    (re.compile(r"Out of Range|overflow", re.I), NUMERIC_VALUE_OUT_OF_RANGE),
    (re.compile(r"Cannot compare|Cannot mix|Cannot cast|type mismatch", re.I), DATATYPE_MISMATCH),
)

_CLASS_RULES: dict[str, str] = {
    "ParserException": SYNTAX_ERROR,
    "CatalogException": UNDEFINED_TABLE,
    "BinderException": UNDEFINED_COLUMN,
    "ConversionException": INVALID_TEXT_REPRESENTATION,
    "OutOfRangeException": NUMERIC_VALUE_OUT_OF_RANGE,
    "InvalidInputException": DATA_EXCEPTION,
    "NotImplementedException": FEATURE_NOT_SUPPORTED,
    "InterruptException": QUERY_CANCELED,
    "OutOfMemoryException": INSUFFICIENT_RESOURCES,
}


def from_duckdb(exc: BaseException) -> QueryServiceError:
    """Map a DuckDB exception to the SQLSTATE a PostgreSQL client can act on."""
    text = str(exc)
    # DuckDB prefixes messages with "Binder Error: " etc. and appends a caret diagram; keep line 1.
    first = text.splitlines()[0] if text else type(exc).__name__
    message = re.sub(r"^[A-Za-z ]+ Error: ", "", first)
    for pattern, code in _MESSAGE_RULES:
        if pattern.search(first):
            return QueryServiceError(code, message)
    for klass in type(exc).__mro__:
        code = _CLASS_RULES.get(klass.__name__)
        if code:
            return QueryServiceError(code, message)
    return QueryServiceError(SYSTEM_ERROR, f"Internal system failure: {message}")
