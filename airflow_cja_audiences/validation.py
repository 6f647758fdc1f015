"""Strict grammars for every config string that can reach a URL, a SQL statement or an XDM path.

Pure module (no Airflow import). Each checker raises ``ValueError`` with a message that names what
is wrong; pydantic turns it into an error naming the field. Anything that reaches SQL is *also*
quoted by :mod:`airflow_cja_audiences.sql` - validation is the first fence, not the only one.
"""

from __future__ import annotations

import re
import unicodedata

# Platform audience ids are UUIDs; external audiences (AAM, custom upload) use other opaque ids.
# We accept the conservative alphabet they all share and nothing that could start a SQL token.
AUDIENCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
# One XDM field name: tenant fields start with "_" (``_acme``), standard ones with a letter.
FIELD_NAME = re.compile(r"_?[A-Za-z][A-Za-z0-9_]{0,62}")
TENANT_ID = re.compile(r"[a-z0-9][a-z0-9_]{0,63}")
SANDBOX = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
NAMESPACE_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
CJA_CONNECTION_ID = re.compile(r"dg_[A-Za-z0-9-]{1,64}")
CJA_DATA_VIEW_ID = re.compile(r"dv_[A-Za-z0-9]{1,64}")
BATCH_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")

MAX_PATH_DEPTH = 16
MAX_TEXT = 256
TENANT_PLACEHOLDER = "_{tenant}"


def shown(value: object, limit: int = 80) -> str:
    """A bounded repr for error messages: hostile values can be megabytes long."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check(pattern: re.Pattern[str], value: str, what: str, example: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    if not pattern.fullmatch(value):
        raise ValueError(
            f"{what} {shown(value)} is not valid: expected something like {example!r} "
            f"(pattern {pattern.pattern})"
        )
    return value


def audience_id(value: str) -> str:
    return _check(AUDIENCE_ID, value, "audience id", "4d4c6a59-2b4d-4bbd-9aa4-7c3b3f54d2e1")


def tenant_id(value: str) -> str:
    """Accepts ``acme`` or ``_acme``; returns ``acme`` (the form Schema Registry's stats use)."""
    if isinstance(value, str) and value.startswith("_"):
        value = value[1:]
    return _check(TENANT_ID, value, "tenant id", "demoemea")


def sandbox(value: str) -> str:
    return _check(SANDBOX, value, "sandbox name", "prod")


def namespace_code(value: str) -> str:
    return _check(NAMESPACE_CODE, value, "identity namespace code", "Email")


def table_name(value: str) -> str:
    return _check(TABLE_NAME, value, "Query Service table name", "audience_export")


def job_id(value: str) -> str:
    return _check(JOB_ID, value, "job id", "luma_loyalty")


def field_name(value: str) -> str:
    return _check(FIELD_NAME, value, "field name", "audienceMembershipId")


def batch_id(value: str) -> str:
    return _check(BATCH_ID, value, "batch id", "01EQ1C48TR4GD4FE7NH2522TCQ")


def field_path(value: str, *, allow_tenant_placeholder: bool = True) -> str:
    """A dot path of XDM field names, e.g. ``_acme.identification.core.email``.

    ``_{tenant}`` as the first segment stands for the tenant namespace, resolved once the tenant id
    is known (:func:`resolve_tenant_path`).
    """
    if not isinstance(value, str) or not value:
        raise ValueError(
            "field path must be a non-empty string such as '_{tenant}.identification.core.email'"
        )
    parts = value.split(".")
    if len(parts) > MAX_PATH_DEPTH:
        raise ValueError(f"field path {shown(value)} is deeper than {MAX_PATH_DEPTH} levels")
    for i, part in enumerate(parts):
        if i == 0 and allow_tenant_placeholder and part == TENANT_PLACEHOLDER:
            continue
        if not FIELD_NAME.fullmatch(part):
            raise ValueError(
                f"field path {shown(value)}: segment {shown(part)} is not a valid XDM field name "
                f"(letters, digits and '_', starting with a letter or '_<letter>')"
            )
    return value


def resolve_tenant_path(path: str, tenant: str) -> str:
    """Replace a leading ``_{tenant}`` with ``_<tenant id>``; validate the result."""
    if path.startswith(TENANT_PLACEHOLDER + ".") or path == TENANT_PLACEHOLDER:
        path = "_" + tenant_id(tenant) + path[len(TENANT_PLACEHOLDER) :]
    return field_path(path, allow_tenant_placeholder=False)


def display_text(value: str, what: str = "text", max_len: int = MAX_TEXT) -> str:
    """Names and titles shown in AEP and CJA: printable Unicode, no control characters, bounded."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{what} must not be empty")
    if len(value) > max_len:
        raise ValueError(f"{what} is {len(value)} characters long; the limit is {max_len}")
    for ch in value:
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") and ch != " ":
            raise ValueError(
                f"{what} {value[:40]!r} contains the control or unassigned character U+{ord(ch):04X}"
            )
    return value
