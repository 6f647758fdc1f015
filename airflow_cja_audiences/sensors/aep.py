"""Sensors other DAGs can reuse: wait for an export job or an ingestion batch (deferrable).

Each reads its object's status through the object's ``STATUS`` type (``ExportJob.STATUS``,
``Batch.STATUS``), as the triggers and the operators' synchronous waits do. The object ending in a
failure fails the sensor without retries (a retry would find the same failure); so does an error a
retry cannot fix (refused credentials, an unknown id). Throttling, server errors and dropped
connections are left to the task's retries. The deadline is the sensor's ``timeout`` (3 hours by
default), in both modes; past it the sensor fails with ``AirflowSensorTimeout``.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator, Context, PokeReturnValue
from airflow.sdk.exceptions import AirflowSensorTimeout

from airflow_cja_audiences import DEFAULT_CONN_ID, hooks, triggers
from airflow_cja_audiences.errors import AepObjectFailedError
from airflow_cja_audiences.operators.base import DEFAULT_DEFERRABLE, failing_fast, validate_event

_FAILED_ADVICE = "the {what} it waits for ended {state}; a retry would find it so again"


class _AepSensor(BaseSensorOperator):
    template_fields: tuple[str, ...] = ("sandbox",)

    def __init__(
        self,
        *,
        adobe_conn_id: str = DEFAULT_CONN_ID,
        sandbox: str | None = None,
        deferrable: bool = DEFAULT_DEFERRABLE,
        hook_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("poke_interval", 30)
        kwargs.setdefault("timeout", timedelta(hours=3).total_seconds())
        super().__init__(**kwargs)
        self.adobe_conn_id = adobe_conn_id
        self.sandbox = sandbox
        self.deferrable = deferrable
        self.hook_params = dict(hook_params or {})

    def _trigger_kwargs(self) -> dict[str, Any]:
        return {
            "adobe_conn_id": self.adobe_conn_id,
            "sandbox": self.sandbox,
            "poll_interval": self.poke_interval,
            "deadline": time.time() + float(self.timeout),
            "hook_params": self.hook_params,
        }

    def _trigger(self) -> Any:
        raise NotImplementedError

    def _check(self, context: Context) -> PokeReturnValue | bool:
        """One look at the object: False while it runs, its summary when it succeeded; raises
        :class:`~airflow_cja_audiences.errors.AepObjectFailedError` (permanent) when it failed."""
        raise NotImplementedError

    def _failed(self, what: str, state: str, message: str) -> AepObjectFailedError:
        return AepObjectFailedError(
            message,
            what=what,
            state=state,
            permanent=True,
            advice=_FAILED_ADVICE.format(what=what, state=state),
        )

    def poke(self, context: Context) -> PokeReturnValue | bool:
        with failing_fast(self.task_id):
            return self._check(context)

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        # Finished already? Then don't pay for a round trip through the triggerer.
        done = self.poke(context)
        if done:
            return done.xcom_value if isinstance(done, PokeReturnValue) else None
        self.defer(trigger=self._trigger(), method_name="execute_complete")

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        with failing_fast(self.task_id):
            event = validate_event(event, what=self.task_id, accept=("success", "failed", "timeout"))
            if event["status"] == "timeout":  # as in poke mode: a sensor's timeout is not retried
                raise AirflowSensorTimeout(f"{self.task_id}: {event.get('message') or 'timed out'}")
            if event["status"] == "failed":
                state = str(event.get("job_status") or event.get("batch_status") or "failed")
                raise self._failed(
                    self._what(),
                    state,
                    f"{self._what()} ended {state}: {event.get('message') or 'no details'}",
                )
        return {k: v for k, v in event.items() if k != "status"}

    def _what(self) -> str:
        raise NotImplementedError


class ExportJobSensor(_AepSensor):
    """Wait until a Segmentation export job SUCCEEDED; fail when it FAILED. XCom: job summary."""

    template_fields = ("sandbox", "job_id")

    def __init__(self, *, job_id: int | str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.job_id = job_id

    def _what(self) -> str:
        return f"export job {self.job_id}"

    def _check(self, context: Context) -> PokeReturnValue | bool:
        hook = hooks.segmentation.SegmentationHook(
            self.adobe_conn_id, sandbox=self.sandbox, **self.hook_params
        )
        job = hook.get_export_job(int(self.job_id))
        self.log.info("Export job %s is %s", job.id, job.status)
        if job.outcome is None:
            return False
        if not job.is_success:
            raise self._failed(
                f"export job {job.id}",
                job.status,
                f"export job {job.id} ended {job.status}: {job.error_summary()}",
            )
        return PokeReturnValue(
            True,
            {
                "job_id": job.id,
                "batch_id": job.destination.batch_id,
                "exported_profiles": job.exported_profiles,
            },
        )

    def _trigger(self) -> Any:
        return triggers.aep.ExportJobTrigger(job_id=int(self.job_id), **self._trigger_kwargs())


class BatchSensor(_AepSensor):
    """Wait until a Catalog batch is ``success``/``active``; fail when it failed, or was reverted or
    deleted meanwhile. XCom: batch summary."""

    template_fields = ("sandbox", "batch_id")

    def __init__(self, *, batch_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batch_id = batch_id

    def _what(self) -> str:
        return f"batch {self.batch_id}"

    def _check(self, context: Context) -> PokeReturnValue | bool:
        hook = hooks.catalog.CatalogHook(self.adobe_conn_id, sandbox=self.sandbox, **self.hook_params)
        batch = hook.get_batch(self.batch_id)
        self.log.info("Batch %s is %s", batch.id, batch.status)
        if batch.outcome is None:
            return False
        if batch.is_gone:
            raise self._failed(
                f"batch {batch.id}", batch.status, f"batch {batch.id} is {batch.status} (reverted or deleted)"
            )
        if batch.is_failed:
            raise self._failed(
                f"batch {batch.id}",
                batch.status,
                f"batch {batch.id} is {batch.status}: {batch.error_summary()}",
            )
        return PokeReturnValue(
            True,
            {
                "batch_id": batch.id,
                "batch_status": batch.status,
                "records": batch.record_count,
                "failed_records": batch.failed_record_count,
            },
        )

    def _trigger(self) -> Any:
        return triggers.aep.BatchTrigger(batch_id=self.batch_id, **self._trigger_kwargs())
