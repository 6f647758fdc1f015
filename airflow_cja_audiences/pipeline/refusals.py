"""Typed errors the pipeline's decisions raise (pure).

Each is *permanent* (:func:`airflow_cja_audiences.errors.is_permanent`): retrying the same task reads the
same state and decides the same way, so the operators' ``failing_fast`` turns it into
``AirflowFailException`` with this error chained as ``__cause__`` and ``advice`` appended.
"""

from __future__ import annotations

from airflow_cja_audiences.errors import AepError


class PipelineRefusal(AepError):
    """The pipeline refuses to go on: what it found would publish wrong data, and a retry finds it again."""

    permanent = True

    def __init__(
        self, message: str, *, advice: str = "see the message: a retry of this task would fail the same way"
    ):
        super().__init__(message)
        self.advice = advice


class ExportGoneError(PipelineRefusal):
    """The export batch a run reads was reverted, deleted or failed: its rows are gone."""


class IdentityFieldEmptyError(PipelineRefusal):
    """Not one exported membership carries the identity field."""


class ClosedBatchError(PipelineRefusal):
    """A load task found its batch no longer open for files."""


class OverlappingEventsError(PipelineRefusal):
    """A live events batch overlaps the interval this run planned without lying inside it."""


class ShrinkGuardError(PipelineRefusal):
    """The new batch has far fewer records than the live one it would replace."""


class PartitionLimitError(PipelineRefusal):
    """A partition stays over Query Service's row cap or time limit however it is split."""


class SharedDatasetError(PipelineRefusal):
    """A CJA dataset holds live batches of another job."""
