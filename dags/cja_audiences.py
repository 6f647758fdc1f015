"""Refresh DAGs for Adobe CJA audiences: one DAG per job in the jobs file.

The jobs file is ``cja_audiences.yaml`` next to this file, or the path in the environment variable
``CJA_AUDIENCES_CONFIG``. Each job is validated before any DAG is built; a bad file shows up as an
import error naming the file and the field.
"""

from __future__ import annotations

import os
from pathlib import Path

from airflow_cja_audiences.dag_factory import dags_from_file

CONFIG = Path(os.environ.get("CJA_AUDIENCES_CONFIG") or Path(__file__).with_name("cja_audiences.yaml"))

globals().update(dags_from_file(CONFIG))
