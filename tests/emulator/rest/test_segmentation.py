"""Renaming and deleting an audience through the admin API, and what the Segmentation API answers after.

AEP answers ``GET /audiences/{id}`` of a deleted audience with the same 404 as for an id that never
existed (the spec's "Audience not found" example body), drops it from listings, and (a guess, see
rest/segmentation.py) refuses a new export job that names it.
"""

from __future__ import annotations

from emulator_testkit import UPS

# The keys of the spec's example 404 body (segmentation.json, GET /audiences/{AUDIENCE_ID}).
SPEC_404_KEYS = {"requestId", "errors", "type", "title", "status"}


def _admin(emu, method: str, path: str, **kwargs):
    return emu.admin.request(method, f"/emulator{path}", **kwargs)


def test_rename_changes_name_and_update_time_everywhere(emu, aep, api):
    gold = aep.audiences()[0]
    before = aep.ok(api.call("GET", f"{UPS}/audiences/{gold['id']}"))
    renamed = emu.admin.rename_audience(gold["id"], "Luma - Gold members (2027)")
    assert renamed["name"] == "Luma - Gold members (2027)"
    after = aep.ok(api.call("GET", f"{UPS}/audiences/{gold['id']}"))
    assert after["name"] == "Luma - Gold members (2027)" and after["id"] == gold["id"]
    assert after["updateTime"] > before["updateTime"] and after["_etag"] != before["_etag"]
    listed = aep.ok(api.call("GET", f"{UPS}/audiences", params={"name": "(2027)"}))["children"]
    assert [a["id"] for a in listed] == [gold["id"]]
    assert before["name"] not in {a["name"] for a in aep.audiences()}
    definition = aep.ok(api.call("GET", f"{UPS}/segment/definitions/{gold['id']}"))
    assert definition["name"] == "Luma - Gold members (2027)"
    state = emu.admin.state()
    assert {a["id"]: a["name"] for a in state["liveAudiences"]}[gold["id"]] == "Luma - Gold members (2027)"


def test_rename_refuses_bad_input(emu, aep):
    first, second = aep.audiences()[:2]
    taken = _admin(emu, "PATCH", f"/audiences/{first['id']}", json={"name": second["name"]})
    assert taken.status_code == 409 and "already named" in taken.json()["error"]
    assert _admin(emu, "PATCH", f"/audiences/{first['id']}", json={"name": ""}).status_code == 400
    assert _admin(emu, "PATCH", f"/audiences/{first['id']}", json={"title": "x"}).status_code == 400
    assert _admin(emu, "PATCH", "/audiences/no-such-audience", json={"name": "x"}).status_code == 404
    assert aep.audiences()[0]["name"] == first["name"]  # nothing changed


def test_deleted_audience_answers_like_aep(emu, aep, api):
    audiences = aep.audiences()
    gone, kept = audiences[0], audiences[1]
    assert emu.admin.delete_audience(gone["id"]) == {"id": gone["id"], "deleted": True}

    response = api.call("GET", f"{UPS}/audiences/{gone['id']}")
    assert response.status_code == 404
    body = response.json()
    assert body["type"] == "https://ns.adobe.com/aep/errors/UPAPI-113430-404" and body["status"] == 404
    assert gone["id"] in body["title"] and body["errors"]["404"][0]["code"] == 404
    never = api.call("GET", f"{UPS}/audiences/00000000-0000-4000-8000-000000000000").json()
    assert set(body) == SPEC_404_KEYS
    assert set(never) == set(body) and never["type"] == body["type"]  # indistinguishable from a typo

    assert gone["id"] not in {a["id"] for a in aep.audiences()}
    assert kept["id"] in {a["id"] for a in aep.audiences()}
    assert api.call("GET", f"{UPS}/segment/definitions/{gone['id']}").status_code == 404
    assert _admin(emu, "DELETE", f"/audiences/{gone['id']}").status_code == 404  # already deleted
    assert _admin(emu, "PATCH", f"/audiences/{gone['id']}", json={"name": "back"}).status_code == 404
    assert emu.admin.state()["deletedAudiences"] == [gone["id"]]


def test_new_export_job_naming_a_deleted_audience_fails_and_others_export(emu, aep, api):
    audiences = aep.audiences()
    gone, kept = audiences[0], audiences[1]
    dataset = aep.union_dataset()
    emu.admin.delete_audience(gone["id"])
    body = {
        "destination": {"datasetId": dataset},
        "schema": {"name": "_xdm.context.profile"},
        "filter": {"segments": [{"segmentId": kept["id"]}, {"segmentId": gone["id"]}]},
    }
    response = api.call("POST", f"{UPS}/export/jobs", json=body)
    assert response.status_code == 400, response.text
    assert "filter.segments[1].segmentId" in response.text and gone["id"] in response.text
    job = aep.export(dataset, [{"segmentId": kept["id"]}])
    assert job["status"] == "SUCCEEDED"


def test_reset_restores_renamed_and_deleted_audiences(emu, aep):
    audiences = aep.audiences()
    emu.admin.rename_audience(audiences[0]["id"], "Renamed for a while")
    emu.admin.delete_audience(audiences[1]["id"])
    emu.admin.reset()
    assert [(a["id"], a["name"]) for a in aep.audiences()] == [(a["id"], a["name"]) for a in audiences]
