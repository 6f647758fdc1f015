"""500 concurrent export-job waits in one event loop, as one triggerer process carries them.

Starts the emulator (subprocess), creates N export jobs that take a while to finish, then runs N
``ExportJobTrigger``s concurrently in one asyncio loop against it, in a process that has imported what a
triggerer imports. Prints, from one run: whether all finished with success, the longest event-loop
stall (a monitor task that should wake every 10 ms) with and without the garbage collector's part,
what one full collection of the triggerer's heap costs before any trigger runs, HTTP calls per
trigger, token requests, and CPU time per poll. Targets (docs/ARCHITECTURE.md, "Performance targets"): the loop is never
blocked more than 100 ms, and polls are bounded by the poll interval; exit 1 when one is missed.

    python -m benchmarks.triggers [--triggers 500] [--poll-interval 2] [--job-seconds 12]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import sys
import time

STALL_TARGET_MS = 100.0


class _GcClock:
    """Time CPython's garbage collector runs, as wall time and as this thread's CPU time."""

    def __init__(self) -> None:
        self.wall = self.cpu = self.longest_wall = self.longest_cpu = 0.0
        self._wall = self._cpu = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._wall, self._cpu = time.perf_counter(), time.thread_time()
        else:
            wall, cpu = time.perf_counter() - self._wall, time.thread_time() - self._cpu
            self.wall += wall
            self.cpu += cpu
            self.longest_wall, self.longest_cpu = max(self.longest_wall, wall), max(self.longest_cpu, cpu)


GC = _GcClock()


async def _monitor(stop: asyncio.Event, tick: float = 0.01) -> dict[str, float]:
    """How long the loop was blocked: the worst lateness of a 10 ms sleep (wall time, which on a
    shared machine also counts time the OS gave the CPU to other processes), the worst CPU time this
    thread spent inside one such stall (the loop blocked by computation), and that without the
    garbage collector's CPU time."""
    worst = {"wall": 0.0, "cpu": 0.0, "cpu_without_gc": 0.0}  # each the worst of its own tick
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        before, cpu_before, gc_before = loop.time(), time.thread_time(), GC.cpu
        await asyncio.sleep(tick)
        busy = time.thread_time() - cpu_before
        worst["wall"] = max(worst["wall"], loop.time() - before - tick)
        worst["cpu"] = max(worst["cpu"], busy)
        worst["cpu_without_gc"] = max(worst["cpu_without_gc"], busy - (GC.cpu - gc_before))
    return worst


async def _run_all(
    job_ids: list[int], poll_interval: float, deadline: float
) -> tuple[list[dict], dict[str, float], float]:
    from airflow_cja_audiences.triggers.aep import ExportJobTrigger  # imported before the loop ran (main)

    stop = asyncio.Event()
    monitor = asyncio.create_task(_monitor(stop))
    started = time.monotonic()

    async def one(job_id: int) -> dict:
        trigger = ExportJobTrigger(job_id=job_id, poll_interval=poll_interval, deadline=deadline)
        async for event in trigger.run():
            return event.payload
        return {"status": "no event"}

    events = await asyncio.gather(*(one(j) for j in job_ids))
    elapsed = time.monotonic() - started
    stop.set()
    return events, await monitor, elapsed


def _full_collection_cost() -> tuple[int, float]:
    """Objects the collector tracks now, and the CPU time of one full collection of them."""
    gc.collect()  # start from a heap without garbage, as a collection in a running triggerer mostly finds
    objects = len(gc.get_objects())
    started = time.thread_time()
    gc.collect()
    return objects, time.thread_time() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triggers", type=int, default=500)
    parser.add_argument("--poll-interval", type=float, default=2.0)
    parser.add_argument("--job-seconds", type=float, default=12.0, help="how long each export job runs")
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() before the loop starts, as a triggerer can do at start-up (e.g. from "
        "airflow_local_settings.py): full collections then skip the start-up heap",
    )
    args = parser.parse_args(argv)

    from aep_emulator.connection import airflow_connection
    from airflow_cja_audiences import DEFAULT_CONN_ID
    from tests.emulator_fixture import start_subprocess  # run from the repository root (python -m)

    with start_subprocess(profiles=200, args=["--export-job-seconds", str(args.job_seconds)]) as emu:
        os.environ[f"AIRFLOW_CONN_{DEFAULT_CONN_ID.upper()}"] = json.dumps(
            airflow_connection(emu.ready, emu.credentials.client_secret)
        )
        from airflow_cja_audiences.hooks.catalog import CatalogHook
        from airflow_cja_audiences.hooks.platform import clear_token_cache
        from airflow_cja_audiences.hooks.segmentation import SegmentationHook
        from airflow_cja_audiences.models import PROFILE_UNION_ALT_ID, ExportJobRequest

        audience = emu.admin.state()["audiences"][0]["id"]
        dataset, _ = CatalogHook().ensure_dataset("trigger benchmark", schema_id=PROFILE_UNION_ALT_ID)
        hook = SegmentationHook()
        request = ExportJobRequest(dataset_id=dataset.id, segment_ids=(audience,))
        print(f"creating {args.triggers} export jobs ({args.job_seconds:g} s each) ...", flush=True)
        job_ids = [hook.create_export_job(request, created_after_ms=0).id for _ in range(args.triggers)]
        # What a triggerer process has loaded before it runs a trigger: its own job runner, and the
        # trigger classes (imported before they run; their import time is not event-loop time).
        import airflow.jobs.triggerer_job_runner  # noqa: F401

        from airflow_cja_audiences.triggers.aep import ExportJobTrigger  # noqa: F401

        clear_token_cache()  # the triggers start cold, as in a fresh triggerer
        heap_objects, heap_collection = _full_collection_cost()
        before = emu.admin.stats()
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        if args.gc_freeze:
            gc.freeze()
        gc.callbacks.append(GC)
        events, stall, elapsed = asyncio.run(_run_all(job_ids, args.poll_interval, time.time() + 600))
        gc.callbacks.remove(GC)
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        after = emu.admin.stats()

    def requests(stats: dict, route: str) -> int:
        return int(stats["routes"].get(route, {}).get("requests", 0))

    polls = requests(after, "segmentation.get_export_job") - requests(before, "segmentation.get_export_job")
    tokens = after["tokensIssued"] - before["tokensIssued"]
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    ok = sum(1 for e in events if e.get("status") == "success")
    # One poll per interval while a job runs, plus the first and the last: the bound uses how long each
    # trigger really waited (the emulator may finish jobs later than asked when it is busy).
    waited = sum(float(e.get("elapsed_seconds") or 0) for e in events) / len(events)
    max_polls = waited / args.poll_interval + 2
    per_trigger = polls / len(job_ids)
    print(
        f"triggers: {len(job_ids)}, succeeded: {ok}, wall time {elapsed:.1f} s (jobs take {args.job_seconds:g} s)"
    )
    ms = {k: v * 1000 for k, v in stall.items()}
    print(
        f"longest event-loop stall: {ms['cpu']:.1f} ms of computation (target <= {STALL_TARGET_MS:.0f} ms); "
        f"{ms['wall']:.1f} ms wall time including time the OS ran other processes (load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)"
    )
    print(
        f"  without the garbage collector's time: {ms['cpu_without_gc']:.1f} ms (the triggers, aiohttp, asyncio)"
    )
    print(
        f"  garbage collector: longest pause {GC.longest_cpu * 1000:.1f} ms CPU ({GC.longest_wall * 1000:.1f} ms "
        f"wall), total {GC.cpu:.2f} s CPU"
    )
    print(
        f"  one full collection of the triggerer's heap before any trigger ran: {heap_collection * 1000:.1f} ms CPU "
        f"for {heap_objects:,} objects{' (frozen after this measurement)' if args.gc_freeze else ''}"
    )
    print(
        f"HTTP polls: {polls} = {per_trigger:.2f} per trigger (poll interval {args.poll_interval:g} s, average "
        f"wait {waited:.1f} s, bound {max_polls:.1f}); IMS token requests: {tokens}"
    )
    print(f"CPU time: {cpu:.2f} s = {cpu / max(polls, 1) * 1000:.2f} ms per poll")
    good = ok == len(job_ids) and ms["cpu"] <= STALL_TARGET_MS and per_trigger <= max_polls and tokens <= 1
    print("OK" if good else "MISSED")
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
