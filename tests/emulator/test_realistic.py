"""Realistic mode: the preset and CLI, Adobe's intermediate statuses on the compressed clock,
throttling with Retry-After, and IMS scope checks (README "Realistic mode")."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import fields

import pytest

from aep_emulator import EmulatorSettings
from aep_emulator.__main__ import parse_args, settings_from
from aep_emulator.settings import REALISTIC

from emulator_fixture import DEFAULT_SECRET, ApiClient, RunningEmulator, start_in_process
from emulator_testkit import CATALOG, IMPORT, UPS, Aep, settings


@pytest.fixture(scope="module")
def real() -> Iterator[RunningEmulator]:
    base = settings()
    with start_in_process(
        EmulatorSettings.realistic(
            profiles=base.profiles,
            seed=base.seed,
            clock_start=base.clock_start,
            client_secret=DEFAULT_SECRET,
            sandboxes=base.sandboxes,
            tenant=base.tenant,
        )
    ) as running:
        yield running


@pytest.fixture
def raep(real: RunningEmulator) -> Iterator[Aep]:
    client = real.api()
    yield Aep(real, client)
    client.close()
    real.admin.reset()


def _until_terminal(read, terminal: set[str], timeout: float = 30.0) -> list[str]:
    """Every distinct status ``read()`` shows, in order, until a terminal one (polls every 20 ms)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while not seen or seen[-1] not in terminal:
        assert time.monotonic() < deadline, f"still {seen[-1] if seen else '?'} after {timeout}s: {seen}"
        status = read()
        if not seen or seen[-1] != status:
            seen.append(status)
        time.sleep(0.02)
    return seen


# -- the preset -----------------------------------------------------------------------------------
def test_preset_names_real_settings_each_different_from_the_default():
    default = EmulatorSettings()
    names = {f.name for f in fields(EmulatorSettings)}
    assert set(REALISTIC) <= names
    assert all(getattr(default, k) != v for k, v in REALISTIC.items()), "a preset line that changes nothing"
    realistic = EmulatorSettings.realistic(profiles=10)
    assert realistic.mode == "realistic" and realistic.profiles == 10
    assert all(getattr(realistic, k) == v for k, v in REALISTIC.items())
    assert realistic.real_seconds(60) == pytest.approx(0.1)  # 1 Adobe minute = 0.1 s


def test_cli_realistic_takes_the_preset_and_explicit_options_win():
    plain = settings_from(parse_args([]))
    assert plain.mode == "default" and plain == EmulatorSettings(
        **{f.name: getattr(plain, f.name) for f in fields(EmulatorSettings)}
    )
    assert (plain.time_scale, plain.export_job_seconds, plain.cja_rate_limit, plain.ims_scopes) == (
        1.0,
        2.0,
        False,
        (),
    )
    for argv in (["--realistic"], ["--mode", "realistic"]):
        realistic = settings_from(parse_args(argv))
        assert realistic.mode == "realistic"
        assert all(getattr(realistic, k) == v for k, v in REALISTIC.items())
    tuned = settings_from(
        parse_args(["--realistic", "--batch-seconds", "60", "--no-cja-rate-limit", "--time-scale", "0.01"])
    )
    assert (tuned.batch_seconds, tuned.cja_rate_limit, tuned.time_scale) == (60.0, False, 0.01)
    assert tuned.export_job_seconds == REALISTIC["export_job_seconds"]


def test_settings_refuse_an_unknown_mode_and_a_required_scope_the_credential_lacks():
    with pytest.raises(ValueError, match="mode"):
        EmulatorSettings(mode="fast")
    with pytest.raises(ValueError, match="time_scale"):
        EmulatorSettings(time_scale=0)
    with pytest.raises(ValueError, match="required scopes"):
        EmulatorSettings(ims_scopes=("openid",), required_scopes=("openid", "AdobeID"))


# -- statuses on the compressed clock ---------------------------------------------------------------
def test_export_job_and_its_batch_pass_adobes_intermediate_statuses(real, raep):
    # The 20-minute job takes 2 s, its batch stages 0.2 s; polls every 20 ms go past the request rate.
    real.admin.knobs(time_scale=2.0 / 1200, platform_rate_limit=0)
    dataset = raep.union_dataset()
    job = raep.export(dataset, [{"segmentId": raep.audiences()[0]["id"]}], wait=False)
    batch_statuses: list[str] = []

    def job_status() -> str:
        current = raep.ok(raep.api.call("GET", f"{UPS}/export/jobs/{job['id']}"))
        if current["destination"].get("batchId"):
            status = raep.batch(current["destination"]["batchId"])["status"]
            if not batch_statuses or batch_statuses[-1] != status:
                batch_statuses.append(status)
        return current["status"]

    started = time.monotonic()
    assert _until_terminal(job_status, {"SUCCEEDED", "FAILED"}) == ["NEW", "PROCESSING", "SUCCEEDED"]
    assert time.monotonic() - started >= 1.9  # the job took its (compressed) 20 minutes
    done = raep.ok(raep.api.call("GET", f"{UPS}/export/jobs/{job['id']}"))
    batch_id = done["destination"]["batchId"]
    batch_statuses += _until_terminal(lambda: raep.batch(batch_id)["status"], {"success", "failed"})[1:]
    assert batch_statuses == ["loading", "staging", "success"], batch_statuses
    assert real.admin.dataset_records(dataset)  # rows appear once the batch is a success


def test_ingestion_batch_passes_loaded_processing_staging(real, raep):
    real.admin.knobs(time_scale=2.0 / 300, platform_rate_limit=0)  # the 5-minute batch takes 2 s
    _, dataset = raep.cja_dataset()
    row = {
        "_id": "1",
        "personID": "a@example.com",
        "_demoemea": {"audienceMembershipId": "x", "audienceMembershipName": "X"},
    }
    batch_id = raep.batch_for(dataset)
    assert raep.put_file(batch_id, dataset, "part-0.json", [row]).status_code == 201
    assert raep.action(batch_id, "COMPLETE").status_code == 200
    seen = _until_terminal(lambda: raep.batch(batch_id)["status"], {"success", "failed"})
    assert seen == ["loaded", "processing", "staging", "success"], seen
    # A batch that fails validation fails from processing: it is never staged.
    bad = raep.batch_for(dataset)
    assert raep.put_file(bad, dataset, "part-0.json", ["{not json"]).status_code == 201
    assert raep.action(bad, "COMPLETE").status_code == 200
    assert _until_terminal(lambda: raep.batch(bad)["status"], {"success", "failed"}) == [
        "loaded",
        "processing",
        "failed",
    ]


# -- throttling -------------------------------------------------------------------------------------
def test_platform_requests_over_the_rate_get_429_with_retry_after(real, raep):
    real.admin.knobs(platform_rate_limit=5)
    answers = [raep.api.call("GET", f"{CATALOG}/dataSets") for _ in range(8)]
    assert [r.status_code for r in answers[:5]] == [200] * 5
    throttled = [r for r in answers if r.status_code == 429]
    assert throttled, [r.status_code for r in answers]
    assert throttled[0].json() == {"error_code": "429001", "message": "Too many requests"}
    wait = int(throttled[0].headers["Retry-After"])
    assert wait == 1  # a one-second window
    assert real.admin.stats()["throttled"]["catalog.list_datasets"] == len(throttled)
    time.sleep(wait)  # honouring Retry-After is what a client must do
    assert raep.api.call("GET", f"{CATALOG}/dataSets").status_code == 200


def test_cja_rate_is_on_and_its_429_says_when_to_retry(real, raep):
    statuses = [raep.api.call("GET", "/data/connections", cja=True) for _ in range(13)]
    assert [r.status_code for r in statuses[:12]] == [200] * 12 and statuses[12].status_code == 429
    assert statuses[12].json() == {"error_code": "429050", "message": "Too many requests"}
    assert 1 <= int(statuses[12].headers["Retry-After"]) <= 6


def test_batch_creation_rate_answers_429_with_retry_after(real, raep):
    real.admin.knobs(batch_create_rate_limit=2)
    _, dataset = raep.cja_dataset()
    body = {"datasetId": dataset, "inputFormat": {"format": "json"}}
    answers = [raep.api.call("POST", f"{IMPORT}/batches", json=body) for _ in range(3)]
    assert [r.status_code for r in answers] == [201, 201, 429]
    assert real.admin.stats()["throttled"] == {"ingestion.create_batch": 1}
    assert answers[2].json()["type"].endswith("INGEST-1429-429")
    assert 1 <= int(answers[2].headers["Retry-After"]) <= 60


# -- IMS scopes -------------------------------------------------------------------------------------
def _token(api: ApiClient, scope: str):
    c = api.credentials
    return api.request(
        "POST",
        "/ims/token/v3",
        data={
            "grant_type": "client_credentials",
            "client_id": c.client_id,
            "client_secret": c.client_secret,
            "scope": scope,
        },
    )


def test_ims_refuses_a_scope_the_credential_does_not_have(raep):
    response = _token(raep.api, raep.api.credentials.scope + ",additional_info.roles")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_scope"
    assert "additional_info.roles" in response.json()["error_description"]
    assert _token(raep.api, raep.api.credentials.scope).status_code == 200


@pytest.mark.parametrize(
    "dropped,status,code",
    [
        ("additional_info.projectedProductContext", 403, "403027"),
        ("AdobeID", 401, "401013"),
    ],
)
def test_a_token_without_a_required_scope_is_refused_by_the_gateway(raep, dropped, status, code):
    scope = ",".join(s for s in raep.api.credentials.scope.split(",") if s != dropped)
    token = _token(raep.api, scope).json()["access_token"]  # IMS grants a subset of the credential's scopes
    headers = {**raep.api.headers(), "Authorization": f"Bearer {token}"}
    response = raep.api.request("GET", f"{CATALOG}/dataSets", headers=headers)
    assert response.status_code == status and response.json()["error_code"] == code
