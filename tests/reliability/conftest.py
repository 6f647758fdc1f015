"""Reliability suite: refresh runs against the session emulator, with faults, kills and bad input.

Every test gets a clean emulator (``adobe_conn`` resets it) and builds its refresh job with
``make_pipeline``. Outcomes are recorded with ``figures.record(...)``; when the environment names a
file in ``CJA_RELIABILITY_FIGURES``, they are written there at the end of the session
(``python -m benchmarks.reliability`` runs this suite that way and prints the tables).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import Pipeline  # this folder is on pytest's pythonpath (pyproject.toml)

FIGURES_ENV = "CJA_RELIABILITY_FIGURES"
# Short waits between attempts keep the suite fast; the policy (which errors, how many attempts,
# Retry-After) is the production one. A task retry waits 0 s (Airflow rounds it up to ~1 s).
FAST_API_RETRIES = {"max_attempts": 8, "initial_wait_seconds": 0.05, "max_wait_seconds": 2.0}


class Figures:
    """Rows of the reliability tables: table -> list of {case, outcome, seconds, retries, ...}."""

    def __init__(self) -> None:
        self.tables: dict[str, list[dict[str, Any]]] = {}

    def record(
        self,
        table: str,
        case: str,
        outcome: str,
        *,
        seconds: float | None = None,
        retries: dict[str, int] | None = None,
        **extra: Any,
    ) -> None:
        self.tables.setdefault(table, []).append(
            {
                "case": case,
                "outcome": outcome,
                "seconds": None if seconds is None else round(seconds, 1),
                "retries": dict(sorted((retries or {}).items())),
                **extra,
            }
        )


_FIGURES = Figures()


@pytest.fixture(scope="session")
def figures() -> Iterator[Figures]:
    yield _FIGURES
    target = os.environ.get(FIGURES_ENV)
    if target:
        Path(target).write_text(json.dumps(_FIGURES.tables, indent=1, default=str))


@pytest.fixture(scope="session")
def emu(realistic_emu):
    """This suite runs against the emulator in realistic mode (tests/conftest.py ``realistic_emu``)."""
    return realistic_emu


@pytest.fixture(autouse=True)
def _adobe(adobe_conn):
    yield


@pytest.fixture
def audience_ids(emu) -> list[str]:
    """Three audiences of the emulator's built-in set (a few hundred members each at 600 profiles)."""
    return [a["id"] for a in emu.admin.state()["audiences"][:3]]


@pytest.fixture
def make_pipeline(airflow_db, dags_folder, audience_ids, tmp_path) -> Iterator[Callable[..., Pipeline]]:
    """``make_pipeline(job_id=..., **job settings) -> Pipeline`` for a job over ``audience_ids``;
    every driver process still running at the end of the test is killed."""
    from airflow_cja_audiences.config import RefreshJob

    made: list[Pipeline] = []

    def make(job_id: str = "rel", **overrides: Any) -> Pipeline:
        job = RefreshJob.model_validate(
            {
                "job_id": job_id,
                "schedule": "0 2 * * *",
                "poll_interval_seconds": 1,
                "retries": 2,
                "retry_delay_seconds": 0,
                "api_retries": FAST_API_RETRIES,
                "audiences": [{"id": a} for a in audience_ids],
                "identity": {"field": "_{tenant}.identification.core.email", "namespace": "Email"},
                **overrides,
            }
        )
        made.append(Pipeline(job, dags_folder, tmp_path / f"{job_id}-{len(made)}"))
        return made[-1]

    yield make
    for pipeline in made:
        pipeline.close()


@pytest.fixture
def connection(adobe_conn, monkeypatch) -> Callable[..., dict]:
    """``connection(**extra)``: the default Adobe connection with changed extras (e.g. ``timeout``)."""
    from airflow_cja_audiences import DEFAULT_CONN_ID

    def change(login: str | None = None, password: str | None = None, **extra: Any) -> dict:
        conn = {**adobe_conn, "extra": {**adobe_conn["extra"], **extra}}
        if login is not None:
            conn["login"] = login
        if password is not None:
            conn["password"] = password
        monkeypatch.setenv(f"AIRFLOW_CONN_{DEFAULT_CONN_ID.upper()}", json.dumps(conn))
        return conn

    return change
