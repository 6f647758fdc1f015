"""XDM: the two standard classes, the profile union schema, and JSON record validation.

Only what the pipeline touches is modelled: the XDM Individual Profile and ExperienceEvent classes
(with their own fields), tenant field groups and schemas built on them, and the profile union
schema whose properties are the emulator's synthetic profile fields (see :mod:`synthetic`).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from aep_emulator import synthetic

PROFILE_CLASS = "https://ns.adobe.com/xdm/context/profile"
EVENT_CLASS = "https://ns.adobe.com/xdm/context/experienceevent"
UNION_ID = "https://ns.adobe.com/xdm/context/profile__union"
UNION_ALT_ID = "_xdm.context.profile__union"
AUDITABLE = "https://ns.adobe.com/xdm/common/auditable"
RECORD_BEHAVIOR = "https://ns.adobe.com/xdm/data/record"
TIME_SERIES_BEHAVIOR = "https://ns.adobe.com/xdm/data/time-series"


def _s(title: str, **extra: Any) -> dict:
    return {"title": title, "type": "string", **extra}


@dataclass(frozen=True)
class XdmClass:
    id: str
    alt_id: str
    title: str
    behavior: str
    properties: dict
    required: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {
            "$id": self.id,
            "meta:altId": self.alt_id,
            "meta:resourceType": "classes",
            "version": "1.0",
            "title": self.title,
            "type": "object",
            "meta:extensible": True,
            "meta:abstract": False,
            "meta:containerId": "global",
            "meta:extends": [self.behavior],
            "properties": copy.deepcopy(self.properties),
            "required": list(self.required),
        }


_REPO = {
    "title": "Repository",
    "type": "object",
    "properties": {
        "createDate": _s("Create date", format="date-time"),
        "modifyDate": _s("Modify date", format="date-time"),
    },
}

CLASSES: dict[str, XdmClass] = {
    PROFILE_CLASS: XdmClass(
        id=PROFILE_CLASS,
        alt_id="_xdm.context.profile",
        title="XDM Individual Profile",
        behavior=RECORD_BEHAVIOR,
        properties={
            "_id": _s("Identifier", format="uri-reference"),
            "personID": _s("Person ID"),
            "_repo": _REPO,
            "createdByBatchID": _s("Created by batch identifier", format="uri-reference"),
            "modifiedByBatchID": _s("Modified by batch identifier", format="uri-reference"),
            "repositoryCreatedBy": _s("Created by user identifier"),
            "repositoryLastModifiedBy": _s("Modified by user identifier"),
        },
    ),
    EVENT_CLASS: XdmClass(
        id=EVENT_CLASS,
        alt_id="_xdm.context.experienceevent",
        title="XDM ExperienceEvent",
        behavior=TIME_SERIES_BEHAVIOR,
        properties={
            "_id": _s("Identifier", format="uri-reference"),
            "timestamp": _s("Timestamp", format="date-time"),
            "eventType": _s("Event Type"),
            "eventMergeId": _s("ExperienceEvent merge ID"),
            "producedBy": _s("Produced by"),
            "identityMap": copy.deepcopy(synthetic.IDENTITY_MAP_XDM),
        },
        required=("_id", "timestamp"),
    ),
}


def class_by_ref(ref: str) -> XdmClass | None:
    for cls in CLASSES.values():
        if ref in (cls.id, cls.alt_id):
            return cls
    return None


def union_schema(tenant: str, org_id: str) -> dict:
    """The profile union schema, resolved (``xed-full``): the synthetic profile fields."""
    properties = synthetic.xdm_properties(synthetic.profile_field_tree(tenant))
    properties["segmentMembership"] = copy.deepcopy(synthetic.SEGMENT_MEMBERSHIP_XDM)
    return {
        "$id": UNION_ID,
        "meta:altId": UNION_ALT_ID,
        "meta:resourceType": "unions",
        "version": "1.0",
        "title": "XDM Individual Profile union",
        "type": "object",
        "meta:class": PROFILE_CLASS,
        "meta:containerId": "tenant",
        "meta:tenantNamespace": f"_{tenant}",
        "imsOrg": org_id,
        "properties": properties,
    }


def has_path(properties: dict, path: list[str]) -> bool:
    """True if the property path (names, no ``properties`` segments) exists in resolved properties."""
    node: dict | None = {"type": "object", "properties": properties}
    for part in path:
        if node is None or part not in node.get("properties", {}):
            return False
        node = node["properties"][part]
    return True


def merge_properties(target: dict, source: dict, path: str = "") -> str | None:
    """Merge ``source`` XDM properties into ``target``; return the conflicting path, if any."""
    for name, spec in source.items():
        here = f"{path}/{name}"
        if name not in target:
            target[name] = copy.deepcopy(spec)
            continue
        mine = target[name]
        if mine.get("type") != spec.get("type"):
            return f"{here} ({mine.get('type')} vs {spec.get('type')})"
        if "properties" in spec:
            conflict = merge_properties(mine.setdefault("properties", {}), spec["properties"], here)
            if conflict:
                return conflict
    return None


def field_group_properties(body: dict) -> dict:
    """Properties a field group contributes: its ``allOf`` local definitions plus top-level ones."""
    definitions = body.get("definitions") or {}
    refs = [item.get("$ref", "") for item in body.get("allOf") or [] if isinstance(item, dict)]
    names = [r[len("#/definitions/") :] for r in refs if r.startswith("#/definitions/")] or list(definitions)
    merged: dict = {}
    for name in names:
        definition = definitions.get(name) or {}
        merge_properties(merged, definition.get("properties") or {})
    merge_properties(merged, body.get("properties") or {})
    return merged


# -- record validation ----------------------------------------------------------------------
PARSE = "INGEST-1401-400"  # documented: corrupted row
REQUIRED = "INGEST-1555-400"  # documented: required field missing or null
# Guess: no public code for "unknown field / wrong type"; a conversion-error code of the same family.
SCHEMA = "INGEST-1510-400"

_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$")


@dataclass
class RecordSchema:
    """A dataset's schema, ready to validate JSON records (``validate`` returns (code, message) pairs)."""

    properties: dict
    required: tuple[str, ...]
    tenant: str
    _tenant_fields: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        tenant_node = self.properties.get(f"_{self.tenant}", {})
        self._tenant_fields = set((tenant_node.get("properties") or {}).keys())

    def validate(self, record: Any) -> list[tuple[str, str]]:
        if not isinstance(record, dict):
            return [(PARSE, "the row is not a JSON object")]
        errors: list[tuple[str, str]] = []
        for name in self.required:
            if record.get(name) is None:
                errors.append((REQUIRED, f"required field '{name}' is missing or null"))
        for name, value in record.items():
            if name not in self.properties:
                if name in self._tenant_fields:
                    errors.append(
                        (
                            SCHEMA,
                            f"field '{name}' is a custom field and must sit under "
                            f"'_{self.tenant}' (found at the top level)",
                        )
                    )
                else:
                    errors.append((SCHEMA, f"field '{name}' is not defined in the dataset's schema"))
                continue
            _check(value, self.properties[name], name, errors)
        return errors


def _check(value: Any, spec: dict, path: str, errors: list[tuple[str, str]]) -> None:
    if value is None:
        return
    kind = spec.get("type", "object")
    if kind == "object":
        if not isinstance(value, dict):
            errors.append((SCHEMA, f"field '{path}' must be an object, got {type(value).__name__}"))
            return
        if "additionalProperties" in spec and "properties" not in spec:  # XDM map
            for key, item in value.items():
                _check(item, spec["additionalProperties"], f"{path}.{key}", errors)
            return
        props = spec.get("properties") or {}
        for key, item in value.items():
            if key not in props:
                errors.append((SCHEMA, f"field '{path}.{key}' is not defined in the dataset's schema"))
            else:
                _check(item, props[key], f"{path}.{key}", errors)
    elif kind == "array":
        if not isinstance(value, list):
            errors.append((SCHEMA, f"field '{path}' must be an array, got {type(value).__name__}"))
            return
        for i, item in enumerate(value):
            _check(item, spec.get("items") or {"type": "string"}, f"{path}[{i}]", errors)
    elif kind == "string":
        _check_string(value, spec, path, errors)
    elif kind in ("integer", "number"):
        # Strings that parse as numbers are coerced by ingestion; booleans never are.
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if isinstance(value, str):
            try:
                number = float(value)
                ok = kind == "number" or number.is_integer()
            except ValueError:
                ok = False
        elif ok and kind == "integer":
            ok = float(value).is_integer()
        if not ok:
            errors.append((SCHEMA, f"field '{path}' must be {kind}, got {value!r}"))
    elif kind == "boolean":
        if not isinstance(value, bool):
            errors.append((SCHEMA, f"field '{path}' must be boolean, got {value!r}"))


def _check_string(value: Any, spec: dict, path: str, errors: list[tuple[str, str]]) -> None:
    fmt = spec.get("format")
    if fmt == "date-time" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return  # epoch milliseconds are accepted for date-time fields
    if not isinstance(value, str):
        errors.append((SCHEMA, f"field '{path}' must be a string, got {type(value).__name__}"))
        return
    if fmt == "date-time" and not _DATE_TIME.match(value):
        errors.append((SCHEMA, f"field '{path}' is not an ISO-8601 date-time: {value!r}"))
    elif fmt == "date":
        try:
            date.fromisoformat(value)
        except ValueError:
            errors.append((SCHEMA, f"field '{path}' is not a date (YYYY-MM-DD): {value!r}"))
    if "enum" in spec and value not in spec["enum"]:
        errors.append((SCHEMA, f"field '{path}' must be one of {spec['enum']}, got {value!r}"))
