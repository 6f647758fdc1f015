"""Start the AEP emulator for tests: as a subprocess through its CLI, or in process.

Plain helpers (no pytest import), so any suite can build its own fixtures::

    from emulator_fixture import start_subprocess

    @pytest.fixture(scope="session")
    def emulator():
        with start_subprocess(profiles=2000, pg=True) as emu:
            yield emu

``emu.base_url``, ``emu.ca_bundle``, ``emu.pg_host``/``emu.pg_port``, ``emu.credentials`` (client id,
secret, org, sandbox, tenant, scope), ``emu.admin`` (the test administration API) and ``emu.api()``
(a small authenticated Platform/CJA client). TLS verification always uses the emulator's CA bundle.

Note: ``requests`` lets ``REQUESTS_CA_BUNDLE`` override ``Session.verify``; these clients therefore
pass ``verify=`` on every request.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

DEFAULT_SECRET = "emulator-test-secret"
DEFAULT_SCOPE = "openid,session,AdobeID,read_organizations,additional_info.projectedProductContext"


@dataclass(frozen=True)
class Credentials:
    client_id: str
    client_secret: str
    org_id: str
    sandbox: str
    tenant: str
    scope: str = DEFAULT_SCOPE


class _Http:
    """``requests`` with the emulator's CA bundle on every call and a default timeout."""

    def __init__(self, base_url: str, ca_bundle: str | None, timeout: float = 30.0) -> None:
        self.base_url, self.ca_bundle, self.timeout = base_url.rstrip("/"), ca_bundle, timeout
        self.session = requests.Session()

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("verify", self.ca_bundle if self.ca_bundle else True)
        kwargs.setdefault("timeout", self.timeout)
        return self.session.request(method, self.base_url + path, **kwargs)

    def close(self) -> None:
        self.session.close()


class AdminClient(_Http):
    """The emulator's test administration API (see ``emulator/rest/admin.py``)."""

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise AssertionError(f"admin {method} {path} -> {response.status_code}: {response.text}")
        return response.json()

    def _jsonl(self, path: str, params: Any) -> list[dict]:
        response = self.request("GET", path, params=params)
        if response.status_code >= 400:
            raise AssertionError(f"admin GET {path} -> {response.status_code}: {response.text}")
        return [json.loads(line) for line in response.text.splitlines() if line]

    def state(self) -> dict:
        return self._json("GET", "/emulator/state")

    def stats(self) -> dict:
        return self._json("GET", "/emulator/stats")

    def tokens(self) -> list[str]:
        """The access tokens the emulator issued (the last 1000)."""
        return self._json("GET", "/emulator/tokens")["tokens"]

    def reset(self) -> None:
        self._json("POST", "/emulator/reset")

    def set_faults(self, rules: list[dict], seed: int = 0) -> list[dict]:
        return self._json("POST", "/emulator/faults", json={"seed": seed, "rules": rules})

    def clear_faults(self) -> None:
        self._json("DELETE", "/emulator/faults")

    def scans(self, method: str = "GET", **cost: float) -> dict:
        """Query Service scan-cost model: totals (GET), set the cost (POST), zero the totals (DELETE)."""
        return self._json(
            method, "/emulator/query-service/scans", **({"json": cost} if method == "POST" else {})
        )

    def knobs(self, **changes: Any) -> dict:
        return (
            self._json("POST", "/emulator/knobs", json=changes)
            if changes
            else self._json("GET", "/emulator/knobs")
        )

    def advance_clock(self, seconds: float) -> dict:
        return self._json("POST", "/emulator/clock", json={"advance_seconds": seconds})

    def set_clock(self, instant: str, frozen: bool | None = None) -> dict:
        body: dict[str, Any] = {"set": instant}
        if frozen is not None:
            body["frozen"] = frozen
        return self._json("POST", "/emulator/clock", json=body)

    def freeze_clock(self, frozen: bool) -> dict:
        return self._json("POST", "/emulator/clock", json={"frozen": frozen})

    def clock(self) -> dict:
        return self._json("GET", "/emulator/clock")

    def set_membership(
        self, profile_index: int, audience_id: str, member: bool, at: str | None = None
    ) -> dict:
        body = {"profile_index": profile_index, "audience_id": audience_id, "member": member}
        if at is not None:
            body["at"] = at
        return self._json("POST", "/emulator/memberships", json=body)

    def rename_audience(self, audience_id: str, name: str) -> dict:
        return self._json("PATCH", f"/emulator/audiences/{audience_id}", json={"name": name})

    def delete_audience(self, audience_id: str) -> dict:
        return self._json("DELETE", f"/emulator/audiences/{audience_id}")

    def snapshot(
        self, audiences: list[str] | None = None, statuses: list[str] | None = None, at: str | None = None
    ) -> list[dict]:
        return self._jsonl(
            "/emulator/truth/snapshot",
            {"audience": audiences or [], "status": statuses or [], **({"at": at} if at else {})},
        )

    def transitions(self, audiences: list[str] | None, start: str, end: str) -> list[dict]:
        return self._jsonl(
            "/emulator/truth/transitions", {"audience": audiences or [], "start": start, "end": end}
        )

    def profile(self, index: int) -> dict:
        return self._json("GET", f"/emulator/truth/profiles/{index}")

    def dataset_records(self, dataset_id: str) -> list[dict]:
        return self._jsonl(f"/emulator/datasets/{dataset_id}/records", None)

    def batch_rows(self, batch_id: str) -> list[dict]:
        return self._jsonl(f"/emulator/batches/{batch_id}/rows", None)

    def add_dataset_to_connection(self, connection_id: str, dataset_id: str, **options: Any) -> dict:
        return self._json(
            "POST",
            f"/emulator/cja/connections/{connection_id}/datasets",
            json={"dataSetId": dataset_id, **options},
        )

    def add_dimension(self, data_view_id: str, schema_path: str, **options: Any) -> dict:
        return self._json(
            "POST",
            f"/emulator/cja/dataviews/{data_view_id}/dimensions",
            json={"schemaPath": schema_path, **options},
        )


class ApiClient(_Http):
    """An authenticated client of the emulated Adobe APIs (one token, fetched lazily)."""

    def __init__(self, base_url: str, ca_bundle: str | None, credentials: Credentials) -> None:
        super().__init__(base_url, ca_bundle)
        self.credentials = credentials
        self._token: str | None = None

    def token(self, refresh: bool = False) -> str:
        if self._token is None or refresh:
            c = self.credentials
            response = self.request(
                "POST",
                "/ims/token/v3",
                data={
                    "grant_type": "client_credentials",
                    "client_id": c.client_id,
                    "client_secret": c.client_secret,
                    "scope": c.scope,
                },
            )
            response.raise_for_status()
            self._token = response.json()["access_token"]
        return self._token

    def headers(self, sandbox: str | None = None, *, cja: bool = False) -> dict[str, str]:
        c = self.credentials
        out = {
            "Authorization": f"Bearer {self.token()}",
            "x-api-key": c.client_id,
            "x-gw-ims-org-id": c.org_id,
        }
        if not cja:
            out["x-sandbox-name"] = sandbox or c.sandbox
        return out

    def call(
        self,
        method: str,
        path: str,
        *,
        sandbox: str | None = None,
        cja: bool = False,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        return self.request(
            method, path, headers={**self.headers(sandbox, cja=cja), **(headers or {})}, **kwargs
        )


@dataclass
class RunningEmulator:
    base_url: str
    ca_bundle: str | None
    pg_host: str | None
    pg_port: int | None
    credentials: Credentials
    ready: dict
    admin: AdminClient = field(init=False)
    process: subprocess.Popen | None = None  # subprocess variant
    server: Any = None  # in-process variant: the EmulatorServer
    state: Any = None  # in-process variant: the EmulatorState (Python ground truth)
    _stop: Any = None

    def __post_init__(self) -> None:
        self.admin = AdminClient(self.base_url, self.ca_bundle)

    def api(self) -> ApiClient:
        return ApiClient(self.base_url, self.ca_bundle, self.credentials)

    def pg_connect(self, token: str, *, sandbox: str = "prod", **options: Any) -> Any:
        """A psycopg (3) connection to the emulator's Query Service as Adobe documents it: the org as
        user, an access token as password, ``<sandbox>:all``, TLS verified against its CA."""
        import psycopg

        return psycopg.connect(
            host=self.pg_host,
            port=self.pg_port,
            user=self.credentials.org_id,
            password=token,
            dbname=f"{sandbox}:all",
            sslmode="verify-full",
            sslrootcert=self.ca_bundle,
            gssencmode="disable",
            **options,
        )

    def stop(self) -> None:
        self.admin.close()
        if self._stop is not None:
            stop, self._stop = self._stop, None
            stop()

    def __enter__(self) -> RunningEmulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _credentials(ready: dict, secret: str) -> Credentials:
    return Credentials(
        client_id=ready["client_id"],
        client_secret=secret,
        org_id=ready["org_id"],
        sandbox=ready["sandbox"],
        tenant=ready["tenant"],
    )


def start_subprocess(
    *,
    profiles: int = 1000,
    seed: int = 42,
    pg: bool = False,
    args: list[str] | None = None,
    client_secret: str = DEFAULT_SECRET,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
    realistic: bool = False,
) -> RunningEmulator:
    """Run ``python -m aep_emulator`` and wait for its ready file.

    ``realistic=True`` starts it in realistic mode (``--realistic``: Adobe's pace and limits on the
    compressed clock); ``args`` still override single settings of the preset.
    On failure (exit, timeout, crash at stop) the emulator's stderr is printed, so the test log says why.
    """
    workdir = Path(tempfile.mkdtemp(prefix="emulator-fixture-"))
    ready_file, stderr_path = workdir / "ready.json", workdir / "stderr.log"
    command = [
        sys.executable,
        "-m",
        "aep_emulator",
        "--port",
        "0",
        "--profiles",
        str(profiles),
        "--seed",
        str(seed),
        "--client-secret",
        client_secret,
        "--ready-file",
        str(ready_file),
        "--state-dir",
        str(workdir / "state"),
    ]
    if pg:
        command += ["--pg-port", "0"]
    if realistic:
        command += ["--realistic"]
    command += list(args or [])
    stderr = stderr_path.open("wb")
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=stderr, env={**os.environ, **(env or {})}
    )

    def dump_stderr(reason: str) -> None:
        stderr.flush()
        print(
            f"--- emulator stderr ({reason}) ---\n{stderr_path.read_text(errors='replace')}\n--- end ---",
            file=sys.stderr,
        )

    deadline = time.monotonic() + timeout
    while not ready_file.exists():
        if process.poll() is not None:
            dump_stderr(f"exited with {process.returncode} before it was ready")
            stderr.close()
            raise RuntimeError(f"emulator exited with code {process.returncode} during start-up: {command}")
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            dump_stderr("start-up timeout")
            stderr.close()
            raise RuntimeError(f"emulator not ready within {timeout}s")
        time.sleep(0.05)
    ready = json.loads(ready_file.read_text())

    def stop() -> None:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            dump_stderr("did not stop on SIGTERM; killed")
            code = None
        if code not in (0, None):
            dump_stderr(f"exit code {code}")
        stderr.close()

    emu = RunningEmulator(
        base_url=ready["base_url"],
        ca_bundle=ready["ca_bundle"],
        pg_host=ready["pg_host"],
        pg_port=ready["pg_port"],
        credentials=_credentials(ready, client_secret),
        ready=ready,
    )
    emu._stop, emu.process = stop, process
    return emu


def start_in_process(settings: Any = None, **overrides: Any) -> RunningEmulator:
    """Run the emulator in this process (uvicorn in a thread). ``overrides`` update the settings.
    For realistic mode pass ``EmulatorSettings.realistic(...)`` as ``settings``.

    Exposes ``.server`` (EmulatorServer) and ``.state`` (EmulatorState) for Python-level ground truth.
    """
    from aep_emulator import EmulatorServer, EmulatorSettings

    base = settings or EmulatorSettings(client_secret=DEFAULT_SECRET)
    server = EmulatorServer(base.with_changes(**overrides) if overrides else base).start()
    ready = server.ready_info()
    emu = RunningEmulator(
        base_url=ready["base_url"],
        ca_bundle=ready["ca_bundle"],
        pg_host=ready["pg_host"],
        pg_port=ready["pg_port"],
        credentials=_credentials(ready, server.settings.client_secret),
        ready=ready,
    )
    emu._stop, emu.server, emu.state = server.stop, server, server.state
    return emu


def point_default_connection(emu: RunningEmulator, setenv: Callable[[str, str], None]) -> dict[str, Any]:
    """Point the provider's default Adobe connection at ``emu`` (``setenv``: e.g. pytest's
    ``monkeypatch.setenv``, so the test undoes it) and forget cached tokens; returns the connection."""
    from aep_emulator.connection import airflow_connection
    from airflow_cja_audiences import DEFAULT_CONN_ID
    from airflow_cja_audiences.hooks.platform import clear_token_cache

    conn = airflow_connection(emu.ready, emu.credentials.client_secret)
    setenv(f"AIRFLOW_CONN_{DEFAULT_CONN_ID.upper()}", json.dumps(conn))
    clear_token_cache()
    return conn


@contextmanager
def connected_subprocess(setenv: Callable[[str, str], None], **kwargs: Any) -> Iterator[RunningEmulator]:
    """:func:`start_subprocess` (``kwargs``) with the default connection pointed at it; the cached
    tokens, which belong to it, are forgotten again when it stops."""
    from airflow_cja_audiences.hooks.platform import clear_token_cache

    with start_subprocess(**kwargs) as running:
        point_default_connection(running, setenv)
        try:
            yield running
        finally:
            clear_token_cache()
