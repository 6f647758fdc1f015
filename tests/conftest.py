"""Session-wide test settings: an isolated AIRFLOW_HOME, and tests/ importable for shared helpers."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # emulator_fixture and friends (tests use --import-mode=importlib)

# Airflow reads its configuration at import time: isolate it before any test imports airflow.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="cja-audiences-airflow-home-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "True")
