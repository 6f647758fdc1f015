"""Sensors other DAGs can reuse: wait for an export job or an ingestion batch (deferrable)."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator, Context, PokeReturnValue
from airflow.sdk.exceptions import AirflowException

from airflow_cja_audiences import DEFAULT_CONN_ID, hooks, triggers
from airflow_cja_audiences.operators.base import DEFAULT_DEFERRABLE, validate_event


class _AepSensor(BaseSensorOperator):
    template_fields = ("sandbox",)

    def __init__(self, *, adobe_conn_id: str = DEFAULT_CONN_ID, sandbox: str | None = None,
                 deferrable: bool = DEFAULT_DEFERRABLE, hook_params: dict[str, Any] | None = None,
                 **kwargs: Any) -> None:
        kwargs.setdefault("poke_interval", 30)
        kwargs.setdefault("timeout", timedelta(hours=3).total_seconds())
        super().__init__(**kwargs)
        self.adobe_conn_id = adobe_conn_id
        self.sandbox = sandbox
        self.deferrable = deferrable
        self.hook_params = dict(hook_params or {})

    def _trigger_kwargs(self) -> dict[str, Any]:
        return {"adobe_conn_id": self.adobe_conn_id, "sandbox": self.sandbox, "poll_interval": self.poke_interval,
                "deadline": time.time() + float(self.timeout), "hook_params": self.hook_params}

    def _trigger(self) -> Any:
        raise NotImplementedError

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        # Finished already? Then don't pay for a round trip through the triggerer.
        done = self.poke(context)
        if done:
            return done.xcom_value if isinstance(done, PokeReturnValue) else None
        self.defer(trigger=self._trigger(), method_name="execute_complete")

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        event = validate_event(event, what=self.task_id)
        return {k: v for k, v in event.items() if k != "status"}


class ExportJobSensor(_AepSensor):
    """Wait until a Segmentation export job SUCCEEDED; fail when it FAILED. XCom: job summary."""

    template_fields = ("sandbox", "job_id")

    def __init__(self, *, job_id: int | str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.job_id = job_id

    def poke(self, context: Context) -> PokeReturnValue | bool:
        job = hooks.segmentation.SegmentationHook(self.adobe_conn_id, sandbox=self.sandbox, **self.hook_params).get_export_job(
            int(self.job_id))
        self.log.info("Export job %s is %s", job.id, job.status)
        if job.status.upper() in ("FAILED", "CANCELLED"):
            raise AirflowException(f"export job {job.id} ended {job.status}: {job.error_summary()}")
        if job.status.upper() != "SUCCEEDED":
            return False
        return PokeReturnValue(True, {"job_id": job.id, "batch_id": job.destination.batch_id,
                                      "exported_profiles": job.exported_profiles})

    def _trigger(self) -> Any:
        return triggers.aep.ExportJobTrigger(job_id=int(self.job_id), **self._trigger_kwargs())


class BatchSensor(_AepSensor):
    """Wait until a Catalog batch is ``success``/``active``; fail when it failed. XCom: batch summary."""

    template_fields = ("sandbox", "batch_id")

    def __init__(self, *, batch_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batch_id = batch_id

    def poke(self, context: Context) -> PokeReturnValue | bool:
        batch = hooks.catalog.CatalogHook(self.adobe_conn_id, sandbox=self.sandbox, **self.hook_params).get_batch(self.batch_id)
        self.log.info("Batch %s is %s", batch.id, batch.status)
        if batch.is_failed:
            raise AirflowException(f"batch {batch.id} is {batch.status}: {batch.error_summary()}")
        if not batch.is_terminal:
            return False
        if not batch.is_success:
            raise AirflowException(f"batch {batch.id} is {batch.status} (reverted or deleted)")
        return PokeReturnValue(True, {"batch_id": batch.id, "batch_status": batch.status,
                                      "records": batch.record_count, "failed_records": batch.failed_record_count})

    def _trigger(self) -> Any:
        return triggers.aep.BatchTrigger(batch_id=self.batch_id, **self._trigger_kwargs())
