"""A small hostile HTTPS server on 127.0.0.1 that impersonates IMS and Platform (plain helper, no pytest).

The emulator's fault injection sends what Adobe would send (429, 5xx, resets). This server sends what
a proxy, a captive portal or a broken gateway sends instead: redirects to other hosts, bodies that
drip one byte a second or never end, HTML where JSON belongs, absurd IMS answers, lists that never
end. TLS uses the emulator's certificate machinery (a private CA in ``ca_bundle``); clients verify it.

Each test installs a *script*: ``server.script = lambda request: Reply(...)`` (or a function that
writes the raw answer itself through ``request.handler``). Every request is recorded (method, path,
headers, body) so a test can count calls and check what was sent where.
"""

from __future__ import annotations

import json
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aep_emulator import tls

CLIENT_ID = "hostile-client"
CLIENT_SECRET = "hostile-secret-DO-NOT-LEAK-5c1f"
ORG_ID = "HOSTILE0000@AdobeOrg"
TOKEN = "hostile-token-DO-NOT-LEAK-9a7e"
IMS_PATH = "/ims/token/v3"
# Hook retry waits short enough for a suite, long enough to be real waits.
FAST = {"initial_retry_wait": 0.02, "max_retry_wait": 0.1}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    handler: BaseHTTPRequestHandler = field(repr=False)


@dataclass
class Reply:
    status: int = 200
    body: bytes | str | Any = b""
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


Script = Callable[[Request], "Reply | None"]


def ims_ok(expires_in: Any = 86399, token: Any = TOKEN) -> Reply:
    return Reply(200, {"access_token": token, "token_type": "bearer", "expires_in": expires_in})


def default_script(request: Request) -> Reply:
    if request.path == IMS_PATH:
        return ims_ok()
    return Reply(200, {})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        request = Request(
            self.command, parts.path, parse_qs(parts.query), dict(self.headers.items()), body, self
        )
        with self.server.lock:
            self.server.requests.append(request)
        reply = self.server.owner.script(request)
        if reply is None:  # the script wrote the answer itself
            self.close_connection = True
            return
        data = reply.encoded()
        self.send_response(reply.status)
        headers = {"Content-Type": "application/json", "Content-Length": str(len(data)), **reply.headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, owner: HostileServer, context: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.owner = owner
        self.lock = threading.Lock()
        self.requests: list[Request] = []
        if context is not None:
            self.socket = context.wrap_socket(self.socket, server_side=True)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client giving up mid-drip is what the tests want; no tracebacks


class HostileServer:
    """One listening server (HTTPS with the private CA, or plain HTTP with ``tls=False``)."""

    def __init__(self, *, tls_files: tls.TlsFiles | None) -> None:
        self.script: Script = default_script
        self.stop_event = threading.Event()
        context = tls.server_context(tls_files) if tls_files is not None else None
        self._server = _Server(self, context)
        self.ca_bundle = str(tls_files.ca_bundle) if tls_files is not None else None
        scheme = "https" if tls_files is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"hostile-{self.url}",
            daemon=True,
        )
        self._thread.start()

    @property
    def requests(self) -> list[Request]:
        with self._server.lock:
            return list(self._server.requests)

    def calls(self, path: str | None = None, method: str | None = None) -> int:
        return sum(
            1
            for r in self.requests
            if (path is None or r.path == path) and (method is None or r.method == method)
        )

    def reset(self) -> None:
        self.script = default_script
        with self._server.lock:
            self._server.requests.clear()
        self.stop_event.clear()

    def close(self) -> None:
        self.stop_event.set()  # ends every drip still writing
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    # ------------------------------------------------------------------ raw answers for scripts

    def drip(
        self,
        request: Request,
        *,
        status: int = 200,
        content_length: int | None = 10_000,
        byte: bytes = b" ",
        interval: float = 1.0,
        limit_seconds: float = 120.0,
    ) -> None:
        """Send headers, then one byte every ``interval`` until the client leaves or the server stops."""
        handler = request.handler
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        if content_length is not None:
            handler.send_header("Content-Length", str(content_length))
        handler.end_headers()
        handler.wfile.flush()
        waited = 0.0
        try:
            while waited < limit_seconds and not self.stop_event.wait(interval):
                waited += interval
                handler.wfile.write(byte)
                handler.wfile.flush()
        except OSError:
            return  # the client gave up: what a bounded client does

    def stream(
        self,
        request: Request,
        chunks: Iterable[bytes],
        *,
        status: int = 200,
        content_length: int | None = None,
    ) -> int:
        """Send ``chunks`` as fast as the client reads them (chunked when no length); returns bytes sent."""
        handler = request.handler
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        if content_length is not None:
            handler.send_header("Content-Length", str(content_length))
        else:
            handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        sent = 0
        try:
            for chunk in chunks:
                if self.stop_event.is_set():
                    break
                if content_length is None:
                    handler.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                else:
                    handler.wfile.write(chunk)
                sent += len(chunk)
            if content_length is None:
                handler.wfile.write(b"0\r\n\r\n")
            handler.wfile.flush()
        except OSError:
            pass
        return sent

    def hang(self, request: Request, *, limit_seconds: float = 120.0) -> None:
        """Read the request, answer nothing (until the client leaves or the server stops)."""
        self.stop_event.wait(limit_seconds)


@dataclass
class HostileSite:
    """The server impersonating Adobe, a second HTTPS host and a plain-HTTP host (redirect targets)."""

    adobe: HostileServer
    other: HostileServer
    plain: HostileServer
    ca_bundle: str

    def connection(self, **extra: Any) -> dict[str, Any]:
        """The Airflow connection (``AIRFLOW_CONN_<ID>`` JSON form) of a user pointing at ``adobe``."""
        from aep_emulator.connection import airflow_connection

        ready = {
            "base_url": self.adobe.url,
            "org_id": ORG_ID,
            "sandbox": "prod",
            "client_id": CLIENT_ID,
            "ca_bundle": self.ca_bundle,
        }
        conn = airflow_connection(ready, CLIENT_SECRET)
        conn["extra"].update(extra)
        return conn

    def reset(self) -> None:
        for server in (self.adobe, self.other, self.plain):
            server.reset()

    def close(self) -> None:
        for server in (self.adobe, self.other, self.plain):
            server.close()


def start_site(directory: Path | None = None) -> HostileSite:
    directory = directory or Path(tempfile.mkdtemp(prefix="cja-hostile-"))
    files = tls.generate(directory, ["127.0.0.1"])
    return HostileSite(
        adobe=HostileServer(tls_files=files),
        other=HostileServer(tls_files=files),
        plain=HostileServer(tls_files=None),
        ca_bundle=str(files.ca_bundle),
    )


class HandshakeDripServer:
    """A TCP server that answers a TLS ClientHello with one byte every ``interval`` seconds, so a
    client's handshake never completes while each read returns in time (per-read timeouts never fire)."""

    def __init__(self, *, interval: float = 0.3, limit_seconds: float = 60.0) -> None:
        self.interval, self.limit_seconds = interval, limit_seconds
        self.stop_event = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.url = f"https://127.0.0.1:{self._listener.getsockname()[1]}"
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, name="hostile-handshake-drip", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self.stop_event.is_set():
            try:
                conn, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        # A TLS handshake record header, then its body a byte at a time.
        record = b"\x16\x03\x03\x40\x00" + b"\x02" * 0x4000
        waited = 0.0
        with conn:
            try:
                conn.recv(4096)  # the ClientHello
                for byte in record:
                    if waited >= self.limit_seconds or self.stop_event.wait(self.interval):
                        return
                    waited += self.interval
                    conn.sendall(bytes([byte]))
            except OSError:
                return  # the client gave up

    def close(self) -> None:
        self.stop_event.set()
        self._thread.join(timeout=5)
        self._listener.close()
