"""What runs leave behind (issue 14, part 3), the operators run directly against the emulator:

* export retention reverts a job's old export batches after a publish, keeping what a live batch needs;
* a cleared task of an old run refuses its reverted export at once, saying which batch, when, by whom
  and what to do (instead of reading zero rows and publishing an empty snapshot);
* the snapshot swap by batch replay leaves no instant with two live snapshots (measured from the
  emulator's record of when each batch was visible), where the explicit revert left a window; and a
  failed replay batch leaves the old snapshot live.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from airflow.sdk.exceptions import AirflowFailException

from airflow_cja_audiences.operators.load import LoadPartitionOperator, PrepareLoadOperator
from airflow_cja_audiences.operators.publish import PublishBatchOperator
from airflow_cja_audiences.operators.retention import PruneExportsOperator

from task_context import (
    FakeStore,
    ensure_export_dataset,
    ensure_profile_dataset,
    export_operator,
    load_arguments,
    prod_state,
    refresh_job,
    task_context,
)

DAY = 86_400


def _context(run_id: str = "scheduled__lifecycle") -> dict:
    """A scheduled run's task, first try, with a fresh state store."""
    return task_context(FakeStore(), run_id=run_id, run_type="scheduled")


def _batches(emu) -> dict[str, dict]:
    return prod_state(emu)["batches"]


class Pipeline:
    """export -> prepare -> load -> publish of one job's snapshot, step by step."""

    def __init__(self, emu, audiences: list[str], **extra: Any) -> None:
        self.emu, self.audiences, self.job = (
            emu,
            audiences,
            refresh_job("lifecycle", audiences, publish_events=False, **extra),
        )
        export_ds = ensure_export_dataset(self.job)
        self.export_dataset, self.table = export_ds["dataset_id"], export_ds["table_name"]
        self.dataset = ensure_profile_dataset(self.job)

    def export(self) -> str:
        return export_operator(self.job, self.export_dataset).execute(_context())["export_batch_id"]

    def common(self, export_batch_id: str) -> dict[str, Any]:
        return load_arguments(
            self.job,
            export_batch_id=export_batch_id,
            table_name=self.table,
            dataset_id=self.dataset,
            audiences=self.audiences,
        )

    def prepare(self, export_batch_id: str, run_id: str) -> tuple[dict, list]:
        ctx = _context(run_id)
        partitions = PrepareLoadOperator(
            task_id="prepare", export_dataset_id=self.export_dataset, **self.common(export_batch_id)
        ).execute(ctx)
        return ctx["ti"].xcoms, partitions

    def publish(self, export_batch_id: str, run_id: str, **publish_args: Any) -> dict:
        pushed, partitions = self.prepare(export_batch_id, run_id)
        results = [
            LoadPartitionOperator(
                task_id="load", batch_id=pushed["batch_id"], partition=p, **self.common(export_batch_id)
            ).execute(_context(run_id))
            for p in partitions
        ]
        publish = PublishBatchOperator(
            task_id="publish",
            dataset_id=self.dataset,
            batch_id=pushed["batch_id"],
            external_id=pushed["external_id"],
            load_results=results,
            shrink_guard=0.5,
            poll_interval=0.1,
            deferrable=False,
            **publish_args,
        )
        return {**publish.execute(_context(run_id)), "pushed": pushed}

    def prune(self) -> dict:
        return PruneExportsOperator(
            task_id="prune",
            job=self.job.model_dump(mode="json"),
            export_dataset_id=self.export_dataset,
            dataset_ids=[self.dataset],
        ).execute(_context())

    def live_snapshots(self) -> list[str]:
        return [
            i
            for i, b in _batches(self.emu).items()
            if b["status"] == "success"
            and b.get("origin") == "ingestion"
            and any(o.get("id") == self.dataset for o in b.get("relatedObjects", []))
        ]


def _overlap(batches: dict[str, dict], old: str, new: str) -> float:
    """Seconds during which both batches were visible (the emulator's monotonic record)."""
    a, b = batches[old]["emulatorLive"], batches[new]["emulatorLive"]
    end = (
        min(x for x in (a["until"], b["until"]) if x is not None)
        if (a["until"] or b["until"])
        else time.monotonic()
    )
    return max(0.0, end - max(a["since"], b["since"]))


def test_retention_reverts_old_exports_but_keeps_the_live_snapshots_and_the_newest(emu, audiences):
    pipe = Pipeline(emu, audiences, export_retention_days=7)
    old = pipe.export()
    emu.admin.advance_clock(10 * DAY)
    middle = pipe.export()
    pipe.publish(middle, "scheduled__one")  # the live snapshot is made from `middle`
    emu.admin.advance_clock(10 * DAY)
    unused = pipe.export()  # a run that exported and then failed before publishing
    emu.admin.advance_clock(10 * DAY)
    newest = pipe.export()
    result = pipe.prune()
    # `old` and `unused` are older than 7 days and nothing live needs them; `middle` feeds the live
    # snapshot; `newest` is the newest full export (and young).
    assert sorted(result["reverted"]) == sorted([old, unused]) and result["failed"] == []
    statuses = {i: _batches(emu)[i]["status"] for i in (old, middle, unused, newest)}
    assert statuses == {old: "inactive", middle: "success", unused: "inactive", newest: "success"}
    assert emu.admin.batch_rows(old) == [] and emu.admin.batch_rows(middle)  # gone from Query Service
    assert pipe.prune()["reverted"] == []  # nothing more to do: it converges

    # A task of the first run, cleared now that its export is still live, works; once that export is
    # reverted (here by hand, as a later prune would once a newer snapshot is live) it refuses at once.
    from airflow_cja_audiences.hooks.ingestion import BatchIngestionHook

    BatchIngestionHook().revert_batch(middle)
    started = time.monotonic()
    with pytest.raises(AirflowFailException) as refused:
        pipe.prepare(middle, "scheduled__one")
    elapsed = time.monotonic() - started
    message = str(refused.value)
    for words in (
        middle,
        "'inactive'",
        "Catalog last changed it at",
        f"by {emu.credentials.client_id}@AdobeID",
        "an empty snapshot",
        "export_retention_days (7)",
        "clear the whole DAG run",
        "export_audiences included",
        "trigger a new run",
    ):
        assert words in message, (words, message)
    assert elapsed < 5, f"refusing took {elapsed:.1f}s"
    # a cleared load task of that run refuses too, before reading anything
    with pytest.raises(AirflowFailException, match="is 'inactive'"):
        LoadPartitionOperator(
            task_id="load",
            batch_id=_open_batch(pipe),
            partition={"modulus": 1, "remainder": 0},
            **pipe.common(middle),
        ).execute(_context("scheduled__one"))


def _open_batch(pipe: Pipeline) -> str:
    """A loading batch of the job's dataset (what a cleared load task of a running run would write to)."""
    from airflow_cja_audiences.hooks.ingestion import BatchIngestionHook

    return BatchIngestionHook().create_batch(pipe.dataset, external_id="cleared-load-test").id


def test_pruning_is_off_for_a_shared_export_dataset_and_with_null_retention(emu, audiences):
    from airflow.sdk.exceptions import AirflowSkipException

    shared = Pipeline(emu, audiences, naming={"export_dataset": "Shared audience export"})
    shared.export()
    with pytest.raises(AirflowSkipException, match="shared export dataset"):
        shared.prune()
    kept = Pipeline(emu, audiences, export_retention_days=None)
    with pytest.raises(AirflowSkipException, match="every export of this job is kept"):
        kept.prune()


def test_snapshot_swap_by_replay_leaves_no_window_with_two_live_snapshots(emu, audiences, monkeypatch):
    pipe = Pipeline(emu, audiences)
    first = pipe.publish(pipe.export(), "scheduled__a")["batch_id"]

    # Before (the explicit revert after success): the old snapshot stays live until publish reverts it.
    with monkeypatch.context() as patched:
        patched.setattr(
            PrepareLoadOperator,
            "_create_batch",
            lambda self, ingestion, label, predecessors: ingestion.create_batch(
                self.dataset_id, external_id=label.external_id
            ),
        )
        second = pipe.publish(pipe.export(), "scheduled__b")
    assert second["replaced_batch_ids"] == [first] and pipe.live_snapshots() == [second["batch_id"]]
    assert "replay" not in _batches(emu)[second["batch_id"]]
    before = _overlap(_batches(emu), first, second["batch_id"])

    # After: the new batch replays the old one; AEP swaps them when it succeeds.
    third = pipe.publish(pipe.export(), "scheduled__c")
    batches = _batches(emu)
    assert batches[third["batch_id"]]["replay"]["predecessors"] == [second["batch_id"]]
    assert third["replaced_batch_ids"] == [second["batch_id"]] and pipe.live_snapshots() == [
        third["batch_id"]
    ]
    after = _overlap(batches, second["batch_id"], third["batch_id"])
    print(
        f"\nboth snapshots live: explicit revert {before * 1000:.1f} ms, batch replay {after * 1000:.1f} ms"
    )
    assert after == 0.0 < before
    records = emu.admin.dataset_records(pipe.dataset)
    assert sorted(r["personID"] for r in records) == sorted(
        {r["email"] for r in emu.admin.snapshot(audiences, ["realized", "existing"])}
    )


def test_a_failed_replay_batch_or_a_tripped_shrink_guard_leaves_the_old_snapshot_live(emu, audiences):
    from airflow.sdk.exceptions import AirflowException

    pipe = Pipeline(emu, audiences)
    live = pipe.publish(pipe.export(), "scheduled__a")["batch_id"]
    emu.admin.knobs(ingestion_failures=1)
    with pytest.raises(AirflowException, match="The previous data is untouched"):
        pipe.publish(pipe.export(), "scheduled__b")
    assert pipe.live_snapshots() == [live]
    # The shrink guard: one audience only, far fewer records; the refused batch is aborted, so its
    # replay never happens.
    smaller = Pipeline(emu, audiences[:1])
    with pytest.raises(AirflowFailException, match="shrink guard"):
        smaller.publish(smaller.export(), "scheduled__c")
    assert pipe.live_snapshots() == [live]
    forced = smaller.publish(smaller.export(), "scheduled__d", force=True)
    assert pipe.live_snapshots() == [forced["batch_id"]] and forced["replaced_batch_ids"] == [live]
