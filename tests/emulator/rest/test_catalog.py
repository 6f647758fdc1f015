"""Catalog datasets and batches: shapes, table names, filters, paging, PATCH, DELETE."""

from __future__ import annotations

from emulator_testkit import CATALOG

DATASETS = f"{CATALOG}/dataSets"


def test_created_dataset_is_id_keyed_with_a_query_service_table(emu, aep, api):
    response = api.call(
        "POST",
        DATASETS,
        params={"requestDataSource": "true"},
        json={
            "name": "Segment Export Job Dataset for CJA",
            "schemaRef": {
                "id": "_xdm.context.profile__union",
                "contentType": "application/vnd.adobe.xed+json;version=1",
            },
            "fileDescription": {"persisted": True, "containerFormat": "parquet", "format": "parquet"},
        },
    )
    assert response.status_code == 201
    (ref,) = response.json()
    assert ref.startswith("@/dataSets/") and response.headers["location"].endswith(ref[2:])
    dataset_id = ref.split("/")[-1]
    body = aep.ok(api.call("GET", f"{DATASETS}/{dataset_id}"))
    assert list(body) == [dataset_id]
    dataset = body[dataset_id]
    assert dataset["tags"]["adobe/pqs/table"] == ["segment_export_job_dataset_for_cja"]
    assert dataset["schemaRef"]["id"] == "https://ns.adobe.com/xdm/context/profile__union"
    assert dataset["fileDescription"]["persisted"] is True
    assert isinstance(dataset["dataSourceId"], int) and not isinstance(
        dataset["dataSourceId"], bool
    )  # spec: integer
    assert dataset["classification"] == {"dataBehavior": "record", "managedBy": "CUSTOMER"}
    tables = {t["name"]: t for t in emu.state.qs_list_tables()}
    assert tables["segment_export_job_dataset_for_cja"]["dataSetId"] == dataset_id
    same_name = aep.union_dataset("Segment Export Job Dataset for CJA")
    other = aep.ok(api.call("GET", f"{DATASETS}/{same_name}"))[same_name]
    assert other["tags"]["adobe/pqs/table"] == ["segment_export_job_dataset_for_cja_1"]


def test_dataset_needs_a_known_schema_and_a_name(api):
    assert (
        api.call(
            "POST", DATASETS, json={"name": "x", "schemaRef": {"id": "_demoemea.schemas.nope"}}
        ).status_code
        == 400
    )
    assert (
        api.call("POST", DATASETS, json={"schemaRef": {"id": "_xdm.context.profile__union"}}).status_code
        == 400
    )
    assert (
        api.call(
            "POST",
            DATASETS,
            json={
                "name": "x",
                "schemaRef": {"id": "_xdm.context.profile__union"},
                "tags": {"adobe/pqs/table": ["mine"]},
            },
        ).status_code
        == 400
    )
    assert (
        api.call(
            "POST",
            DATASETS,
            json={"name": "x", "schemaRef": {"id": "_xdm.context.profile__union"}, "dataSourceId": "12345"},
        ).status_code
        == 400
    )  # spec: integer


def test_listing_filters_orders_pages_and_projects(aep, api):
    ids = [aep.union_dataset(f"List me {i}") for i in range(5)]
    assert list(aep.ok(api.call("GET", DATASETS, params={"property": "name==List me 3"}))) == [ids[3]]
    assert list(aep.ok(api.call("GET", DATASETS, params={"name": "List me 1,List me 2"}))) == ids[1:3]
    page = aep.ok(
        api.call(
            "GET",
            DATASETS,
            params={"orderBy": "desc:created", "limit": 2, "start": 1, "property": "name~^List me"},
        )
    )
    assert list(page) == [ids[3], ids[2]]
    projected = aep.ok(api.call("GET", DATASETS, params={"properties": "name,tags", "name": "List me 0"}))
    assert projected == {ids[0]: {"name": "List me 0", "tags": {"adobe/pqs/table": ["list_me_0"]}}}
    assert api.call("GET", DATASETS, params={"limit": 0}).status_code == 400
    assert len(aep.ok(api.call("GET", DATASETS, params={"limit": 1000}))) <= 100
    default = aep.ok(api.call("GET", DATASETS))
    assert len(default) == 6  # five here + the seeded CJA event dataset; default limit 20


def test_patch_tags_and_delete(emu, aep, api):
    dataset_id = aep.union_dataset("Patched")
    patch = [
        {"op": "add", "path": "/tags/unifiedProfile", "value": ["enabled:true"]},
        {"op": "replace", "path": "/description", "value": "now described"},
    ]
    response = api.call(
        "PATCH",
        f"{DATASETS}/{dataset_id}",
        json=patch,
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert response.status_code == 200 and response.json() == [f"@/dataSets/{dataset_id}"]
    dataset = aep.ok(api.call("GET", f"{DATASETS}/{dataset_id}"))[dataset_id]
    assert dataset["tags"]["unifiedProfile"] == ["enabled:true"] and dataset["description"] == "now described"
    assert list(aep.ok(api.call("GET", DATASETS, params={"tags": "unifiedProfile:enabled:true"}))) == [
        dataset_id
    ]
    reserved = api.call(
        "PATCH",
        f"{DATASETS}/{dataset_id}",
        json=[{"op": "add", "path": "/tags/adobe~1pqs~1table", "value": ["x"]}],
    )
    assert reserved.status_code == 400
    assert api.call("DELETE", f"{DATASETS}/{dataset_id}").json() == [f"@/dataSets/{dataset_id}"]
    assert api.call("GET", f"{DATASETS}/{dataset_id}").status_code == 404
    assert "patched" not in {t["name"] for t in emu.state.qs_list_tables()}


def test_batches_listing_and_last_batches(aep, api):
    _, dataset = aep.cja_dataset()
    ok_batch = aep.ingest(dataset, [{"_id": "1", "personID": "a@example.com"}])
    bad_batch = aep.ingest(dataset, [{"_id": "2", "unknown": 1}])
    listed = aep.ok(
        api.call("GET", f"{CATALOG}/batches", params={"dataSet": dataset, "orderBy": "desc:created"})
    )
    assert list(listed) == [bad_batch["id"], ok_batch["id"]]
    failed = aep.ok(api.call("GET", f"{CATALOG}/batches", params={"dataSet": dataset, "status": "failed"}))
    assert list(failed) == [bad_batch["id"]]
    after = aep.ok(
        api.call(
            "GET", f"{CATALOG}/batches", params={"dataSet": dataset, "createdAfter": ok_batch["created"]}
        )
    )
    assert list(after) == [bad_batch["id"]]
    last = aep.ok(api.call("GET", f"{CATALOG}/lastBatches", params={"dataSetId": dataset}))[dataset]
    assert last == {
        "lastBatchId": bad_batch["id"],
        "lastBatchStatus": "failed",
        "lastSuccessfulBatchId": ok_batch["id"],
        "lastFailedBatchId": bad_batch["id"],
    }
    assert api.call("GET", f"{CATALOG}/batches/nope").status_code == 404
