"""Access tokens that expire several times during one run: no failure, and no burst of token requests.

The emulator issues tokens living ``LIFETIME`` seconds, a fraction of a run. The hooks cache one
token per credential and process and refresh it shortly before it expires (10% of its lifetime),
so the run needs about one token per lifetime - never one per call, per task or per poll.
"""

from __future__ import annotations

import re

import pytest

from aep_truth import JobView
from harness import logical_date
from reliability_checks import assert_converged

pytestmark = pytest.mark.slow

LIFETIME = 2.0  # seconds (IMS reports whole seconds); a run calls AEP for 5-10 s of its 10-25 s
DEFAULT_LIFETIME = 86399.0


def test_tokens_expiring_mid_run_are_refreshed_once_each(make_pipeline, emu, figures):
    pipeline = make_pipeline("tokens")
    issued_before = emu.admin.stats()["tokensIssued"]
    emu.admin.knobs(token_lifetime=LIFETIME)
    try:
        outcome = pipeline.run(logical_date())
    finally:
        emu.admin.knobs(token_lifetime=DEFAULT_LIFETIME)
    assert outcome.state == "success", outcome.log[-5000:]
    assert_converged(
        JobView(emu, pipeline.job.job_id, [a.id for a in pipeline.job.audiences], emu.credentials.tenant),
        pipeline.job,
    )
    stats = emu.admin.stats()
    times = stats["tokenTimes"][-(stats["tokensIssued"] - issued_before) :]
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    rejected = len(re.findall(r"401 from Adobe; refreshing the access token", outcome.log))
    # One token per lifetime (refreshed at 90% of it), plus the first: never a burst.
    assert len(times) <= outcome.seconds / (0.9 * LIFETIME) + 2, times
    assert len(times) >= 2, "the run should have outlived its first token"
    assert min(gaps) >= 0.8 * LIFETIME, f"two tokens {min(gaps):.2f} s apart: a burst"
    figures.record(
        "tokens",
        f"token lifetime {LIFETIME:g} s, run {outcome.seconds:.0f} s",
        f"success; {len(times)} tokens, min {min(gaps):.1f} s apart; {rejected} calls answered 401",
        seconds=outcome.seconds,
        retries=dict(outcome.retries),
        tokens=len(times),
        min_gap_seconds=round(min(gaps), 2),
        rejected_401=rejected,
    )
