"""``--tls-hostname``: the generated certificate is valid for a service name (docker-compose's
``aep-emulator``), so clients there verify it with the CA bundle instead of turning verification off."""

from __future__ import annotations

import socket
import ssl
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from emulator_fixture import start_subprocess


def _handshake(port: int, ca_bundle: str, server_hostname: str) -> None:
    """TLS to 127.0.0.1:port with hostname verification against ``server_hostname``."""
    context = ssl.create_default_context(cafile=ca_bundle)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=server_hostname):
            pass


def test_certificate_names_the_extra_hostname_only():
    with start_subprocess(profiles=20, args=["--tls-hostname", "aep-emulator"]) as emu:
        port = int(emu.base_url.rsplit(":", 1)[1])
        _handshake(port, emu.ca_bundle, "aep-emulator")
        _handshake(port, emu.ca_bundle, "localhost")  # the loopback names stay
        with pytest.raises(ssl.SSLCertVerificationError, match="match"):
            _handshake(port, emu.ca_bundle, "other-service")


def test_generated_chain_verifies_under_strict_x509(tmp_path):
    """The trustme-issued chain passes Python's strict X.509 checks (3.13 turns them on by
    default) for every loopback name, and wildcard bind addresses never become names."""
    from aep_emulator import tls

    assert tls.certificate_names(["0.0.0.0", "::", "aep-emulator", "localhost"]) == [
        "127.0.0.1",
        "::1",
        "localhost",
        "aep-emulator",
    ]
    files = tls.generate(tmp_path, ["aep-emulator"])
    assert files.cert.read_text().count("BEGIN CERTIFICATE") == 2  # leaf + CA
    assert files.key.stat().st_mode & 0o077 == 0
    # Apple's TLS clients want a server certificate valid at most 825 days and marked serverAuth.
    leaf = x509.load_pem_x509_certificates(files.cert.read_bytes())[0]
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= timedelta(days=tls.LEAF_DAYS, minutes=5)
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    client = ssl.create_default_context(cafile=str(files.ca_bundle))
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    server = tls.server_context(files)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        import threading

        def serve() -> None:
            conn, _ = listener.accept()
            with conn, server.wrap_socket(conn, server_side=True) as tls_conn:
                tls_conn.recv(1)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client.wrap_socket(raw, server_hostname="aep-emulator") as conn:
                conn.sendall(b"x")
        thread.join(timeout=10)
