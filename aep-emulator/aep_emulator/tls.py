"""TLS for the REST port and the Query Service port: a private CA and a server certificate.

Clients trust the emulator through the CA bundle (``ca_bundle`` in the ready line), never by
turning certificate verification off. The certificates come from ``trustme``, which issues
extensions that pass strict X.509 checking (Python 3.13+ ``VERIFY_X509_STRICT``: CA key usage,
SKI/AKI, critical SAN), so the emulator no longer carries its own certificate builder.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import trustme

log = logging.getLogger(__name__)

# The names every certificate carries: clients on the same machine connect through one of them.
LOOPBACK_NAMES = ("127.0.0.1", "::1", "localhost")
LEAF_DAYS = 825
# Wildcard bind addresses are not names a client connects to, so they never enter the SAN.
_WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::"})


@dataclass(frozen=True)
class TlsFiles:
    ca_bundle: Path
    cert: Path
    key: Path


def certificate_names(hosts: list[str]) -> list[str]:
    """The subject alternative names for ``hosts``: loopback first, order kept, duplicates and
    wildcard bind addresses dropped."""
    return [h for h in dict.fromkeys([*LOOPBACK_NAMES, *hosts]) if h not in _WILDCARD_BINDS]


def _write_private(blob: trustme.Blob, path: Path) -> None:
    blob.write_to_path(str(path))
    path.chmod(0o600)


def generate(directory: Path, hosts: list[str]) -> TlsFiles:
    """Write ``ca.pem``, ``server.pem`` (leaf + CA chain) and ``server.key`` into ``directory``.

    The server certificate names 127.0.0.1, ::1, localhost and every extra host given
    (``--tls-hostname``, e.g. docker-compose's ``aep-emulator`` service name).
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="airflow-cja-audiences emulator CA", path_length=0)
    names = certificate_names(hosts)
    # The leaf's validity stays what it was before trustme: from a few minutes ago (clock skew) for
    # 825 days, the longest lifetime Apple's TLS clients accept for a server certificate
    # (https://support.apple.com/en-us/103769); trustme's default would run to the year 3000.
    now = datetime.now(timezone.utc)
    leaf = ca.issue_cert(
        *names,
        common_name="localhost",
        not_before=now - timedelta(minutes=5),
        not_after=now + timedelta(days=LEAF_DAYS),
    )
    files = TlsFiles(
        ca_bundle=directory / "ca.pem", cert=directory / "server.pem", key=directory / "server.key"
    )
    ca.cert_pem.write_to_path(str(files.ca_bundle))
    # The server file carries the chain up to and including the CA, as it always has, so clients
    # that only trust the CA can build the path (trustme's chain stops below a root CA).
    files.cert.write_bytes(b"".join(blob.bytes() for blob in [*leaf.cert_chain_pems, ca.cert_pem]))
    _write_private(leaf.private_key_pem, files.key)
    _write_private(ca.private_key_pem, directory / "ca.key")
    log.info("TLS certificate issued for %s (CA bundle %s)", ", ".join(names), files.ca_bundle)
    return files


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """The server-side context shared by the REST port and the Query Service port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(files.cert), str(files.key))
    return context
