"""Which of a dataset's batches a new one replaces, and a job's events batches (pure).

Every batch this package publishes is labelled in ``externalId`` (:class:`~airflow_cja_audiences.runs.BatchLabel`:
job, kind, scope, the export it was made from); a Query Service batch query's batch has no
``externalId`` and is labelled by its query's name instead (:class:`QueryLabels`). Catalog batches:
https://developer.adobe.com/experience-platform-apis/references/catalog/
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from airflow_cja_audiences.models import Batch
from airflow_cja_audiences.pipeline.ports import BatchLister
from airflow_cja_audiences.runs import BatchLabel

#: The label of a batch without ``externalId`` (None: not one of ours).
LabelOf = Callable[[Batch], "str | None"]


class QueryLabels:
    """The label of a batch a Query Service batch query wrote (server path): its query's name.

    ``query_id_of`` says whether a query wrote the batch (no call); ``label_of_batch`` reads the
    query's name (one call). A query's name never changes, so each batch is looked up once per
    ``cache`` (the operator keeps one per task)."""

    def __init__(
        self,
        query_id_of: Callable[[Batch], str | None],
        label_of_batch: Callable[[Batch], str | None],
        cache: dict[str, str | None] | None = None,
    ) -> None:
        self._query_id_of = query_id_of
        self._label_of_batch = label_of_batch
        self.known: dict[str, str | None] = {} if cache is None else cache

    def __call__(self, batch: Batch) -> str | None:
        if self._query_id_of(batch) is None:
            return None
        if batch.id not in self.known:
            self.known[batch.id] = self._label_of_batch(batch)
        return self.known[batch.id]


def live_batches(
    ingestion: BatchLister,
    dataset_id: str,
    label: BatchLabel,
    batches: Iterable[Batch] | None = None,
    labels: LabelOf | None = None,
) -> list[Batch]:
    """Our successful batches in the dataset that publishing ``label`` replaces (newest first).

    ``batches``: the dataset's listing when the caller already has it (default: list it).
    ``labels``: the label of a batch without ``externalId`` (:class:`QueryLabels`)."""
    found = []
    for batch in ingestion.list_batches(dataset_id) if batches is None else batches:
        if not batch.is_success:
            continue
        other = BatchLabel.parse(batch.external_id)
        if other is None and not batch.external_id and labels is not None:
            other = BatchLabel.parse(labels(batch))
        if other is not None and label.supersedes(other):
            found.append(batch)
    return found


def events_batches(
    batches: Iterable[Batch], job_id: str, labels: LabelOf | None = None
) -> list[tuple[Batch, BatchLabel]]:
    """The job's events batches in a dataset's listing, with their labels: live or still open
    (failed, aborted and reverted ones are left out). ``labels``: as for :func:`live_batches` (a batch
    query's batch has no ``externalId``; its label is its query's name)."""
    found = []
    for batch in batches:
        label = BatchLabel.parse(batch.external_id)
        if label is None and not batch.external_id and labels is not None and not batch.is_gone:
            label = BatchLabel.parse(labels(batch))
        if (
            label is not None
            and label.job_id == job_id
            and label.kind == "events"
            and label.interval is not None
            and not batch.is_failed
            and not batch.is_gone
        ):
            found.append((batch, label))
    return found
