"""DAG tests run against the emulator (``airflow_db`` and ``dags_folder`` are in tests/conftest.py)."""

from __future__ import annotations

from collections import defaultdict

import pytest


@pytest.fixture(scope="session")
def emu(realistic_emu):
    """This suite runs against the emulator in realistic mode (tests/conftest.py ``realistic_emu``)."""
    return realistic_emu


@pytest.fixture(autouse=True)
def _adobe(adobe_conn):
    yield


@pytest.fixture
def audiences(emu) -> list[str]:
    """The ids of the emulator's first three audiences (the operator-level tests select these)."""
    return [a["id"] for a in emu.admin.state()["audiences"][:3]]


class EmulatorDatasets:
    """What the emulator's admin API shows of a sandbox's datasets, batches and ground truth: the
    end-to-end tests' shared view (records and live batches read back, the truth from the emulator's
    membership model, never from the provider's SQL)."""

    def __init__(self, emu, sandbox: str = "prod") -> None:
        self.emu = emu
        self.sandbox = sandbox

    def state(self) -> dict:
        return self.emu.admin.state()["sandboxes"][self.sandbox]

    def dataset_id(self, name: str) -> str:
        matches = [i for i, d in self.state()["datasets"].items() if d["name"] == name]
        assert len(matches) == 1, f"{len(matches)} datasets named {name!r}"
        return matches[0]

    def records(self, dataset_id: str) -> list[dict]:
        return self.emu.admin.dataset_records(dataset_id)

    def snapshot_memberships(self, dataset_id: str, tenant: str) -> dict[str, set[tuple]]:
        """personID -> {(audience, status, lastQualificationTime)} of the live per-person records."""
        records = self.records(dataset_id)
        people = [r["personID"] for r in records]
        assert len(people) == len(set(people)), "a person appears in two live records"
        return {
            r["personID"]: {
                (m["audienceMembershipId"], m["status"], m["lastQualificationTime"])
                for m in r[f"_{tenant}"]["audienceMembership"]
            }
            for r in records
        }

    def batches(self, dataset_id: str) -> list[dict]:
        """Every batch of the dataset, whatever its status."""
        return [
            b
            for b in self.state()["batches"].values()
            if any(
                o.get("type") == "dataSet" and o.get("id") == dataset_id for o in b.get("relatedObjects", [])
            )
        ]

    def live_batches(self, dataset_id: str) -> list[dict]:
        return [b for b in self.batches(dataset_id) if b["status"] == "success"]

    def truth_snapshot(self, audience_ids: list[str]) -> dict[str, set[tuple]]:
        """email -> {(audience, status, lastQualificationTime)} of the members now (the emulator's truth)."""
        truth: dict[str, set[tuple]] = defaultdict(set)
        for row in self.emu.admin.snapshot(audience_ids, ["realized", "existing"]):
            truth[row["email"]].add((row["audience_id"], row["status"], row["last_qualification_time"]))
        return dict(truth)


@pytest.fixture
def aep(emu) -> EmulatorDatasets:
    return EmulatorDatasets(emu)
