"""CJA connections and data views, the admin "UI actions", and the 429050 rate limit."""

from __future__ import annotations

import re


def _get(api, path, **params):
    return api.call("GET", path, cja=True, params=params)


def test_seeded_connection_and_data_view_are_deterministic(emu, aep, api):
    page = aep.ok(_get(api, "/data/connections", expansion="name,dataSets"))
    assert page["totalElements"] == 1 and page["number"] == 0 and page["firstPage"] and page["lastPage"]
    conn = page["content"][0]
    assert re.fullmatch(r"dg_[0-9a-f-]{36}", conn["id"]) and conn["idWithoutPrefix"] == conn["id"][3:]
    (event,) = conn["dataSets"]
    assert event["type"] == "event"
    assert (
        "identityNamespace" not in event
    )  # not null: CJA's spec types it string (primary id namespace used)
    catalog = aep.ok(api.call("GET", "/data/foundation/catalog/dataSets"))
    assert catalog[event["dataSetId"]]["classification"]["dataBehavior"] == "time-series"
    views = aep.ok(_get(api, "/data/dataviews", parentDataGroupId=conn["id"]))["content"]
    assert len(views) == 1 and re.fullmatch(r"dv_[0-9a-f]{24}", views[0]["id"])
    emu.admin.reset()
    assert aep.ok(_get(api, "/data/connections"))["content"][0]["id"] == conn["id"]


def test_expansion_controls_the_fields(aep, api):
    conn_id = aep.ok(_get(api, "/data/connections"))["content"][0]["id"]
    bare = aep.ok(_get(api, f"/data/connections/{conn_id}"))
    assert set(bare) == {"id", "idWithoutPrefix"}
    expanded = aep.ok(_get(api, f"/data/connections/{conn_id}", expansion="dataSets,sandboxName"))
    assert expanded["sandboxName"] == "prod" and expanded["dataSets"]
    missing = _get(api, "/data/connections/dg_00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404 and missing.json()["errorCode"] == "resource_not_found"


def test_admin_adds_dataset_to_connection_and_dimension_to_data_view(emu, aep, api):
    conn_id = aep.ok(_get(api, "/data/connections"))["content"][0]["id"]
    view_id = aep.ok(_get(api, "/data/dataviews"))["content"][0]["id"]
    _, dataset = aep.cja_dataset()
    emu.admin.add_dataset_to_connection(
        conn_id, dataset, type="profile", visitorId="personID", identityNamespace="Email"
    )
    conn = aep.ok(_get(api, f"/data/connections/{conn_id}", expansion="dataSets"))
    profile = [d for d in conn["dataSets"] if d["dataSetId"] == dataset]
    assert profile and profile[0]["type"] == "profile" and profile[0]["visitorId"] == "personID"
    assert profile[0]["identityNamespace"] == "Email" and "timestampId" not in profile[0]  # never null
    emu.admin.add_dimension(view_id, "_demoemea.audienceMembershipId", name="Audience Membership Id")
    dims = aep.ok(_get(api, f"/data/dataviews/{view_id}/dimensions", limit=100))["content"]
    assert {"variables/_demoemea.audienceMembershipId", "variables/eventType"} == {d["id"] for d in dims}
    unknown = emu.admin.request(
        "POST", f"/emulator/cja/connections/{conn_id}/datasets", json={"dataSetId": "nope"}
    )
    assert unknown.status_code == 400


def test_data_view_put_is_partial_and_validated(aep, api):
    view_id = aep.ok(_get(api, "/data/dataviews"))["content"][0]["id"]
    updated = aep.ok(
        api.call("PUT", f"/data/dataviews/{view_id}", cja=True, json={"description": "audiences"})
    )
    assert updated["description"] == "audiences" and updated["modifiedDate"] and updated["modifiedBy"]
    assert aep.ok(_get(api, f"/data/dataviews/{view_id}"))["description"] == "audiences"
    bad = api.call("PUT", f"/data/dataviews/{view_id}", cja=True, json={"dimensions": []})
    assert bad.status_code == 400


def test_rate_limit_is_12_requests_per_6_seconds(emu, aep, api):
    for _ in range(13):
        assert _get(api, "/data/connections").status_code == 200  # off by default
    emu.admin.knobs(cja_rate_limit=True)
    statuses = [_get(api, "/data/connections").status_code for _ in range(13)]
    assert statuses[:12] == [200] * 12 and statuses[12] == 429
    assert _get(api, "/data/connections").json() == {"error_code": "429050", "message": "Too many requests"}
    assert api.call("GET", "/data/foundation/catalog/dataSets").status_code == 200  # Platform is not limited
