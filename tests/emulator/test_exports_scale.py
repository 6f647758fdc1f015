"""An export of 10^5 profiles stays fast (the size of ``make demo``); larger sizes are measured by hand."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from aep_emulator import exports, lifecycle, synthetic, xdm
from aep_emulator.state import EmulatorState

from emulator_testkit import TENANT, settings


def test_export_of_100k_profiles_takes_well_under_a_few_seconds():
    state = EmulatorState(
        settings(profiles=100_000, export_job_seconds=0.0), Path(tempfile.mkdtemp(prefix="emu-scale-"))
    )
    try:
        sandbox = state.sandbox("prod")
        with state.lock:
            dataset = state.create_dataset(
                sandbox,
                name="Scale",
                schema_id=xdm.UNION_ID,
                content_type="x",
                has_table=True,
                now_ms=state.now_ms(),
            )
        request = exports.validate_request(
            {
                "schema": {"name": "_xdm.context.profile"},
                "destination": {"datasetId": dataset.id},
                "fields": f"_{TENANT}.identification.core.email",
                "filter": {"segments": [{"segmentId": a.id} for a in state.audiences[:3]]},
            },
            audience_ids={a.id for a in state.audiences},
            dataset_kind=lambda _: True,
            tree=synthetic.profile_field_tree(TENANT),
            merge_policy_id=sandbox.merge_policy_id,
        )
        started = time.monotonic()
        with state.lock:
            job = lifecycle.create_export_job(state, sandbox, request, "scale")
        while not job.terminal:
            time.sleep(0.01)
            with state.lock:
                state.tick()
        elapsed = time.monotonic() - started
        assert job.status == "SUCCEEDED" and job.exported > 20_000
        assert state.execute(f'SELECT count(*) FROM "{dataset.table}"')[0][0] == job.exported
        assert elapsed < 3.0, f"export of 100k profiles took {elapsed:.2f}s"
    finally:
        state.close()
