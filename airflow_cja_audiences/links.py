"""Operator extra links to the AEP UI pages of datasets, batches and export jobs.

Airflow 3 evaluates ``get_link`` on the worker when the task finishes and stores the URL in XCom;
operators push the URL under a known key while they run (the dbt Cloud provider's convention).
The UI base URL comes from the connection's ``ui_url`` extra, so links also resolve against the
emulator, which serves the same paths.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink
from airflow.sdk.bases.xcom import BaseXCom

if TYPE_CHECKING:
    from airflow_cja_audiences.models import AdobeConnectionSettings

DATASET_URL_KEY = "aep_dataset_url"
BATCH_URL_KEY = "aep_batch_url"
EXPORT_JOB_URL_KEY = "aep_export_job_url"


def _url(settings: AdobeConnectionSettings, *parts: str) -> str:
    path = "/".join(quote(str(p), safe="") for p in parts)
    return f"{settings.ui_url}/{path}?sandbox={quote(settings.sandbox, safe='')}"


def dataset_url(settings: AdobeConnectionSettings, dataset_id: str) -> str:
    return _url(settings, "dataset", "browse", dataset_id)


def batch_url(settings: AdobeConnectionSettings, batch_id: str) -> str:
    return _url(settings, "monitoring", "batches", batch_id)


def export_job_url(settings: AdobeConnectionSettings, job_id: int | str) -> str:
    return _url(settings, "segmentation", "export-jobs", str(job_id))


def push_dataset_link(context: Any, settings: AdobeConnectionSettings, dataset_id: str) -> None:
    context["ti"].xcom_push(key=DATASET_URL_KEY, value=dataset_url(settings, dataset_id))


def push_batch_link(context: Any, settings: AdobeConnectionSettings, batch_id: str) -> None:
    context["ti"].xcom_push(key=BATCH_URL_KEY, value=batch_url(settings, batch_id))


def push_export_job_link(context: Any, settings: AdobeConnectionSettings, job_id: int | str) -> None:
    context["ti"].xcom_push(key=EXPORT_JOB_URL_KEY, value=export_job_url(settings, job_id))


class _XComLink(BaseOperatorLink):
    xcom_url_key: str = ""

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return BaseXCom.get_value(ti_key=ti_key, key=self.xcom_url_key) or ""


class AepDatasetLink(_XComLink):
    name = "AEP dataset"
    xcom_url_key = DATASET_URL_KEY


class AepBatchLink(_XComLink):
    name = "AEP batch"
    xcom_url_key = BATCH_URL_KEY


class AepExportJobLink(_XComLink):
    name = "AEP export job"
    xcom_url_key = EXPORT_JOB_URL_KEY
