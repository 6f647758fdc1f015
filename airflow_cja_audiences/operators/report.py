"""Report the run: per-audience members and changes, in the log, as the return value and as an
Asset event other DAGs can schedule on (step 9)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow.sdk import BaseOperator, Context

from airflow_cja_audiences.report import build_report, format_report


class ReportOperator(BaseOperator):
    """Collect the small outputs of the pipeline's tasks into one report.

    Upstream tasks that were skipped (e.g. no snapshot in a backfill run) simply leave their part
    empty. The report goes to the log, the return value (XCom) and the extra of every outlet
    Asset event.

    :param task_ids: role -> task id of the tasks to read (``resolve``, ``plan``, ``export``,
        ``prepare_snapshot``, ``publish_snapshot``, ``prepare_events``, ``publish_events``,
        ``profile_dataset``, ``event_dataset``, ``check_cja``); missing roles are left out.
    """

    template_fields = ("sandbox",)

    def __init__(
        self, *, job_id: str, task_ids: Mapping[str, str], sandbox: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.job_id = job_id
        self.task_ids = dict(task_ids)
        self.sandbox = sandbox

    def _pull(self, context: Context, role: str, key: str = "return_value") -> Any:
        task_id = self.task_ids.get(role)
        return context["ti"].xcom_pull(task_ids=task_id, key=key) if task_id else None

    def execute(self, context: Context) -> dict[str, Any]:
        resolved = self._pull(context, "resolve") or {}
        report = build_report(
            job_id=self.job_id,
            sandbox=self.sandbox,
            audiences=resolved.get("audiences", []),
            plan=self._pull(context, "plan") or {},
            export=self._pull(context, "export"),
            snapshot=self._pull(context, "publish_snapshot"),
            snapshot_counts=self._pull(context, "prepare_snapshot", "audience_counts"),
            events=self._pull(context, "publish_events"),
            event_counts=self._pull(context, "prepare_events", "audience_counts"),
            datasets={
                "snapshot": self._pull(context, "profile_dataset", "dataset_id"),
                "events": self._pull(context, "event_dataset", "dataset_id"),
                "export": self._pull(context, "export", "export_dataset_id"),
            },
            cja=self._pull(context, "check_cja"),
            missing_audiences=resolved.get("missing_audiences"),
            snapshot_coverage=self._pull(context, "prepare_snapshot", "coverage"),
            events_coverage=self._pull(context, "prepare_events", "coverage"),
        )
        self.log.info("\n%s\n", format_report(report))
        summary = {
            "job_id": self.job_id,
            "snapshot_batch": (report["snapshot"] or {}).get("batch_id"),
            "events_batch": (report["events"] or {}).get("batch_id"),
            "interval": report["interval"],
            "members": {r["id"]: r["members"] for r in report["audiences"]},
            "missing_in_aep": [{k: m[k] for k in ("id", "name", "reason")} for m in report["missing_in_aep"]],
        }
        for asset in self.outlets:
            context["outlet_events"][asset].extra = summary
        return report
