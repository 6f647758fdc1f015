"""Schema Registry: Accept headers, title uniqueness, tenant namespace, union enablement, descriptors."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from emulator_testkit import SR, TENANT, XED, XED_FULL_V1

PROFILE = "https://ns.adobe.com/xdm/context/profile"


def _get(api, path: str, accept: str | None):
    headers = {"Accept": accept} if accept is not None else {}
    return api.call("GET", f"{SR}{path}", headers=headers)


def test_tenant_id_from_stats(api, aep):
    stats = aep.ok(_get(api, "/stats", XED))
    assert stats["tenantId"] == TENANT and stats["imsOrg"] == api.credentials.org_id


@pytest.mark.parametrize(
    "path,accept,code",
    [
        ("/tenant/schemas", None, "XDM-1006-400"),
        ("/tenant/schemas", "application/json", "XDM-1006-400"),
        ("/tenant/schemas", "application/vnd.adobe.xed-id+json; version=1", "XDM-1009-400"),
        (
            "/tenant/schemas/_xdm.context.profile__union",
            "application/vnd.adobe.xed-full+json",
            "XDM-1008-400",
        ),
        (
            "/tenant/schemas/_xdm.context.profile__union",
            "application/vnd.adobe.xed-id+json; version=1",
            "XDM-1006-400",
        ),
    ],
)
def test_accept_header_is_enforced(api, path, accept, code):
    response = _get(api, path, accept)
    assert response.status_code == 400
    body = response.json()
    assert (
        body["type"] == f"http://ns.adobe.com/aep/errors/{code}" and body["title"] == "Accept header invalid"
    )
    assert body["report"]["registryRequestId"] == response.headers["x-request-id"]


def test_titles_are_unique_across_resource_types(aep, api):
    fg = aep.field_group("Audience Membership", {"audienceMembershipId": {"type": "string"}})
    clash = api.call(
        "POST",
        f"{SR}/tenant/schemas",
        json={
            "title": "Audience Membership",
            "type": "object",
            "allOf": [{"$ref": PROFILE}, {"$ref": fg["$id"]}],
        },
    )
    assert clash.status_code == 400
    assert clash.json()["type"].endswith("XDM-1521-400") and fg["$id"] in clash.json()["detail"]
    again = api.call(
        "POST",
        f"{SR}/tenant/fieldgroups",
        json={
            "title": "Audience Membership",
            "meta:intendedToExtend": [PROFILE],
            "properties": {f"_{TENANT}": {"type": "object", "properties": {"x": {"type": "string"}}}},
        },
    )
    assert again.status_code == 400 and again.json()["type"].endswith("XDM-1521-400")


def test_custom_fields_must_sit_under_the_tenant(api):
    response = api.call(
        "POST",
        f"{SR}/tenant/fieldgroups",
        json={
            "title": "Bad group",
            "meta:intendedToExtend": [PROFILE],
            "type": "object",
            "definitions": {"d": {"properties": {"audienceMembershipId": {"type": "string"}}}},
            "allOf": [{"$ref": "#/definitions/d"}],
        },
    )
    assert response.status_code == 400
    assert response.json()["type"].endswith("XDM-1021-400")
    assert "audienceMembershipId" in response.json()["detail"] and f"_{TENANT}" in response.json()["detail"]


def test_field_group_ids_and_lookup_by_encoded_id_or_alt_id(aep, api):
    fg = aep.field_group("Looked up", {"a": {"type": "string"}})
    assert "/mixins/" in fg["$id"] and fg["meta:altId"].startswith(f"_{TENANT}.mixins.")
    assert fg["meta:resourceType"] == "mixins" and fg["meta:tenantNamespace"] == f"_{TENANT}"
    by_id = aep.ok(_get(api, f"/tenant/fieldgroups/{quote(fg['$id'], safe='')}", XED + "; version=1"))
    by_alt = aep.ok(_get(api, f"/tenant/fieldgroups/{fg['meta:altId']}", XED_FULL_V1))
    assert by_id["$id"] == by_alt["$id"] == fg["$id"]
    assert by_alt["properties"][f"_{TENANT}"]["properties"]["a"]["type"] == "string"
    listed = aep.ok(
        api.call(
            "GET",
            f"{SR}/tenant/fieldgroups",
            params={"property": "title==Looked up"},
            headers={"Accept": "application/vnd.adobe.xed-id+json"},
        )
    )
    assert [r["$id"] for r in listed["results"]] == [fg["$id"]]
    missing = _get(api, f"/tenant/fieldgroups/_{TENANT}.mixins.nothere", XED_FULL_V1)
    assert missing.status_code == 404 and missing.json()["type"].endswith("XDM-1010-404")


def test_union_enablement_requires_a_primary_identity(aep, api):
    fg = aep.field_group("Membership fields", {"audienceMembershipId": {"type": "string"}})
    schema = aep.schema("Membership schema", [])
    schema_path = f"{SR}/tenant/schemas/{quote(schema['$id'], safe='')}"
    added = aep.ok(
        api.call("PATCH", schema_path, json=[{"op": "add", "path": "/allOf/-", "value": {"$ref": fg["$id"]}}])
    )
    assert fg["$id"] in added["meta:extends"] and added["version"] == "1.1"
    union = [{"op": "add", "path": "/meta:immutableTags", "value": ["union"]}]
    refused = api.call("PATCH", schema_path, json=union)
    assert refused.status_code == 400 and refused.json()["type"].endswith("XDM-1528-400")
    bad = api.call(
        "POST",
        f"{SR}/tenant/descriptors",
        json={
            "@type": "xdm:descriptorIdentity",
            "xdm:sourceSchema": schema["$id"],
            "xdm:sourceVersion": 1,
            "xdm:sourceProperty": "/nope",
            "xdm:namespace": "Email",
            "xdm:property": "xdm:code",
            "xdm:isPrimary": True,
        },
    )
    assert bad.status_code == 400 and "/nope" in bad.json()["detail"]
    descriptor = aep.ok(
        api.call(
            "POST",
            f"{SR}/tenant/descriptors",
            json={
                "@type": "xdm:descriptorIdentity",
                "xdm:sourceSchema": schema["$id"],
                "xdm:sourceVersion": 1,
                "xdm:sourceProperty": "/personID",
                "xdm:namespace": "Email",
                "xdm:property": "xdm:code",
                "xdm:isPrimary": True,
            },
        ),
        201,
    )
    second = api.call(
        "POST",
        f"{SR}/tenant/descriptors",
        json={
            "@type": "xdm:descriptorIdentity",
            "xdm:sourceSchema": schema["$id"],
            "xdm:sourceProperty": f"/_{TENANT}/audienceMembershipId",
            "xdm:namespace": "CRMID",
            "xdm:isPrimary": True,
        },
    )
    assert second.status_code == 400 and "primary" in second.json()["detail"]
    enabled = aep.ok(api.call("PATCH", schema_path, json=union))
    assert enabled["meta:immutableTags"] == ["union"]
    listed = aep.ok(
        api.call(
            "GET",
            f"{SR}/tenant/descriptors",
            params={"property": f"xdm:sourceSchema=={schema['$id']}"},
            headers={"Accept": "application/vnd.adobe.xdm-id+json"},
        )
    )
    assert listed == {"xdm:descriptorIdentity": [descriptor["@id"]]}
    full = aep.ok(
        _get(
            api,
            f"/tenant/schemas/{schema['meta:altId']}",
            "application/vnd.adobe.xed-full-desc+json; version=1",
        )
    )
    assert set(full["properties"]) >= {"_id", "personID", f"_{TENANT}"}
    assert [d["@id"] for d in full["meta:descriptors"]] == [descriptor["@id"]]
    assert api.call("DELETE", f"{SR}/tenant/descriptors/{descriptor['@id']}").status_code == 204
    assert (
        api.call(
            "GET",
            f"{SR}/tenant/descriptors/{descriptor['@id']}",
            headers={"Accept": "application/vnd.adobe.xdm+json"},
        ).status_code
        == 404
    )


def test_profile_union_schema_describes_the_exported_fields(aep, api):
    union = aep.ok(
        _get(
            api,
            f"/tenant/schemas/{quote('https://ns.adobe.com/xdm/context/profile__union', safe='')}",
            XED_FULL_V1,
        )
    )
    core = union["properties"][f"_{TENANT}"]["properties"]["identification"]["properties"]["core"][
        "properties"
    ]
    assert set(core) == {"email", "ecid", "crmId", "phoneNumber"}
    assert {"identityMap", "person", "personalEmail", "segmentMembership"} <= set(union["properties"])
    same = aep.ok(_get(api, "/tenant/unions/_xdm.context.profile__union", XED_FULL_V1))
    assert same == union


def test_schema_composition_errors(api, aep):
    no_class = api.call("POST", f"{SR}/tenant/schemas", json={"title": "No class", "allOf": []})
    assert no_class.status_code == 400
    unknown = api.call(
        "POST",
        f"{SR}/tenant/schemas",
        json={
            "title": "Unknown group",
            "allOf": [{"$ref": PROFILE}, {"$ref": f"https://ns.adobe.com/{TENANT}/mixins/0000"}],
        },
    )
    assert unknown.status_code == 404
    standard = api.call(
        "POST",
        f"{SR}/tenant/schemas",
        json={
            "title": "Standard group",
            "allOf": [{"$ref": PROFILE}, {"$ref": "https://ns.adobe.com/xdm/context/profile-person-details"}],
        },
    )
    assert standard.status_code == 501
    a = aep.field_group("Group A", {"score": {"type": "string"}})
    b = aep.field_group("Group B", {"score": {"type": "integer"}})
    conflict = api.call(
        "POST",
        f"{SR}/tenant/schemas",
        json={"title": "Conflict", "allOf": [{"$ref": PROFILE}, {"$ref": a["$id"]}, {"$ref": b["$id"]}]},
    )
    assert conflict.status_code == 400 and conflict.json()["type"].endswith("XDM-1413-400")
