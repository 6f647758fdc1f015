"""Schema Registry: tenant id, and find-or-create of field groups, schemas and identity descriptors.

Titles are unique across all resource types of a sandbox (XDM-1521-400), so look-ups by title make
every create idempotent.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from airflow_cja_audiences import validation, xdm
from airflow_cja_audiences.errors import AepConfigError, AepError
from airflow_cja_audiences.hooks.platform import AdobePlatformHook, path_segment
from airflow_cja_audiences.models import PROFILE_UNION_SCHEMA, IdentityDescriptor, XdmResource

log = logging.getLogger(__name__)

BASE = "/data/foundation/schemaregistry"
Kind = Literal["schemas", "fieldgroups"]


class SchemaRegistryHook(AdobePlatformHook):
    """Schema Registry API (tenant container)."""

    hook_name = "Adobe Experience Platform Schema Registry"

    def get_tenant_id(self) -> str:
        payload = self.request_json(
            "GET", f"{BASE}/stats", route="schema_registry.stats", accept="application/json"
        )
        tenant = (payload or {}).get("tenantId")
        if not tenant:
            raise AepError("Schema Registry /stats returned no tenantId; set 'tenant' in the job config")
        try:  # it becomes an XDM namespace and part of SQL, whether or not the identity path uses it
            return validation.tenant_id(tenant)
        except ValueError as exc:
            raise AepError(f"Schema Registry /stats returned a tenantId that is not one: {exc}") from None

    # ------------------------------------------------------------------ look-ups

    def find_by_title(self, kind: Kind, title: str) -> XdmResource | None:
        payload = self.request_json(
            "GET",
            f"{BASE}/tenant/{kind}",
            route=f"schema_registry.list_{kind}",
            params={"property": f"title=={title}"},
            accept=xdm.XED_ID,
        )
        matches = [
            XdmResource.model_validate(r)
            for r in (payload or {}).get("results", [])
            if r.get("title") == title
        ]
        if len(matches) > 1:
            raise AepConfigError(f"{len(matches)} {kind} are titled {title!r}; configure another title")
        return matches[0] if matches else None

    def get_resource(
        self, kind: Kind, resource_id: str, *, accept: str = xdm.XED_VERSIONED
    ) -> dict[str, Any]:
        return self.request_json(
            "GET",
            f"{BASE}/tenant/{kind}/{path_segment(resource_id)}",
            route=f"schema_registry.get_{kind}",
            accept=accept,
        )

    def get_profile_union_schema(self) -> dict[str, Any]:
        """The sandbox's profile union schema with references resolved (to check export field paths)."""
        return self.get_resource("schemas", PROFILE_UNION_SCHEMA, accept=xdm.XED_FULL)

    def list_descriptors(self) -> list[IdentityDescriptor]:
        payload = self.request_json(
            "GET",
            f"{BASE}/tenant/descriptors",
            route="schema_registry.list_descriptors",
            accept=xdm.XDM_DESCRIPTORS,
        )
        # Grouped by @type: {"xdm:descriptorIdentity": [...], ...}
        items = (payload or {}).get("xdm:descriptorIdentity", []) if isinstance(payload, dict) else []
        return [IdentityDescriptor.model_validate(d) for d in items]

    # ------------------------------------------------------------------ find-or-create

    def _create(self, kind: Kind, title: str, body: dict[str, Any]) -> XdmResource:
        def create() -> XdmResource:
            payload = self.request_json(
                "POST",
                f"{BASE}/tenant/{kind}",
                route=f"schema_registry.create_{kind}",
                json=body,
                accept="application/vnd.adobe.xed+json",
            )
            return XdmResource.model_validate(payload)

        resource = self.create_once(
            f"create {kind[:-1]} {title!r}",
            create,
            lambda: self.find_by_title(kind, title),
            route=f"schema_registry.create_{kind}",
        )
        log.info("Created %s %r (%s)", kind[:-1], title, resource.id)
        return resource

    def ensure_field_group(self, body: dict[str, Any], tenant: str) -> tuple[XdmResource, bool]:
        """Find the field group by title (checking it has every field we write) or create it."""
        title = body["title"]
        existing = self.find_by_title("fieldgroups", title)
        if existing is None:
            return self._create("fieldgroups", title, body), True
        current = self.get_resource("fieldgroups", existing.id)
        missing = xdm.missing_properties(
            xdm.field_group_properties(current, tenant), xdm.field_group_properties(body, tenant)
        )
        if missing:
            raise AepConfigError(
                f"field group {title!r} ({existing.id}) exists without the fields "
                f"{', '.join(missing)} under _{tenant}; configure another naming.field_group title "
                f"or add the fields in the AEP UI"
            )
        log.info("Using existing field group %r (%s)", title, existing.id)
        return existing, False

    def ensure_schema(self, body: dict[str, Any]) -> tuple[XdmResource, bool]:
        """Find the schema by title (checking its class and field groups) or create it."""
        title = body["title"]
        existing = self.find_by_title("schemas", title)
        if existing is None:
            return self._create("schemas", title, body), True
        current = self.get_resource("schemas", existing.id)
        have = {ref.get("$ref") for ref in current.get("allOf", [])}
        want = [ref["$ref"] for ref in body["allOf"]]
        missing = [ref for ref in want if ref not in have]
        if missing:
            raise AepConfigError(
                f"schema {title!r} ({existing.id}) exists without {', '.join(missing)}; "
                f"configure another naming title"
            )
        log.info("Using existing schema %r (%s)", title, existing.id)
        return existing, False

    def ensure_identity_descriptor(self, schema_id: str, source_property: str, namespace: str) -> bool:
        """Make ``source_property`` the schema's primary identity in ``namespace``; returns created."""
        for descriptor in self.list_descriptors():
            if descriptor.source_schema != schema_id or not descriptor.is_primary:
                continue
            if descriptor.source_property == source_property and descriptor.namespace == namespace:
                return False
            raise AepConfigError(
                f"schema {schema_id} already has primary identity {descriptor.source_property} "
                f"in namespace {descriptor.namespace}; wanted {source_property} in {namespace} "
                f"(identity.namespace)"
            )
        body = xdm.identity_descriptor(schema_id, source_property, namespace)

        def find() -> IdentityDescriptor | None:
            return next(
                (
                    d
                    for d in self.list_descriptors()
                    if d.source_schema == schema_id and d.source_property == source_property
                ),
                None,
            )

        self.create_once(
            "create identity descriptor",
            lambda: self.request_json(
                "POST",
                f"{BASE}/tenant/descriptors",
                route="schema_registry.create_descriptor",
                json=body,
                accept="application/vnd.adobe.xdm+json",
            ),
            find,
            route="schema_registry.create_descriptor",
        )
        log.info("Created primary identity descriptor %s (%s) on %s", source_property, namespace, schema_id)
        return True
