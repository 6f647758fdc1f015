"""PostgreSQL v3 wire protocol: message framing, backend message builders, parameter codecs.

Pure functions and small classes over bytes; no sockets except :class:`MessageReader`, which
reads framed messages from anything with ``recv_into``. Type OIDs are PostgreSQL's.
"""

from __future__ import annotations

import datetime as dt
import struct
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, localcontext
from typing import Any, Protocol

from aep_emulator.query_service.errors import (
    FEATURE_NOT_SUPPORTED,
    INVALID_TEXT_REPRESENTATION,
    PROTOCOL_VIOLATION,
    QueryServiceError,
)

# --- startup codes --------------------------------------------------------------------------
PROTOCOL_3_0 = 196608
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
MAX_STARTUP_PACKET = 10_000
MAX_MESSAGE = 512 * 1024 * 1024  # a Bind with large parameters is fine; a garbage length is not

# --- type OIDs ------------------------------------------------------------------------------
BOOL = 16
BYTEA = 17
INT8 = 20
INT2 = 21
INT4 = 23
TEXT = 25
OID = 26
JSON = 114
FLOAT4 = 700
FLOAT8 = 701
UNKNOWN = 705
BPCHAR = 1042
VARCHAR = 1043
DATE = 1082
TIME = 1083
TIMESTAMP = 1114
TIMESTAMPTZ = 1184
INTERVAL = 1186
NUMERIC = 1700
UUID = 2950
JSONB = 3802

# typlen reported in RowDescription (-1 = variable length)
TYPE_LENGTHS: dict[int, int] = {
    BOOL: 1,
    INT2: 2,
    INT4: 4,
    INT8: 8,
    OID: 4,
    FLOAT4: 4,
    FLOAT8: 8,
    DATE: 4,
    TIME: 8,
    TIMESTAMP: 8,
    TIMESTAMPTZ: 8,
    INTERVAL: 16,
    UUID: 16,
}

_PG_EPOCH_DATE = dt.date(2000, 1, 1)
_PG_EPOCH = dt.datetime(2000, 1, 1)
_PG_EPOCH_TZ = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_I64 = struct.Struct("!q")
_F32 = struct.Struct("!f")
_F64 = struct.Struct("!d")
_HEADER = struct.Struct("!ci")


class Receiver(Protocol):
    def recv_into(self, buffer: Any, nbytes: int = ..., /) -> int: ...


class ConnectionClosed(Exception):
    """The peer closed the socket (or it broke) between or inside messages."""


class MessageReader:
    """Buffered reader of framed frontend messages (type byte + int32 length + payload)."""

    def __init__(self, sock: Receiver, bufsize: int = 65536) -> None:
        self._sock = sock
        self._buf = bytearray(bufsize)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0

    def replace_socket(self, sock: Receiver) -> None:
        """Continue on a TLS-wrapped socket; nothing may be buffered (TLS starts at a boundary)."""
        if self._end != self._start:
            raise QueryServiceError(PROTOCOL_VIOLATION, "unexpected data before the TLS handshake")
        self._sock = sock

    def _fill(self, need: int) -> None:
        while self._end - self._start < need:
            if self._start and self._start == self._end:
                self._start = self._end = 0
            if len(self._buf) - self._start < need:
                # Compact, then grow if one message is larger than the buffer.
                pending = self._end - self._start
                size = max(len(self._buf), need * 2 if need > len(self._buf) else len(self._buf))
                newbuf = bytearray(size)
                newbuf[:pending] = self._buf[self._start : self._end]
                self._buf, self._view = newbuf, memoryview(newbuf)
                self._start, self._end = 0, pending
            n = self._sock.recv_into(self._view[self._end :])
            if not n:
                raise ConnectionClosed("client closed the connection")
            self._end += n

    def read_exact(self, n: int) -> bytes:
        self._fill(n)
        data = bytes(self._buf[self._start : self._start + n])
        self._start += n
        return data

    def read_startup(self) -> tuple[int, bytes]:
        """Read an untyped startup-phase packet: (code, rest of payload)."""
        (length,) = _I32.unpack(self.read_exact(4))
        if length < 8 or length > MAX_STARTUP_PACKET:
            raise QueryServiceError(PROTOCOL_VIOLATION, f"invalid startup packet length {length}")
        payload = self.read_exact(length - 4)
        (code,) = _I32.unpack_from(payload, 0)
        return code, payload[4:]

    def read_message(self) -> tuple[bytes, bytes]:
        """Read one typed message: (type byte, payload)."""
        self._fill(5)
        kind = bytes(self._buf[self._start : self._start + 1])
        (length,) = _I32.unpack_from(self._buf, self._start + 1)
        if length < 4 or length > MAX_MESSAGE:
            raise QueryServiceError(PROTOCOL_VIOLATION, f"invalid message length {length}")
        self._start += 5
        return kind, self.read_exact(length - 4)


class PayloadParser:
    """Cursor over one message payload; a truncated message is a protocol violation."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _unpack(self, fmt: struct.Struct) -> int:
        try:
            (value,) = fmt.unpack_from(self.data, self.pos)
        except struct.error:
            raise _malformed() from None
        self.pos += fmt.size
        return value

    def int16(self) -> int:
        return self._unpack(_I16)

    def int32(self) -> int:
        return self._unpack(_I32)

    def cstring(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise _malformed()
        value = self.data[self.pos : end].decode("utf-8")
        self.pos = end + 1
        return value

    def raw(self, n: int) -> bytes:
        value = self.data[self.pos : self.pos + n]
        if len(value) != n or n < 0:
            raise _malformed()
        self.pos += n
        return value


def _malformed() -> QueryServiceError:
    return QueryServiceError(PROTOCOL_VIOLATION, "invalid message format", severity="FATAL")


def parse_startup_params(payload: bytes) -> dict[str, str]:
    """Key/value pairs of a StartupMessage (after the protocol code)."""
    parts = payload.split(b"\x00")
    params: dict[str, str] = {}
    for i in range(0, len(parts) - 1, 2):
        if not parts[i]:
            break
        params[parts[i].decode("utf-8")] = parts[i + 1].decode("utf-8")
    return params


# --- backend messages -----------------------------------------------------------------------


def message(kind: bytes, payload: bytes = b"") -> bytes:
    return _HEADER.pack(kind, len(payload) + 4) + payload


def cstr(value: str) -> bytes:
    return value.encode("utf-8") + b"\x00"


AUTH_OK = message(b"R", _I32.pack(0))
AUTH_CLEARTEXT = message(b"R", _I32.pack(3))
PARSE_COMPLETE = message(b"1")
BIND_COMPLETE = message(b"2")
CLOSE_COMPLETE = message(b"3")
NO_DATA = message(b"n")
PORTAL_SUSPENDED = message(b"s")
EMPTY_QUERY = message(b"I")


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", cstr(name) + cstr(value))


def backend_key_data(pid: int, secret: int) -> bytes:
    return message(b"K", _I32.pack(pid) + _I32.pack(secret))


def ready_for_query(status: str) -> bytes:
    return message(b"Z", status.encode("ascii"))


def command_complete(tag: str) -> bytes:
    return message(b"C", cstr(tag))


def negotiate_protocol_version(newest_minor: int, unsupported: Sequence[str]) -> bytes:
    body = _I32.pack(newest_minor) + _I32.pack(len(unsupported)) + b"".join(cstr(o) for o in unsupported)
    return message(b"v", body)


def parameter_description(oids: Sequence[int]) -> bytes:
    return message(b"t", _I16.pack(len(oids)) + b"".join(_I32.pack(o) for o in oids))


@dataclass(frozen=True)
class Column:
    """One result column as the client sees it."""

    name: str
    type_oid: int
    duck_type: Any = None  # duckdb.DuckDBPyType of the value before text conversion (None: text)

    @property
    def type_len(self) -> int:
        return TYPE_LENGTHS.get(self.type_oid, -1)


def row_description(columns: Sequence[Column], formats: Sequence[int]) -> bytes:
    parts = [_I16.pack(len(columns))]
    for col, fmt in zip(columns, formats):
        parts.append(cstr(col.name) + struct.pack("!ihihih", 0, 0, col.type_oid, col.type_len, -1, fmt))
    return message(b"T", b"".join(parts))


def error_response(err: QueryServiceError, *, notice: bool = False) -> bytes:
    fields = [
        b"S" + cstr(err.severity),
        b"V" + cstr(err.severity),
        b"C" + cstr(err.sqlstate),
        b"M" + cstr(err.message),
    ]
    if err.detail:
        fields.append(b"D" + cstr(err.detail))
    if err.hint:
        fields.append(b"H" + cstr(err.hint))
    if err.position:
        fields.append(b"P" + cstr(str(err.position)))
    return message(b"N" if notice else b"E", b"".join(fields) + b"\x00")


def data_row(values: Sequence[bytes | None]) -> bytes:
    """Encode one DataRow from already-encoded column values (None = SQL NULL)."""
    parts = [_I16.pack(len(values))]
    for value in values:
        if value is None:
            parts.append(b"\xff\xff\xff\xff")
        else:
            parts.append(_I32.pack(len(value)))
            parts.append(value)
    return message(b"D", b"".join(parts))


# --- parameter decoding (Bind) --------------------------------------------------------------


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("t", "true", "y", "yes", "on", "1"):
        return True
    if low in ("f", "false", "n", "no", "off", "0"):
        return False
    raise ValueError(text)


def _parse_timestamp(text: str) -> dt.datetime:
    value = text.strip().replace(" ", "T", 1)
    if value.endswith(("+00", "-00")) or (len(value) > 3 and value[-3] in "+-" and value[-2:].isdigit()):
        value += ":00"  # PostgreSQL prints "+02"; fromisoformat wants "+02:00"
    return dt.datetime.fromisoformat(value)


def _decode_numeric_binary(data: bytes) -> Decimal:
    ndigits, weight, sign, dscale = struct.unpack_from("!hhHh", data, 0)
    if sign == 0xC000:
        return Decimal("NaN")
    value = 0
    for group in struct.unpack_from(f"!{ndigits}H", data, 8):
        value = value * 10000 + group
    with localcontext() as ctx:
        ctx.prec = 200
        result = Decimal(value).scaleb((weight - ndigits + 1) * 4) if ndigits else Decimal(0)
        result = result.quantize(Decimal(1).scaleb(-dscale))
        return result.copy_negate() if sign == 0x4000 else result


_TEXT_DECODERS: dict[int, Callable[[str], Any]] = {
    BOOL: _parse_bool,
    INT2: int,
    INT4: int,
    INT8: int,
    OID: int,
    FLOAT4: float,
    FLOAT8: float,
    NUMERIC: Decimal,
    DATE: dt.date.fromisoformat,
    TIMESTAMP: _parse_timestamp,
    TIMESTAMPTZ: _parse_timestamp,
    UUID: lambda s: str(uuid.UUID(s)),
    BYTEA: lambda s: bytes.fromhex(s[2:]) if s.startswith("\\x") else s.encode("utf-8"),
}

_BINARY_DECODERS: dict[int, Callable[[bytes], Any]] = {
    BOOL: lambda b: b != b"\x00",
    INT2: lambda b: _I16.unpack(b)[0],
    INT4: lambda b: _I32.unpack(b)[0],
    OID: lambda b: struct.unpack("!I", b)[0],
    INT8: lambda b: _I64.unpack(b)[0],
    FLOAT4: lambda b: _F32.unpack(b)[0],
    FLOAT8: lambda b: _F64.unpack(b)[0],
    NUMERIC: _decode_numeric_binary,
    DATE: lambda b: _PG_EPOCH_DATE + dt.timedelta(days=_I32.unpack(b)[0]),
    TIMESTAMP: lambda b: _PG_EPOCH + dt.timedelta(microseconds=_I64.unpack(b)[0]),
    TIMESTAMPTZ: lambda b: _PG_EPOCH_TZ + dt.timedelta(microseconds=_I64.unpack(b)[0]),
    UUID: lambda b: str(uuid.UUID(bytes=b)),
    BYTEA: bytes,
    TEXT: lambda b: b.decode("utf-8"),
    VARCHAR: lambda b: b.decode("utf-8"),
    BPCHAR: lambda b: b.decode("utf-8"),
    UNKNOWN: lambda b: b.decode("utf-8"),
    JSON: lambda b: b.decode("utf-8"),
    JSONB: lambda b: b[1:].decode("utf-8"),
    0: lambda b: b.decode("utf-8"),
}


def decode_parameter(raw: bytes | None, type_oid: int, fmt: int) -> Any:
    """Turn one Bind parameter into a Python value DuckDB can bind."""
    if raw is None:
        return None
    try:
        if fmt == 0:
            text = raw.decode("utf-8")
            decoder = _TEXT_DECODERS.get(type_oid)
            return decoder(text) if decoder else text
        decoder_b = _BINARY_DECODERS.get(type_oid)
        if decoder_b is None:
            raise QueryServiceError(
                FEATURE_NOT_SUPPORTED, f"binary format is not supported for parameters of type oid {type_oid}"
            )
        return decoder_b(raw)
    except QueryServiceError:
        raise
    except (ValueError, struct.error, UnicodeDecodeError, ArithmeticError) as exc:
        raise QueryServiceError(
            INVALID_TEXT_REPRESENTATION, f"invalid input for parameter of type oid {type_oid}: {exc}"
        ) from exc


# --- binary result encoding (only when a client asks for result format 1) -------------------


def _encode_numeric_binary(value: Decimal) -> bytes:
    """PostgreSQL's binary numeric: base-10000 digit groups, a group weight and a display scale."""
    if value.is_nan():
        return struct.pack("!hhHh", 0, 0, 0xC000, 0)
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    dscale = max(0, -exponent)
    frac_groups = (dscale + 3) // 4
    with localcontext() as ctx:
        ctx.prec = 200  # scaleb must stay exact for 38-digit DECIMALs
        n = int(abs(value).scaleb(frac_groups * 4))
    groups: list[int] = []
    while n:
        n, rem = divmod(n, 10000)
        groups.append(rem)
    groups.reverse()
    weight = len(groups) - 1 - frac_groups
    while groups and groups[-1] == 0:
        groups.pop()
    if not groups:
        weight = 0
    sign = 0x4000 if value.is_signed() and groups else 0
    return struct.pack(f"!hhHh{len(groups)}H", len(groups), weight, sign, dscale, *groups)


def _encode_text(value: Any) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else str(value).encode("utf-8")


def _encode_timestamp(value: dt.datetime) -> bytes:
    if value.tzinfo is not None:
        delta = value - _PG_EPOCH_TZ
    else:
        delta = value - _PG_EPOCH
    return _I64.pack((delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds)


def _encode_time(value: dt.time) -> bytes:
    micros = ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond
    return _I64.pack(micros)


BINARY_ENCODERS: dict[int, Callable[[Any], bytes]] = {
    BOOL: lambda v: b"\x01" if v else b"\x00",
    INT2: lambda v: _I16.pack(int(v)),
    INT4: lambda v: _I32.pack(int(v)),
    INT8: lambda v: _I64.pack(int(v)),
    FLOAT4: lambda v: _F32.pack(float(v)),
    FLOAT8: lambda v: _F64.pack(float(v)),
    NUMERIC: lambda v: _encode_numeric_binary(v if isinstance(v, Decimal) else Decimal(str(v))),
    DATE: lambda v: _I32.pack((v - _PG_EPOCH_DATE).days),
    TIME: _encode_time,
    TIMESTAMP: _encode_timestamp,
    TIMESTAMPTZ: _encode_timestamp,
    UUID: lambda v: (v if isinstance(v, uuid.UUID) else uuid.UUID(str(v))).bytes,
    BYTEA: bytes,
    TEXT: _encode_text,
    VARCHAR: _encode_text,
    JSON: _encode_text,
}
