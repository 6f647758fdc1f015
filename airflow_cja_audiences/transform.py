"""Membership rows -> CJA records -> size-bounded JSON Lines files, streaming (pure module).

Input: batches of rows ``(personID, audienceId, status, qualificationTime)`` as returned by the
queries of :mod:`airflow_cja_audiences.sql` (ordered by person; ``qualificationTime`` formatted
``yyyy-MM-ddTHH:mm:ssZ``). Output: one JSON object per line, in one of three layouts
(:class:`RecordSpec`), written by :class:`JsonlFileWriter` into files that roll at a byte bound.
Memory does not grow with the number of rows: only the current batch and one person are held.

Typical use, one partition query at a time (files per partition, so that a partition that turns
out to hit Query Service's 50,000-row cap - production truncates silently - can be thrown away,
split with :meth:`Partition.split <airflow_cja_audiences.sql.Partition.split>` and read again
before any of its files is uploaded)::

    spec = RecordSpec.from_job(job, tenant=tenant, audience_names=names)
    with conn.cursor(name="cja") as cur:          # server-side cursor: DECLARE / FETCH
        cur.execute(sql.membership_sql(query, partition))
        summary = write_jsonl(prefetch_batches(cur), spec, workdir, f"{run}-{partition.label}",
                              max_file_bytes=job.max_file_bytes, on_file=files.append)
    if summary.rows >= QUERY_SERVICE_ROW_LIMIT:   # maybe truncated: delete files, split, redo
        ...

Speed matters here (the target is >= 70% of the raw fetch rate, i.e. a few hundred ns per row in
Python), so the per-person encoder does not build a dict per row. It keeps a small trie of the
membership sequences seen so far: each node holds the ready-made JSON text of "this audience with
this status at this position" and of the record's closing part (id and name lists), so a row costs
two dict lookups and two list appends. Checks that would cost a regex call per row are done once per
batch on the joined column. All JSON text comes from orjson (names, ids) or from strings checked to
need no escaping.

Stable ids (``_id``): :func:`stable_id` - the hex MD5 of the UTF-8 of the key parts joined by
U+001F (unit separator):

* per person: ``job_id, personID``
* per membership: ``job_id, personID, audienceId``
* change event: ``job_id, personID, audienceId, eventType, timestamp``

Only ``personID`` can contain U+001F (the other parts come from strict grammars), so the key is
unambiguous. The same inputs give the same ids on every run, on every machine, and the id can be
recomputed in Query Service (``md5(concat('<job_id>', '\\u001f', personID))``). MD5 is used as a
fast 128-bit fingerprint of non-secret values, not for security (it costs half of BLAKE2's time
here, and hashing is the largest per-person cost).
"""

from __future__ import annotations

import os
import queue
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import orjson

if TYPE_CHECKING:  # _md5 has no type stubs; it is hashlib's md5 without OpenSSL
    from hashlib import md5 as _md5
else:
    try:  # CPython's own MD5: no OpenSSL context to set up per call, about twice as fast for short keys
        from _md5 import md5 as _md5
    except ImportError:  # pragma: no cover - builds without it; same digests
        from hashlib import md5 as _md5

from airflow_cja_audiences import validation as v
from airflow_cja_audiences.config import OutputFields, RefreshJob
from airflow_cja_audiences.sql import EVENT_STATUSES, EXITED, MEMBER_STATUSES

Row = Sequence[Any]
"""``(personID, audienceId, status, qualificationTime)``."""
Layout = Literal["per_person", "per_membership", "events"]
#: Event type of a change-event row, by membership status. ``existing`` is no event: it only says the
#: membership was asserted again (see :func:`airflow_cja_audiences.sql.events_sql`).
EVENT_TYPES = {"realized": "entered", EXITED: "exited"}
#: What :func:`airflow_cja_audiences.sql` returns: ISO-8601 UTC, whole seconds, literal Z.
TIME_PATTERN = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z"
_TIME = re.compile(TIME_PATTERN)
# A batch's times are checked at once: joined by "\n", digits mapped to "0", the bytes must equal
# the batch's expected shape. Equality fixes every byte, so each item is exactly one valid time
# (an item with a newline would add one, and shift everything after it).
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_TIME_SHAPE = b"0000-00-00T00:00:00Z"
_ID_SEPARATOR = "\x1f"
_FILE_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def stable_id(*parts: str) -> str:
    """The ``_id`` of a record: the hex MD5 of the UTF-8 of the parts joined by U+001F."""
    return _md5(_ID_SEPARATOR.join(parts).encode("utf-8")).hexdigest()


def _json_body(value: str, what: str) -> str:
    """The JSON text of a string without its quotes (orjson escapes quotes, backslashes, controls)."""
    try:
        return orjson.dumps(value).decode()[1:-1]
    except orjson.JSONEncodeError:
        raise ValueError(
            f"{what} {v.shown(value)} is not valid Unicode text (lone surrogate); "
            f"it cannot be written as JSON"
        ) from None


@dataclass(frozen=True, eq=False)
class RecordSpec:
    """What the records look like: job, tenant namespace, layout, field names, audience names.

    ``audience_names`` maps every audience id the rows may carry to its friendly name; a row with
    another id is an error. ``statuses`` are the accepted input statuses (default: member statuses,
    ``realized`` and ``exited`` for the ``events`` layout).
    """

    job_id: str
    tenant: str
    audience_names: Mapping[str, str]
    layout: Layout = "per_person"
    fields: OutputFields = field(default_factory=OutputFields)
    statuses: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        v.job_id(self.job_id)
        object.__setattr__(self, "tenant", v.tenant_id(self.tenant))
        if self.layout not in ("per_person", "per_membership", "events"):
            raise ValueError(f"layout {v.shown(self.layout)} must be per_person, per_membership or events")
        if not isinstance(self.fields, OutputFields):
            raise ValueError("fields must be an OutputFields")
        if not isinstance(self.audience_names, Mapping) or not self.audience_names:
            raise ValueError("audience_names must be a non-empty mapping of audience id -> name")
        for aud, name in self.audience_names.items():
            v.audience_id(aud)
            if not isinstance(name, str):
                raise ValueError(f"name of audience {aud} must be a string, got {type(name).__name__}")
            _json_body(name, f"name of audience {aud}")
        object.__setattr__(self, "audience_names", dict(self.audience_names))  # a private, stable copy
        statuses = self.statuses
        if statuses is None:
            statuses = EVENT_STATUSES if self.layout == "events" else MEMBER_STATUSES
        allowed = EVENT_STATUSES if self.layout == "events" else MEMBER_STATUSES
        if (
            not isinstance(statuses, (tuple, list))
            or not statuses
            or any(s not in allowed for s in statuses)
            or len(set(statuses)) != len(statuses)
        ):
            raise ValueError(
                f"statuses {v.shown(statuses)} must be distinct values of {list(allowed)} "
                f"for the {self.layout} layout"
            )
        object.__setattr__(self, "statuses", tuple(statuses))

    @classmethod
    def from_job(
        cls, job: RefreshJob, *, tenant: str, audience_names: Mapping[str, str], events: bool = False
    ) -> RecordSpec:
        """The spec of a job's snapshot (``events=False``) or of its change events."""
        statuses = EVENT_STATUSES if events else tuple(job.statuses)
        return cls(
            job_id=job.job_id,
            tenant=tenant,
            audience_names=audience_names,
            layout="events" if events else job.layout,
            fields=job.output,
            statuses=statuses,
        )


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------


class _Path:
    """A node of the trie of per-person membership sequences (audience ids in row order).

    ``frags[status]`` is the JSON text of this node's membership up to the opening quote of its
    qualification time; ``tail`` closes the record after the last one. ``drop`` lists positions
    that repeat an earlier audience of the same person (dropped, first row wins).
    """

    __slots__ = ("children", "frags", "tail", "ids", "drop")

    def __init__(self, frags: dict[str, str], tail: str, ids: tuple[str, ...], drop: tuple[int, ...]) -> None:
        self.children: dict[str, _Path] = {}
        self.frags = frags
        self.tail = tail
        self.ids = ids
        self.drop = drop


_SLICE = 1_000  # rows per output chunk: ~300 kB, which stays in the L2 cache while joined and written


class Chunk(NamedTuple):
    """Complete JSON lines (UTF-8, each ending in ``\\n``) and how many there are."""

    data: bytes
    records: int


_TRIE_LIMIT = 50_000  # nodes kept before the cache starts over (bounds memory for many audiences)
_first = itemgetter(0)
_time = itemgetter(3)


class RecordEncoder:
    """Turns ordered row batches into chunks of complete JSON lines (bytes, ``\\n``-terminated).

    Counters accumulate over every :meth:`encode` call: ``rows`` read, ``records`` produced,
    ``skipped_rows`` (NULL or empty person id), ``duplicate_rows`` (same person and audience again,
    e.g. two profiles sharing an identity value: the first row wins).
    """

    def __init__(self, spec: RecordSpec) -> None:
        self.spec = spec
        self.rows = 0
        self.records = 0
        self.skipped_rows = 0
        self.duplicate_rows = 0
        f = spec.fields
        self._id_prefix = spec.job_id + _ID_SEPARATOR
        # '"audience_id":...,"audience_name":...[,"status":...]' by (audience, status): the JSON
        # members every layout shares (events carry an event type instead of the status).
        with_status = spec.layout != "events"
        self._members = {
            (aud, st): orjson.dumps(
                {
                    f.audience_id: aud,
                    f.audience_name: spec.audience_names[aud],
                    **({f.status: st} if with_status else {}),
                }
            ).decode()[1:-1]
            for aud in spec.audience_names
            for st in spec.statuses or ()
        }
        self._root = _Path({}, "", (), ())
        self._nodes = 0

    # -- public ---------------------------------------------------------------------------------

    def encode(self, batches: Iterable[Sequence[Row]]) -> Iterator[Chunk]:
        """Yield :class:`Chunk` s of complete records, about ``_SLICE`` rows' worth each.

        ``batches`` are sequences of row tuples (e.g. ``fetchmany`` results). One call is one
        ordered stream (e.g. one partition's query): for the per-person layout a person's rows must
        be contiguous, and persons ascending; a violation raises ValueError.
        """
        encode = self._per_person if self.spec.layout == "per_person" else self._per_row
        for text, records in encode(self._checked(batches)):
            if records:
                self.records += records
                yield Chunk(text.encode("utf-8"), records)

    # -- shared row checks ----------------------------------------------------------------------

    def _checked(self, batches: Iterable[Sequence[Row]]) -> Iterator[tuple[Sequence[Row], bool]]:
        """Check a batch at once, then hand it on in slices of ``_SLICE`` rows.

        Counts rows, checks all qualification times, drops rows without a person id, and tells
        whether every person id of the batch is plain text (nothing to escape). The slices keep each
        output chunk small enough to stay in the CPU cache while it is joined, encoded and written.
        """
        shape = b""
        for batch in batches:
            n = len(batch)
            if not n:
                continue
            self.rows += n
            try:
                joined = "\n".join(map(_time, batch)).encode()
            except (TypeError, UnicodeEncodeError, IndexError):  # NULL, not text, surrogate, short row
                joined = b""
            if len(shape) != 21 * n - 1:
                shape = b"\n".join([_TIME_SHAPE] * n)
            if joined.translate(_DIGITS_TO_ZERO) != shape:
                self._raise_bad_time(batch)
            if not all(map(_first, batch)):  # rare: the SQL already drops NULL person ids
                kept = [row for row in batch if row[0]]
                self.skipped_rows += n - len(kept)
                batch = kept
            try:
                pids = "".join(map(_first, batch))
                plain = pids.isprintable() and '"' not in pids and "\\" not in pids
            except TypeError:  # a person id that is not text: _person_json reports it
                plain = False
            for i in range(0, len(batch), _SLICE):
                yield batch[i : i + _SLICE], plain

    @staticmethod
    def _raise_bad_time(batch: Sequence[Row]) -> None:
        for row in batch:
            if len(row) != 4:
                raise ValueError(
                    f"rows must have 4 columns (personID, audienceId, status, qualificationTime), "
                    f"got {len(row)}: {v.shown(row)}"
                )
            t = row[3]
            if not row[0]:
                continue  # unidentified rows are skipped anyway
            if not isinstance(t, str) or not _TIME.fullmatch(t):
                raise ValueError(
                    f"row of person {v.shown(row[0])}, audience {v.shown(row[1])}: "
                    f"qualificationTime {v.shown(t)} is not an ISO-8601 UTC time like "
                    f"'2026-11-28T02:00:00Z' (the query must format it with date_format)"
                )

    @staticmethod
    def _person_json(pid: object) -> str:
        """The JSON body of a person id (callers skip this when the batch's ids are all plain)."""
        if type(pid) is not str:
            raise ValueError(f"personID must be text, got {type(pid).__name__} {v.shown(pid)}")
        # isprintable() is False for control characters and lone surrogates: orjson escapes the
        # former and refuses the latter.
        if pid.isprintable() and '"' not in pid and "\\" not in pid:
            return pid
        return _json_body(pid, "personID")

    def _unknown(self, pid: object, aud: object, st: object) -> ValueError:
        if not isinstance(aud, str) or aud not in self.spec.audience_names:
            return ValueError(
                f"row of person {v.shown(pid)}: audience {v.shown(aud)} is not one of this "
                f"job's audiences {sorted(self.spec.audience_names)}"
            )
        return ValueError(
            f"row of person {v.shown(pid)}, audience {aud}: status {v.shown(st)} is not "
            f"accepted here {list(self.spec.statuses or ())}"
        )

    # -- one record per person ------------------------------------------------------------------

    def _grow(self, node: _Path, aud: object, pid: object) -> _Path:
        """The trie node after ``node`` for audience ``aud`` (built once, then cached)."""
        if not isinstance(aud, str) or aud not in self.spec.audience_names:
            raise self._unknown(pid, aud, None)
        if self._nodes >= _TRIE_LIMIT:  # start over rather than grow without bound
            self._root.children.clear()
            self._nodes = 0
        f = self.spec.fields
        position = len(node.ids) + len(node.drop)
        if aud in node.ids:  # a repeated audience: keep the ids, mark the position for dropping
            ids, drop = node.ids, (*node.drop, position)
        else:
            ids, drop = (*node.ids, aud), node.drop
        # The first membership opens the object; later ones also close the previous time string.
        opener = "{" if position == 0 else '"},{'
        frags = {
            st: f'{opener}{self._members[aud, st]},"{f.qualification_time}":"'
            for st in self.spec.statuses or ()
        }
        tail = (
            '"}],'
            + orjson.dumps(
                {
                    f.audience_ids: ",".join(ids),
                    f.audience_names: ",".join(self.spec.audience_names[a] for a in ids),
                }
            ).decode()[1:]
            + "}\n"
        )
        child = _Path(frags, tail, ids, drop)
        node.children[aud] = child
        self._nodes += 1
        return child

    def _per_person(self, batches: Iterable[tuple[Sequence[Row], bool]]) -> Iterator[tuple[str, int]]:
        root = self._root
        id_prefix = self._id_prefix
        opening = f'","_{self.spec.tenant}":{{"{self.spec.fields.memberships}":['
        state = root
        cur: object = None  # the open person (None: none yet)
        start = 0  # where the open person's record starts in `pieces`
        pieces: list[str] = []
        for batch, plain in batches:
            ap = pieces.append
            closed = 0
            for pid, aud, st, qt in batch:
                if pid != cur:
                    if state is not root:  # close the previous person's record
                        if state.drop:
                            self._drop_duplicates(pieces, start, state.drop)
                        ap(state.tail)
                        closed += 1
                    pj = pid if plain else self._person_json(pid)
                    if cur is not None and pid < cur:
                        raise ValueError(
                            f"rows are not ordered by personID: {v.shown(pid)} came after "
                            f"{v.shown(cur)} (the query must ORDER BY personID)"
                        )
                    cur = pid
                    state = root
                    start = len(pieces)
                    ap(f'{{"_id":"{_md5((id_prefix + pid).encode()).hexdigest()}","personID":"{pj}{opening}')
                try:
                    state = state.children[aud]
                except KeyError:
                    state = self._grow(state, aud, pid)
                except TypeError:  # unhashable audience id
                    raise self._unknown(pid, aud, st) from None
                try:
                    ap(state.frags[st])
                except (KeyError, TypeError):
                    raise self._unknown(pid, aud, st) from None
                ap(qt)
            # Everything before the open person is complete; the open person may go on in the
            # next batch, so its pieces are carried over.
            yield "".join(pieces[:start]), closed
            pieces = pieces[start:]
            start = 0
        if state is not root:
            if state.drop:
                self._drop_duplicates(pieces, start, state.drop)
            pieces.append(state.tail)
            yield "".join(pieces), 1

    def _drop_duplicates(self, pieces: list[str], start: int, drop: tuple[int, ...]) -> None:
        # A record is [header, frag0, time0, frag1, time1, ...]; position p is pieces[start+1+2p : +2].
        # Position 0 is never dropped (the first row wins), so the remaining frags stay well formed.
        for p in reversed(drop):
            del pieces[start + 1 + 2 * p : start + 3 + 2 * p]
        self.duplicate_rows += len(drop)

    # -- one record per row (membership or change event) ----------------------------------------

    def _per_row(self, batches: Iterable[tuple[Sequence[Row], bool]]) -> Iterator[tuple[str, int]]:
        spec, f = self.spec, self.spec.fields
        tenant = f"_{spec.tenant}"
        events = spec.layout == "events"
        # Each record is '{"_id":"<id>' + head + <person> + body(audience, status) + <time> + end,
        # and its id key is job_id + U+001F + <person> + key_tail(audience, status) [+ <time>].
        # JSON key order is free, so both layouts fit one shape.
        if events:
            head, end = f'","{tenant}":{{"personID":"', '"}\n'
            shape = {
                k: (
                    f"{_ID_SEPARATOR}{k[0]}{_ID_SEPARATOR}{EVENT_TYPES[k[1]]}{_ID_SEPARATOR}",
                    f'",{m},"{f.event_type}":"{EVENT_TYPES[k[1]]}"}},"timestamp":"',
                )
                for k, m in self._members.items()
            }
        else:
            head, end = '","personID":"', '"}}\n'
            shape = {
                k: (f"{_ID_SEPARATOR}{k[0]}", f'","{tenant}":{{{m},"{f.qualification_time}":"')
                for k, m in self._members.items()
            }
        id_prefix = self._id_prefix
        prev_key = None
        for batch, plain in batches:
            pieces: list[str] = []
            ap = pieces.append
            for pid, aud, st, qt in batch:
                pj = pid if plain else self._person_json(pid)
                try:
                    key_tail, body = shape[aud, st]
                except (KeyError, TypeError):
                    raise self._unknown(pid, aud, st) from None
                key = id_prefix + pid + key_tail + qt if events else id_prefix + pid + key_tail
                if key == prev_key:  # the same record again (duplicate input row)
                    self.duplicate_rows += 1
                    continue
                prev_key = key
                ap(f'{{"_id":"{_md5(key.encode()).hexdigest()}{head}{pj}{body}{qt}{end}')
            yield "".join(pieces), len(pieces)


def iter_json_lines(rows: Iterable[Row], spec: RecordSpec, batch_size: int = 10_000) -> Iterator[bytes]:
    """Convenience: each record as one JSON line (bytes ending in ``\\n``)."""
    it = iter(rows)
    batches = iter(lambda: list(islice(it, batch_size)), [])
    for chunk in RecordEncoder(spec).encode(batches):
        for line in chunk.data.split(b"\n")[:-1]:  # records contain no raw newline (JSON escapes it)
            yield line + b"\n"


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrittenFile:
    """A closed JSON Lines file, ready to upload."""

    path: Path
    bytes: int
    records: int


class JsonlFileWriter:
    """Writes chunks of complete JSON lines into ``{prefix}-{seq:05d}.json`` files of bounded size.

    A file is closed before it would exceed ``max_file_bytes``; a record is never split across
    files. A single record larger than the bound is written alone into its own file (the only case
    where a file exceeds the bound). Each closed file is passed to ``on_file`` at once, so the
    caller can upload and delete it. Names are deterministic, so a retried task rewrites the same
    files; use a directory of your own (existing files of the same names are overwritten).
    On an exception inside ``with``, the unfinished file is deleted and not reported.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        prefix: str,
        max_file_bytes: int,
        on_file: Callable[[WrittenFile], None] | None = None,
    ) -> None:
        if not isinstance(prefix, str) or not _FILE_PREFIX.fullmatch(prefix):
            raise ValueError(
                f"file prefix {v.shown(prefix)} must be letters, digits, '._-' "
                f"(no path separators), at most 200 characters"
            )
        if type(max_file_bytes) is not int or max_file_bytes < 1:
            raise ValueError(f"max_file_bytes must be a positive int, got {v.shown(max_file_bytes)}")
        self.directory = Path(directory)
        self.prefix = prefix
        self.max_file_bytes = max_file_bytes
        self.on_file = on_file
        self.files: list[WrittenFile] = []
        self.bytes = 0
        self.records = 0
        self._file: Any = None
        self._path: Path | None = None
        self._size = 0
        self._count = 0

    def write(self, chunk: bytes, records: int | None = None) -> None:
        """Append complete lines; roll to a new file where the next line would not fit.

        ``records`` (the number of lines in ``chunk``, as in :class:`Chunk`) saves counting them.
        """
        if not chunk:
            return
        if not chunk.endswith(b"\n"):
            raise ValueError("write() takes complete JSON lines (the chunk must end with a newline)")
        view = memoryview(chunk)
        pos, n = 0, len(chunk)
        while pos < n:
            room = self.max_file_bytes - self._size
            if n - pos <= room:  # the common case: the whole rest fits
                cut = n
            else:
                cut = chunk.rfind(b"\n", pos, pos + room) + 1  # end of the last whole line that fits
                if cut <= pos:  # not even one line fits
                    if self._size:
                        self._roll()
                        continue
                    cut = chunk.index(b"\n", pos) + 1  # an oversized line, alone in an empty file
            whole = pos == 0 and cut == n and records is not None
            self._append(view[pos:cut], records if whole else chunk.count(b"\n", pos, cut))  # type: ignore[arg-type]
            pos = cut
            if self._size >= self.max_file_bytes or pos < n:
                self._roll()

    def _append(self, data: memoryview, lines: int) -> None:
        if self._file is None:
            self._path = self.directory / f"{self.prefix}-{len(self.files):05d}.json"
            self._file = open(self._path, "wb")  # noqa: SIM115 - closed in _roll/abort
        self._file.write(data)
        self._size += len(data)
        self._count += lines

    def _roll(self) -> None:
        """Close the current file and report it."""
        if self._file is None:
            return
        self._file.close()
        done = WrittenFile(self._path, self._size, self._count)  # type: ignore[arg-type]
        self._file, self._path = None, None
        self.files.append(done)
        self.bytes += self._size
        self.records += self._count
        self._size = self._count = 0
        if self.on_file is not None:
            self.on_file(done)

    def close(self) -> None:
        """Close and report the last file."""
        self._roll()

    def abort(self) -> None:
        """Close and delete the unfinished file without reporting it."""
        if self._file is not None:
            self._file.close()
            self._path.unlink(missing_ok=True)  # type: ignore[union-attr]
            self._file, self._path, self._size, self._count = None, None, 0, 0

    def __enter__(self) -> JsonlFileWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@dataclass(frozen=True)
class TransformSummary:
    rows: int
    records: int
    skipped_rows: int
    duplicate_rows: int
    files: tuple[WrittenFile, ...]
    bytes: int


def write_jsonl(
    batches: Iterable[Sequence[Row]],
    spec: RecordSpec,
    directory: str | os.PathLike[str],
    prefix: str,
    *,
    max_file_bytes: int,
    on_file: Callable[[WrittenFile], None] | None = None,
) -> TransformSummary:
    """Encode one ordered stream of row batches into JSON Lines files; see :class:`JsonlFileWriter`."""
    encoder = RecordEncoder(spec)
    with JsonlFileWriter(directory, prefix, max_file_bytes, on_file) as writer:
        for chunk in encoder.encode(batches):
            writer.write(chunk.data, chunk.records)
    return TransformSummary(
        rows=encoder.rows,
        records=writer.records,
        skipped_rows=encoder.skipped_rows,
        duplicate_rows=encoder.duplicate_rows,
        files=tuple(writer.files),
        bytes=writer.bytes,
    )


# ---------------------------------------------------------------------------------------------
# Overlapping fetch and transform
# ---------------------------------------------------------------------------------------------

_END = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetch_batches(cursor: Any, batch_size: int = 10_000, depth: int = 2) -> Iterator[list[Any]]:
    """Yield ``cursor.fetchmany(batch_size)`` batches, fetched ahead by a background thread.

    The driver releases the GIL while it waits on the network, so the server's work overlaps the
    consumer's. At most ``depth`` batches wait in the queue (bounded memory). An exception in the
    fetch is raised here; when the consumer stops early (``close()``, ``break`` then garbage
    collection, or an exception), the thread stops after the fetch in flight and is joined, so the
    cursor is free again when this generator is done.
    """
    if type(batch_size) is not int or batch_size < 1 or type(depth) is not int or depth < 1:
        raise ValueError("batch_size and depth must be positive ints")
    slots: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> None:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.05)  # wake up now and then to notice `stop`
                return
            except queue.Full:
                continue

    def fetch() -> None:
        try:
            while not stop.is_set():
                batch = cursor.fetchmany(batch_size)
                if not batch:
                    break
                put(batch)
            put(_END)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(_Failure(exc))

    thread = threading.Thread(target=fetch, name="cja-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()
