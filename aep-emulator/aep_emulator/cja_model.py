"""CJA connections and data views (org level), plus the documented 12 requests / 6 s rate limit.

Connections are read-only in the public API; tests change them through the admin API, which stands
for the UI actions "add dataset to connection" and "add dimension to data view".
"""

from __future__ import annotations

import collections
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

CJA_NAMESPACE = uuid.UUID("0b6f8c3e-5a1d-4c0e-9f3e-7d2b1a6c4e21")


def connection_id(org_id: str, name: str) -> str:
    return f"dg_{uuid.uuid5(CJA_NAMESPACE, f'{org_id}/connection/{name}')}"


def data_view_id(org_id: str, name: str) -> str:
    return f"dv_{uuid.uuid5(CJA_NAMESPACE, f'{org_id}/dataview/{name}').hex[:24]}"


@dataclass
class Connection:
    id: str
    name: str
    sandbox: str
    sandbox_id: str
    owner: dict
    created: str
    description: str = ""
    datasets: list[dict] = field(default_factory=list)

    def to_json(self, expansion: set[str]) -> dict:
        # A setting that does not apply to a dataset (identityNamespace when the primary identity's
        # namespace is used, timestampId of a profile dataset) is left out, not null: CJA's spec types
        # these fields string, not nullable. Guess: absent rather than "" (no public example shows either).
        full = {
            "name": self.name,
            "description": self.description,
            "owner": dict(self.owner),
            "dataSets": [{k: v for k, v in d.items() if v is not None} for d in self.datasets],
            "sandboxName": self.sandbox,
            "sandboxId": self.sandbox_id,
            "backfillEnabled": False,
            "createdDate": self.created,
            "modified": self.created,
            "tags": [],
            "validationErrors": [],
            "dataSetLastIngested": None,
            "schemaInfo": [
                {"dataSetId": d["dataSetId"], "schemaId": d.get("schemaId")} for d in self.datasets
            ],
        }
        body = {"id": self.id, "idWithoutPrefix": self.id[3:]}
        body.update({k: v for k, v in full.items() if k in expansion})
        return body


@dataclass
class DataView:
    id: str
    name: str
    parent_id: str
    owner: dict
    created: str
    modified: str
    description: str = ""
    timezone: str = "UTC"
    session_definition: list[dict] = field(
        default_factory=lambda: [
            {"numPeriods": 30, "granularity": "minute", "func": "inactivity", "events": []}
        ]
    )
    container_names: dict = field(
        default_factory=lambda: {"event": "Event", "session": "Session", "people": "Person"}
    )
    external_data: dict = field(default_factory=lambda: {"externalId": "", "externalParentId": ""})
    dimensions: list[dict] = field(default_factory=list)

    EDITABLE = {
        "name": "name",
        "description": "description",
        "timezoneDesignator": "timezone",
        "sessionDefinition": "session_definition",
        "containerNames": "container_names",
        "externalData": "external_data",
        "parentDataGroupId": "parent_id",
    }

    def to_json(self, org_id: str) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "parentDataGroupId": self.parent_id,
            "owner": dict(self.owner),
            "organization": org_id,
            "timezoneDesignator": self.timezone,
            "currentTimezoneOffset": 0,
            "sessionDefinition": [dict(s) for s in self.session_definition],
            "containerNames": dict(self.container_names),
            "externalData": dict(self.external_data),
            "createdDate": self.created,
            "modified": self.modified,
        }


def dimension(
    schema_path: str, name: str | None = None, dataset_type: str = "event", field_type: str = "string"
) -> dict:
    """A data view dimension component built on a schema field."""
    return {
        "id": f"variables/{schema_path}",
        "name": name or schema_path.rsplit(".", 1)[-1],
        "description": None,
        "type": field_type.upper(),
        "schemaPath": schema_path,
        "sourceFieldId": schema_path,
        "sourceFieldName": schema_path.rsplit(".", 1)[-1],
        "sourceFieldType": field_type,
        "dataSetType": dataset_type,
        "hideFromReporting": False,
        "segmentable": True,
        "reportable": ["oberon"],
    }


def spring_page(items: list[dict], page: int, limit: int) -> dict:
    """Spring-style paging envelope used by the CJA API."""
    total = len(items)
    pages = (total + limit - 1) // limit if limit else 0
    content = items[page * limit : (page + 1) * limit]
    return {
        "content": content,
        "number": page,
        "size": limit,
        "numberOfElements": len(content),
        "totalElements": total,
        "totalPages": pages,
        "firstPage": page == 0,
        "lastPage": page >= pages - 1,
        "sort": None,
    }


class RateLimiter:
    """Sliding window: at most ``limit`` requests per ``window`` seconds per key (real time)."""

    def __init__(self, limit: int = 12, window: float = 6.0) -> None:
        self.limit, self.window = limit, window
        self._hits: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._lock = threading.Lock()

    def allow(self, key: str, limit: int | None = None) -> bool:
        """Count one request; False (not counted) when ``limit`` (default: the limiter's) is reached."""
        limit = self.limit if limit is None else limit
        now = time.monotonic()
        with self._lock:
            hits = self._hits[key]
            while hits and now - hits[0] >= self.window:
                hits.popleft()
            if len(hits) >= limit:
                return False
            hits.append(now)
            return True

    def retry_after(self, key: str, limit: int | None = None) -> int:
        """Whole seconds (at least 1) until ``key`` may send again: a ``Retry-After`` value."""
        limit = self.limit if limit is None else limit
        now = time.monotonic()
        with self._lock:
            hits = self._hits[key]
            if len(hits) < limit or not hits:
                return 1
            # The request that frees a slot is the limit-th newest leaving the window.
            oldest_blocking = hits[len(hits) - limit]
            return max(1, math.ceil(oldest_blocking + self.window - now))


@dataclass
class CjaStore:
    connections: dict[str, Connection] = field(default_factory=dict)
    data_views: dict[str, DataView] = field(default_factory=dict)
    limiter: RateLimiter = field(default_factory=RateLimiter)

    def to_json(self, org_id: str) -> dict[str, Any]:
        everything = {"name", "description", "owner", "dataSets", "sandboxName", "sandboxId"}
        return {
            "connections": [c.to_json(everything) for c in self.connections.values()],
            "dataViews": [
                {**v.to_json(org_id), "dimensions": [d["id"] for d in v.dimensions]}
                for v in self.data_views.values()
            ],
        }
