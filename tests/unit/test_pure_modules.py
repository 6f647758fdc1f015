"""The pure modules (the ones ``make lint`` type-checks strictly) import nothing of Airflow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE = (
    "config",
    "distill",
    "errors",
    "export_check",
    "missing",
    "models",
    "pipeline",
    "pipeline.batches",
    "pipeline.distill",
    "pipeline.events",
    "pipeline.exported",
    "pipeline.ports",
    "pipeline.prepare",
    "pipeline.reattach",
    "pipeline.refusals",
    "pipeline.replace",
    "pipeline.setup",
    "pipeline.split",
    "report",
    "runs",
    "scanplan",
    "sql",
    "transform",
    "validation",
    "waits",
    "xdm",
)


@pytest.mark.parametrize("name", PURE)
def test_pure_module_imports_no_airflow(name):
    probe = (
        f"import sys, airflow_cja_audiences.{name}; "
        "print(sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"airflow_cja_audiences.{name} imports {out.stdout.strip()}"


def test_mypy_checks_exactly_the_pure_modules():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["files"]
    # A package ("pipeline") is its __init__.py; a submodule ("pipeline.split") its own file.
    paths = [
        f"airflow_cja_audiences/{name}/__init__.py"
        if (ROOT / "airflow_cja_audiences" / name).is_dir()
        else f"airflow_cja_audiences/{name.replace('.', '/')}.py"
        for name in PURE
    ]
    assert sorted(files) == sorted(paths)
