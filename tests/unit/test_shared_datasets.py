"""Two jobs must not write into one CJA dataset: refused when the jobs file is read, and at run time
when the dataset already holds another job's live batches."""

from __future__ import annotations

import pytest

from airflow_cja_audiences.config import JobsFile
from airflow_cja_audiences.models import Batch
from airflow_cja_audiences.runs import BatchLabel

BASE = {"audiences": [{"id": "aud-1"}], "identity": {"field": "_{tenant}.identification.core.email"}}


def test_default_names_give_each_job_its_own_datasets_even_with_shared_audiences():
    jobs = JobsFile.model_validate({"jobs": [{"job_id": "a", **BASE}, {"job_id": "b", **BASE}]}).jobs
    assert jobs[0].names.profile_dataset != jobs[1].names.profile_dataset
    assert jobs[0].names.event_dataset != jobs[1].names.event_dataset


@pytest.mark.parametrize("field", ["profile_dataset", "event_dataset"])
def test_two_jobs_naming_one_cja_dataset_are_refused(field):
    with pytest.raises(
        ValueError, match=rf"jobs 'a' and 'b' both write CJA dataset 'Shared' \(naming.{field}\)"
    ):
        JobsFile.model_validate(
            {
                "jobs": [
                    {"job_id": "a", **BASE, "naming": {field: "Shared"}},
                    {"job_id": "b", **BASE, "naming": {field: "Shared"}},
                ]
            }
        )


def test_same_dataset_name_in_other_sandboxes_is_fine():
    jobs = JobsFile.model_validate(
        {
            "jobs": [
                {"job_id": "a", **BASE, "sandbox": "prod", "naming": {"profile_dataset": "S"}},
                {"job_id": "b", **BASE, "sandbox": "dev", "naming": {"profile_dataset": "S"}},
            ]
        }
    )
    assert len(jobs.jobs) == 2


class _Catalog:
    def __init__(self, batches: list[Batch]) -> None:
        self.batches = batches

    def list_batches(self, dataset_id: str, **_: object) -> list[Batch]:
        return self.batches


def _batch(job_id: str, status: str) -> Batch:
    label = BatchLabel.for_run(job_id=job_id, kind="snapshot", export_batch_id="01EXPORTBATCH", run_id="r")
    return Batch.model_validate(
        {"id": f"b-{job_id}-{status}", "status": status, "externalId": label.external_id}
    )


def test_ensure_refuses_a_dataset_holding_another_jobs_live_batches():
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_cja_audiences.operators.setup import _refuse_other_jobs

    _refuse_other_jobs(_Catalog([_batch("a", "success"), _batch("b", "inactive")]), "ds", "Shared", "a")
    with pytest.raises(AirflowFailException, match="holds live batches of job\\(s\\) b"):
        _refuse_other_jobs(_Catalog([_batch("a", "success"), _batch("b", "success")]), "ds", "Shared", "a")
