"""XDM bodies for the schemas the pipeline creates, and schema look-ups (pure, no Airflow import).

The profile dataset uses the XDM Individual Profile class plus one field group under the tenant
namespace holding both record layouts' fields (per person with an array of memberships, or one
record per membership), so switching the layout never needs a schema change. The events dataset
uses the ExperienceEvent class with its own field group.
"""

from __future__ import annotations

from typing import Any

from airflow_cja_audiences.config import OutputFields
from airflow_cja_audiences.models import EVENT_CLASS, PROFILE_CLASS

XED_ID = "application/vnd.adobe.xed-id+json"
XED_FULL = "application/vnd.adobe.xed-full+json;version=1"
XED = "application/vnd.adobe.xed+json"
XED_VERSIONED = "application/vnd.adobe.xed+json;version=1"
XDM_DESCRIPTORS = "application/vnd.adobe.xdm+json"


def schema_uri(ref: str) -> str:
    """The ``$id`` URI of a schema reference given as URI or ``meta:altId``.

    Adobe derives alt ids from URIs: ``https://ns.adobe.com/acme/schemas/x`` <-> ``_acme.schemas.x``.
    """
    if ref.startswith("_") and "://" not in ref:
        return "https://ns.adobe.com/" + ref[1:].replace(".", "/")
    return ref


def _string(title: str) -> dict[str, str]:
    return {"type": "string", "title": title}


def _datetime(title: str) -> dict[str, str]:
    return {"type": "string", "format": "date-time", "title": title}


def _field_group(
    title: str, description: str, tenant: str, extends: str, properties: dict[str, Any]
) -> dict[str, Any]:
    return {
        "title": title,
        "description": description,
        "type": "object",
        "meta:intendedToExtend": [extends],
        "definitions": {
            "fields": {"properties": {f"_{tenant}": {"type": "object", "properties": properties}}}
        },
        "allOf": [{"$ref": "#/definitions/fields"}],
    }


def profile_field_group(title: str, tenant: str, f: OutputFields) -> dict[str, Any]:
    membership = {
        f.audience_id: _string("Audience ID"),
        f.audience_name: _string("Audience name"),
        f.status: _string("Membership status"),
        f.qualification_time: _datetime("Last qualification time"),
    }
    properties: dict[str, Any] = {
        f.memberships: {
            "type": "array",
            "title": "Audience memberships",
            "items": {"type": "object", "properties": membership},
        },
        f.audience_ids: _string("Audience IDs (comma-separated)"),
        f.audience_names: _string("Audience names (comma-separated)"),
        **membership,  # per-membership layout
    }
    return _field_group(
        title,
        "AEP audience memberships, maintained by airflow-cja-audiences",
        tenant,
        PROFILE_CLASS,
        properties,
    )


def event_field_group(title: str, tenant: str, f: OutputFields) -> dict[str, Any]:
    properties = {
        "personID": _string("Person ID"),
        f.audience_id: _string("Audience ID"),
        f.audience_name: _string("Audience name"),
        f.event_type: {"type": "string", "title": "Audience event", "enum": ["entered", "exited"]},
    }
    return _field_group(
        title,
        "AEP audience entries and exits, maintained by airflow-cja-audiences",
        tenant,
        EVENT_CLASS,
        properties,
    )


def schema_body(title: str, class_id: str, field_group_ids: list[str]) -> dict[str, Any]:
    return {
        "title": title,
        "type": "object",
        "description": "Created by airflow-cja-audiences for Customer Journey Analytics",
        "allOf": [{"$ref": class_id}, *({"$ref": fg} for fg in field_group_ids)],
    }


def identity_descriptor(schema_id: str, source_property: str, namespace: str) -> dict[str, Any]:
    """Primary identity descriptor; ``source_property`` is a slash path like ``/personID``."""
    return {
        "@type": "xdm:descriptorIdentity",
        "xdm:sourceSchema": schema_id,
        "xdm:sourceVersion": 1,
        "xdm:sourceProperty": source_property,
        "xdm:namespace": namespace,
        "xdm:property": "xdm:code",
        "xdm:isPrimary": True,
    }


def field_group_properties(field_group: dict[str, Any], tenant: str) -> dict[str, Any]:
    """The tenant-level properties a field group defines (from any of its definitions)."""
    found: dict[str, Any] = {}
    for definition in (field_group.get("definitions") or {}).values():
        tenant_obj = (definition.get("properties") or {}).get(f"_{tenant}") or {}
        found.update(tenant_obj.get("properties") or {})
    return found


def missing_properties(existing: dict[str, Any], wanted: dict[str, Any], prefix: str = "") -> list[str]:
    """Paths present in ``wanted`` (XDM properties) but absent from ``existing``."""
    missing: list[str] = []
    for name, spec in wanted.items():
        path = f"{prefix}{name}"
        if name not in existing:
            missing.append(path)
            continue
        have = existing[name]
        sub_wanted = spec.get("properties") or (spec.get("items") or {}).get("properties")
        sub_have = have.get("properties") or (have.get("items") or {}).get("properties") or {}
        if sub_wanted:
            missing += missing_properties(sub_have, sub_wanted, prefix=f"{path}.")
    return missing


def schema_has_path(schema: dict[str, Any], dot_path: str) -> bool:
    """Whether a full (``xed-full``) schema defines the dot path, e.g. ``_acme.identification.core.email``."""
    node: dict[str, Any] = schema
    for part in dot_path.split("."):
        props = node.get("properties") or {}
        if part not in props:
            return False
        node = props[part]
    return True
