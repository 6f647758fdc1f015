"""Deterministic synthetic profiles and audiences.

A profile is a pure function of ``(seed, index)``, computed inside DuckDB from hashes, so millions
of profiles cost no Python memory. The field tree below is the single description of the exported
profile fields: it yields the DuckDB column types of export tables, the XDM properties of the
profile union schema, the SELECT expressions of an export (with unrequested fields NULL) and the
validation of an export job's ``fields``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Union

from aep_emulator.settings import AudienceSpec

# Audience ids do not depend on the seed, so configs and demos keep working across seeds.
AUDIENCE_NAMESPACE = uuid.UUID("6f1c1d0e-4b7e-4d55-9a57-2f0b7a4f3c11")

DEFAULT_AUDIENCES: tuple[tuple[str, float, str], ...] = (
    ("Luma - Gold members", 0.18, "Loyalty tier Gold"),
    ("Luma - Blue+ members", 0.30, "Loyalty tier Blue and above"),
    ("Cart abandoners", 0.35, "Added to cart in the last 7 days without buying"),
    ("High-value customers", 0.10, "Lifetime value above 1000 EUR"),
    ("Newsletter subscribers", 0.50, "Opted in to the weekly newsletter"),
    ("Churn risk", 0.20, "Predicted churn propensity above 0.7"),
    ("Lapsed VIP - archive", 0.0, "Kept for reporting; nobody qualifies any more"),
)


def default_audiences() -> tuple[AudienceSpec, ...]:
    return tuple(
        AudienceSpec(id=str(uuid.uuid5(AUDIENCE_NAMESPACE, name)), name=name, probability=p, description=desc)
        for name, p, desc in DEFAULT_AUDIENCES
    )


_FIRST = (
    "Ada",
    "Ben",
    "Chloe",
    "David",
    "Emma",
    "Felix",
    "Grace",
    "Hugo",
    "Ines",
    "Jonas",
    "Klara",
    "Liam",
    "Mia",
    "Noah",
    "Olivia",
    "Paul",
    "Quinn",
    "Rosa",
    "Sam",
    "Tara",
    "Uma",
    "Victor",
    "Wendy",
    "Xavier",
    "Yara",
    "Zoe",
    "Anna",
    "Bruno",
    "Carla",
    "Dario",
    "Elena",
    "Frank",
    "Gina",
    "Henrik",
    "Ivy",
    "Jack",
    "Kim",
    "Lea",
    "Marco",
    "Nina",
    "Oscar",
    "Pia",
    "Rafael",
    "Sofia",
    "Tom",
    "Ursula",
    "Vera",
    "Will",
)
_LAST = (
    "Adams",
    "Berger",
    "Costa",
    "Dubois",
    "Evans",
    "Fischer",
    "Garcia",
    "Hansen",
    "Ivanova",
    "Jensen",
    "Keller",
    "Larsen",
    "Martin",
    "Novak",
    "Olsen",
    "Peters",
    "Quint",
    "Rossi",
    "Schmidt",
    "Taylor",
    "Ullrich",
    "Vogel",
    "Weber",
    "Xu",
    "Young",
    "Zimmer",
    "Andersen",
    "Bauer",
    "Clark",
    "Dahl",
    "Ek",
    "Ferrari",
    "Gruber",
    "Horvat",
    "Ito",
    "Jovanovic",
    "Kowalski",
    "Lopez",
    "Meyer",
    "Nilsson",
    "Otto",
    "Perez",
    "Ruiz",
    "Silva",
    "Thomsen",
    "Varga",
    "Wolf",
    "Yilmaz",
)


def _sql_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def profile_attribute_columns(seed: int, idx: str = "idx") -> dict[str, str]:
    """SQL expressions (over the integer column ``idx``) of the raw profile attributes."""
    h = lambda salt: f"hash({int(seed)}, {idx}, '{salt}')"  # noqa: E731 - tiny local helper
    first = f"{_sql_list(_FIRST)}[1 + ({h('first')} % {len(_FIRST)})::INTEGER]"
    last = f"{_sql_list(_LAST)}[1 + ({h('last')} % {len(_LAST)})::INTEGER]"
    return {
        "first_name": first,
        "last_name": last,
        # The index keeps e-mails unique; the names make them differ between seeds.
        "email": f"lower({first} || '.' || {last} || '.' || {idx}::VARCHAR) || '@example.com'",
        "ecid": f"lpad(({h('ecid1')} % 10000000000000000000)::VARCHAR, 19, '0') || "
        f"lpad(({h('ecid2')} % 10000000000000000000)::VARCHAR, 19, '0')",
        # 7919 is coprime with 10^12, so the CRM id is a bijection of the index (unique) that the
        # seed shifts.
        "crm_id": f"'CRM-' || lpad((({idx} * 7919 + {int(seed) % 1000003} * 104729) % 1000000000000)"
        f"::VARCHAR, 12, '0')",
        "phone": f"'+1555' || lpad(({h('phone')} % 10000000)::VARCHAR, 7, '0')",
        "gender": f"['female', 'male', 'not_specified', 'female', 'male'][1 + ({h('gender')} % 5)::INTEGER]",
    }


@dataclass(frozen=True)
class Leaf:
    """A field of the exported profile: DuckDB type, XDM schema fragment, SQL over the attributes."""

    sql_type: str
    xdm: dict
    expr: str


FieldTree = dict[str, Union["FieldTree", Leaf]]

IDENTITY_ITEM_TYPE = 'STRUCT(id VARCHAR, "primary" BOOLEAN, authenticatedState VARCHAR)'
IDENTITY_MAP_TYPE = f"MAP(VARCHAR, {IDENTITY_ITEM_TYPE}[])"
IDENTITY_MAP_XDM = {
    "title": "Identity Map",
    "type": "object",
    "meta:xdmType": "map",
    "additionalProperties": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "primary": {"type": "boolean"},
                "authenticatedState": {"type": "string", "enum": ["ambiguous", "authenticated", "loggedOut"]},
            },
        },
    },
}
MEMBERSHIP_TYPE = (
    "STRUCT(status VARCHAR, lastQualificationTime TIMESTAMP, version VARCHAR, validUntil TIMESTAMP)"
)
SEGMENT_MEMBERSHIP_TYPE = f"STRUCT(ups MAP(VARCHAR, {MEMBERSHIP_TYPE}))"
SEGMENT_MEMBERSHIP_XDM = {
    "title": "Segment Membership",
    "type": "object",
    "meta:xdmType": "map",
    "additionalProperties": {
        "type": "object",
        "meta:xdmType": "map",
        "additionalProperties": {
            "type": "object",
            "properties": {
                "status": {"type": "string", "enum": ["realized", "existing", "exited"]},
                "lastQualificationTime": {"type": "string", "format": "date-time"},
                "version": {"type": "string"},
                "validUntil": {"type": "string", "format": "date-time"},
            },
        },
    },
}
SYSTEM_METADATA_TYPE = "STRUCT(acp_sourceBatchId VARCHAR, commitBatchId VARCHAR, ingestTime BIGINT)"


def _string(title: str, expr: str, **extra: object) -> Leaf:
    return Leaf("VARCHAR", {"title": title, "type": "string", **extra}, expr)


def profile_field_tree(tenant: str) -> FieldTree:
    """The exported profile fields (also the properties of the profile union schema)."""
    identity_map = (
        "MAP {'Email': [{'id': email, 'primary': true, 'authenticatedState': 'authenticated'}], "
        "'ECID': [{'id': ecid, 'primary': false, 'authenticatedState': 'ambiguous'}]}"
    )
    return {
        "identityMap": Leaf(IDENTITY_MAP_TYPE, IDENTITY_MAP_XDM, identity_map),
        f"_{tenant}": {
            "identification": {
                "core": {
                    "email": _string("Email", "email", format="email"),
                    "ecid": _string("ECID", "ecid"),
                    "crmId": _string("CRM ID", "crm_id"),
                    "phoneNumber": _string("Phone number", "phone"),
                }
            }
        },
        "person": {
            "name": {
                "firstName": _string("First name", "first_name"),
                "lastName": _string("Last name", "last_name"),
            },
            "gender": _string("Gender", "gender", enum=["female", "male", "not_specified"]),
        },
        "personalEmail": {"address": _string("Address", "email", format="email")},
    }


def sql_type(tree: FieldTree) -> str:
    parts = [
        f'"{name}" {node.sql_type if isinstance(node, Leaf) else sql_type(node)}'
        for name, node in tree.items()
    ]
    return f"STRUCT({', '.join(parts)})"


def xdm_properties(tree: FieldTree) -> dict:
    out: dict = {}
    for name, node in tree.items():
        if isinstance(node, Leaf):
            out[name] = dict(node.xdm)
        else:
            out[name] = {"type": "object", "properties": xdm_properties(node)}
    return out


def resolve_field_path(tree: FieldTree, path: str) -> bool:
    """True if ``path`` (dot separated) names a field or object of the tree, or a key inside a map leaf."""
    node: FieldTree | Leaf = tree
    for part in path.split("."):
        if isinstance(node, Leaf):
            return node.xdm.get("meta:xdmType") == "map"  # identityMap.Email etc.
        if part not in node:
            return False
        node = node[part]
    return True


def select_expression(node: FieldTree | Leaf, path: str, requested: list[str] | None) -> str:
    """SQL for one column: the field with every unrequested leaf NULL (``None`` = all requested)."""

    def wanted(p: str) -> bool:
        return requested is None or any(
            r == p or r.startswith(p + ".") or p.startswith(r + ".") for r in requested
        )

    if isinstance(node, Leaf):
        return node.expr if wanted(path) else f"NULL::{node.sql_type}"
    if not wanted(path):
        return f"NULL::{sql_type(node)}"
    fields = ", ".join(
        f"'{name}': {select_expression(child, f'{path}.{name}', requested)}" for name, child in node.items()
    )
    return f"{{{fields}}}::{sql_type(node)}"
