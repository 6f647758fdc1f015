"""The repository's two distributions, built the way an index would serve them (issue 13, part 3).

* ``airflow-cja-audiences`` (the provider): its wheel holds the whole ``airflow_cja_audiences``
  package and nothing of the emulator or the demo; its ``[emulator]`` extra is only a pin on
  ``aep-emulator``; no module of the provider (or the DAGs) imports ``aep_emulator`` or ``demo``.
* ``aep-emulator`` (``./aep-emulator``): its wheel holds the whole ``aep_emulator`` package, declares
  every third-party module it imports, and imports neither Airflow nor the provider.

The wheels are built from a copy of the repository with ``pip wheel --no-build-isolation --no-index``
(offline): the build backend must be in this environment (setuptools>=77 and wheel, from
requirements/dev.txt, which ``make venv`` installs). Without it the build tests skip, except under
CI=true, where that is a failure.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PROVIDER_PACKAGE = ROOT / "airflow_cja_audiences"
EMULATOR_PROJECT = ROOT / "aep-emulator"
EMULATOR_PACKAGE = EMULATOR_PROJECT / "aep_emulator"
FORBIDDEN_IN_PROVIDER = (
    "aep_emulator",
    "demo",
    "airflow_cja_audiences.emulator",
    "airflow_cja_audiences.demo",
)
FORBIDDEN_IN_EMULATOR = ("airflow_cja_audiences", "airflow", "demo")
# Left out of the copy the wheels are built from: VCS, venvs, build output, caches, and the compose
# stack's bind-mounted folders (which may hold files of another owner).
SKIP_ANYWHERE = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache", ".hypothesis"}
SKIP_AT_ROOT = {"logs", "config", "plugins"}


# ------------------------------------------------------------------ static: who imports whom


def imported_modules(source: str, filename: str = "<source>") -> set[str]:
    """Absolute module names a module imports: import statements and import_module/__import__ calls
    with a literal name."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in ("import_module", "__import__"):
                names.add(node.args[0].value)
    return names


def offending_imports(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    hits = []
    for path in paths:
        for name in sorted(imported_modules(path.read_text(), str(path))):
            if any(name == bad or name.startswith(bad + ".") for bad in forbidden):
                hits.append(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} imports {name}")
    return hits


def python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_import_scanner_sees_every_form_of_import(tmp_path: Path):
    source = (
        "import aep_emulator\nfrom demo import main\nfrom aep_emulator.rest import app as a\n"
        "import importlib\nimportlib.import_module('aep_emulator.tls')\n__import__('demo.x')\n"
        "from . import sibling\nimport demonstration\n"
    )
    assert imported_modules(source) == {
        "aep_emulator",
        "demo",
        "demo.main",
        "aep_emulator.rest",
        "aep_emulator.rest.app",
        "importlib",
        "aep_emulator.tls",
        "demo.x",
        "demonstration",
    }  # relative imports stay inside their package
    module = tmp_path / "module.py"
    module.write_text(source)
    hits = offending_imports([module], FORBIDDEN_IN_PROVIDER)
    assert len(hits) == 7 and not any(h.endswith(" demonstration") for h in hits), hits


def test_no_provider_module_or_dag_imports_the_emulator_or_the_demo():
    paths = python_files(PROVIDER_PACKAGE) + python_files(ROOT / "dags")
    assert len(paths) > 20, f"only {len(paths)} modules found under {PROVIDER_PACKAGE}: wrong folder?"
    assert offending_imports(paths, FORBIDDEN_IN_PROVIDER) == []


def test_the_emulator_imports_neither_airflow_nor_the_provider():
    paths = python_files(EMULATOR_PACKAGE)
    assert len(paths) > 20, f"only {len(paths)} modules found under {EMULATOR_PACKAGE}: wrong folder?"
    assert offending_imports(paths, FORBIDDEN_IN_EMULATOR) == []


def test_the_emulator_is_gone_from_the_provider_package():
    assert not (PROVIDER_PACKAGE / "emulator").exists()
    assert not (PROVIDER_PACKAGE / "demo.py").exists()


def test_the_demo_runs_from_the_repository_root_as_python_m_demo():
    # make demo's command; the demo's helpers stay importable as `import demo` (benchmarks.event_history).
    result = subprocess.run(
        [sys.executable, "-m", "demo", "--help"],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "--profiles" in result.stdout, result.stdout + result.stderr
    assert "python -m demo" in (ROOT / "Makefile").read_text()


# ------------------------------------------------------------------ built wheels


def _build_backend_missing() -> str | None:
    try:
        setuptools_version = Version(metadata.version("setuptools"))
        metadata.version("wheel")
    except metadata.PackageNotFoundError as exc:
        return f"{exc.name} is not installed"
    if setuptools_version < Version("77"):
        return f"setuptools {setuptools_version} is older than the 77 the pyproject files require"
    return None


def _copy_tree(source: Path, target: Path) -> Path:
    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if n in SKIP_ANYWHERE or n.endswith(".egg-info")}
        if Path(folder) == source:
            skipped |= SKIP_AT_ROOT & set(names)
        return skipped

    shutil.copytree(source, target, ignore=ignore)
    return target


def build_wheel(project: Path, out: Path) -> Path:
    """``pip wheel`` of a copy of ``project`` (so no build/ or egg-info lands in the repository, and no
    stale build output can slip into the wheel); offline: no index, this environment's setuptools."""
    missing = _build_backend_missing()
    if missing:
        reason = f"cannot build wheels offline: {missing} (pip install -r requirements/dev.txt, or make venv)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    source = _copy_tree(project, out / f"src-{project.name}")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "--wheel-dir",
            str(out / "wheels"),
            str(source),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (
        f"pip wheel {project.name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    wheels = sorted((out / "wheels").glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def wheel_metadata(wheel: zipfile.ZipFile) -> tuple[str, list[str]]:
    """(the wheel's top-level entries, its METADATA headers) as an installer reads them."""
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return name.split("/")[0], Parser().parsestr(wheel.read(name).decode())


@pytest.fixture(scope="module")
def provider_wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    with zipfile.ZipFile(build_wheel(ROOT, tmp_path_factory.mktemp("provider"))) as wheel:
        yield wheel


@pytest.fixture(scope="module")
def emulator_wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    with zipfile.ZipFile(build_wheel(EMULATOR_PROJECT, tmp_path_factory.mktemp("emulator"))) as wheel:
        yield wheel


def _package_files(wheel: zipfile.ZipFile, package: str) -> set[str]:
    return {n for n in wheel.namelist() if n.startswith(package + "/")}


def _source_files(folder: Path) -> set[str]:
    return {p.relative_to(folder.parent).as_posix() for p in python_files(folder)}


def test_the_provider_wheel_holds_the_provider_and_no_emulator_or_demo(provider_wheel: zipfile.ZipFile):
    names = provider_wheel.namelist()
    dist_info, _ = wheel_metadata(provider_wheel)
    assert Path(provider_wheel.filename).name == "airflow_cja_audiences-0.1.0-py3-none-any.whl"
    # Every module of the provider, and nothing else but its dist-info.
    assert _package_files(provider_wheel, "airflow_cja_audiences") == _source_files(PROVIDER_PACKAGE)
    assert {n.split("/")[0] for n in names} == {"airflow_cja_audiences", dist_info}
    emulator_files = [n for n in names if {"emulator", "aep_emulator", "demo", "demo.py"} & set(n.split("/"))]
    assert emulator_files == []
    assert not any("aep_emulator" in n or n.endswith("/demo.py") for n in names)


def test_the_provider_emulator_extra_is_only_a_pin_on_the_emulator_distribution(
    provider_wheel: zipfile.ZipFile,
):
    _, headers = wheel_metadata(provider_wheel)
    requirements = [Requirement(r) for r in headers.get_all("Requires-Dist")]
    emulator_extra = [
        r
        for r in requirements
        if r.marker and r.marker.evaluate({"extra": "emulator"}) and not r.marker.evaluate({"extra": ""})
    ]
    assert [(r.name, str(r.specifier)) for r in emulator_extra] == [("aep-emulator", "==0.1.0")]
    always = [r.name for r in requirements if not r.marker or r.marker.evaluate({"extra": ""})]
    assert "aep-emulator" not in always and "duckdb" not in always, always
    assert "emulator" in headers.get_all("Provides-Extra")


def test_the_emulator_wheel_holds_its_whole_package(emulator_wheel: zipfile.ZipFile):
    dist_info, headers = wheel_metadata(emulator_wheel)
    assert (headers["Name"], headers["Version"]) == ("aep-emulator", "0.1.0")
    assert _package_files(emulator_wheel, "aep_emulator") == _source_files(EMULATOR_PACKAGE)
    assert {n.split("/")[0] for n in emulator_wheel.namelist()} == {"aep_emulator", dist_info}
    assert "aep_emulator/__main__.py" in emulator_wheel.namelist()  # python -m aep_emulator


def test_the_emulator_declares_every_third_party_module_it_imports(emulator_wheel: zipfile.ZipFile):
    _, headers = wheel_metadata(emulator_wheel)
    declared = {
        Requirement(r).name.lower() for r in headers.get_all("Requires-Dist") if not Requirement(r).marker
    }
    top_level = {
        name.split(".")[0]
        for path in python_files(EMULATOR_PACKAGE)
        for name in imported_modules(path.read_text(), str(path))
    }
    third_party = sorted(top_level - set(sys.stdlib_module_names) - {"aep_emulator", "__future__"})
    assert third_party, "no third-party import found: the scan is broken"
    providers = metadata.packages_distributions()
    undeclared = {
        module: providers.get(module)
        for module in third_party
        if not {d.lower() for d in providers.get(module, [])} & declared
    }
    assert undeclared == {}, f"imported by aep_emulator but not in aep-emulator/pyproject.toml: {undeclared}"
