"""Triggers against the hostile server: every failure is exactly one error event; nothing escapes run().

Before: a 200 carrying HTML (JSONDecodeError) or an unexpected shape (pydantic ValidationError)
escaped ``run()`` and crashed the trigger instead of failing the task with a message.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from airflow_cja_audiences.triggers.aep import BatchTrigger, ExportJobTrigger

from server import CLIENT_SECRET, TOKEN, HostileSite, Reply, Request, ims_ok
from test_hostile import SLACK, _reset_mid_body, platform


async def events(trigger) -> list[dict[str, Any]]:
    """Every event the trigger yields (run to its end), within a bound far above any case's deadline."""

    async def collect() -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    return await asyncio.wait_for(collect(), timeout=60)


def batch_trigger(attempts: int = 2) -> BatchTrigger:
    return BatchTrigger(
        batch_id="b1",
        poll_interval=0.05,
        deadline=time.time() + 30,
        hook_params={"max_attempts": attempts, "initial_retry_wait": 0.02, "max_retry_wait": 0.1},
    )


def job_trigger() -> ExportJobTrigger:
    return ExportJobTrigger(
        job_id=7,
        poll_interval=0.05,
        deadline=time.time() + 30,
        hook_params={"max_attempts": 2, "initial_retry_wait": 0.02, "max_retry_wait": 0.1},
    )


CASES = {
    "200 with HTML": (
        lambda site: platform(
            lambda r: Reply(200, "<html><body>Sign in</body></html>", {"Content-Type": "text/html"})
        ),
        "expected JSON",
    ),
    "200 with the wrong shape": (
        lambda site: platform(lambda r: Reply(200, {"b1": {"status": 7}, "7": {"id": {}}})),
        "does not have the documented shape",
    ),
    "200 with a JSON list": (lambda site: platform(lambda r: Reply(200, [1, 2, 3])), "b1"),
    "connection reset mid-answer": (lambda site: platform(_reset_mid_body), "connection failed"),
    "redirect": (
        lambda site: platform(lambda r: Reply(302, b"", {"Location": site.plain.url + "/x"})),
        "redirect to http://127.0.0.1",
    ),
    "IMS answers expires_in 0": (lambda site: lambda r: ims_ok(expires_in=0), "expires_in"),
    "IMS answers HTML": (
        lambda site: lambda r: Reply(200, "<html/>", {"Content-Type": "text/html"}),
        "expected JSON",
    ),
    "too large": (lambda site: platform(lambda r: Reply(200, b" " * 4096)), "max_response_bytes"),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("case", CASES)
async def test_batch_trigger_failure_is_one_error_event(site: HostileSite, connect, case):
    script, expected = CASES[case]
    connect(max_response_bytes=1024)
    site.adobe.script = script(site)
    got = await events(batch_trigger())
    assert len(got) == 1, got
    (event,) = got
    assert event["status"] == "error" and event["message"].startswith("batch b1: ")
    assert expected in event["message"], event["message"]
    assert TOKEN not in event["message"] and CLIENT_SECRET not in event["message"]
    assert site.plain.calls() == 0


@pytest.mark.asyncio
async def test_export_job_trigger_wrong_shape_is_one_error_event(site: HostileSite, connect):
    site.adobe.script = platform(lambda r: Reply(200, {"id": "seven", "status": None}))
    (event,) = await events(job_trigger())
    assert event["status"] == "error" and "export job 7" in event["message"]
    assert "documented shape" in event["message"] and "status" in event["message"]


@pytest.mark.asyncio
async def test_trigger_poll_that_drips_ends_at_the_call_deadline(site: HostileSite, connect):
    connect(timeout=30, call_deadline=1.5)
    site.adobe.script = platform(lambda r: site.adobe.drip(r, interval=0.3))
    started = time.monotonic()
    (event,) = await events(batch_trigger())
    assert event["status"] == "error" and "call deadline of 1.5 s" in event["message"]
    assert time.monotonic() - started < 1.5 + 2 + SLACK  # first-poll spread (<= 2 s) + deadline + slack


@pytest.mark.asyncio
async def test_trigger_still_succeeds_after_a_hostile_answer_is_retried(site: HostileSite, connect):
    """A transient failure inside the budget is retried, not turned into an event."""
    answers = iter([Reply(503, {"error_code": "503", "message": "busy"})])

    def answer(request: Request) -> Reply:
        return next(answers, Reply(200, {"b1": {"status": "success", "created": 1}}))

    site.adobe.script = platform(answer)
    (event,) = await events(batch_trigger(attempts=3))  # token, the 503, the retry
    assert event["status"] == "success" and event["batch_id"] == "b1"


@pytest.mark.asyncio
async def test_unexpected_exception_is_one_error_event_and_cancellation_is_not(
    site: HostileSite, connect, monkeypatch
):
    from airflow_cja_audiences.hooks.catalog import CatalogHook

    async def broken(self, batch_id):
        raise KeyError("relatedObjects")

    monkeypatch.setattr(CatalogHook, "aget_batch", broken)
    (event,) = await events(batch_trigger())
    assert event["status"] == "error" and "unexpected KeyError: 'relatedObjects'" in event["message"]

    async def hangs(self, batch_id):
        await asyncio.Event().wait()

    monkeypatch.setattr(CatalogHook, "aget_batch", hangs)
    task = asyncio.ensure_future(events(batch_trigger()))
    await asyncio.sleep(0)  # let it start (first-poll spread, then the hanging poll)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task  # the triggerer cancelling a trigger gets no event, it gets its cancellation back
