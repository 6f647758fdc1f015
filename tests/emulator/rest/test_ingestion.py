"""Batch ingestion: schema validation, partial ingestion, diagnostics, large files, REVERT, replay."""

from __future__ import annotations

import json

from emulator_testkit import IMPORT, TENANT

GOOD = [
    {
        "_id": f"r{i}",
        "personID": f"p{i}@example.com",
        f"_{TENANT}": {"audienceMembershipId": "aud-1", "audienceMembershipName": "Gold"},
    }
    for i in range(4)
]
UNKNOWN_FIELD = {"_id": "bad1", "personID": "x@example.com", f"_{TENANT}": {"audienceMembershipIdz": "aud-1"}}
OUTSIDE_TENANT = {"_id": "bad2", "personID": "y@example.com", "audienceMembershipId": "aud-1"}
WRONG_TYPE = {"_id": "bad3", "personID": 42}


def _row_errors(aep, batch_id: str) -> list[dict]:
    listing = aep.ok(
        aep.api.call("GET", f"/data/foundation/export/batches/{batch_id}/meta", params={"path": "row_errors"})
    )
    out = []
    for item in listing["data"]:
        text = aep.api.call(
            "GET",
            f"/data/foundation/export/batches/{batch_id}/meta",
            params={"path": f"row_errors/{item['name']}"},
        ).text
        out += [json.loads(line) for line in text.splitlines() if line]
    return out


def test_unknown_fields_fail_the_batch_with_per_record_reasons(emu, aep):
    _, dataset = aep.cja_dataset()
    batch = aep.ingest(
        dataset, GOOD + [UNKNOWN_FIELD, OUTSIDE_TENANT, WRONG_TYPE], enableErrorDiagnostics=True
    )
    assert batch["status"] == "failed"
    assert batch["metrics"]["inputRecordCount"] == 7 and batch["metrics"]["failedRecordCount"] == 3
    assert batch["metrics"]["outputRecordCount"] == 0
    assert batch["errors"][0]["code"] == "INGEST-1212-400"
    assert sum(e.get("recordCount", 0) for e in batch["errors"][1:]) == 3
    reasons = {
        json.loads(e["_corrupt_record"])["_id"]: " ".join(x["message"] for x in e["_errors"])
        for e in _row_errors(aep, batch["id"])
    }
    assert "audienceMembershipIdz" in reasons["bad1"] and "not defined" in reasons["bad1"]
    assert f"must sit under '_{TENANT}'" in reasons["bad2"]
    assert "personID" in reasons["bad3"] and "string" in reasons["bad3"]
    assert emu.admin.dataset_records(dataset) == []


def test_partial_ingestion_succeeds_with_failed_record_count(emu, aep):
    _, dataset = aep.cja_dataset()
    batch = aep.ingest(
        dataset, GOOD + [UNKNOWN_FIELD, "{not json"], enableErrorDiagnostics=True, partialIngestionPercent=50
    )
    assert batch["status"] == "success"
    assert batch["metrics"] == {
        "inputByteSize": batch["metrics"]["inputByteSize"],
        "inputFileCount": 1,
        "inputRecordCount": 6,
        "outputRecordCount": 4,
        "failedRecordCount": 2,
    }
    codes = {e["code"] for e in batch["errors"]}
    assert {"INGEST-1212-400", "INGEST-1401-400"} <= codes
    assert batch["tags"] == {"acp_enableErrorDiagnostics": True, "acp_partialIngestionPercent": 50}
    assert sorted(r["_id"] for r in emu.admin.dataset_records(dataset)) == ["r0", "r1", "r2", "r3"]


def test_partial_threshold_exceeded_fails_and_no_diagnostics_gives_1211(aep):
    _, dataset = aep.cja_dataset()
    batch = aep.ingest(dataset, GOOD[:1] + [UNKNOWN_FIELD], partialIngestionPercent=10)
    assert batch["status"] == "failed"
    assert [e["code"] for e in batch["errors"]] == ["INGEST-1211-400"]
    assert (
        aep.ok(
            aep.api.call(
                "GET", f"/data/foundation/export/batches/{batch['id']}/meta", params={"path": "row_errors"}
            )
        )["data"]
        == []
    )


def test_event_class_requires_id_and_timestamp(aep):
    fg = aep.field_group(
        "Event fields",
        {"audienceEventType": {"type": "string"}},
        cls="https://ns.adobe.com/xdm/context/experienceevent",
    )
    schema = aep.schema("Event schema", [fg["$id"]], cls="https://ns.adobe.com/xdm/context/experienceevent")
    created = aep.ok(
        aep.api.call(
            "POST",
            "/data/foundation/catalog/dataSets",
            json={
                "name": "Events",
                "schemaRef": {"id": schema["$id"], "contentType": "application/vnd.adobe.xed+json"},
            },
        ),
        201,
    )
    dataset = created[0].split("/")[-1]
    good = {"_id": "e1", "timestamp": "2026-03-01T00:00:00Z", f"_{TENANT}": {"audienceEventType": "entered"}}
    batch = aep.ingest(
        dataset, [good, {"_id": "e2"}], enableErrorDiagnostics=True, partialIngestionPercent=50
    )
    assert batch["status"] == "success" and batch["metrics"]["failedRecordCount"] == 1
    assert "INGEST-1555-400" in {e["code"] for e in batch["errors"]}


def test_revert_removes_the_records_and_replay_replaces_a_batch(emu, aep):
    _, dataset = aep.cja_dataset()
    first = aep.ingest(dataset, GOOD[:2])
    second = aep.ingest(dataset, GOOD[2:])
    assert len(emu.admin.dataset_records(dataset)) == 4
    assert aep.action(first["id"], "REVERT").status_code == 200
    assert aep.batch(first["id"])["status"] == "inactive"
    assert sorted(r["_id"] for r in emu.admin.dataset_records(dataset)) == ["r2", "r3"]
    failed = aep.ingest(dataset, [UNKNOWN_FIELD])
    assert aep.action(failed["id"], "REVERT").status_code == 400  # only a success batch can be reverted
    replay = aep.ingest(dataset, GOOD[:1], replay={"predecessors": [second["id"]], "reason": "replace"})
    assert replay["status"] == "success" and replay["replay"]["predecessors"] == [second["id"]]
    assert aep.batch(second["id"])["status"] == "inactive"
    assert [r["_id"] for r in emu.admin.dataset_records(dataset)] == ["r0"]


def test_abort_and_state_machine_errors(aep):
    _, dataset = aep.cja_dataset()
    batch_id = aep.batch_for(dataset)
    assert aep.batch(batch_id)["status"] == "loading"
    assert aep.action(batch_id, "ABORT").status_code == 200
    assert aep.batch(batch_id)["status"] == "aborted"
    assert aep.put_file(batch_id, dataset, "late.json", GOOD).status_code == 400
    assert aep.action(batch_id, "COMPLETE").status_code == 400
    done = aep.ingest(dataset, GOOD)
    assert aep.action(done["id"], "ABORT").status_code == 400  # too late: finished
    assert aep.action(done["id"], "FAIL").status_code == 400
    empty = aep.batch_for(dataset)
    assert aep.action(empty, "COMPLETE").status_code == 200
    failed = aep.wait_batch(empty)
    assert failed["status"] == "failed" and failed["errors"][0]["code"] == "106"


def test_small_file_needs_octet_stream_and_same_path_replaces(emu, aep):
    _, dataset = aep.cja_dataset()
    batch_id = aep.batch_for(dataset)
    url = f"{IMPORT}/batches/{batch_id}/datasets/{dataset}/files/part=a/data.json"
    bad = aep.api.call("PUT", url, data=b"{}", headers={"Content-Type": "application/json"})
    assert bad.status_code == 415 and bad.json()["title"] == "UnsupportedMediaTypeError"
    assert aep.put_file(batch_id, dataset, "part=a/data.json", GOOD).status_code == 201
    assert aep.put_file(batch_id, dataset, "part=a/data.json", GOOD[:1]).status_code == 200
    assert aep.action(batch_id, "COMPLETE").status_code == 200
    assert aep.wait_batch(batch_id)["metrics"]["inputRecordCount"] == 1
    assert (
        aep.api.call(
            "PUT",
            f"{IMPORT}/batches/{batch_id}/datasets/{dataset}/files/%2E%2E/x.json",
            data=b"{}",
            headers={"Content-Type": "application/octet-stream"},
        ).status_code
        == 400
    )


def _large(aep, batch_id: str, dataset: str, name: str):
    base = f"{IMPORT}/batches/{batch_id}/datasets/{dataset}/files/{name}"

    def chunk(start: int, data: bytes):
        return aep.api.call(
            "PATCH",
            base,
            data=data,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"bytes {start}-{start + len(data) - 1}",
            },
        )

    assert aep.api.call("POST", base, params={"action": "INITIALIZE"}).status_code == 201
    return base, chunk


def test_large_file_with_a_gap_or_overlap_is_refused_at_complete(aep):
    _, dataset = aep.cja_dataset()
    batch_id = aep.batch_for(dataset)
    payload = "".join(json.dumps(r) + "\n" for r in GOOD).encode()
    base, chunk = _large(aep, batch_id, dataset, "gap.json")
    assert chunk(0, payload[:40]).json() == {"name": "gap.json", "sizeInBytes": 40}
    assert chunk(60, payload[60:]).status_code == 200  # gaps are only checked at COMPLETE
    gap = aep.api.call("POST", base, params={"action": "COMPLETE"})
    assert gap.status_code == 400 and "gap" in gap.json()["detail"]
    base2, chunk2 = _large(aep, batch_id, dataset, "overlap.json")
    chunk2(0, payload[:50])
    chunk2(40, payload[40:])
    overlap = aep.api.call("POST", base2, params={"action": "COMPLETE"})
    assert overlap.status_code == 400 and "overlap" in overlap.json()["detail"]
    mismatch = aep.api.call(
        "PATCH",
        base2,
        data=b"abc",
        headers={"Content-Type": "application/octet-stream", "Content-Range": "bytes 0-9"},
    )
    assert mismatch.status_code == 400


def test_large_file_upload_completes_and_ingests(emu, aep):
    _, dataset = aep.cja_dataset()
    batch_id = aep.batch_for(dataset)
    payload = "".join(json.dumps(r) + "\n" for r in GOOD).encode()
    base, chunk = _large(aep, batch_id, dataset, "big.json")
    chunk(100, payload[100:])  # out of order is fine as long as the ranges tile the file
    chunk(0, payload[:100])
    head = aep.api.call("HEAD", base)
    assert head.status_code == 200 and head.headers["x-upload-complete"] == "false"
    assert aep.api.call("POST", base, params={"action": "COMPLETE"}).status_code == 201
    assert aep.action(batch_id, "COMPLETE").status_code == 200
    batch = aep.wait_batch(batch_id)
    assert batch["status"] == "success" and batch["metrics"]["inputByteSize"] == len(payload)
    assert len(emu.admin.dataset_records(dataset)) == 4


def test_batch_creation_validates_and_non_json_is_not_modelled(aep):
    _, dataset = aep.cja_dataset()
    assert (
        aep.api.call(
            "POST", f"{IMPORT}/batches", json={"datasetId": "nope", "inputFormat": {"format": "json"}}
        ).status_code
        == 400
    )
    assert aep.api.call("POST", f"{IMPORT}/batches", json={"datasetId": dataset}).status_code == 400
    parquet = aep.api.call(
        "POST", f"{IMPORT}/batches", json={"datasetId": dataset, "inputFormat": {"format": "parquet"}}
    )
    assert parquet.status_code == 501


def test_injected_ingestion_failure_knob(emu, aep):
    _, dataset = aep.cja_dataset()
    emu.admin.knobs(ingestion_failures=1)
    assert aep.ingest(dataset, GOOD)["status"] == "failed"
    assert aep.ingest(dataset, GOOD)["status"] == "success"


def test_injected_partial_ingestion_knob(emu, aep):
    """A batch that AEP reports as ingested with a failed record: success, failedRecordCount 1."""
    _, dataset = aep.cja_dataset()
    emu.admin.knobs(partial_ingestion_failures=1)
    partial = aep.ingest(dataset, GOOD)
    assert partial["status"] == "success" and partial["metrics"]["failedRecordCount"] == 1
    assert partial["metrics"]["outputRecordCount"] == len(GOOD) - 1
    assert aep.ingest(dataset, GOOD)["metrics"]["failedRecordCount"] == 0


def test_retried_chunks_and_actions_converge(aep):
    _, dataset = aep.cja_dataset()
    batch_id = aep.batch_for(dataset)
    payload = "".join(json.dumps(r) + "\n" for r in GOOD).encode()
    base, chunk = _large(aep, batch_id, dataset, "retried.json")
    chunk(0, payload[:50])
    chunk(0, payload[:50])  # the same chunk again, as a client retry after a lost answer sends it
    chunk(50, payload[50:])
    assert aep.api.call("POST", base, params={"action": "COMPLETE"}).status_code == 201
    assert aep.action(batch_id, "COMPLETE").status_code == 200
    assert aep.action(batch_id, "COMPLETE").status_code == 200
    assert aep.wait_batch(batch_id)["status"] == "success"
    assert aep.action(batch_id, "REVERT").status_code == 200
    assert aep.action(batch_id, "REVERT").status_code == 200
    aborted = aep.batch_for(dataset)
    assert aep.action(aborted, "ABORT").status_code == 200
    assert aep.action(aborted, "ABORT").status_code == 200


def test_replay_refuses_invalid_predecessors_at_creation(aep):
    _, dataset = aep.cja_dataset()
    _, other_dataset = aep.cja_dataset("Other CJA dataset")
    live = aep.ingest(dataset, GOOD[:1])
    elsewhere = aep.ingest(other_dataset, GOOD[:1])
    loading = aep.batch_for(dataset)
    reverted = aep.ingest(dataset, GOOD[1:2])
    assert aep.action(reverted["id"], "REVERT").status_code == 200

    def create(predecessors):
        body = {
            "datasetId": dataset,
            "inputFormat": {"format": "json"},
            "replay": {"predecessors": predecessors, "reason": "replace"},
        }
        return aep.api.call("POST", f"{IMPORT}/batches", json=body)

    for predecessors, words in (
        (["0" * 32], "is not a batch"),
        ([elsewhere["id"]], "belongs to dataset"),
        ([loading], "is loading"),
        ([reverted["id"]], "is inactive"),
        ([], "one or more"),
        ([live["id"], 7], "one or more"),
    ):
        response = create(predecessors)
        assert response.status_code == 400, (predecessors, response.text)
        assert words in response.text, response.text
    # the documented parameterised form "${id}" names the same batch; the answer echoes it bare
    accepted = create([f"${{{live['id']}}}"])
    assert accepted.status_code == 201 and accepted.json()["replay"]["predecessors"] == [live["id"]]


def test_a_failed_replay_batch_leaves_its_predecessor_live_and_a_good_one_swaps_in_one_step(emu, aep):
    _, dataset = aep.cja_dataset()
    old = aep.ingest(dataset, GOOD[:2])
    failed = aep.ingest(dataset, [UNKNOWN_FIELD], replay={"predecessors": [old["id"]], "reason": "replace"})
    assert failed["status"] == "failed"
    assert aep.batch(old["id"])["status"] == "success"
    assert sorted(r["_id"] for r in emu.admin.dataset_records(dataset)) == ["r0", "r1"]
    aborted = aep.batch_for(dataset, replay={"predecessors": [old["id"]], "reason": "replace"})
    assert aep.action(aborted, "ABORT").status_code == 200
    assert aep.batch(old["id"])["status"] == "success"

    new = aep.ingest(dataset, GOOD[2:], replay={"predecessors": [old["id"]], "reason": "replace"})
    assert new["status"] == "success"
    replaced = aep.batch(old["id"])
    assert replaced["status"] == "inactive" and replaced["updatedUser"] == new["createdUser"]
    batches = emu.admin.state()["sandboxes"]["prod"]["batches"]
    # one instant: the new batch became visible exactly when the old one stopped being visible
    assert batches[new["id"]]["emulatorLive"]["since"] == batches[old["id"]]["emulatorLive"]["until"]
    assert sorted(r["_id"] for r in emu.admin.dataset_records(dataset)) == ["r2", "r3"]


def test_an_export_batch_can_be_reverted_and_leaves_the_query_service_table(emu, aep):
    dataset = aep.union_dataset("Export retention")
    segment = aep.audiences()[0]["id"]
    first = aep.export(dataset, [{"segmentId": segment}])
    second = aep.export(dataset, [{"segmentId": segment}])
    old_id, new_id = first["destination"]["batchId"], second["destination"]["batchId"]
    assert aep.action(old_id, "REVERT").status_code == 200
    reverted = aep.batch(old_id)
    assert (
        reverted["status"] == "inactive" and reverted["updatedUser"] == f"{emu.credentials.client_id}@AdobeID"
    )
    assert reverted["createdUser"] != reverted["updatedUser"]  # the export service wrote it; we reverted it
    assert aep.action(old_id, "REVERT").status_code == 200  # converges
    # the dataset's table (what Query Service reads) no longer holds its rows; the other export's stay
    assert (
        emu.admin.batch_rows(old_id) == []
        and len(emu.admin.batch_rows(new_id)) == second["metrics"]["totalExportedProfileCounter"] > 0
    )
