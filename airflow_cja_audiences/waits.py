"""The synchronous wait for an AEP object (export job, batch) to end: one loop, a required deadline.

Pure module (no Airflow import). The deferrable twin is :mod:`airflow_cja_audiences.triggers.aep`;
both read statuses through the object's :class:`~airflow_cja_audiences.models.StatusType`, so a
status means the same whether a worker or the triggerer waits. The hooks wrap it per object
(``SegmentationHook.wait_for_export_job``, ``CatalogHook.wait_for_batch``,
``BatchQueryHook.wait_for_query``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from airflow_cja_audiences.errors import AepConfigError, AepWaitTimeoutError

if TYPE_CHECKING:  # operators.base imports this module while a DAG file is parsed: keep it light
    from airflow_cja_audiences.models import StatusType

log = logging.getLogger(__name__)

#: Log a "still waiting" line at most this often, plus on every change of status.
PROGRESS_LOG_SECONDS = 60.0


#: The ``status`` of the one event a trigger of this package ends with (the task method it resumes in
#: checks it with ``operators.base.validate_event``): the object succeeded, it failed (or is gone),
#: the deadline passed, or the wait itself failed (``permanent`` in the event: a retry cannot help).
EventStatus = Literal["success", "failed", "timeout", "error"]
EVENT_STATUSES: tuple[EventStatus, ...] = ("success", "failed", "timeout", "error")


class HasStatus(Protocol):
    @property
    def status(self) -> str: ...


T = TypeVar("T", bound=HasStatus)


def check_wait_args(*, deadline: float, poll_interval: float) -> None:
    """Reject a deadline or poll interval that would make a wait endless or busy (names the field)."""
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not math.isfinite(deadline):
        raise AepConfigError(f"deadline must be a finite epoch time in seconds, not {deadline!r}")
    if (
        isinstance(poll_interval, bool)
        or not isinstance(poll_interval, (int, float))
        or not math.isfinite(poll_interval)
        or poll_interval <= 0
    ):
        raise AepConfigError(f"poll_interval must be a finite number of seconds > 0, not {poll_interval!r}")


def wait_until_terminal(
    fetch: Callable[[], T],
    *,
    status_type: StatusType[Any],
    what: str,
    deadline: float,
    poll_interval: float,
    first: T | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Poll ``fetch`` until the object it returns is terminal for ``status_type``; return that object.

    :param deadline: epoch seconds (wall clock, as the triggers use); required: when it passes with
        the object still running, :class:`~airflow_cja_audiences.errors.AepWaitTimeoutError` is
        raised (a task retry waits again). The last poll happens at the deadline, never after it.
    :param first: the object as already read (saves the first request when given).

    Whether the end is a success is the caller's decision (``status_type.outcome``): the caller
    knows what a failure means for it (a retry that reads the same object again, or makes a new one).
    """
    check_wait_args(deadline=deadline, poll_interval=poll_interval)
    started = clock()
    obj = first if first is not None else fetch()
    last_status, last_log = None, 0.0
    while status_type.outcome(obj.status) is None:
        now = clock()
        if obj.status != last_status or now - last_log >= PROGRESS_LOG_SECONDS:
            log.info("%s is %s (%.0f s waited)", what, obj.status, now - started)
            last_status, last_log = obj.status, now
        if now >= deadline:
            raise AepWaitTimeoutError(
                f"{what} is still {obj.status} after {now - started:.0f} s: the wait's "
                f"deadline passed (a retry of this task waits again)",
                what=what,
                state=obj.status,
            )
        sleep(max(0.0, min(poll_interval, deadline - now)))
        obj = fetch()
    log.info("%s is %s after %.0f s", what, obj.status, clock() - started)
    return obj
