"""Shared plumbing of this package's operators: connection/sandbox parameters, hooks, event checks."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from airflow.sdk import BaseOperator, Context, conf
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from airflow_cja_audiences import DEFAULT_CONN_ID
from airflow_cja_audiences.errors import (
    AepObjectFailedError,
    AepWaitError,
    AepWaitTimeoutError,
    is_permanent,
    permanent_reason,
)
from airflow_cja_audiences.waits import EVENT_STATUSES

if TYPE_CHECKING:
    from airflow_cja_audiences.hooks.platform import AdobePlatformHook

H = TypeVar("H", bound="AdobePlatformHook")

DEFAULT_DEFERRABLE: bool = conf.getboolean("operators", "default_deferrable", fallback=False)


@contextmanager
def failing_fast(task_id: str) -> Iterator[None]:
    """Turn an error that retrying cannot fix into ``AirflowFailException`` (no task retries), chaining
    the typed error; everything else (throttling, 5xx, network, timeouts) propagates and is retried."""
    try:
        yield
    except AirflowException:
        raise
    except Exception as exc:
        if not is_permanent(exc):
            raise
        raise AirflowFailException(f"{task_id}: {exc} -- not retried: {permanent_reason(exc)}") from exc


def _fails_fast(execute: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(execute)
    def wrapper(self: AdobeBaseOperator, *args: Any, **kwargs: Any) -> Any:
        with failing_fast(self.task_id):
            return execute(self, *args, **kwargs)

    wrapper.__fails_fast__ = True  # type: ignore[attr-defined]
    return wrapper


class AdobeBaseOperator(BaseOperator):
    """Base of every operator here: one Adobe connection and sandbox, hooks created lazily.

    Errors that retrying cannot fix (:func:`~airflow_cja_audiences.errors.is_permanent`: bad config,
    credentials, unknown resources, requests AEP rejects) fail the task at once, from ``execute`` and
    from the methods a deferred task resumes in; other errors are retried as configured.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        execute = cls.__dict__.get("execute")
        if execute is not None and not getattr(execute, "__fails_fast__", False):
            cls.execute = _fails_fast(execute)  # type: ignore[method-assign]

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        with failing_fast(self.task_id):
            return super().resume_execution(next_method, next_kwargs, context)

    template_fields: tuple[str, ...] = ("sandbox",)
    ui_color = "#fa0f00"  # Adobe red
    ui_fgcolor = "#ffffff"

    def __init__(
        self,
        *,
        adobe_conn_id: str = DEFAULT_CONN_ID,
        sandbox: str | None = None,
        hook_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        # Results are small dicts of ids and counts; each key is also pushed on its own so a
        # downstream task can take ``op.output["dataset_id"]`` (None if this task was skipped).
        kwargs.setdefault("multiple_outputs", True)
        super().__init__(**kwargs)
        self.adobe_conn_id = adobe_conn_id
        self.sandbox = sandbox
        self.hook_params = dict(hook_params or {})
        self._hooks: dict[type, Any] = {}

    def hook(self, cls: type[H]) -> H:
        """One hook per class per task run (they share the process-wide token)."""
        if cls not in self._hooks:
            self._hooks[cls] = cls(self.adobe_conn_id, sandbox=self.sandbox, **self.hook_params)
        return self._hooks[cls]  # type: ignore[return-value]

    def log_retries(self) -> dict[str, int]:
        """Log (and return) how many retries each API route needed in this task."""
        totals: dict[str, int] = {}
        for hook in self._hooks.values():
            for route, count in hook.retry_counts.items():
                totals[route] = totals.get(route, 0) + count
        if totals:
            self.log.info(
                "Retries per API route: %s", ", ".join(f"{k}={v}" for k, v in sorted(totals.items()))
            )
        return totals

    def trigger_kwargs(self, poll_interval: float, deadline: float | None) -> dict[str, Any]:
        return {
            "adobe_conn_id": self.adobe_conn_id,
            "sandbox": self.sandbox,
            "poll_interval": poll_interval,
            "deadline": deadline,
            "hook_params": self.hook_params,
        }


def truthy(value: Any) -> bool:
    """A flag that may arrive rendered from a template or an XCom ("False", "", None, ...)."""
    return value not in (False, None, "", "False", "false", "None", 0)


def validate_event(event: Any, *, what: str, accept: Iterable[str] = ("success",)) -> dict[str, Any]:
    """Reject a missing or malformed trigger event; return it when its status is accepted.

    Statuses a trigger may send: :data:`~airflow_cja_audiences.waits.EVENT_STATUSES`. Anything else
    is a bug or a corrupted event and fails the task rather than passing silently. One not accepted
    raises the typed error of the wait: a timeout (retried), an error (not retried when the trigger
    found it permanent, e.g. refused credentials), or the object's failure (retried: the caller
    accepts "failed" when it knows better).
    """
    if not isinstance(event, dict) or "status" not in event:
        raise AirflowException(f"{what}: the trigger returned no usable event ({event!r})")
    status = event["status"]
    if status not in EVENT_STATUSES:
        raise AirflowException(f"{what}: unknown trigger event status {status!r}")
    if status not in accept:
        message = f"{what}: {status}: {event.get('message') or 'no details'}"
        state = event.get("state")
        if status == "timeout":
            raise AepWaitTimeoutError(message, what=what, state=state)
        if status == "error":
            raise AepWaitError(
                message,
                what=what,
                state=state,
                permanent=event.get("permanent") is True,
                advice="waiting failed in a way a retry cannot fix: see the message",
            )
        raise AepObjectFailedError(message, what=what, state=state)
    return event
