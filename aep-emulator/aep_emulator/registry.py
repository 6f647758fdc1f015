"""Schema Registry model of one sandbox: tenant field groups, schemas and identity descriptors.

Error codes follow the XDM troubleshooting guide (XDM-1010-404, XDM-1521-400, XDM-1020..1024-400,
XDM-1413-400, XDM-1528-400). Where no public code exists for a validation failure the generic
``XDM-1001-400`` is used (a guess, noted at the call).
"""

from __future__ import annotations

import copy
import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any

from aep_emulator import xdm
from aep_emulator.errors import NotModelled, ServiceError
from aep_emulator.filters import PatchError, apply_json_patch


def _xdm_error(status: int, number: int, title: str, detail: str) -> ServiceError:
    return ServiceError(status, f"XDM-{number}-{status}", title, detail)


def invalid(detail: str) -> ServiceError:
    # Guess: a generic validation code for request bodies the guide gives no specific code for.
    return _xdm_error(400, 1001, "Invalid request", detail)


def not_found(what: str, ref: str) -> ServiceError:
    return _xdm_error(
        404, 1010, "Resource not found", f"The requested {what} resource {ref} with version 1 is not found."
    )


@dataclass
class Resource:
    kind: str  # "schemas" | "mixins"
    body: dict  # the raw (xed+json) representation
    created_ms: int
    updated_ms: int

    @property
    def id(self) -> str:
        return self.body["$id"]

    @property
    def alt_id(self) -> str:
        return self.body["meta:altId"]

    @property
    def title(self) -> str:
        return self.body.get("title", "")


@dataclass
class SchemaRegistry:
    tenant: str
    org_id: str
    resources: dict[str, Resource] = field(default_factory=dict)  # by $id
    descriptors: dict[str, dict] = field(default_factory=dict)  # by @id

    # -- lookup --------------------------------------------------------------------------
    def find(self, kind: str, ref: str) -> Resource | None:
        for res in self.resources.values():
            if res.kind == kind and ref in (res.id, res.alt_id):
                return res
        return None

    def get(self, kind: str, ref: str) -> Resource:
        res = self.find(kind, ref)
        if res is None:
            raise not_found("schema" if kind == "schemas" else "field group", ref)
        return res

    def listing(self, kind: str) -> list[Resource]:
        return [r for r in self.resources.values() if r.kind == kind]

    def _check_title(self, title: Any, own_id: str | None = None) -> None:
        if not isinstance(title, str) or not title.strip():
            raise invalid("'title' is required and must be a non-empty string")
        for res in self.resources.values():
            if res.title == title and res.id != own_id:
                raise _xdm_error(
                    400,
                    1521,
                    "Title not unique",
                    f"Object titles must be unique. An object {res.id} already exists with the same title",
                )

    def _new_ids(self, kind: str) -> tuple[str, str]:
        digest = secrets.token_hex(16)
        return f"https://ns.adobe.com/{self.tenant}/{kind}/{digest}", f"_{self.tenant}.{kind}.{digest}"

    def _meta(self, body: dict, kind: str, now_ms: int, client_id: str) -> dict:
        out = copy.deepcopy(body)
        out.update(
            {
                "meta:resourceType": kind,
                "version": out.get("version", "1.0"),
                "meta:containerId": "tenant",
                "meta:tenantNamespace": f"_{self.tenant}",
                "imsOrg": self.org_id,
                "meta:xdmType": "object",
                "meta:registryMetadata": {
                    "repo:createdDate": now_ms,
                    "repo:lastModifiedDate": now_ms,
                    "xdm:createdClientId": client_id,
                    "xdm:lastModifiedClientId": client_id,
                    "eTag": hashlib.sha1(repr(sorted(out.items())).encode()).hexdigest(),
                },
            }
        )
        return out

    # -- field groups --------------------------------------------------------------------
    def _validate_namespace(self, properties: dict) -> None:
        for name in properties:
            if name != f"_{self.tenant}":
                raise _xdm_error(
                    400,
                    1021,
                    "Namespace validation error",
                    f"A custom field is defined under an invalid namespace ('{name}'). All "
                    f"custom fields must be defined under a top-level field named _{self.tenant}.",
                )

    def create_field_group(self, body: Any, now_ms: int, client_id: str) -> dict:
        if not isinstance(body, dict):
            raise invalid("the request body must be a JSON object")
        self._check_title(body.get("title"))
        extends = body.get("meta:intendedToExtend")
        if not isinstance(extends, list) or not extends:
            raise invalid("'meta:intendedToExtend' is required: the classes this field group extends")
        for ref in extends:
            if xdm.class_by_ref(ref) is None:
                raise invalid(f"'meta:intendedToExtend' names an unknown class: {ref}")
        properties = xdm.field_group_properties(body)
        if not properties:
            raise invalid("the field group defines no fields")
        self._validate_namespace(properties)
        fg_id, alt = self._new_ids("mixins")
        stored = self._meta(body, "mixins", now_ms, client_id)
        stored.update({"$id": fg_id, "meta:altId": alt, "meta:abstract": True, "meta:extensible": True})
        self.resources[fg_id] = Resource("mixins", stored, now_ms, now_ms)
        return copy.deepcopy(stored)

    # -- schemas -------------------------------------------------------------------------
    def _composition(self, body: dict) -> tuple[xdm.XdmClass, list[Resource]]:
        refs = body.get("allOf")
        if not isinstance(refs, list) or not refs:
            raise invalid("'allOf' must list the schema's class and field groups as {\"$ref\": ...}")
        classes, groups = [], []
        for item in refs:
            ref = item.get("$ref") if isinstance(item, dict) else None
            if not isinstance(ref, str):
                raise invalid(f"every 'allOf' item must be {{\"$ref\": ...}}, got {item!r}")
            cls = xdm.class_by_ref(ref)
            if cls is not None:
                classes.append(cls)
                continue
            group = self.find("mixins", ref)
            if group is None:
                if ref.startswith(("https://ns.adobe.com/xdm/", "_xdm.")):
                    raise NotModelled(
                        f"standard XDM resource {ref} (only the Individual Profile and "
                        f"ExperienceEvent classes and tenant field groups are modelled)"
                    )
                raise not_found("field group", ref)
            groups.append(group)
        if len(classes) != 1:
            raise invalid(f"a schema must reference exactly one class in 'allOf', found {len(classes)}")
        cls = classes[0]
        for group in groups:
            if cls.id not in group.body.get("meta:intendedToExtend", []):
                raise invalid(f"field group {group.id} does not extend class {cls.id}")
        return cls, groups

    def resolved(self, schema: Resource) -> tuple[xdm.XdmClass, dict]:
        """The class and the merged properties of a schema (class fields + field groups)."""
        cls, groups = self._composition(schema.body)
        merged = copy.deepcopy(cls.properties)
        for group in groups:
            conflict = xdm.merge_properties(merged, xdm.field_group_properties(group.body))
            if conflict:
                raise _xdm_error(
                    400,
                    1413,
                    "Merge Schema Error",
                    f"Cannot merge incompatible data types. The path {conflict} is defined "
                    f"differently by field group {group.id}.",
                )
        return cls, merged

    def _finish_schema(self, stored: dict) -> dict:
        cls, groups = self._composition(stored)
        stored["meta:class"] = cls.id
        stored["meta:extends"] = [cls.id, xdm.AUDITABLE, cls.behavior] + [g.id for g in groups]
        stored["refs"] = [g.id for g in groups] + [cls.id]
        return stored

    def create_schema(self, body: Any, now_ms: int, client_id: str) -> dict:
        if not isinstance(body, dict):
            raise invalid("the request body must be a JSON object")
        self._check_title(body.get("title"))
        probe = Resource("schemas", {"$id": "", "meta:altId": "", **body}, now_ms, now_ms)
        _, properties = self.resolved(probe)  # validates composition and merge conflicts first
        # A new schema has no descriptors yet: only an identityMap makes it union-ready.
        if "union" in (body.get("meta:immutableTags") or []) and "identityMap" not in properties:
            raise _xdm_error(
                400,
                1528,
                "Union descriptor validation error",
                "To participate in a union, a schema must include an identityMap fieldgroup "
                "or a primary identity descriptor.",
            )
        schema_id, alt = self._new_ids("schemas")
        stored = self._meta(body, "schemas", now_ms, client_id)
        stored.update({"$id": schema_id, "meta:altId": alt, "meta:abstract": False, "meta:extensible": False})
        self.resources[schema_id] = Resource("schemas", self._finish_schema(stored), now_ms, now_ms)
        return copy.deepcopy(stored)

    def patch_schema(self, ref: str, operations: Any, now_ms: int, client_id: str) -> dict:
        schema = self.get("schemas", ref)
        editable = ("/allOf", "/meta:immutableTags", "/title", "/description")
        try:
            patched = apply_json_patch(
                schema.body,
                operations,
                allowed=lambda p: any(p == e or p.startswith(e + "/") for e in editable),
            )
        except PatchError as exc:
            raise invalid(f"invalid JSON Patch: {exc}") from None
        if patched.get("title") != schema.title:
            self._check_title(patched.get("title"), own_id=schema.id)
        removed = {i.get("$ref") for i in schema.body.get("allOf", [])} - {
            i.get("$ref") for i in patched.get("allOf", []) if isinstance(i, dict)
        }
        if removed:
            raise invalid(
                f"only additive changes are supported: cannot remove {sorted(removed)} from 'allOf'"
            )
        probe = Resource("schemas", patched, schema.created_ms, now_ms)
        _, properties = self.resolved(probe)
        if "union" in (patched.get("meta:immutableTags") or []) and not self._union_ready(
            schema.id, properties
        ):
            raise _xdm_error(
                400,
                1528,
                "Union descriptor validation error",
                "To participate in a union, a schema must include an identityMap fieldgroup "
                "or a primary identity descriptor.",
            )
        major, _, minor = str(schema.body.get("version", "1.0")).partition(".")
        patched["version"] = f"{major}.{int(minor or 0) + 1}"
        patched["meta:registryMetadata"] = {
            **schema.body.get("meta:registryMetadata", {}),
            "repo:lastModifiedDate": now_ms,
            "xdm:lastModifiedClientId": client_id,
        }
        schema.body = self._finish_schema(patched)
        schema.updated_ms = now_ms
        return copy.deepcopy(schema.body)

    def _union_ready(self, schema_id: str, properties: dict) -> bool:
        if "identityMap" in properties:
            return True
        return any(
            d.get("xdm:sourceSchema") == schema_id
            and d.get("xdm:isPrimary") is True
            and d.get("@type") == "xdm:descriptorIdentity"
            for d in self.descriptors.values()
        )

    def full(self, res: Resource, *, with_text: bool = True, with_descriptors: bool = False) -> dict:
        """The ``xed-full`` representation: references resolved into ``properties``."""
        out = copy.deepcopy(res.body)
        if res.kind == "schemas":
            _, out["properties"] = self.resolved(res)
            out.pop("allOf", None)
        else:
            out["properties"] = xdm.field_group_properties(res.body)
            out.pop("allOf", None)
            out.pop("definitions", None)
        if not with_text:
            _strip_text(out.get("properties", {}))
        if with_descriptors:
            out["meta:descriptors"] = [
                copy.deepcopy(d) for d in self.descriptors.values() if d.get("xdm:sourceSchema") == res.id
            ]
        return out

    # -- descriptors ---------------------------------------------------------------------
    def _validate_descriptor(self, body: Any, own_id: str | None = None) -> dict:
        if not isinstance(body, dict):
            raise invalid("the request body must be a JSON object")
        kind = body.get("@type")
        if kind != "xdm:descriptorIdentity":
            raise NotModelled(f"descriptor type {kind!r} (only xdm:descriptorIdentity is modelled)")
        source = body.get("xdm:sourceSchema")
        schema = self.find("schemas", source) if isinstance(source, str) else None
        if schema is None:
            raise invalid(f"'xdm:sourceSchema' must be the $id of an existing tenant schema, got {source!r}")
        prop = body.get("xdm:sourceProperty")
        if not isinstance(prop, str) or not prop.startswith("/"):
            raise invalid("'xdm:sourceProperty' must be a slash path such as /personID")
        _, properties = self.resolved(schema)
        if not xdm.has_path(properties, [p for p in prop.split("/") if p]):
            raise invalid(f"'xdm:sourceProperty' {prop} does not exist in schema {schema.id}")
        if not isinstance(body.get("xdm:namespace"), str) or not body["xdm:namespace"]:
            raise invalid("'xdm:namespace' (identity namespace code) is required")
        if body.get("xdm:property", "xdm:code") not in ("xdm:code", "xdm:id"):
            raise invalid("'xdm:property' must be xdm:code or xdm:id")
        if body.get("xdm:isPrimary") is True:
            for other_id, other in self.descriptors.items():
                if (
                    other_id != own_id
                    and other.get("xdm:sourceSchema") == schema.id
                    and other.get("xdm:isPrimary") is True
                ):
                    raise invalid(
                        f"schema {schema.id} already has a primary identity "
                        f"({other.get('xdm:sourceProperty')}, descriptor {other_id})"
                    )
        stored = copy.deepcopy(body)
        stored["xdm:sourceSchema"] = schema.id
        return stored

    def create_descriptor(self, body: Any) -> dict:
        stored = self._validate_descriptor(body)
        stored.update(
            {
                "@id": secrets.token_hex(20),
                "meta:containerId": "tenant",
                "version": "1",
                "imsOrg": self.org_id,
            }
        )
        self.descriptors[stored["@id"]] = stored
        return copy.deepcopy(stored)

    def get_descriptor(self, descriptor_id: str) -> dict:
        if descriptor_id not in self.descriptors:
            raise _xdm_error(
                404, 1010, "Resource not found", f"The requested descriptor {descriptor_id} is not found."
            )
        return self.descriptors[descriptor_id]

    def update_descriptor(self, descriptor_id: str, body: Any) -> dict:
        current = self.get_descriptor(descriptor_id)
        stored = self._validate_descriptor(body, own_id=descriptor_id)
        stored.update({k: current[k] for k in ("@id", "meta:containerId", "imsOrg")})
        stored["version"] = str(int(current.get("version", "1")) + 1)
        self.descriptors[descriptor_id] = stored
        return {"@id": descriptor_id}

    def delete_descriptor(self, descriptor_id: str) -> None:
        self.get_descriptor(descriptor_id)
        del self.descriptors[descriptor_id]

    def record_schema(self, schema_ref: str) -> xdm.RecordSchema:
        """The validator for records of datasets using ``schema_ref``."""
        schema = self.get("schemas", schema_ref)
        cls, properties = self.resolved(schema)
        return xdm.RecordSchema(properties=properties, required=cls.required, tenant=self.tenant)


def _strip_text(properties: dict) -> None:
    for spec in properties.values():
        spec.pop("title", None)
        spec.pop("description", None)
        _strip_text(spec.get("properties", {}))
