"""The Query Service emulator in a child process, for the benchmarks that read from it.

A child process keeps the server's DuckDB, threads and GIL away from the clients being measured
(and out of their peak RSS). The child builds its table, serves it over TLS with a private CA and
prints ``READY {json}``; the parent closes the child's stdin to stop it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"
DATABASE = "prod:all"
USER = "BENCH0000000000000000@AdobeOrg"


def serve(state_dir: Path, table: str, build: Callable[[Any], None], max_rows: int) -> None:
    """In the child: build ``table`` with ``build(db)``, serve it, return when stdin closes."""
    import duckdb

    from aep_emulator import tls
    from aep_emulator.query_service.server import QueryServiceServer

    db = duckdb.connect()
    build(db)
    files = tls.generate(state_dir / "tls", [])

    def authenticate(user: str, password: str, database: str) -> None:
        if password != TOKEN or database != DATABASE:
            raise PermissionError("Invalid authentication token")

    server = QueryServiceServer(
        host="127.0.0.1",
        port=0,
        ssl_context=tls.server_context(files),
        connect=db.cursor,
        authenticate=authenticate,
        max_rows=max_rows,
        list_tables=lambda: [{"name": table, "dataSetId": "bench", "dataSet": "bench", "description": None}],
    )
    server.start()
    print("READY " + json.dumps({"port": server.port, "ca": str(files.ca_bundle)}), flush=True)
    try:
        sys.stdin.read()  # the parent closes our stdin when it is done
    finally:
        server.stop()


class ServerProcess:
    """In the parent: ``python -m <module> --serve DIR <args>``; ``dsn`` verifies the server's certificate."""

    def __init__(self, module: str, state_dir: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "--serve", str(state_dir), *args],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"the Query Service emulator did not start (said {line!r})")
        info = json.loads(line[len("READY ") :])
        self.dsn = {
            "host": "127.0.0.1",
            "port": info["port"],
            "user": USER,
            "password": TOKEN,
            "dbname": DATABASE,
            "sslmode": "verify-full",
            "sslrootcert": info["ca"],
        }

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
