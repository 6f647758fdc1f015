"""The emulator's internals depend one way: ``state`` uses ``lifecycle`` and ``groundtruth``, which
see it only through their own small interfaces (``lifecycle.Host`` / ``Sandbox``,
``groundtruth.TruthSource``) and never import it, not even for type checking."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from aep_emulator import groundtruth, lifecycle

PACKAGE = Path(__file__).resolve().parents[2] / "aep-emulator" / "aep_emulator"


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("module", ["lifecycle.py", "groundtruth.py", "knobs.py"])
def test_never_imports_the_state(module):
    imported = _imported_modules(PACKAGE / module)
    assert not {m for m in imported if m == "aep_emulator.state" or m.startswith("aep_emulator.state.")}


def test_the_state_provides_the_interfaces(tmp_path):
    """Every member the interfaces declare exists on a real state (mypy checks the types)."""
    from aep_emulator.settings import EmulatorSettings
    from aep_emulator.state import EmulatorState

    state = EmulatorState(EmulatorSettings(profiles=10), tmp_path)
    try:
        sandbox = next(iter(state.sandboxes.values()))
        for protocol, obj in (
            (lifecycle.Host, state),
            (lifecycle.Sandbox, sandbox),
            (groundtruth.TruthSource, state),
        ):
            declared = {n for n in vars(protocol) if not n.startswith("_")}
            assert declared, protocol
            missing = sorted(n for n in declared if not hasattr(obj, n))
            assert missing == [], f"{type(obj).__name__} lacks {protocol.__name__} members {missing}"
    finally:
        state.close()
