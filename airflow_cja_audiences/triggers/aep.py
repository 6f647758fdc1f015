"""Deferrable waits on AEP: export jobs, ingestion batches and Query Service batch queries.

Triggers are rebuilt in the triggerer from plain JSON kwargs (``serialize``), poll through the one
HTTP session their event loop shares (``AdobePlatformHook.async_session``: warm keep-alive connections,
no pool per wait), carry a wall-clock deadline (they may move between triggerer processes), and
always end with exactly one event: ``success``, ``failed``, ``timeout`` or ``error``.
The operator's ``execute_complete`` turns anything but ``success`` into a clear task failure.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from abc import abstractmethod
from collections.abc import AsyncIterator
from typing import Any

import aiohttp  # noqa: F401 - loaded with the trigger class, not on the event loop at the first poll

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_cja_audiences import DEFAULT_CONN_ID, hooks
from airflow_cja_audiences.errors import AepError, is_permanent
from airflow_cja_audiences.models import Batch, ExportJob

# Log a "still waiting" line at most this often per trigger, plus on every state change.
_PROGRESS_LOG_SECONDS = 60.0
# Triggers deferred together (a backfill, many DAGs at 02:00) would all set up and poll at once:
# each waits a stable pseudo-random part of this before its first poll (never past its deadline).
_FIRST_POLL_SPREAD_SECONDS = 2.0


class _AepPollingTrigger(BaseTrigger):
    """Poll one AEP resource until it is terminal or the deadline passes."""

    def __init__(
        self,
        *,
        adobe_conn_id: str = DEFAULT_CONN_ID,
        sandbox: str | None = None,
        poll_interval: float = 30.0,
        deadline: float | None = None,
        started_at: float | None = None,
        hook_params: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.adobe_conn_id = adobe_conn_id
        self.sandbox = sandbox
        self.poll_interval = float(poll_interval)
        self.deadline = deadline  # epoch seconds (wall clock), or None for no deadline
        self.started_at = started_at if started_at is not None else time.time()
        self.hook_params = dict(hook_params or {})

    def _common_kwargs(self) -> dict[str, Any]:
        return {
            "adobe_conn_id": self.adobe_conn_id,
            "sandbox": self.sandbox,
            "poll_interval": self.poll_interval,
            "deadline": self.deadline,
            "started_at": self.started_at,
            "hook_params": self.hook_params,
        }

    @abstractmethod
    def _hook(self) -> Any: ...

    @abstractmethod
    async def _poll(self, hook: Any) -> tuple[bool, str, dict[str, Any]]:
        """One poll: (terminal, state for logs, event payload when terminal)."""

    @property
    @abstractmethod
    def _what(self) -> str: ...

    def _first_poll_delay(self) -> float:
        spread = min(self.poll_interval, _FIRST_POLL_SPREAD_SECONDS)
        fraction = int(hashlib.sha256(self._what.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        delay = spread * fraction
        return delay if self.deadline is None else max(0.0, min(delay, self.deadline - time.time()))

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # Exactly one event, whatever happens: the wait returns its event, and every failure inside it
        # (Adobe's errors, a 200 with HTML or an unexpected shape, transport errors, the call deadline,
        # a bug) becomes one error event with a clear message. Only cancellation goes through.
        try:
            event = await self._wait()
        except asyncio.CancelledError:
            raise
        except AepError as exc:
            # A retry of the task cannot fix a permanent error (credentials, an unknown job): say so.
            event = self._error_event(str(exc), permanent=is_permanent(exc))
        except Exception as exc:
            from pydantic import ValidationError

            event = self._error_event(_describe(exc))
            if isinstance(exc, ValidationError):  # a bad answer, not a bug: the message says it all
                self.log.error("%s", event.payload["message"])
            else:
                self.log.exception("%s: unexpected failure while waiting", self._what)
        yield event

    def _error_event(self, message: str, *, permanent: bool = False) -> TriggerEvent:
        return TriggerEvent(
            {
                "status": "error",
                "message": f"{self._what}: {message}",
                "permanent": permanent,
                "elapsed_seconds": round(time.time() - self.started_at, 1),
            }
        )

    async def _wait(self) -> TriggerEvent:
        await asyncio.sleep(self._first_poll_delay())
        hook = self._hook()
        last_state, last_log = None, 0.0
        async with hook.async_session():
            while True:
                terminal, state, payload = await self._poll(hook)
                now = time.time()
                elapsed = now - self.started_at
                if terminal:
                    self.log.info("%s is %s after %.0f s", self._what, state, elapsed)
                    return TriggerEvent({**payload, "elapsed_seconds": round(elapsed, 1)})
                if state != last_state or now - last_log >= _PROGRESS_LOG_SECONDS:
                    self.log.info("%s is %s (%.0f s elapsed)", self._what, state, elapsed)
                    last_state, last_log = state, now
                if self.deadline is not None and now >= self.deadline:
                    return TriggerEvent(
                        {
                            "status": "timeout",
                            "state": state,
                            "elapsed_seconds": round(elapsed, 1),
                            "message": f"{self._what} still {state} after {elapsed:.0f} s (deadline reached)",
                        }
                    )
                sleep = (
                    self.poll_interval
                    if self.deadline is None
                    else max(0.0, min(self.poll_interval, self.deadline - now))
                )
                await asyncio.sleep(sleep)


def _describe(exc: BaseException) -> str:
    """A short, clear message for a failure that is not one of ours (e.g. an answer of the wrong shape)."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        fields = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()[:5]
        )
        return (
            f"Adobe's answer does not have the documented shape ({exc.error_count()} problem(s): {fields}); "
            f"something other than Adobe may have answered"
        )
    text = " ".join(str(exc).split())[:300]
    return f"unexpected {type(exc).__name__}: {text}" if text else f"unexpected {type(exc).__name__}"


class ExportJobTrigger(_AepPollingTrigger):
    """Wait for a Segmentation export job to end (``ExportJob.STATUS``: SUCCEEDED, or FAILED/CANCELLED)."""

    def __init__(self, *, job_id: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.job_id = int(job_id)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            "job_id": self.job_id,
            **self._common_kwargs(),
        }

    @property
    def _what(self) -> str:
        return f"export job {self.job_id}"

    def _hook(self) -> Any:
        return hooks.segmentation.SegmentationHook(
            self.adobe_conn_id, sandbox=self.sandbox, **self.hook_params
        )

    async def _poll(self, hook: Any) -> tuple[bool, str, dict[str, Any]]:
        job: ExportJob = await hook.aget_export_job(self.job_id)
        status = job.status.upper()
        if job.outcome is None:
            return False, status, {}
        return (
            True,
            status,
            {
                "status": "success" if job.outcome == "success" else "failed",
                "job_id": job.id,
                "job_status": status,
                "batch_id": job.destination.batch_id,
                "dataset_id": job.destination.dataset_id,
                "exported_profiles": job.exported_profiles,
                "message": job.error_summary(),
            },
        )

    async def on_kill(self) -> None:
        """A user killed the waiting task: cancel the export job (best effort)."""
        hook = self._hook()
        async with hook.async_session():
            await asyncio.wait_for(hook.acancel_export_job(self.job_id), timeout=20)
        self.log.info("Export job %s cancelled", self.job_id)


class BatchTrigger(_AepPollingTrigger):
    """Wait for a Catalog batch to end (``Batch.STATUS``: success/active, or failed, or reverted/deleted)."""

    def __init__(self, *, batch_id: str, abort_on_kill: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.batch_id = batch_id
        self.abort_on_kill = abort_on_kill

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            "batch_id": self.batch_id,
            "abort_on_kill": self.abort_on_kill,
            **self._common_kwargs(),
        }

    @property
    def _what(self) -> str:
        return f"batch {self.batch_id}"

    def _hook(self) -> Any:
        return hooks.catalog.CatalogHook(self.adobe_conn_id, sandbox=self.sandbox, **self.hook_params)

    async def _poll(self, hook: Any) -> tuple[bool, str, dict[str, Any]]:
        batch: Batch = await hook.aget_batch(self.batch_id)
        if batch.outcome is None:
            return False, batch.status, {}
        return (
            True,
            batch.status,
            {
                "status": "success" if batch.outcome == "success" else "failed",
                "batch_id": batch.id,
                "batch_status": batch.status,
                "records": batch.record_count,
                "failed_records": batch.failed_record_count,
                "message": batch.error_summary(),
            },
        )

    async def on_kill(self) -> None:
        """Abort a batch still loading when a user kills the task (only if asked to)."""
        if not self.abort_on_kill:
            return
        hook = hooks.ingestion.BatchIngestionHook(
            self.adobe_conn_id, sandbox=self.sandbox, **self.hook_params
        )
        async with hook.async_session():
            await asyncio.wait_for(hook.abatch_action(self.batch_id, "ABORT"), timeout=20)
        self.log.info("Batch %s aborted", self.batch_id)


class BatchQueryTrigger(_AepPollingTrigger):
    """Wait for a Query Service batch query to be SUCCESS, or FAILED / KILLED / TIMEOUT."""

    def __init__(self, *, query_id: str, cancel_on_kill: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        self.query_id = query_id
        self.cancel_on_kill = cancel_on_kill

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            "query_id": self.query_id,
            "cancel_on_kill": self.cancel_on_kill,
            **self._common_kwargs(),
        }

    @property
    def _what(self) -> str:
        return f"batch query {self.query_id}"

    def _hook(self) -> Any:
        return hooks.batch_query.BatchQueryHook(self.adobe_conn_id, sandbox=self.sandbox, **self.hook_params)

    async def _poll(self, hook: Any) -> tuple[bool, str, dict[str, Any]]:
        query = await hook.aget_query(self.query_id)
        state = query.state.upper()
        if not query.is_terminal:
            return False, state, {}
        return (
            True,
            state,
            {
                "status": "success" if query.is_success else "failed",
                "query_id": query.id,
                "query_state": state,
                "rows": query.row_count,
                "message": query.error_summary(),
            },
        )

    async def on_kill(self) -> None:
        """A user killed the waiting task: cancel the query (best effort), so it writes no batch."""
        if not self.cancel_on_kill:
            return
        hook = self._hook()
        async with hook.async_session():
            await asyncio.wait_for(hook.acancel_query(self.query_id), timeout=20)
        self.log.info("Batch query %s cancelled", self.query_id)
