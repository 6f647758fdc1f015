"""Check the CJA side: dataset in the connection, audience dimensions in the data view (step 8)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException

from airflow_cja_audiences import hooks, validation
from airflow_cja_audiences.operators.base import AdobeBaseOperator


class CheckCjaOperator(AdobeBaseOperator):
    """Verify through the CJA API that our datasets are in the connection and the data view has
    the audience dimensions; log precisely what to add in the CJA UI when not.

    Connections are read-only in the public CJA API, so this checks and explains rather than edits.

    :param datasets: label -> dataset id (e.g. ``{"profile": "...", "events": "..."}``).
    :param dimension_fields: field paths under the tenant namespace that should be dimensions.
    :param fail_on_problems: fail the task instead of warning.

    XCom (return value): ``{ok, connection_id, data_view_id, problems}``.
    """

    template_fields = ("sandbox", "connection_id", "data_view_id", "datasets", "tenant")

    def __init__(
        self,
        *,
        connection_id: str | None,
        data_view_id: str | None,
        datasets: Mapping[str, Any],
        tenant: str,
        dimension_fields: Sequence[str] = (),
        fail_on_problems: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.connection_id = connection_id
        self.data_view_id = data_view_id
        self.datasets = datasets
        self.tenant = tenant
        self.dimension_fields = list(dimension_fields)
        self.fail_on_problems = fail_on_problems

    def execute(self, context: Context) -> dict[str, Any]:
        if not (self.connection_id or self.data_view_id):
            self.log.info("No CJA connection or data view configured; nothing to check")
            return {"ok": True, "connection_id": None, "data_view_id": None, "problems": []}
        tenant = validation.tenant_id(self.tenant)
        datasets = {label: ds for label, ds in dict(self.datasets).items() if ds}
        result = (
            self.hook(hooks.cja.CjaHook)
            .check_setup(
                connection_id=self.connection_id,
                data_view_id=self.data_view_id,
                datasets=datasets,
                dimension_paths=[f"_{tenant}.{f}" for f in self.dimension_fields],
                dataset_settings={
                    "snapshot": "as a Profile dataset with personID as Person ID ",
                    "events": f"as an Event dataset with timestamp as Timestamp and _{tenant}.personID as "
                    f"Person ID ",
                },
            )
            .to_dict()
        )
        if result["ok"]:
            self.log.info(
                "CJA connection %s and data view %s are set up for %s",
                self.connection_id,
                self.data_view_id,
                ", ".join(datasets),
            )
        elif self.fail_on_problems:
            raise AirflowFailException("CJA is not set up:\n  " + "\n  ".join(result["problems"]))
        self.log_retries()
        return result
