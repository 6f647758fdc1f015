"""The hostile-server cases of issue 12, measured: what each does to a hook, in requests, bytes and seconds.

Runs the hooks (sync and async) against ``tests/hostile/server.py`` and prints one table row per
case: what happened, the requests the server counted, the wall time, and whether the bound holds.
With ``--base DIR`` it imports ``airflow_cja_audiences`` from ``DIR`` instead, to measure an older
version the same way (bounds are then reported, not enforced)::

    python -m benchmarks.hostile
    git archive 2fa0064 airflow_cja_audiences | tar -x -C /tmp/base && python -m benchmarks.hostile --base /tmp/base
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

FAST = {"initial_retry_wait": 0.01, "max_retry_wait": 0.05}
MiB = 1024 * 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="a folder holding an older airflow_cja_audiences package to measure")
    args = parser.parse_args()
    if args.base:  # before anything imports the package: the editable install's finder would win
        sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
        sys.path.insert(0, str(Path(args.base).resolve()))
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="cja-hostile-bench-"))
    import airflow_cja_audiences
    from airflow_cja_audiences import DEFAULT_CONN_ID
    from airflow_cja_audiences.hooks.catalog import CatalogHook
    from airflow_cja_audiences.hooks.platform import clear_token_cache
    from airflow_cja_audiences.triggers.aep import BatchTrigger
    from tests.hostile import server as hostile  # after --base's set-up (run from the repository root)

    site = hostile.start_site()
    ims, reply = hostile.ims_ok, hostile.Reply
    rows: list[tuple[str, str, str, float, bool | None]] = []

    def connect(**extra: Any) -> None:
        os.environ[f"AIRFLOW_CONN_{DEFAULT_CONN_ID.upper()}"] = json.dumps(site.connection(**extra))
        clear_token_cache()
        site.reset()

    def platform(answer: Callable[[Any], Any]) -> Callable[[Any], Any]:
        return lambda r: ims() if r.path == hostile.IMS_PATH else answer(r)

    def run(call: Callable[[], Any]) -> tuple[str, float]:
        started = time.monotonic()
        try:
            outcome = f"returned {str(call())[:40]}"
        except BaseException as exc:  # noqa: BLE001 - the outcome is what we report
            outcome = f"{type(exc).__name__}"
        return outcome, time.monotonic() - started

    def row(case: str, outcome: str, counted: str, seconds: float, ok: bool) -> None:
        rows.append((case, outcome, counted, seconds, ok))
        print(
            f"| {case} | {outcome} | {counted} | {seconds:.2f} | {'ok' if ok else 'EXCEEDED'} |", flush=True
        )

    def batch_call(path: str, **kwargs: Any) -> Callable[[], Any]:
        hook = CatalogHook(**{**FAST, **kwargs})
        if path == "sync":
            return lambda: hook.get_batch("b1")

        async def read() -> Any:
            async with hook.async_session():
                return await hook.aget_batch("b1")

        return lambda: asyncio.run(read())

    print(f"package: {Path(airflow_cja_audiences.__file__).parent}")
    print("| case | behaviour | counted | seconds | bound |\n|---|---|---|---|---|")
    for path in ("sync", "async"):
        connect()
        site.adobe.script = lambda r: reply(500, {"error": "server_error"})
        outcome, seconds = run(batch_call(path, max_attempts=3))
        n = site.adobe.calls(hostile.IMS_PATH)
        row(f"IMS answers 500, max_attempts=3 ({path})", outcome, f"{n} IMS requests", seconds, n <= 3)

    connect(timeout=0.5)
    site.adobe.script = lambda r: site.adobe.hang(r, limit_seconds=5)
    outcome, seconds = run(batch_call("sync", max_attempts=3))
    n = site.adobe.calls(hostile.IMS_PATH)
    row("IMS never answers, timeout 0.5 s, max_attempts=3", outcome, f"{n} IMS requests", seconds, n <= 3)

    for status in (429, 500):
        connect()
        site.adobe.script = platform(
            lambda r, s=status: (
                reply(s, {"error_code": str(s), "message": "no"}) if r.method == "POST" else reply(200, {})
            )
        )
        hook = CatalogHook(max_attempts=3, **FAST)
        hook.get_access_token()
        outcome, seconds = run(
            lambda hook=hook: hook.create_dataset("d", schema_id="_xdm.context.profile__union")
        )
        posts = site.adobe.calls("/data/foundation/catalog/dataSets", "POST")
        api = site.adobe.calls() - site.adobe.calls(hostile.IMS_PATH)
        row(
            f"create answered {status}, max_attempts=3",
            outcome,
            f"{posts} POSTs, {api} API requests",
            seconds,
            api <= 3,
        )

    for path in ("sync", "async"):
        connect()
        site.adobe.script = lambda r: reply(307, b"", {"Location": site.other.url + hostile.IMS_PATH})
        site.other.script = lambda r: ims()
        outcome, seconds = run(batch_call(path, max_attempts=1))
        leaked = sum(hostile.CLIENT_SECRET.encode() in r.body for r in site.other.requests)
        row(
            f"IMS 307 to another host ({path})",
            outcome,
            f"{leaked} client secrets sent there",
            seconds,
            leaked == 0,
        )
        connect()
        site.adobe.script = platform(lambda r: reply(302, b"", {"Location": site.plain.url + "/portal"}))
        site.plain.script = lambda r: reply(200, {"b1": {"status": "success"}})
        outcome, seconds = run(batch_call(path, max_attempts=1))
        n = site.plain.calls()
        row(
            f"API 302 to an http:// host ({path})",
            outcome,
            f"{n} requests with API key there",
            seconds,
            n == 0,
        )

    for path in ("sync", "async"):
        connect(timeout=3, call_deadline=3)
        site.adobe.script = platform(lambda r: site.adobe.drip(r, content_length=12))
        outcome, seconds = run(batch_call(path, max_attempts=3))
        row(
            f"body drips 1 byte/s for 12 s, timeout 3 s, call_deadline 3 s ({path})",
            outcome,
            f"{site.adobe.calls() - 1} API requests",
            seconds,
            seconds < 3 + 5,
        )

    for path, declared in (("sync", True), ("async", True), ("sync", False), ("async", False)):
        connect()
        site.adobe.script = platform(
            lambda r, d=declared: site.adobe.stream(
                r, (b" " * MiB for _ in range(200)), content_length=200 * MiB if d else None
            )
        )
        tracemalloc.start()
        outcome, seconds = run(batch_call(path, max_attempts=1))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        how = "Content-Length" if declared else "chunked"
        row(
            f"200 MiB answer ({how}), default 64 MiB cap ({path})",
            outcome,
            f"{peak / MiB:.0f} MiB peak Python allocations",
            seconds,
            peak < 150 * MiB,
        )

    finished = threading.Event()

    def stop_after(seconds: float) -> None:
        def stop() -> None:
            if not finished.wait(seconds):
                site.adobe.script = platform(lambda r: reply(200, {}))

        threading.Thread(target=stop, daemon=True).start()

    connect()
    site.adobe.script = platform(lambda r: reply(200, {f"ds{i}": {"name": "x"} for i in range(100)}))
    finished.clear()
    stop_after(5)
    outcome, seconds = run(lambda: len(CatalogHook(max_attempts=1).find_datasets_by_name("x")))
    finished.set()
    n = site.adobe.calls() - 1
    row("list answers the same full page forever (cut after 5 s)", outcome, f"{n} pages", seconds, n <= 2)

    connect(max_pages=50)
    pages = iter(range(10**9))
    site.adobe.script = platform(
        lambda r: reply(200, {f"p{next(pages)}-{i}": {"name": "x"} for i in range(100)})
    )
    finished.clear()
    stop_after(5)
    outcome, seconds = run(lambda: len(CatalogHook(max_attempts=1).find_datasets_by_name("x")))
    finished.set()
    n = site.adobe.calls() - 1
    row(
        "list answers a new full page forever, max_pages=50 (cut after 5 s)",
        outcome,
        f"{n} pages",
        seconds,
        n <= 50,
    )

    connect()
    site.adobe.script = platform(
        lambda r: reply(429, {"error_code": "429", "message": "slow"}, {"Retry-After": "nan"})
    )
    outcome, seconds = run(batch_call("sync", max_attempts=5, initial_retry_wait=0.5, max_retry_wait=60))
    row(
        "429 with Retry-After: nan, max_attempts=5, first wait 0.5 s",
        outcome,
        f"{site.adobe.calls() - 1} API requests",
        seconds,
        seconds >= 4 * 0.5,
    )

    connect()
    site.adobe.script = lambda r: (
        ims(expires_in=0) if r.path == hostile.IMS_PATH else reply(200, {"b1": {"status": "success"}})
    )
    hook = CatalogHook(max_attempts=1)
    outcome, seconds = run(lambda: [hook.get_batch("b1") for _ in range(5)])
    n = site.adobe.calls(hostile.IMS_PATH)
    row("IMS expires_in 0, then 5 calls", outcome, f"{n} IMS requests", seconds, n <= 1)

    connect()
    site.adobe.script = lambda r: (
        ims(token=None) if r.path == hostile.IMS_PATH else reply(200, {"b1": {"status": "success"}})
    )
    outcome, seconds = run(lambda: CatalogHook(max_attempts=1).get_batch("b1"))
    n = sum(r.headers.get("Authorization") == "Bearer None" for r in site.adobe.requests)
    row("IMS access_token null", outcome, f"{n} requests sent with 'Bearer None'", seconds, n == 0)

    for case, answer in (
        ("200 with HTML", reply(200, "<html>portal</html>", {"Content-Type": "text/html"})),
        ("200 with a wrong shape", reply(200, {"b1": {"status": 7}})),
    ):
        connect()
        site.adobe.script = platform(lambda r, a=answer: a)

        async def events() -> list[Any]:
            trigger = BatchTrigger(
                batch_id="b1", poll_interval=0.1, deadline=time.time() + 10, hook_params={"max_attempts": 1}
            )
            return [e.payload.get("status") async for e in trigger.run()]

        outcome, seconds = run(lambda: asyncio.run(events()))
        row(f"trigger: {case}", outcome, "", seconds, outcome == "returned ['error']")

    site.close()
    failed = [r for r in rows if not r[4]]
    if failed and not args.base:
        print(f"bounds exceeded: {len(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
