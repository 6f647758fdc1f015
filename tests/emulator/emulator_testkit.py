"""Shared constants and the ``Aep`` helper of the emulator tests (drives the emulated REST API)."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

from aep_emulator import EmulatorSettings
from aep_emulator.clock import parse_instant

from emulator_fixture import DEFAULT_SECRET, ApiClient, RunningEmulator

CLOCK_START = "2026-03-01T00:00:00Z"
TENANT = "demoemea"
PROFILES = 3000
SEED = 7
CATALOG = "/data/foundation/catalog"
UPS = "/data/core/ups"
SR = "/data/foundation/schemaregistry"
IMPORT = "/data/foundation/import"
XED = "application/vnd.adobe.xed+json"
XED_FULL_V1 = "application/vnd.adobe.xed-full+json; version=1"


def settings(**changes: Any) -> EmulatorSettings:
    base = EmulatorSettings(
        profiles=PROFILES,
        seed=SEED,
        clock_start=parse_instant(CLOCK_START),
        export_job_seconds=0.2,
        batch_seconds=0.05,
        client_secret=DEFAULT_SECRET,
        sandboxes=("prod", "dev"),
        tenant=TENANT,
    )
    return base.with_changes(**changes) if changes else base


def epoch(text: str) -> int:
    return int(parse_instant(text).timestamp())


def iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Aep:
    """Small steps of the pipeline, done through the emulated REST API."""

    def __init__(self, emu: RunningEmulator, api: ApiClient) -> None:
        self.emu, self.api = emu, api

    def ok(self, response: Any, status: int = 200) -> Any:
        assert response.status_code == status, f"{response.status_code}: {response.text}"
        return response.json() if response.content else None

    def audiences(self) -> list[dict]:
        return self.ok(self.api.call("GET", f"{UPS}/audiences", params={"limit": 100}))["children"]

    def union_dataset(self, name: str = "Audience export", sandbox: str | None = None) -> str:
        body = {
            "name": name,
            "schemaRef": {
                "id": "_xdm.context.profile__union",
                "contentType": "application/vnd.adobe.xed+json;version=1",
            },
        }
        created = self.ok(
            self.api.call(
                "POST",
                f"{CATALOG}/dataSets",
                sandbox=sandbox,
                json=body,
                params={"requestDataSource": "true"},
            ),
            201,
        )
        return created[0].split("/")[-1]

    def export(
        self,
        dataset_id: str,
        segments: list[dict] | None,
        *,
        fields: str | None = None,
        sqt: dict | None = None,
        wait: bool = True,
    ) -> dict:
        body: dict[str, Any] = {
            "destination": {"datasetId": dataset_id},
            "schema": {"name": "_xdm.context.profile"},
        }
        if fields is not None:
            body["fields"] = fields
        body["filter"] = {}
        if segments is not None:
            body["filter"]["segments"] = segments
        if sqt is not None:
            body["filter"]["segmentQualificationTime"] = sqt
        job = self.ok(self.api.call("POST", f"{UPS}/export/jobs", json=body))
        return self.wait_job(job["id"]) if wait else job

    def wait_job(self, job_id: int, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.ok(self.api.call("GET", f"{UPS}/export/jobs/{job_id}"))
            if job["status"] in ("SUCCEEDED", "FAILED"):
                return job
            assert time.monotonic() < deadline, f"export job {job_id} still {job['status']}"
            time.sleep(0.05)

    def batch(self, batch_id: str, sandbox: str | None = None) -> dict:
        return self.ok(self.api.call("GET", f"{CATALOG}/batches/{batch_id}", sandbox=sandbox))[batch_id]

    def wait_batch(self, batch_id: str, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            batch = self.batch(batch_id)
            if batch["status"] not in ("loading", "loaded", "processing", "staging"):
                return batch
            assert time.monotonic() < deadline, f"batch {batch_id} still {batch['status']}"
            time.sleep(0.05)

    def field_group(
        self, title: str, fields: dict[str, dict], cls: str = "https://ns.adobe.com/xdm/context/profile"
    ) -> dict:
        body = {
            "title": title,
            "description": "test",
            "type": "object",
            "meta:intendedToExtend": [cls],
            "definitions": {
                "membership": {"properties": {f"_{TENANT}": {"type": "object", "properties": fields}}}
            },
            "allOf": [{"$ref": "#/definitions/membership"}],
        }
        return self.ok(self.api.call("POST", f"{SR}/tenant/fieldgroups", json=body), 201)

    def schema(
        self, title: str, refs: list[str], cls: str = "https://ns.adobe.com/xdm/context/profile"
    ) -> dict:
        body = {"title": title, "type": "object", "allOf": [{"$ref": cls}] + [{"$ref": r} for r in refs]}
        return self.ok(self.api.call("POST", f"{SR}/tenant/schemas", json=body), 201)

    def cja_dataset(self, title: str = "CJA audiences") -> tuple[dict, str]:
        """A profile schema with personID + _tenant.audienceMembershipId/Name, and a dataset on it."""
        fg = self.field_group(
            f"{title} field group",
            {"audienceMembershipId": {"type": "string"}, "audienceMembershipName": {"type": "string"}},
        )
        schema = self.schema(f"{title} schema", [fg["$id"]])
        created = self.ok(
            self.api.call(
                "POST",
                f"{CATALOG}/dataSets",
                json={
                    "name": f"{title} dataset",
                    "schemaRef": {
                        "id": schema["$id"],
                        "contentType": "application/vnd.adobe.xed+json;version=1",
                    },
                },
            ),
            201,
        )
        return schema, created[0].split("/")[-1]

    def batch_for(self, dataset_id: str, **options: Any) -> str:
        body = {"datasetId": dataset_id, "inputFormat": {"format": "json"}, **options}
        return self.ok(self.api.call("POST", f"{IMPORT}/batches", json=body), 201)["id"]

    def put_file(self, batch_id: str, dataset_id: str, name: str, lines: list[Any]) -> Any:
        data = "".join(
            (line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines
        ).encode()
        return self.api.call(
            "PUT",
            f"{IMPORT}/batches/{batch_id}/datasets/{dataset_id}/files/{name}",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )

    def action(self, batch_id: str, action: str) -> Any:
        return self.api.call("POST", f"{IMPORT}/batches/{batch_id}", params={"action": action})

    def ingest(self, dataset_id: str, lines: list[Any], **options: Any) -> dict:
        batch_id = self.batch_for(dataset_id, **options)
        assert self.put_file(batch_id, dataset_id, "part-0.json", lines).status_code == 201
        assert self.action(batch_id, "COMPLETE").status_code == 200
        return self.wait_batch(batch_id)
