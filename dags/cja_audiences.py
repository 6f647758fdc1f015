"""Refresh DAGs for Adobe CJA audiences: one DAG per job in the jobs file.

The jobs file is the ``.yaml`` file named like this file (``cja_audiences.yaml`` next to it), or the
path in the environment variable ``CJA_AUDIENCES_CONFIG``. A copy of this file under another name
reads its own jobs file (``team_b.py`` reads ``team_b.yaml``): that is how jobs are split over
several files, each parsed on its own. A problem with the whole file shows up as an import error
naming the file; an invalid job shows up as a placeholder DAG carrying the error (naming the file,
the job and the field) while the other jobs' DAGs are built as usual.
"""

from __future__ import annotations

import os
from pathlib import Path

from airflow_cja_audiences.dag_factory import dags_from_file

CONFIG = Path(os.environ.get("CJA_AUDIENCES_CONFIG") or Path(__file__).with_suffix(".yaml"))

globals().update(dags_from_file(CONFIG))
