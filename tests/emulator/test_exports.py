"""Export jobs against the ground truth: which profiles, which memberships, which batch."""

from __future__ import annotations

from collections import defaultdict

import pytest

from emulator_testkit import CATALOG, UPS, iso

ALL = ["realized", "existing", "exited"]


def _memberships_at(emu, at: int) -> dict[str, dict[str, tuple[str, str]]]:
    """email -> {audience id: (status, lastQualificationTime)} for every membership at ``at``."""
    out: dict[str, dict[str, tuple[str, str]]] = defaultdict(dict)
    for row in emu.admin.snapshot(None, ALL, at=iso(at)):
        out[row["email"]][row["audience_id"]] = (row["status"], row["last_qualification_time"])
    return out


def _exported(emu, batch_id: str, *, distinct: bool = False) -> dict[str, dict[str, tuple[str, str]]]:
    out = {}
    physical = set()
    for row in emu.admin.batch_rows(batch_id):
        email = row["_demoemea"]["identification"]["core"]["email"]
        assert email not in out, f"profile {email} exported twice in one batch"
        out[email] = {
            aud: (m["status"], m["lastQualificationTime"])
            for aud, m in row["segmentMembership"]["ups"].items()
        }
        assert row["_acp_system_metadata"]["acp_sourceBatchId"] == batch_id
        assert (row["_acp_batchid"] != batch_id) if distinct else (row["_acp_batchid"] == batch_id)
        assert row["_acp_system_metadata"]["commitBatchId"] == row["_acp_batchid"]
        physical.add(row["_acp_batchid"])
    assert len(physical) <= 1, f"one export wrote several physical batches {physical}"
    return out


def _check_against_truth(emu, job: dict, selected: set[str]) -> None:
    assert job["status"] == "SUCCEEDED", job
    at = job["creationTime"] // 1000
    exported = _exported(emu, job["destination"]["batchId"])
    assert set(exported) == selected
    assert job["metrics"]["totalExportedProfileCounter"] == len(selected)
    truth = _memberships_at(emu, at)
    for email, memberships in exported.items():
        # Row-level filter: each exported profile carries all of its memberships.
        assert memberships == truth[email], email


@pytest.mark.parametrize(
    "spec",
    [
        [(0, ["realized", "existing"])],
        [(1, ["existing"]), (2, ["exited"])],
        [(0, ["realized"]), (3, ["realized", "existing", "exited"])],
    ],
)
def test_export_matches_ground_truth(emu, aep, spec):
    audiences = [a["id"] for a in aep.audiences()]
    dataset = aep.union_dataset()
    segments = [{"segmentId": audiences[k], "segmentNs": "ups", "status": statuses} for k, statuses in spec]
    job = aep.export(dataset, segments)
    at = job["creationTime"] // 1000
    selected = {
        r["email"] for k, statuses in spec for r in emu.admin.snapshot([audiences[k]], statuses, at=iso(at))
    }
    assert selected, "the synthetic data should give this filter members"
    _check_against_truth(emu, job, selected)


def test_export_with_segment_qualification_time(emu, aep):
    audience = aep.audiences()[2]["id"]
    dataset = aep.union_dataset()
    start, end = "2026-02-01T00:00:00Z", "2026-02-20T00:00:00Z"
    job = aep.export(
        dataset, [{"segmentId": audience, "status": ALL}], sqt={"startTime": start, "endTime": end}
    )
    at = job["creationTime"] // 1000
    # segmentQualificationTime filters on lastQualificationTime, whatever the status.
    selected = {
        r["email"]
        for r in emu.admin.snapshot([audience], ALL, at=iso(at))
        if start <= r["last_qualification_time"] < end
    }
    assert selected
    _check_against_truth(emu, job, selected)
    for memberships in _exported(emu, job["destination"]["batchId"]).values():
        assert start <= memberships[audience][1] < end


def test_unrequested_fields_are_null_and_requested_ones_set(emu, aep):
    dataset = aep.union_dataset()
    job = aep.export(
        dataset,
        [{"segmentId": aep.audiences()[1]["id"]}],
        fields="_demoemea.identification.core.email,person.name.firstName",
    )
    rows = emu.admin.batch_rows(job["destination"]["batchId"])
    assert rows
    for row in rows:
        assert row["identityMap"] is None and row["personalEmail"] is None
        assert row["_demoemea"]["identification"]["core"]["ecid"] is None
        assert row["_demoemea"]["identification"]["core"]["email"].endswith("@example.com")
        assert row["person"]["name"]["firstName"] and row["person"]["name"]["lastName"] is None
        assert row["segmentMembership"]["ups"]


def test_exports_accumulate_in_the_dataset_with_distinct_batch_ids(emu, aep):
    audiences = [a["id"] for a in aep.audiences()]
    dataset = aep.union_dataset()
    first = aep.export(dataset, [{"segmentId": audiences[0]}])
    second = aep.export(dataset, [{"segmentId": audiences[1]}])
    b1, b2 = first["destination"]["batchId"], second["destination"]["batchId"]
    assert b1 != b2
    records = emu.admin.dataset_records(dataset)
    by_batch = defaultdict(int)
    for record in records:
        by_batch[record["_acp_batchid"]] += 1
    assert by_batch == {
        b1: first["metrics"]["totalExportedProfileCounter"],
        b2: second["metrics"]["totalExportedProfileCounter"],
    }
    batches = aep.ok(
        aep.api.call("GET", f"{CATALOG}/batches", params={"dataSet": dataset, "orderBy": "desc:created"})
    )
    assert list(batches) == [b2, b1] and all(b["status"] == "success" for b in batches.values())
    dataset_json = aep.ok(aep.api.call("GET", f"{CATALOG}/dataSets/{dataset}"))[dataset]
    assert dataset_json["lastBatchId"] == b2


def test_job_statuses_progress_and_batch_appears_once_processing(emu, aep):
    emu.admin.knobs(export_job_seconds=1.2)  # long enough to observe PROCESSING twice
    dataset = aep.union_dataset()
    job = aep.export(dataset, [{"segmentId": aep.audiences()[0]["id"]}], wait=False)
    assert job["status"] == "NEW" and "batchId" not in job["destination"]
    assert isinstance(job["id"], int)
    seen = set()
    while job["status"] not in ("SUCCEEDED", "FAILED"):
        job = aep.ok(aep.api.call("GET", f"{UPS}/export/jobs/{job['id']}"))
        if job["status"] == "PROCESSING" and "PROCESSING" not in seen:
            assert aep.batch(job["destination"]["batchId"])["status"] == "processing"
        seen.add(job["status"])
    assert "PROCESSING" in seen and job["status"] == "SUCCEEDED"
    assert aep.batch(job["destination"]["batchId"])["status"] == "success"


def test_export_of_all_profiles_without_segment_filter(emu, aep):
    dataset = aep.union_dataset()
    job = aep.export(dataset, None, fields="_demoemea.identification.core.crmId")
    assert job["metrics"]["totalExportedProfileCounter"] == emu.state.settings.profiles


def test_zero_member_audience_exports_nothing(emu, aep):
    empty = [a for a in aep.audiences() if a["name"] == "Lapsed VIP - archive"][0]
    assert emu.admin.snapshot([empty["id"]], ALL) == []
    job = aep.export(aep.union_dataset(), [{"segmentId": empty["id"]}])
    assert job["status"] == "SUCCEEDED" and job["metrics"]["totalExportedProfileCounter"] == 0


@pytest.mark.parametrize(
    "mutate,field",
    [
        (lambda b: b.pop("schema"), "schema.name"),
        (lambda b: b["destination"].update(datasetId="000000000000000000000000"), "destination.datasetId"),
        (
            lambda b: b["filter"]["segments"][0].update(segmentId="not-a-segment"),
            "filter.segments[0].segmentId",
        ),
        (lambda b: b["filter"]["segments"][0].update(status=["qualified"]), "filter.segments[0].status"),
        (lambda b: b.update(mergePolicy={"id": "unknown-policy", "version": 1}), "mergePolicy.id"),
        (
            lambda b: b["filter"].update(segmentQualificationTime={"startTime": "yesterday"}),
            "filter.segmentQualificationTime.startTime",
        ),
    ],
)
def test_invalid_export_requests_name_the_field(aep, mutate, field):
    dataset = aep.union_dataset()
    body = {
        "destination": {"datasetId": dataset},
        "schema": {"name": "_xdm.context.profile"},
        "filter": {"segments": [{"segmentId": aep.audiences()[0]["id"], "status": ["realized"]}]},
    }
    mutate(body)
    response = aep.api.call("POST", f"{UPS}/export/jobs", json=body)
    assert response.status_code == 400, response.text
    problem = response.json()
    assert problem["type"].startswith("http://ns.adobe.com/aep/errors/") and problem["status"] == 400
    assert problem["detail"].startswith(field + ":"), problem["detail"]
    assert problem["report"]["requestId"] == response.headers["x-request-id"]


def test_unknown_field_path_creates_the_job_and_fails_its_batch(emu, aep):
    # Adobe's use-case doc: the job is accepted and SUCCEEDS; the batch it wrote fails in Catalog.
    dataset = aep.union_dataset()
    job = aep.export(
        dataset,
        [{"segmentId": aep.audiences()[0]["id"]}],
        fields="_demoemea.identification.core.email,_demoemea.identification.core.nope",
    )
    assert job["status"] == "SUCCEEDED"
    batch = aep.wait_batch(job["destination"]["batchId"])
    assert batch["status"] == "failed"
    assert "_demoemea.identification.core.nope" in batch["errors"][0]["description"]
    assert "core.email" not in batch["errors"][0]["description"]  # only the unknown path is named
    assert emu.admin.dataset_records(dataset) == []  # a failed batch leaves no rows


def test_export_into_a_non_union_dataset_is_refused(aep):
    _, dataset = aep.cja_dataset("Not union")
    response = aep.api.call(
        "POST",
        f"{UPS}/export/jobs",
        json={"destination": {"datasetId": dataset}, "schema": {"name": "_xdm.context.profile"}},
    )
    assert response.status_code == 400 and "profile union" in response.json()["detail"]


def test_unmodelled_export_options_answer_501(aep):
    response = aep.api.call(
        "POST",
        f"{UPS}/export/jobs",
        json={
            "destination": {"datasetId": aep.union_dataset(), "segmentPerBatch": True},
            "schema": {"name": "_xdm.context.profile"},
        },
    )
    assert response.status_code == 501 and "segmentPerBatch" in response.json()["detail"]


def test_failure_knobs_fail_the_job_or_only_its_batch(emu, aep):
    dataset, audience = aep.union_dataset(), aep.audiences()[0]["id"]
    emu.admin.knobs(export_job_failures=1)
    failed = aep.export(dataset, [{"segmentId": audience}])
    assert failed["status"] == "FAILED" and failed["errors"]
    assert all(
        isinstance(e["callStack"], str) for e in failed["errors"]
    )  # a string in spec and docs, never null
    emu.admin.knobs(export_batch_failures=1)
    trap = aep.export(dataset, [{"segmentId": audience}])
    assert trap["status"] == "SUCCEEDED"
    batch = aep.batch(trap["destination"]["batchId"])
    assert batch["status"] == "failed" and batch["errors"]
    assert emu.admin.dataset_records(dataset) == []  # neither export left rows behind
    ok = aep.export(dataset, [{"segmentId": audience}])
    assert ok["status"] == "SUCCEEDED" and aep.batch(ok["destination"]["batchId"])["status"] == "success"


def test_cancel_marks_the_job_failed(emu, aep):
    emu.admin.knobs(export_job_seconds=5)
    job = aep.export(aep.union_dataset(), [{"segmentId": aep.audiences()[0]["id"]}], wait=False)
    response = aep.api.call("DELETE", f"{UPS}/export/jobs/{job['id']}")
    assert response.json() == {"status": True, "message": "Export job has been marked for cancelling"}
    assert aep.ok(aep.api.call("GET", f"{UPS}/export/jobs/{job['id']}"))["status"] == "FAILED"


def test_list_export_jobs_pages_with_offset_from_link_next(aep):
    dataset, audience = aep.union_dataset(), aep.audiences()[0]["id"]
    ids = [aep.export(dataset, [{"segmentId": audience}], wait=False)["id"] for _ in range(3)]
    page = aep.ok(aep.api.call("GET", f"{UPS}/export/jobs", params={"limit": 2}))
    assert [r["id"] for r in page["records"]] == ids[::-1][:2]
    nxt = page["link"]["next"]
    rest = aep.ok(aep.api.call("GET", f"{UPS}{nxt}"))
    assert [r["id"] for r in rest["records"]] == [ids[0]] and "next" not in rest["link"]
    assert aep.api.call("GET", f"{UPS}/export/jobs/999999").status_code == 404


def test_distinct_physical_and_logical_batch_ids(emu, aep):
    """Realistic mode: the job reports the logical batch (its Catalog batch), which the rows carry as
    _acp_system_metadata.acp_sourceBatchId; their _acp_batchid is a physical batch of its own, so a
    read filtered on _acp_batchid with the job's batch id finds nothing."""
    emu.admin.knobs(distinct_batch_ids=True)
    audience = aep.audiences()[0]["id"]
    dataset = aep.union_dataset()
    job = aep.export(
        dataset, [{"segmentId": audience, "segmentNs": "ups", "status": ["realized", "existing"]}]
    )
    batch_id = job["destination"]["batchId"]
    exported = _exported(emu, batch_id, distinct=True)
    assert len(exported) == job["metrics"]["totalExportedProfileCounter"] > 0
    batch = aep.ok(aep.api.call("GET", f"{CATALOG}/batches/{batch_id}"))
    assert batch_id in batch and batch[batch_id]["status"] == "success"
    assert batch[batch_id]["metrics"]["outputRecordCount"] == len(exported)
    # The dataset's records (what CJA and Query Service see) are the batch's, found by its logical id.
    assert len(emu.admin.dataset_records(dataset)) == len(exported)
