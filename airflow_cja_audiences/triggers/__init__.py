"""Triggers (run in the triggerer). ``triggers.aep`` loads on first use: it imports aiohttp, which
parsing a DAG file must not pay for."""

from __future__ import annotations

import importlib
from types import ModuleType


def __getattr__(name: str) -> ModuleType:
    if name == "aep":
        return importlib.import_module(f"{__name__}.aep")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
