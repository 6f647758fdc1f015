"""Fault injection: each kind as the client sees it, counters, route matching, async latency."""

from __future__ import annotations

import threading
import time

import pytest
import requests

DATASETS = "/data/foundation/catalog/dataSets"


@pytest.mark.parametrize("kind", ["429", "500", "502", "503"])
def test_status_faults_then_recovery(emu, api, kind):
    emu.admin.set_faults(
        [
            {
                "route": "catalog.list_datasets",
                "kind": kind,
                "times": 1,
                **({"retry_after": 3} if kind == "429" else {}),
            }
        ]
    )
    faulted = api.call("GET", DATASETS)
    assert faulted.status_code == int(kind)
    assert faulted.json()["error_code"].startswith(kind) and faulted.headers["x-request-id"]
    if kind == "429":
        assert faulted.headers["retry-after"] == "3"
    else:
        assert "retry-after" not in faulted.headers
    assert api.call("GET", DATASETS).status_code == 200
    stats = emu.admin.stats()["routes"]["catalog.list_datasets"]
    assert stats == {"requests": 2, "faults": {kind: 1}}


def test_reset_is_a_connection_error_for_requests(emu, api):
    api.token()
    emu.admin.set_faults([{"route": "catalog.list_datasets", "kind": "reset", "times": 1}])
    with pytest.raises(requests.exceptions.ConnectionError):
        api.call("GET", DATASETS)
    assert api.call("GET", DATASETS).status_code == 200


def test_truncate_breaks_the_body_mid_way(emu, api):
    api.token()
    emu.admin.set_faults([{"route": "catalog.list_datasets", "kind": "truncate", "times": 1}])
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        api.call("GET", DATASETS)
    assert api.call("GET", DATASETS).status_code == 200


def test_token_endpoint_can_fail_too(emu, api):
    emu.admin.set_faults([{"route": "ims.token", "kind": "503", "times": 1}])
    assert api.request("POST", "/ims/token/v3", data={"grant_type": "client_credentials"}).status_code == 503


def test_latency_delays_only_the_matching_request(emu, api):
    api.token()
    emu.admin.set_faults(
        [{"route": "GET /data/foundation/catalog/dataSets", "kind": "latency", "seconds": 1.0}]
    )
    done: dict[str, float] = {}
    started = time.monotonic()

    def slow() -> None:
        done["status"] = api.call("GET", DATASETS).status_code
        done["slow"] = time.monotonic() - started

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.1)
    other = emu.api()
    assert other.call("GET", "/data/foundation/catalog/batches").status_code == 200
    done["fast"] = time.monotonic() - started
    thread.join()
    other.close()
    assert done["fast"] < 0.8 <= done["slow"] and done["status"] == 200
    assert emu.admin.stats()["routes"]["catalog.list_datasets"]["faults"] == {"latency": 1}


def test_probability_is_seeded_and_times_caps_injections(emu, api):
    api.token()

    def pattern() -> list[int]:
        emu.admin.set_faults([{"route": "*", "kind": "500", "probability": 0.5}], seed=11)
        return [api.call("GET", DATASETS).status_code for _ in range(16)]

    first, second = pattern(), pattern()
    assert first == second and 0 < first.count(500) < 16
    emu.admin.set_faults([{"route": "*", "kind": "502", "times": 2}])
    assert [api.call("GET", DATASETS).status_code for _ in range(4)] == [502, 502, 200, 200]


def test_admin_and_health_are_never_faulted(emu, api):
    emu.admin.set_faults([{"route": "*", "kind": "503"}, {"route": "* /.*", "kind": "503"}])
    assert api.request("GET", "/health").status_code == 200
    assert emu.admin.request("GET", "/emulator/state").status_code == 200
    assert api.request("GET", DATASETS).status_code == 503


def test_invalid_rules_are_rejected(emu):
    for rule in (
        {"route": "x", "kind": "418"},
        {"route": "x", "kind": "latency"},
        {"route": "x", "kind": "500", "probability": 2},
        {"route": "x", "kind": "500", "color": "red"},
    ):
        assert emu.admin.request("POST", "/emulator/faults", json={"rules": [rule]}).status_code == 400


def test_routes_are_listed_for_rule_authors(emu):
    names = {r["name"] for r in emu.admin.request("GET", "/emulator/routes").json()}
    assert {"ims.token", "catalog.get_batch", "segmentation.get_export_job", "ingestion.put_file"} <= names


def test_rules_naming_unknown_routes_are_refused(emu, api):
    emu.admin.set_faults([{"route": "catalog.list_datasets", "kind": "500", "times": 1}])
    typo = emu.admin.request(
        "POST", "/emulator/faults", json={"rules": [{"route": "catalog.list_dataset", "kind": "500"}]}
    )
    assert typo.status_code == 400 and "catalog.list_dataset" in typo.json()["error"]
    assert api.call("GET", DATASETS).status_code == 500  # the previous rules stay in force


def test_action_verbs_have_their_own_route_names(emu, aep):
    _, dataset = aep.cja_dataset()
    emu.admin.set_faults([{"route": "ingestion.complete_batch", "kind": "503"}])
    first, second = aep.batch_for(dataset), aep.batch_for(dataset)
    assert aep.action(first, "COMPLETE").status_code == 503
    assert aep.action(second, "ABORT").status_code == 200
    routes = emu.admin.stats()["routes"]
    assert routes["ingestion.complete_batch"]["faults"] == {"503": 1}
    assert routes["ingestion.abort_batch"] == {"requests": 1, "faults": {}}


def test_lost_response_processes_the_request_then_drops_the_connection(emu, aep):
    emu.admin.set_faults([{"route": "catalog.create_dataset", "kind": "lost_response", "times": 1}])
    aep.api.token()
    with pytest.raises(requests.exceptions.ConnectionError):
        aep.union_dataset("Created but unanswered")
    found = aep.ok(aep.api.call("GET", DATASETS, params={"property": "name==Created but unanswered"}))
    assert len(found) == 1  # a client must look before it creates again


def test_seeded_draws_of_a_route_ignore_other_routes_traffic(emu, api):
    """Faults are drawn per rule and route: extra polls of one route do not move another's faults."""
    api.token()

    def pattern(polls: int) -> list[int]:
        emu.admin.set_faults([{"route": "*", "kind": "500", "probability": 0.5}], seed=5)
        codes = []
        for i in range(12):
            for _ in range(polls if i % 3 == 0 else 0):
                api.call("GET", "/data/foundation/catalog/batches")
            codes.append(api.call("GET", DATASETS).status_code)
        return codes

    assert pattern(0) == pattern(3)


def test_a_held_request_is_released_when_the_rules_change(emu, api):
    api.token()
    emu.admin.set_faults([{"route": "catalog.list_datasets", "kind": "latency", "seconds": 60}])
    done: dict[str, int] = {}
    thread = threading.Thread(target=lambda: done.setdefault("status", api.call("GET", DATASETS).status_code))
    started = time.monotonic()
    thread.start()
    while emu.admin.stats()["routes"].get("catalog.list_datasets", {}).get("inFlight") != 1:
        assert time.monotonic() - started < 10, "the request was not held"
        time.sleep(0.02)
    emu.admin.clear_faults()
    thread.join(timeout=10)
    assert done == {"status": 200} and time.monotonic() - started < 10
    assert "inFlight" not in emu.admin.stats()["routes"]["catalog.list_datasets"]
