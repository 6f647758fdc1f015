"""Customer Journey Analytics API: connections (read-only in the public API) and data views."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow_cja_audiences.hooks.platform import AdobePlatformHook, path_segment
from airflow_cja_audiences.models import CjaComponent, CjaConnection, CjaDataView

log = logging.getLogger(__name__)

PAGE = 100


@dataclass
class CjaCheckResult:
    """What is missing on the CJA side, phrased as what to do in the CJA UI."""

    connection_id: str | None
    data_view_id: str | None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "connection_id": self.connection_id,
            "data_view_id": self.data_view_id,
            "problems": list(self.problems),
        }


class CjaHook(AdobePlatformHook):
    """CJA API (``https://cja.adobe.io``; same IMS credential, no sandbox header)."""

    hook_name = "Adobe Customer Journey Analytics"

    def get_cja_connection(self, connection_id: str) -> CjaConnection:
        payload = self.request_json(
            "GET",
            f"/data/connections/{path_segment(connection_id)}",
            service="cja",
            route="cja.get_connection",
            params={"expansion": "name,dataSets"},
        )
        return CjaConnection.model_validate(payload)

    def get_data_view(self, data_view_id: str) -> CjaDataView:
        payload = self.request_json(
            "GET",
            f"/data/dataviews/{path_segment(data_view_id)}",
            service="cja",
            route="cja.get_dataview",
            params={"expansion": "name,parentDataGroupId"},
        )
        return CjaDataView.model_validate(payload)

    def update_data_view(self, data_view_id: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Partial update (``PUT`` accepts a partial body and returns the changed fields)."""
        return self.request_json(
            "PUT",
            f"/data/dataviews/{path_segment(data_view_id)}",
            service="cja",
            route="cja.update_dataview",
            json=dict(changes),
        )

    def list_dimensions(self, data_view_id: str) -> list[CjaComponent]:
        found: list[CjaComponent] = []
        page = 0
        guard = self.page_guard("cja.list_dimensions")
        while True:
            guard.next_page(page)
            payload = self.request_json(
                "GET",
                f"/data/dataviews/{path_segment(data_view_id)}/dimensions",
                service="cja",
                route="cja.list_dimensions",
                params={"limit": PAGE, "page": page, "expansion": "schemaPath"},
            )
            content = payload.get("content", []) if isinstance(payload, dict) else (payload or [])
            components = [CjaComponent.model_validate(c) for c in content]
            guard.seen(c.id for c in components)
            found += components
            if not isinstance(payload, dict) or payload.get("lastPage", True) or not content:
                return found
            page += 1

    def check_setup(
        self,
        *,
        connection_id: str | None,
        data_view_id: str | None,
        datasets: Mapping[str, str],
        dimension_paths: Sequence[str],
        dataset_settings: Mapping[str, str] | None = None,
    ) -> CjaCheckResult:
        """Verify that ``datasets`` (label -> dataset id) are in the connection and the data view
        has dimensions for ``dimension_paths``; say precisely what to add in the UI when not.

        ``dataset_settings`` (label -> text) says how to configure each dataset when adding it.
        """
        result = CjaCheckResult(connection_id, data_view_id)
        if connection_id:
            connection = self.get_cja_connection(connection_id)
            present = {d.id for d in connection.datasets}
            for label, dataset_id in datasets.items():
                if dataset_id not in present:
                    result.problems.append(
                        f"CJA connection {connection.name or connection_id!r} ({connection_id}) does not include the "
                        f"{label} dataset {dataset_id}: in CJA open Data management > Connections > "
                        f"{connection.name or connection_id} > Edit connection > Add datasets, select it "
                        f"{(dataset_settings or {}).get(label, '')}(the CJA API cannot add datasets to a "
                        f"connection)"
                    )
        if data_view_id:
            view = self.get_data_view(data_view_id)
            if connection_id and view.parent_data_group_id and view.parent_data_group_id != connection_id:
                result.problems.append(
                    f"data view {data_view_id} belongs to connection {view.parent_data_group_id}, "
                    f"not {connection_id}"
                )
            paths = {d.schema_path for d in self.list_dimensions(data_view_id) if d.schema_path}
            missing = [p for p in dimension_paths if p not in paths]
            if missing:
                result.problems.append(
                    f"data view {view.name or data_view_id!r} ({data_view_id}) has no dimension for "
                    f"{', '.join(missing)}: in CJA open Data views > {view.name or data_view_id} > Components, "
                    f"drag these schema fields into Dimensions and save"
                )
        for problem in result.problems:
            log.warning("CJA check: %s", problem)
        return result
