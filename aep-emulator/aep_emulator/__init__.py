"""Local, stateful emulator of the Adobe Experience Platform and CJA APIs (our "moto" for Adobe).

Optional extra ``[emulator]`` (DuckDB, sqlglot, Starlette, uvicorn, trustme, jsonpatch). Never imported by
the provider or the DAGs. Importing this package is cheap: the heavy modules load on first use.

* CLI: ``python -m aep_emulator --help``
* In process: ``with EmulatorServer(EmulatorSettings(profiles=500)) as emu: emu.base_url ...``
* Test administration API: see :mod:`aep_emulator.rest.admin`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from aep_emulator.server import EmulatorServer
    from aep_emulator.settings import EmulatorSettings

__all__ = ["EmulatorServer", "EmulatorSettings"]


def __getattr__(name: str) -> Any:
    # Lazy re-exports keep `import aep_emulator` free of DuckDB/uvicorn imports.
    if name == "EmulatorServer":
        from aep_emulator.server import EmulatorServer

        return EmulatorServer
    if name == "EmulatorSettings":
        from aep_emulator.settings import EmulatorSettings

        return EmulatorSettings
    raise AttributeError(name)
