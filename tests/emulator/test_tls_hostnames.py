"""``--tls-hostname``: the generated certificate is valid for a service name (docker-compose's
``aep-emulator``), so clients there verify it with the CA bundle instead of turning verification off."""

from __future__ import annotations

import socket
import ssl

import pytest

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
