"""Hooks for Adobe Experience Platform, CJA and Query Service.

Submodules load on first use (``hooks.catalog.CatalogHook``): operator modules refer to hooks this
way so that parsing a DAG file does not import ``requests``, ``tenacity`` or ``psycopg``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

_SUBMODULES = frozenset(
    {
        "platform",
        "catalog",
        "segmentation",
        "schema_registry",
        "ingestion",
        "cja",
        "query_service",
        "batch_query",
    }
)


def __getattr__(name: str) -> ModuleType:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
