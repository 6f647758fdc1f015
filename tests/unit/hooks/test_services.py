"""Service hooks against the emulator: find-or-create, exports, uploads, CJA checks."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from airflow_cja_audiences import xdm
from airflow_cja_audiences.config import AudienceSelector, OutputFields
from airflow_cja_audiences.errors import AepBadRequestError, AepConfigError
from airflow_cja_audiences.hooks.catalog import CatalogHook
from airflow_cja_audiences.hooks.cja import CjaHook
from airflow_cja_audiences.hooks.ingestion import BatchIngestionHook
from airflow_cja_audiences.hooks.schema_registry import SchemaRegistryHook
from airflow_cja_audiences.hooks.segmentation import SegmentationHook
from airflow_cja_audiences.models import PROFILE_CLASS, PROFILE_UNION_ALT_ID, ExportJobRequest

from polling import poll


@pytest.fixture
def audiences(emu) -> list[dict]:
    return emu.admin.state()["audiences"]


def _wait(fn, what: str, timeout: float = 30.0):
    return poll(fn, timeout=timeout, what=what)


# --------------------------------------------------------------------------- Catalog


def test_dataset_find_or_create_is_idempotent_and_has_a_table_name():
    hook = CatalogHook()
    first, created = hook.ensure_dataset("Audience export", schema_id=PROFILE_UNION_ALT_ID)
    again, created_again = hook.ensure_dataset("Audience export", schema_id=PROFILE_UNION_ALT_ID)
    assert created and not created_again and first.id == again.id
    assert first.table_name == "audience_export"


def test_dataset_on_another_schema_is_not_reused():
    hook = CatalogHook()
    hook.ensure_dataset("Taken name", schema_id=PROFILE_UNION_ALT_ID)
    with pytest.raises(AepConfigError, match="exists with schema"):
        hook.ensure_dataset("Taken name", schema_id="https://ns.adobe.com/demoemea/schemas/other")


# ---------------------------------------------------------------------- Segmentation


def test_resolve_audiences_by_id_and_name_with_display_override(audiences):
    gold, cart = audiences[0], audiences[2]
    resolved = SegmentationHook().resolve_audiences(
        [AudienceSelector(id=gold["id"], display_name="Gold"), AudienceSelector(name=cart["name"])]
    )
    assert [(a.id, a.name, a.aep_name) for a in resolved] == [
        (gold["id"], "Gold", gold["name"]),
        (cart["id"], cart["name"], cart["name"]),
    ]


def test_resolve_audiences_lists_every_problem(audiences):
    with pytest.raises(AepConfigError) as info:
        SegmentationHook().resolve_audiences(
            [
                AudienceSelector(id="00000000-0000-0000-0000-000000000000"),
                AudienceSelector(name="No such audience"),
                AudienceSelector(id=audiences[0]["id"]),
                AudienceSelector(name=audiences[0]["name"]),
            ]
        )
    text = str(info.value)
    assert "audiences[0].id" in text and "audiences[1].name" in text and "selected twice" in text


def test_export_job_lifecycle_and_reattach(emu, audiences):
    dataset, _ = CatalogHook().ensure_dataset("Export target", schema_id=PROFILE_UNION_ALT_ID)
    hook = SegmentationHook()
    request = ExportJobRequest(
        dataset_id=dataset.id,
        segment_ids=(audiences[0]["id"], audiences[1]["id"]),
        fields=("_demoemea.identification.core.email",),
    )
    started = int(time.time() * 1000) - 1000
    job = hook.create_export_job(request, created_after_ms=started)
    assert hook.find_export_job(request, created_after_ms=started).id == job.id  # a retry re-attaches
    other = ExportJobRequest(dataset_id=dataset.id, segment_ids=(audiences[2]["id"],))
    assert hook.find_export_job(other, created_after_ms=started) is None
    done = _wait(lambda: (j := hook.get_export_job(job.id)).is_terminal and j, "export job")
    assert done.status == "SUCCEEDED" and done.destination.batch_id
    batch = CatalogHook().get_batch(done.destination.batch_id)
    assert batch.is_success and batch.dataset_id == dataset.id


def test_lost_export_job_answer_is_not_duplicated(emu, audiences, fast_retries):
    dataset, _ = CatalogHook().ensure_dataset("Export target 2", schema_id=PROFILE_UNION_ALT_ID)
    emu.admin.set_faults([{"route": "segmentation.create_export_job", "kind": "lost_response", "times": 1}])
    hook = SegmentationHook(**fast_retries)
    request = ExportJobRequest(dataset_id=dataset.id, segment_ids=(audiences[0]["id"],))
    hook.create_export_job(request, created_after_ms=int(time.time() * 1000) - 1000)
    jobs = [j for j in hook.iter_export_jobs() if j.destination.dataset_id == dataset.id]
    assert len(jobs) == 1


def test_a_recent_identical_export_job_is_never_taken_for_ours(emu, audiences, fast_retries):
    """An earlier run's identical job a few seconds ago (inside the clock-skew window) is excluded:
    after an ambiguous create failure the hook finds its own job, or creates one, never that one."""
    dataset, _ = CatalogHook().ensure_dataset("Export target 3", schema_id=PROFILE_UNION_ALT_ID)
    hook = SegmentationHook(**fast_retries)
    request = ExportJobRequest(dataset_id=dataset.id, segment_ids=(audiences[0]["id"],))
    window = int(time.time() * 1000) - 30_000
    earlier = hook.create_export_job(request, created_after_ms=window)
    assert hook.export_job_ids(request, created_after_ms=window) == {earlier.id}
    assert hook.find_export_job(request, created_after_ms=window, exclude={earlier.id}) is None
    emu.admin.set_faults([{"route": "segmentation.create_export_job", "kind": "lost_response", "times": 1}])
    ours = hook.create_export_job(request, created_after_ms=window, exclude={earlier.id})
    assert ours.id != earlier.id
    assert hook.export_job_ids(request, created_after_ms=window) == {earlier.id, ours.id}


def test_identity_field_must_exist_in_union_schema():
    union = SchemaRegistryHook().get_profile_union_schema()
    hook = SegmentationHook()
    hook.require_export_fields(union, ["_demoemea.identification.core.email"])
    with pytest.raises(AepConfigError, match="identity.field"):
        hook.require_export_fields(union, ["_demoemea.identification.core.nope"])


# ------------------------------------------------------------------- Schema Registry


def test_schema_field_group_descriptor_are_created_once():
    hook = SchemaRegistryHook()
    tenant = hook.get_tenant_id()
    assert tenant == "demoemea"
    body = xdm.profile_field_group("Audience membership (test)", tenant, OutputFields())
    group, created = hook.ensure_field_group(body, tenant)
    group2, created2 = hook.ensure_field_group(body, tenant)
    assert created and not created2 and group.id == group2.id and "/mixins/" in group.id
    schema_body = xdm.schema_body("Audience profiles (test)", PROFILE_CLASS, [group.id])
    schema, s_created = hook.ensure_schema(schema_body)
    schema2, s_created2 = hook.ensure_schema(schema_body)
    assert s_created and not s_created2 and schema.id == schema2.id
    assert hook.ensure_identity_descriptor(schema.id, "/personID", "Email") is True
    assert hook.ensure_identity_descriptor(schema.id, "/personID", "Email") is False
    with pytest.raises(AepConfigError, match="primary identity"):
        hook.ensure_identity_descriptor(schema.id, "/personID", "ECID")


def test_field_group_missing_fields_is_reported():
    hook = SchemaRegistryHook()
    fields = OutputFields()
    hook.ensure_field_group(xdm.profile_field_group("Group v1", "demoemea", fields), "demoemea")
    renamed = OutputFields(audience_names="segmentNames")
    with pytest.raises(AepConfigError, match="segmentNames"):
        hook.ensure_field_group(xdm.profile_field_group("Group v1", "demoemea", renamed), "demoemea")


def test_title_collision_across_types_is_adobes_error():
    hook = SchemaRegistryHook()
    hook.ensure_field_group(xdm.profile_field_group("Same title", "demoemea", OutputFields()), "demoemea")
    with pytest.raises(AepBadRequestError) as info:
        hook.ensure_schema(xdm.schema_body("Same title", PROFILE_CLASS, []))
    assert info.value.code == "XDM-1521-400"


# ------------------------------------------------------------------- Batch ingestion


def _profile_dataset(name: str) -> str:
    registry = SchemaRegistryHook()
    group, _ = registry.ensure_field_group(
        xdm.profile_field_group(f"{name} group", "demoemea", OutputFields()), "demoemea"
    )
    schema, _ = registry.ensure_schema(xdm.schema_body(f"{name} schema", PROFILE_CLASS, [group.id]))
    registry.ensure_identity_descriptor(schema.id, "/personID", "Email")
    dataset, _ = CatalogHook().ensure_dataset(name, schema_id=schema.id)
    return dataset.id


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _records(n: int, extra: dict | None = None) -> list[dict]:
    return [
        {
            "_id": f"id-{i}",
            "personID": f"p{i}@example.com",
            "_demoemea": {"audienceMembershipIds": "a", "audienceMembershipNames": "A", **(extra or {})},
        }
        for i in range(n)
    ]


def test_small_and_chunked_uploads_complete_and_revert(emu, tmp_path):
    dataset_id = _profile_dataset("Upload target")
    hook = BatchIngestionHook()
    batch = hook.create_batch(dataset_id, external_id="test:upload:1")
    hook.upload_file(batch.id, dataset_id, "part-00001.json", _jsonl(tmp_path / "a.json", _records(50)))
    big = _jsonl(tmp_path / "b.json", _records(400)[50:])
    hook.upload_file(batch.id, dataset_id, "part-00002.json", big, chunk_size=4096, small_file_limit=1024)
    assert hook.retry_counts == {} or all(v == 0 for v in hook.retry_counts.values())
    hook.complete_batch(batch.id)
    hook.complete_batch(batch.id)  # documented as safe to repeat
    done = _wait(lambda: (b := hook.get_batch(batch.id)).is_terminal and b, "batch")
    assert done.is_success and done.record_count == 400 and done.failed_record_count == 0
    assert len(emu.admin.dataset_records(dataset_id)) == 400
    hook.revert_batch(batch.id)
    assert hook.get_batch(batch.id).status == "inactive"
    assert emu.admin.dataset_records(dataset_id) == []


def test_unknown_field_fails_the_batch_with_reasons(emu, tmp_path):
    dataset_id = _profile_dataset("Strict target")
    hook = BatchIngestionHook()
    batch = hook.create_batch(dataset_id, external_id="test:bad:1")
    hook.upload_file(
        batch.id, dataset_id, "bad.json", _jsonl(tmp_path / "bad.json", _records(3, {"bogus": 1}))
    )
    hook.complete_batch(batch.id)
    done = _wait(lambda: (b := hook.get_batch(batch.id)).is_terminal and b, "batch")
    assert done.is_failed
    assert "bogus" in done.error_summary() or any(
        "bogus" in json.dumps(e) for e in hook.get_row_errors(batch.id)
    )
    assert emu.admin.dataset_records(dataset_id) == []


def test_abort_while_loading_and_lost_create_answer(emu, tmp_path, fast_retries):
    dataset_id = _profile_dataset("Abort target")
    emu.admin.set_faults([{"route": "ingestion.create_batch", "kind": "lost_response", "times": 1}])
    hook = BatchIngestionHook(**fast_retries)
    batch = hook.create_batch(dataset_id, external_id="test:abort:1")
    assert [b.id for b in hook.list_batches(dataset_id)] == [batch.id]  # the lost answer was recovered
    assert hook.abort_batch(batch.id) is True
    assert hook.get_batch(batch.id).status == "aborted"


# ----------------------------------------------------------------------------- CJA


def test_cja_check_says_what_to_add_then_passes(emu):
    state = emu.admin.state()["cja"]
    connection_id, view_id = state["connections"][0]["id"], state["dataViews"][0]["id"]
    dataset_id = _profile_dataset("CJA target")
    hook = CjaHook()
    paths = ["_demoemea.audienceMembershipNames"]
    result = hook.check_setup(
        connection_id=connection_id,
        data_view_id=view_id,
        datasets={"profile": dataset_id},
        dimension_paths=paths,
    )
    assert not result.ok and any("Add datasets" in p for p in result.problems)
    assert any("_demoemea.audienceMembershipNames" in p for p in result.problems)
    emu.admin.add_dataset_to_connection(connection_id, dataset_id, type="profile", visitorId="personID")
    emu.admin.add_dimension(view_id, paths[0])
    result = hook.check_setup(
        connection_id=connection_id,
        data_view_id=view_id,
        datasets={"profile": dataset_id},
        dimension_paths=paths,
    )
    assert result.ok, result.problems
    assert hook.update_data_view(view_id, {"description": "kept by airflow-cja-audiences"}) is not None


# --------------------------------------------------------------------------- remote values validated where they enter


def _answering(monkeypatch, hook, answer: dict) -> None:
    """The real request path stays; only what Adobe answers is replaced (as a hostile proxy could)."""
    monkeypatch.setattr(hook, "request_json", lambda *args, **kwargs: answer)


def test_an_audience_look_up_answered_with_another_audience_is_refused(audiences, monkeypatch):
    from airflow_cja_audiences.errors import AepError

    hook = SegmentationHook()
    wanted = audiences[0]["id"]
    assert hook.get_audience(wanted).id == wanted
    other = {
        **hook.request_json("GET", f"/data/core/ups/audiences/{wanted}", route="x"),
        "id": audiences[1]["id"],
    }
    _answering(monkeypatch, hook, other)
    with pytest.raises(AepError, match="answered with audience"):
        hook.get_audience(wanted)
    _answering(monkeypatch, hook, {**other, "id": "x' OR '1'='1"})
    with pytest.raises(AepError, match="answered with audience"):
        hook.get_audience(wanted)


@pytest.mark.parametrize("tenant", ["acme; DROP TABLE t", "../x", "Tenant With Spaces", "_"])
def test_a_malformed_tenant_from_schema_registry_is_refused(monkeypatch, tenant):
    from airflow_cja_audiences.errors import AepError

    hook = SchemaRegistryHook()
    assert hook.get_tenant_id() == "demoemea"
    _answering(monkeypatch, hook, {"tenantId": tenant})
    with pytest.raises(AepError, match="tenantId that is not one"):
        hook.get_tenant_id()
