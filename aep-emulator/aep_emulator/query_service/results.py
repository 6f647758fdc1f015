"""Result rows of the Query Service emulator, already encoded as PostgreSQL DataRow messages.

* :class:`BufferedRows` - rows in memory: results within the row cap (they must be counted before
  the first row goes out) and canned answers such as ``SHOW``;
* :class:`StreamingRows` - a live DuckDB result read by a read-ahead thread (``LIMIT 0`` results);
* :class:`FetchRows` - the slice of a cursor one ``FETCH`` returns, in the formats it asked for.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import duckdb

from aep_emulator.query_service import errors as err
from aep_emulator.query_service import protocol as pg
from aep_emulator.query_service.errors import QueryServiceError

FETCH_CHUNK = 10_000  # rows per DuckDB fetch: large enough to amortise Python, small enough to stream


class RowSource:
    """Rows of one result, already encoded as DataRow messages."""

    columns: list[pg.Column]
    formats: list[int]

    def take(self, limit: int | None) -> Iterator[list[bytes]]:
        """Yield chunks of DataRow messages, at most ``limit`` rows in total (None: all)."""
        raise NotImplementedError

    @property
    def exhausted(self) -> bool:
        raise NotImplementedError

    @property
    def position(self) -> int:
        """Rows taken so far (a cursor's position for FETCH ABSOLUTE/RELATIVE and MOVE)."""
        raise NotImplementedError

    @property
    def live_cursor(self) -> duckdb.DuckDBPyConnection | None:
        """The DuckDB cursor still producing rows (to interrupt), if any."""
        return None

    def close(self) -> None:
        pass


class BufferedRows(RowSource):
    """Rows held in memory (results within the row cap, and canned answers)."""

    def __init__(self, columns: list[pg.Column], formats: list[int], rows: list[bytes]) -> None:
        self.columns, self.formats = columns, formats
        self._rows = rows
        self._pos = 0

    @classmethod
    def text(cls, names: Sequence[str], rows: Sequence[Sequence[str | None]]) -> BufferedRows:
        columns = [pg.Column(n, pg.TEXT) for n in names]
        encoded = [pg.data_row([None if v is None else v.encode("utf-8") for v in row]) for row in rows]
        return cls(columns, [0] * len(columns), encoded)

    def take(self, limit: int | None) -> Iterator[list[bytes]]:
        end = len(self._rows) if limit is None else min(len(self._rows), self._pos + limit)
        while self._pos < end:
            start, self._pos = self._pos, min(end, self._pos + FETCH_CHUNK * 4)
            yield self._rows[start : self._pos]

    @property
    def exhausted(self) -> bool:
        return self._pos >= len(self._rows)

    @property
    def position(self) -> int:
        return self._pos


class StreamingRows(RowSource):
    """Rows of a live DuckDB result (only the ``LIMIT 0`` override of the row cap streams).

    A read-ahead thread keeps a few encoded chunks ready, so DuckDB works while the client parses
    the previous FETCH (a cursor client waits for each answer before it asks again) and while the
    socket is busy. DuckDB errors, including the interrupt of a timeout or cancel, travel through
    the queue and are raised by :meth:`take` in the connection's thread.
    """

    _END = object()

    def __init__(
        self,
        columns: list[pg.Column],
        formats: list[int],
        cursor: duckdb.DuckDBPyConnection,
        encode: Callable[[list[tuple[Any, ...]]], list[bytes]],
        read_ahead: int = 3,
    ) -> None:
        self.columns, self.formats = columns, formats
        self._cursor: duckdb.DuckDBPyConnection | None = cursor
        self._encode = encode
        self._pending: list[bytes] = []
        self._done = False
        self._taken = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=read_ahead)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="qs-read-ahead", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        cursor = self._cursor
        assert cursor is not None
        try:
            while not self._stop.is_set():
                fetched = cursor.fetchmany(FETCH_CHUNK)
                if not fetched:
                    self._put(self._END)
                    return
                self._put(self._encode(fetched))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            self._put(exc)

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def take(self, limit: int | None) -> Iterator[list[bytes]]:
        remaining = limit
        while remaining is None or remaining > 0:
            if not self._pending:
                if self._done:
                    return
                item = self._queue.get()
                if item is self._END or isinstance(item, BaseException):
                    self._done = True
                    self.close()
                    if item is self._END:
                        return
                    raise item
                self._pending = item
            n = len(self._pending) if remaining is None else min(remaining, len(self._pending))
            chunk, self._pending = self._pending[:n], self._pending[n:]
            if remaining is not None:
                remaining -= n
            self._taken += n
            yield chunk

    @property
    def exhausted(self) -> bool:
        return self._done and not self._pending

    @property
    def position(self) -> int:
        return self._taken

    @property
    def live_cursor(self) -> duckdb.DuckDBPyConnection | None:
        return self._cursor

    def close(self) -> None:
        self._stop.set()
        cursor, self._cursor = self._cursor, None
        if cursor is None:
            return
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            try:
                cursor.interrupt()  # a read-ahead blocked in DuckDB stops now
            except duckdb.Error:
                pass
            self._thread.join(timeout=10)
        try:
            cursor.close()
        except duckdb.Error:
            pass


def blob_rows(rows: list[tuple[Any, ...]]) -> list[bytes]:
    """The text path: DuckDB already built each DataRow (see encoding.datarow_sql)."""
    return [r[0] for r in rows]


def value_encoder(
    columns: Sequence[pg.Column], formats: Sequence[int]
) -> Callable[[list[tuple[Any, ...]]], list[bytes]]:
    """Python encoder for the (rare) binary-format path: text columns arrive pre-rendered."""
    encoders: list[Callable[[Any], bytes]] = []
    for col, fmt in zip(columns, formats):
        if fmt == 0:
            encoders.append(lambda v: v.encode("utf-8"))
        else:
            enc = pg.BINARY_ENCODERS.get(col.type_oid)
            if enc is None:
                raise QueryServiceError(
                    err.FEATURE_NOT_SUPPORTED, f'binary format is not supported for column "{col.name}"'
                )
            encoders.append(enc)

    def encode(rows: list[tuple[Any, ...]]) -> list[bytes]:
        return [pg.data_row([None if v is None else e(v) for e, v in zip(encoders, row)]) for row in rows]

    return encode


def transcode_to_binary(
    rows: list[bytes], columns: Sequence[pg.Column], formats: Sequence[int]
) -> list[bytes]:
    """Re-encode text DataRows with some columns in binary (FETCH of a text cursor asking for binary)."""
    out = []
    for row in rows:
        parser = pg.PayloadParser(row)
        parser.pos = 5
        count = parser.int16()
        values: list[bytes | None] = []
        for i in range(count):
            length = parser.int32()
            raw = None if length < 0 else parser.raw(length)
            if raw is not None and formats[i] == 1:
                value = pg.decode_parameter(raw, columns[i].type_oid, 0)
                encoder = pg.BINARY_ENCODERS.get(columns[i].type_oid)
                if encoder is None:
                    raise QueryServiceError(
                        err.FEATURE_NOT_SUPPORTED,
                        f'binary format is not supported for column "{columns[i].name}"',
                    )
                raw = encoder(value)
            values.append(raw)
        out.append(pg.data_row(values))
    return out


class FetchRows(RowSource):
    """The rows one FETCH takes from a cursor, in the formats the FETCH asked for."""

    def __init__(self, cursor: RowSource, count: int | None, formats: list[int]) -> None:
        if formats != cursor.formats and any(cursor.formats):
            raise QueryServiceError(
                err.FEATURE_NOT_SUPPORTED,
                "FETCH in text format from a BINARY cursor is not supported by the emulator",
            )
        self.columns = cursor.columns
        self.formats = formats
        self._cursor = cursor
        self._remaining = count  # None: all
        self._transcode = formats != cursor.formats

    def take(self, limit: int | None) -> Iterator[list[bytes]]:
        if limit is None:
            want = self._remaining
        else:
            want = limit if self._remaining is None else min(limit, self._remaining)
        for chunk in self._cursor.take(want):
            if self._remaining is not None:
                self._remaining -= len(chunk)
            yield transcode_to_binary(chunk, self.columns, self.formats) if self._transcode else chunk

    @property
    def exhausted(self) -> bool:
        return self._remaining == 0 or self._cursor.exhausted

    @property
    def position(self) -> int:
        return self._cursor.position

    @property
    def live_cursor(self) -> duckdb.DuckDBPyConnection | None:
        return self._cursor.live_cursor


def expand_formats(codes: Sequence[int], ncols: int) -> list[int]:
    """Per-column format codes from a Bind's list: none = all text, one = all alike, else one each."""
    if not codes:
        return [0] * ncols
    if len(codes) == 1:
        return [codes[0]] * ncols
    if len(codes) != ncols:
        raise QueryServiceError(
            err.PROTOCOL_VIOLATION,
            f"bind message has {len(codes)} result formats but query has {ncols} columns",
        )
    return list(codes)
