"""Fault matrix: Adobe's bad days on every route a refresh uses; the run still publishes exactly what a
fault-free run publishes, with a bounded number of retries, and the retries are counted per route.

A fault-free run first lists the routes a refresh calls (from the emulator's request counters). Each
case then puts one fault kind on every one of those REST routes at 20% (seeded, so a case repeats
the same faults) and runs the DAG. It must succeed; its snapshot and events must equal the ground
truth observed when its export ran (the fault-free run is checked the same way, so both publish the
same thing for the same memberships; when no membership changed in between, the two snapshots are
compared directly); nothing may exist twice; and every injected fault must have cost exactly one
retry of that route (the hooks' own count, from the task log), with no call needing more attempts
than the policy allows. Query Service statements (PostgreSQL protocol) are a case of their own:
a failed or dropped statement is run again on a new connection, one retry each as well.

``CJA_RELIABILITY_FULL=1`` (the figures script) runs every kind on its own and the Query Service
case; the default runs the mixed case (all kinds at once) and lost answers (whose check differs).
The Query Service retry is also covered by tests/unit/hooks/test_query_service.py.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest

from aep_truth import JobView
from harness import FULL, RunOutcome, logical_date
from reliability_checks import assert_converged, duplicates, export_jobs_of


@pytest.fixture(autouse=True)
def _no_throttling(emu):
    """The matrix counts one retry per injected fault: realistic mode's rate limits (which add 429s
    of their own) are turned off here; its durations and statuses stay. ``adobe_conn`` restores them."""
    emu.admin.knobs(platform_rate_limit=0, cja_rate_limit=False, batch_create_rate_limit=0)


pytestmark = pytest.mark.slow

RATE = 0.2
SEED = 20261129
CLIENT_TIMEOUT = 1.5  # seconds (connection extra 'timeout'); the latency fault waits longer
QUERY_ROUTE = "query_service.query"
# Routes every refresh must call (a guard against the matrix silently covering less).
CORE_ROUTES = {
    "ims.token",
    "segmentation.get_audience",
    "segmentation.create_export_job",
    "segmentation.get_export_job",
    "catalog.create_dataset",
    "catalog.get_batch",
    "catalog.list_batches",
    "schema_registry.create_schemas",
    "ingestion.create_batch",
    "ingestion.put_file",
    "ingestion.complete_batch",
    QUERY_ROUTE,
}

KINDS: dict[str, dict[str, Any]] = {
    "429 with Retry-After: 1": {"kind": "429", "retry_after": 1},
    "429 without Retry-After": {"kind": "429"},
    "500": {"kind": "500"},
    "502": {"kind": "502"},
    "503": {"kind": "503"},
    "connection reset": {"kind": "reset"},
    "truncated answer": {"kind": "truncate"},
    f"timeout (answer after {CLIENT_TIMEOUT + 1:g} s)": {"kind": "latency", "seconds": CLIENT_TIMEOUT + 1},
}
# Triggers poll these with aiohttp, which re-sends an idempotent request once, at once, when a reused
# keep-alive connection drops (RFC 9112 section 9.3.1): a reset there may cost no retry of ours.
POLLED_BY_TRIGGERS = {"segmentation.get_export_job", "catalog.get_batch"}
MIXED = "all of the above, mixed"
LOST = "lost answer (processed, then dropped)"
QUERY_CASE = "Query Service: statement fails (57P03) / connection dropped"


@dataclass(frozen=True)
class Baseline:
    """The fault-free run: routes it called, and its snapshot with the instant its export reflects."""

    routes: dict[str, int]
    snapshot: dict[str, set[tuple]]
    observed_at: str


_BASELINE: list[Baseline] = []


def baseline(make_pipeline, emu, figures) -> Baseline:
    """Run the fault-free refresh once per session (under job id ``base``; later tests reuse it)."""
    if not _BASELINE:
        pipeline = make_pipeline("base")
        emu.admin.clear_faults()
        before = Counter({r: v["requests"] for r, v in emu.admin.stats()["routes"].items()})
        outcome = pipeline.run(logical_date())
        assert outcome.state == "success", outcome.log[-5000:]
        after = Counter({r: v["requests"] for r, v in emu.admin.stats()["routes"].items()})
        routes = dict(after - before)
        assert CORE_ROUTES <= set(routes), f"a refresh no longer calls {CORE_ROUTES - set(routes)}"
        view = view_of(pipeline, emu)
        profile = view.dataset_id(pipeline.job.names.profile_dataset)
        (live,) = view.live_batches(profile, "snapshot")
        snapshot = view.snapshot_records(profile)
        assert snapshot == view.truth_snapshot(live.observed_at)
        _BASELINE.append(Baseline(routes, snapshot, live.observed_at))
        figures.record(
            "faults",
            "no faults (baseline)",
            "success; snapshot = ground truth",
            seconds=outcome.seconds,
            retries={},
            faults=0,
            requests=sum(routes.values()),
            max_attempts=outcome.max_attempt,
        )
    return _BASELINE[0]


def view_of(pipeline, emu) -> JobView:
    return JobView(emu, pipeline.job.job_id, [a.id for a in pipeline.job.audiences], emu.credentials.tenant)


def injected(emu) -> dict[str, int]:
    """Faults injected so far, per route."""
    return {r: sum(v["faults"].values()) for r, v in emu.admin.stats()["routes"].items() if v["faults"]}


def run_with_faults(
    case: str, rules: list[dict], make_pipeline, emu, connection, figures
) -> tuple[RunOutcome, dict[str, int]]:
    """Run the refresh under ``rules``; check the end state; return the outcome and faults per route."""
    base = baseline(make_pipeline, emu, figures)
    connection(timeout=CLIENT_TIMEOUT)
    pipeline = make_pipeline("rel")
    emu.admin.set_faults(rules, seed=SEED)
    faults_before = injected(emu)
    outcome = pipeline.run(logical_date())
    faults = dict(Counter(injected(emu)) - Counter(faults_before))
    emu.admin.clear_faults()
    assert outcome.state == "success", (
        f"{case}: the run failed ({outcome.failed_tasks()}):\n{outcome.log[-6000:]}"
    )
    view = view_of(pipeline, emu)
    snapshot = assert_converged(view, pipeline.job)
    observed_at = view.live_batches(view.dataset_id(pipeline.job.names.profile_dataset), "snapshot")[
        0
    ].observed_at
    same_as_base = view.truth_snapshot(base.observed_at) == view.truth_snapshot(observed_at)
    if same_as_base:  # the memberships did not move between the two exports: the same snapshot
        assert snapshot == base.snapshot
    assert not any(duplicates(emu).values()), duplicates(emu)
    assert len(export_jobs_of(emu, pipeline.job)) == 1
    assert outcome.max_attempt <= pipeline.job.api_retries.max_attempts
    figures.record(
        "faults",
        case,
        "success; snapshot = "
        + ("fault-free run = " if same_as_base else "")
        + "ground truth; no duplicates",
        seconds=outcome.seconds,
        retries=dict(outcome.retries),
        faults=sum(faults.values()),
        faults_per_route=faults,
        max_attempts=outcome.max_attempt,
        task_retries=pipeline.task_retries(outcome.run_id),
    )
    return outcome, faults


def rest_rules(emu, make_pipeline, figures, spec: dict) -> list[dict]:
    routes = sorted(r for r in baseline(make_pipeline, emu, figures).routes if r != QUERY_ROUTE)
    return [{"route": route, "probability": RATE, **spec} for route in routes]


CASES = [*KINDS] if FULL else []


@pytest.mark.parametrize("case", [MIXED, *CASES])
def test_status_and_connection_faults_cost_one_retry_each(case, make_pipeline, emu, connection, figures):
    if case == MIXED:  # every kind, each at RATE / len(KINDS): RATE in all, per route
        rules = [rule for spec in KINDS.values() for rule in rest_rules(emu, make_pipeline, figures, spec)]
        for rule in rules:
            rule["probability"] = RATE / len(KINDS)
    else:
        rules = rest_rules(emu, make_pipeline, figures, KINDS[case])
    outcome, faults = run_with_faults(case, rules, make_pipeline, emu, connection, figures)
    assert sum(faults.values()) > 0
    resets = any(rule["kind"] == "reset" for rule in rules)
    for route in set(outcome.retries) | set(faults):
        retries, injected_here = outcome.retries[route], faults.get(route, 0)
        if resets and route in POLLED_BY_TRIGGERS:
            assert retries <= injected_here, f"{route}: {retries} retries for {injected_here} faults"
        else:
            assert retries == injected_here, (
                f"{route}: {retries} retries for {injected_here} faults (want one each)"
            )


def test_lost_answers_are_found_not_created_twice(make_pipeline, emu, connection, figures):
    """The request was processed but its answer lost: reads are retried, creates are found instead
    of being sent again, so nothing exists twice."""
    rules = rest_rules(emu, make_pipeline, figures, {"kind": "lost_response"})
    outcome, faults = run_with_faults(LOST, rules, make_pipeline, emu, connection, figures)
    assert sum(faults.values()) > 0
    assert all(outcome.retries[route] <= n for route, n in faults.items())


@pytest.mark.skipif(not FULL, reason="figures script only (CJA_RELIABILITY_FULL=1)")
def test_query_service_faults_cost_one_retry_each(make_pipeline, emu, connection, figures):
    """Failed or dropped Query Service statements (counts, partition queries, mid-stream fetches) are
    run again on a new connection: one retry each, no task retry."""
    rules = [{"route": QUERY_ROUTE, "kind": kind, "probability": RATE / 2} for kind in ("503", "reset")]
    outcome, faults = run_with_faults(QUERY_CASE, rules, make_pipeline, emu, connection, figures)
    assert faults.get(QUERY_ROUTE, 0) > 0
    assert dict(outcome.retries) == faults
