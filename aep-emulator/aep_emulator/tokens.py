"""IMS access tokens: JWT-shaped (header.payload.signature), HMAC-signed with a per-process secret.

Real IMS access tokens are JWTs whose payload carries ``created_at`` and ``expires_in`` as
millisecond strings; clients decode them to schedule a refresh, so opaque tokens would break them.
Expiry follows real time (see :mod:`clock`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class InvalidToken(Exception):
    """The bearer token is malformed, forged or expired (gateway answers 401013)."""


@dataclass(frozen=True)
class TokenInfo:
    client_id: str
    org_id: str
    created_ms: int
    expires_in_ms: int
    scope: str

    @property
    def expires_at(self) -> float:
        return (self.created_ms + self.expires_in_ms) / 1000.0


class TokenService:
    """Issues and checks tokens; counts how many were issued (tests look for token bursts)."""

    def __init__(self, org_id: str) -> None:
        self._secret = secrets.token_bytes(32)
        self._org_id = org_id
        self._lock = threading.Lock()
        self.issued = 0
        self.issued_log: list[tuple[float, str]] = []  # (real time, client id); bounded below
        self.issued_tokens: list[str] = []  # the tokens themselves (secret scans in tests); bounded below

    def issue(self, client_id: str, scope: str, lifetime_seconds: float) -> tuple[str, int]:
        """Return (access token, expires_in seconds)."""
        created_ms = int(time.time() * 1000)
        lifetime_ms = int(lifetime_seconds * 1000)
        header = {"alg": "HS256", "typ": "JWT", "kid": "emulator-key-at-1", "itt": "at"}
        payload = {
            "id": f"{int(created_ms)}_{uuid.uuid4()}_ue1",
            "type": "access_token",
            "client_id": client_id,
            "user_id": f"{client_id.upper()}@techacct.adobe.com",
            "org": self._org_id,
            "as": "ims-na1",
            "ctp": 0,
            "pac": f"{client_id}_0",
            "rtid": str(uuid.uuid4()),
            "moi": secrets.token_hex(4),
            "scope": scope,
            "created_at": str(created_ms),
            "expires_in": str(lifetime_ms),
        }
        signing_input = (
            f"{_b64(json.dumps(header, separators=(',', ':')).encode())}."
            f"{_b64(json.dumps(payload, separators=(',', ':')).encode())}"
        )
        signature = hmac.new(self._secret, signing_input.encode("ascii"), hashlib.sha256).digest()
        with self._lock:
            self.issued += 1
            self.issued_log.append((time.time(), client_id))
            del self.issued_log[:-1000]
        token = f"{signing_input}.{_b64(signature)}"
        with self._lock:
            self.issued_tokens.append(token)
            del self.issued_tokens[:-1000]
        return token, max(1, int(lifetime_seconds))

    def validate(self, token: str) -> TokenInfo:
        parts = token.split(".")
        if len(parts) != 3:
            raise InvalidToken("token is not a JWT")
        expected = hmac.new(self._secret, f"{parts[0]}.{parts[1]}".encode("ascii"), hashlib.sha256).digest()
        try:
            signature = _unb64(parts[2])
            payload = json.loads(_unb64(parts[1]))
        except (ValueError, json.JSONDecodeError) as exc:
            raise InvalidToken("token cannot be decoded") from exc
        if not hmac.compare_digest(signature, expected):
            raise InvalidToken("token signature does not match (not issued by this emulator)")
        info = TokenInfo(
            client_id=payload["client_id"],
            org_id=payload["org"],
            created_ms=int(payload["created_at"]),
            expires_in_ms=int(payload["expires_in"]),
            scope=payload.get("scope", ""),
        )
        if time.time() >= info.expires_at:
            raise InvalidToken("token expired")
        return info

    def reset(self) -> None:
        with self._lock:
            self.issued = 0
            self.issued_log.clear()
            self.issued_tokens.clear()
