"""Run the emulator: uvicorn in a background thread (HTTPS by default) plus, on request, the Query
Service PostgreSQL endpoint. Usable from tests as a context manager::

    with EmulatorServer(EmulatorSettings(profiles=500)) as emu:
        requests.get(f"{emu.base_url}/health", verify=emu.ca_bundle)
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import socket
import ssl
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from aep_emulator import tls
from aep_emulator.rest.app import build_app
from aep_emulator.settings import EmulatorSettings
from aep_emulator.state import EmulatorState

log = logging.getLogger("aep_emulator.server")
READY_PREFIX = "AEP emulator ready: "


class _InjectedFaultNoise(logging.Filter):
    """uvicorn reports the connections the fault injector drops on purpose as ASGI errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("ASGI callable returned without")


logging.getLogger("uvicorn.error").addFilter(_InjectedFaultNoise())


class EmulatorStartError(RuntimeError):
    """The emulator could not start (port in use, Query Service missing, bad TLS files...)."""


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise EmulatorStartError(f"cannot listen on {host}:{port}: {exc}") from exc
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def url_host(host: str) -> str:
    """The host to put in URLs: wildcard binds are reached over loopback; IPv6 gets brackets."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        pass
    return host


class EmulatorServer:
    def __init__(self, settings: EmulatorSettings | None = None) -> None:
        self.settings = settings or EmulatorSettings()
        self.state: EmulatorState | None = None
        self.ssl_context: ssl.SSLContext | None = None
        self.ca_bundle: Path | None = None
        self.port: int | None = None
        self._own_state_dir: Path | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._query_service: Any = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> EmulatorServer:
        s = self.settings
        if s.state_dir is not None:
            state_dir = Path(s.state_dir)
            state_dir.mkdir(parents=True, exist_ok=True)
        else:
            state_dir = self._own_state_dir = Path(tempfile.mkdtemp(prefix="aep-emulator-"))
        try:
            self._start(state_dir, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, state_dir: Path, timeout: float) -> None:
        s = self.settings
        if s.tls:
            if s.tls_cert is not None:
                files = tls.TlsFiles(
                    ca_bundle=Path(s.tls_ca or s.tls_cert), cert=Path(s.tls_cert), key=Path(s.tls_key)
                )
            else:
                files = tls.generate(state_dir / "tls", [s.host, *s.tls_hostnames])
            self.ssl_context = tls.server_context(files)
            self.ca_bundle = files.ca_bundle
        sock = _bind(s.host, s.port)
        self.port = sock.getsockname()[1]
        try:
            self.state = EmulatorState(s, state_dir)
        except ValueError as exc:
            sock.close()
            raise EmulatorStartError(str(exc)) from exc
        if s.pg_port is not None:
            self._start_query_service()
        app = build_app(self.state)
        unknown = self.state.faults.unknown_routes({r["name"] for r in self.state.route_table})
        if unknown:
            sock.close()
            raise EmulatorStartError(f"--faults names unknown routes {unknown}")
        context = self.ssl_context
        config = uvicorn.Config(
            app,
            lifespan="off",
            access_log=False,
            log_level="warning",
            timeout_keep_alive=30,
            server_header=False,
            ssl_context_factory=(lambda cfg, default: context) if context else None,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="aep-emulator-http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise EmulatorStartError("the HTTP server thread stopped during start-up (see the log above)")
            if time.monotonic() > deadline:
                raise EmulatorStartError(f"the HTTP server did not start within {timeout}s")
            time.sleep(0.01)
        log.info(
            "AEP emulator serving %s (%d profiles, seed %d, sandboxes %s, %s mode%s)",
            self.base_url,
            s.profiles,
            s.seed,
            ",".join(s.sandboxes),
            s.mode,
            f": 1 Adobe minute = {s.real_seconds(60):g} s" if s.time_scale != 1.0 else "",
        )

    def _start_query_service(self) -> None:
        try:
            from aep_emulator.query_service.server import QueryServiceServer
        except ImportError as exc:
            raise EmulatorStartError(
                "--pg-port needs the Query Service emulator (aep_emulator.query_service."
                f"server.QueryServiceServer), which is not available: {exc}"
            ) from exc
        s, state = self.settings, self.state
        assert state is not None
        self._query_service = QueryServiceServer(
            host=s.host,
            port=s.pg_port,
            ssl_context=self.ssl_context,
            connect=state.qs_connect,
            authenticate=state.qs_authenticate,
            list_tables=state.qs_list_tables,
            max_rows=s.qs_max_rows,
            over_limit=s.qs_over_limit,
            timeout_seconds=s.qs_timeout_seconds,
            before_statement=state.qs_statement,
            max_sessions=state.qs_session_limit,
            scans=state.qs_scans,
        )
        self._query_service.start()
        state.pg_host, state.pg_port = url_host(s.host).strip("[]"), int(self._query_service.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._query_service is not None:
            try:
                self._query_service.stop()
            finally:
                self._query_service = None
        if self.state is not None:
            self.state.close()
            self.state = None
        if self._own_state_dir is not None:
            shutil.rmtree(self._own_state_dir, ignore_errors=True)
            self._own_state_dir = None

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what clients need ---------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        scheme = "https" if self.settings.tls else "http"
        return f"{scheme}://{url_host(self.settings.host)}:{self.port}"

    @property
    def pg_port(self) -> int | None:
        return self.state.pg_port if self.state else None

    @property
    def pg_host(self) -> str | None:
        return self.state.pg_host if self.state else None

    def ready_info(self) -> dict:
        s = self.settings
        return {
            "base_url": self.base_url,
            "ims_url": self.base_url,
            "pg_host": self.pg_host,
            "pg_port": self.pg_port,
            "ca_bundle": str(self.ca_bundle) if self.ca_bundle else None,
            "client_id": s.client_id,
            "org_id": s.org_id,
            "sandbox": s.default_sandbox,
            "sandboxes": list(s.sandboxes),
            "tenant": s.tenant,
            "mode": s.mode,
            "state_dir": str(self.state.state_dir) if self.state else None,
        }
