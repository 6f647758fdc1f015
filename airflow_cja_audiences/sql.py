"""Query Service SQL that reads exported audience memberships back (pure: no Airflow, no emulator).

The export job writes one row per merged profile into a profile dataset; each row carries *all* the
profile's memberships in the map ``segmentMembership.ups`` (audience id -> {status,
lastQualificationTime, ...}), and the dataset keeps every earlier export as well. The queries built
here therefore

* read only the batch this run's export wrote (filter on a batch-id system column),
* explode the membership map and keep the job's audiences and member statuses,
* split the result into hash partitions of the person id, so all rows of one person land in the same
  partition (how many: :mod:`airflow_cja_audiences.scanplan`, by a time budget for queries ending
  with ``LIMIT 0`` (:func:`lift_row_cap`), or each under Query Service's 50,000-row limit),
* return rows ``(personID, audienceId, status, qualificationTime)`` ordered by person, which
  :mod:`airflow_cja_audiences.transform` turns into CJA records.

Safety: nothing from the config or the run is pasted into SQL raw. Identifiers (table, field paths)
are re-checked against the strict grammars of :mod:`airflow_cja_audiences.validation`, and every
literal goes through :func:`quote_literal`, which *refuses* anything outside a small alphabet instead
of escaping it (Spark reads ``'x''y'`` as two adjacent literals, so doubling quotes is not an escape).

User SQL templates (:func:`check_template`, :func:`render_template`) replace the built-in snapshot
query. A template is a string with the placeholders ``{table}``, ``{batch_filter}``, ``{person}``,
``{audience_ids}``, ``{statuses}`` and ``{partition_filter}`` (the first two and the last are
required; write literal braces as ``{{`` and ``}}``), filled only with values built here. It must
return the same four columns with the same meaning: ``personID`` (the alias that
``{partition_filter}`` hashes, so it must be in scope where the filter is placed), ``audienceId``,
``status`` (``realized``/``existing``) and ``qualificationTime`` formatted with
``concat(date_format(...), 'T', ...)``, without NULL person ids, ``ORDER BY personID``
first. The transform checks the times, statuses, audiences and person order, and fails clearly when
a template breaks them. Templates apply to the snapshot query only, not to change events.

Constructs used (and nothing else, see docs/ARCHITECTURE.md): ``explode(<map>)`` in an unaliased
subquery, struct dot paths, ``key`` / ``value.<field>``, ``IN`` lists of quoted literals,
``IS NOT NULL``, comparisons with quoted literals, ``concat``/``date_format``, ``count``, ``pmod(hash(x), n)``,
``ORDER BY``. Timestamps assume the Query Service session time zone is UTC (it is in production).
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow_cja_audiences import validation as v

if TYPE_CHECKING:  # only for annotations; keeps this module importable without pydantic models loaded
    from airflow_cja_audiences.config import RefreshJob

#: Column names of every membership/event query, in order (templates must return the same).
ROW_COLUMNS = ("personID", "audienceId", "status", "qualificationTime")
#: Statuses that make someone a member (``exited`` people are not members).
MEMBER_STATUSES = ("realized", "existing")
EXITED = "exited"
#: Statuses that prove a change event, at ``lastQualificationTime``: entered, exited.
EVENT_STATUSES = ("realized", EXITED)
#: The batch-id system columns a query may filter on (https://experienceleague.adobe.com/en/docs/experience-platform/query/use-cases/data-exploration).
BATCH_ID_COLUMNS = ("_acp_system_metadata.acp_sourceBatchId", "_acp_batchid")


def iso_utc(timestamp_sql: str) -> str:
    """SQL for ``timestamp_sql`` as ISO-8601 UTC with a literal ``Z`` (``yyyy-MM-dd'T'HH:mm:ss'Z'``;
    session time zone UTC).

    Built from single-quoted pieces: a ``date_format`` pattern with quoted letters would need a
    double-quoted string, which Query Service documents as an identifier."""
    return f"concat(date_format({timestamp_sql}, 'yyyy-MM-dd'), 'T', date_format({timestamp_sql}, 'HH:mm:ss'), 'Z')"


# The only alphabet a SQL string literal may use: enough for audience ids, statuses, batch ids and
# ISO timestamps, and nothing that can end a literal or start a comment/escape (' " \ ; / * space).
_LITERAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,255}")
# Data interval bounds: UTC only, seconds or microseconds, always with the 'Z'.
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?Z")


def quote_literal(value: object, what: str) -> str:
    """Return ``'value'`` for a string of the safe literal alphabet; refuse anything else.

    There is deliberately no escaping: a value that would need it is not a value we expect.
    """
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    if not _LITERAL.fullmatch(value):
        raise ValueError(
            f"{what} {v.shown(value)} cannot be used in SQL: only letters, digits and "
            f"'._:-' are allowed (starting with a letter or digit, at most 256 characters)"
        )
    return f"'{value}'"


def _checked(check: Callable[[Any], str], value: object, what: str) -> str:
    """Run a :mod:`validation` checker, prefixing its message with the field it guards."""
    try:
        return check(value)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Partitions
# ---------------------------------------------------------------------------------------------

PERSON = "personID"  # the alias the partition filter hashes; every query (and template) exposes it


@dataclass(frozen=True, order=True)
class Partition:
    """The rows whose ``pmod(hash(personID), modulus) = remainder``.

    Hashing the person id (not the row) keeps all of a person's memberships in one partition, which
    the per-person record layout needs. ``Partition()`` is the whole result.
    """

    modulus: int = 1
    remainder: int = 0

    def __post_init__(self) -> None:
        for name in ("modulus", "remainder"):
            val = getattr(self, name)
            if type(val) is not int:  # bool is an int subclass; refuse it and everything else
                raise ValueError(f"partition {name} must be an int, got {type(val).__name__}")
        if self.modulus < 1:
            raise ValueError(f"partition modulus must be >= 1, got {self.modulus}")
        if not 0 <= self.remainder < self.modulus:
            raise ValueError(f"partition remainder must be in [0, {self.modulus}), got {self.remainder}")

    def contains(self, hash_value: int) -> bool:
        """Whether a row with this ``hash(personID)`` belongs here (Python's % is Spark's pmod)."""
        return hash_value % self.modulus == self.remainder

    def split(self) -> tuple[Partition, Partition]:
        """Two halves that exactly cover this partition (for a bucket found over the row limit).

        ``h % 2m`` is ``r`` or ``r + m`` exactly when ``h % m == r``.
        """
        m, r = self.modulus, self.remainder
        return Partition(2 * m, r), Partition(2 * m, r + m)

    def to_dict(self) -> dict[str, int]:
        """JSON form (XCom, task mapping)."""
        return {"modulus": self.modulus, "remainder": self.remainder}

    @classmethod
    def from_dict(cls, data: object) -> Partition:
        if not isinstance(data, dict) or set(data) != {"modulus", "remainder"}:
            raise ValueError(f"a partition is {{'modulus': m, 'remainder': r}}, got {v.shown(data)}")
        return cls(int(data["modulus"]), int(data["remainder"]))

    @property
    def label(self) -> str:
        """Stable, file-name-safe name, e.g. ``p3of8``."""
        return f"p{self.remainder}of{self.modulus}"

    def sql(self, person: str = PERSON) -> str:
        """The filter on ``person``: the ``personID`` alias, or the field path it is selected from."""
        return f"pmod(hash({person}), {self.modulus}) = {self.remainder}"


def plan_partitions(count: int, max_rows: int) -> list[Partition]:
    """Hash partitions expected to hold at most ``max_rows`` of ``count`` rows each (on average).

    ``max_rows`` should leave headroom below the hard 50,000-row limit (the config default is
    40,000); a bucket that still comes out too big is split with :meth:`Partition.split`.
    """
    for name, val in (("count", count), ("max_rows", max_rows)):
        if type(val) is not int:
            raise ValueError(f"{name} must be an int, got {type(val).__name__}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    modulus = max(1, math.ceil(count / max_rows))
    return [Partition(modulus, r) for r in range(modulus)]


# ---------------------------------------------------------------------------------------------
# Time windows (membership change events)
# ---------------------------------------------------------------------------------------------


def _utc_timestamp(value: object, what: str) -> str:
    """Normalise an aware datetime or a strict ISO-8601 UTC string to ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z``."""
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{what} must be timezone-aware (a naive datetime is ambiguous)")
        utc = value.astimezone(timezone.utc)
        text = (
            utc.strftime("%Y-%m-%dT%H:%M:%S") + (f".{utc.microsecond:06d}" if utc.microsecond else "") + "Z"
        )
    elif isinstance(value, str):
        if not _TIMESTAMP.fullmatch(value):
            raise ValueError(
                f"{what} {v.shown(value)} is not an ISO-8601 UTC timestamp such as '2026-11-28T00:00:00Z'"
            )
        try:
            datetime.fromisoformat(value[:-1])  # rejects month 13, Feb 30, hour 25...
        except ValueError:
            raise ValueError(f"{what} {v.shown(value)} is not a valid date and time") from None
        text = value
    else:
        raise ValueError(f"{what} must be a datetime or an ISO-8601 string, got {type(value).__name__}")
    return text


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text[:-1]).replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class TimeWindow:
    """The half-open interval ``[start, end)`` of a run's data interval, in UTC."""

    start: str
    end: str

    def __init__(self, start: datetime | str, end: datetime | str) -> None:
        start_text = _utc_timestamp(start, "window start")
        end_text = _utc_timestamp(end, "window end")
        if _instant(start_text) >= _instant(end_text):
            raise ValueError(f"window start {start_text} must be before its end {end_text}")
        object.__setattr__(self, "start", start_text)
        object.__setattr__(self, "end", end_text)

    def conditions(self) -> tuple[str, str]:
        # Spark (and the emulator) cast the ISO literal to a timestamp for the comparison.
        return (
            f"value.lastQualificationTime >= {quote_literal(self.start, 'window start')}",
            f"value.lastQualificationTime < {quote_literal(self.end, 'window end')}",
        )


# ---------------------------------------------------------------------------------------------
# The query
# ---------------------------------------------------------------------------------------------

#: Placeholders a user SQL template may use; values are produced (and quoted) by this module.
TEMPLATE_PLACEHOLDERS = ("table", "batch_filter", "person", "audience_ids", "statuses", "partition_filter")
#: Leaving these out would read every earlier export, or return the same rows in every partition.
REQUIRED_PLACEHOLDERS = ("table", "batch_filter", "partition_filter")


def check_template(template: object) -> str:
    """Validate a user SQL template: known placeholders only, no format tricks, one statement.

    The template is parsed with :class:`string.Formatter` but never passed to ``str.format`` (which
    would allow attribute access such as ``{table.__class__}``); see :func:`render_template`.
    """
    if not isinstance(template, str):
        raise ValueError(f"sql template must be a string, got {type(template).__name__}")
    if not template.strip():
        raise ValueError("sql template must not be empty")
    if len(template) > 100_000:
        raise ValueError(f"sql template is {len(template)} characters long; the limit is 100000")
    for ch in template:
        if (ord(ch) < 0x20 and ch not in "\n\r\t") or ord(ch) == 0x7F:
            raise ValueError(f"sql template contains the control character U+{ord(ch):04X}")
    if ";" in template:
        raise ValueError("sql template must be a single statement (no ';')")
    try:
        fields = [
            (name, spec, conv)
            for _, name, spec, conv in string.Formatter().parse(template)
            if name is not None
        ]
    except ValueError as exc:
        raise ValueError(f"sql template: {exc} (write literal braces as '{{{{' and '}}}}')") from None
    for name, spec, conv in fields:
        if name not in TEMPLATE_PLACEHOLDERS:
            raise ValueError(
                f"sql template placeholder {v.shown(name)} is unknown; "
                f"use only {', '.join('{' + p + '}' for p in TEMPLATE_PLACEHOLDERS)}"
            )
        if spec or conv:
            raise ValueError(f"sql template placeholder {{{name}}} must not have a format spec or conversion")
    missing = [p for p in REQUIRED_PLACEHOLDERS if p not in {f[0] for f in fields}]
    if missing:
        raise ValueError(f"sql template must use {', '.join('{' + p + '}' for p in missing)}")
    return template


@dataclass(frozen=True)
class MembershipQuery:
    """Everything a membership or event query needs, validated when constructed.

    Build it with :func:`build_membership_query`; construct directly only in tests.
    """

    table: str
    person_field: str
    audience_ids: tuple[str, ...]
    batch_id: str
    batch_id_column: str = BATCH_ID_COLUMNS[0]
    statuses: tuple[str, ...] = MEMBER_STATUSES
    template: str | None = None

    def __post_init__(self) -> None:
        _checked(v.table_name, self.table, "table")
        _checked(lambda p: v.field_path(p, allow_tenant_placeholder=False), self.person_field, "person field")
        if self.batch_id_column not in BATCH_ID_COLUMNS:
            raise ValueError(
                f"batch_id_column {v.shown(self.batch_id_column)} must be one of {list(BATCH_ID_COLUMNS)}"
            )
        _checked(v.batch_id, self.batch_id, "batch id")
        quote_literal(self.batch_id, "batch id")
        _check_tuple(self.audience_ids, "audience_ids", v.audience_id)
        _check_tuple(self.statuses, "statuses", _member_status)
        if self.template is not None:
            check_template(self.template)


def _member_status(value: object) -> str:
    if value not in MEMBER_STATUSES:
        raise ValueError(f"status {v.shown(value)} is not a member status; use {list(MEMBER_STATUSES)}")
    return value


def _check_tuple(values: object, what: str, check: Callable[[Any], str]) -> None:
    if not isinstance(values, tuple) or not values:
        raise ValueError(f"{what} must be a non-empty tuple")
    for item in values:
        _checked(check, item, what)
        quote_literal(item, what)
    if len(set(values)) != len(values):
        raise ValueError(f"{what} repeat a value: {v.shown(values)}")


def build_membership_query(
    job: RefreshJob,
    *,
    table: str,
    batch_id: str,
    tenant: str | None = None,
    audience_ids: Sequence[str] | None = None,
    template: str | None = None,
) -> MembershipQuery:
    """The query of one refresh run.

    ``table`` is the export dataset's ``adobe/pqs/table`` tag, ``batch_id`` the batch this run's
    export wrote, ``tenant`` the tenant id (default: the job's). ``audience_ids`` are the resolved
    ids, needed when the job selects audiences by name. ``template`` replaces the built-in SQL.
    """
    tenant = tenant if tenant is not None else job.tenant
    if tenant is None:
        raise ValueError("tenant: the job has no tenant; pass the one read from Schema Registry")
    _checked(v.tenant_id, tenant, "tenant")
    person = _checked(job.identity_path, tenant, "identity field")
    if audience_ids is None:
        if any(a.id is None for a in job.audiences):
            raise ValueError("audience_ids: the job selects audiences by name; pass the resolved ids")
        audience_ids = [a.id for a in job.audiences]  # type: ignore[misc]
    if isinstance(audience_ids, (str, bytes)) or not isinstance(audience_ids, Iterable):
        raise ValueError("audience_ids must be a sequence of ids (a lone string would become its characters)")
    return MembershipQuery(
        table=table,
        person_field=person,
        audience_ids=tuple(audience_ids),
        batch_id=batch_id,
        batch_id_column=job.batch_id_column,
        statuses=tuple(job.statuses),
        template=template,
    )


def _in_list(values: Iterable[str], what: str) -> str:
    return ", ".join(quote_literal(x, what) for x in values)


def _values(q: MembershipQuery, partition: Partition) -> dict[str, str]:
    """The rendered pieces, keyed like the template placeholders."""
    if not isinstance(partition, Partition):
        raise ValueError(f"partition must be a Partition, got {type(partition).__name__}")
    return {
        "table": q.table,
        "batch_filter": f"{q.batch_id_column} = {quote_literal(q.batch_id, 'batch id')}",
        "person": q.person_field,
        "audience_ids": _in_list(q.audience_ids, "audience id"),
        "statuses": _in_list(q.statuses, "status"),
        "partition_filter": partition.sql(),
    }


def render_template(q: MembershipQuery, partition: Partition = Partition()) -> str:
    """Fill ``q.template``'s placeholders with values built here (never with raw config)."""
    if q.template is None:
        raise ValueError("the query has no template")
    values = _values(q, partition)
    out = []
    for literal, name, _, _ in string.Formatter().parse(check_template(q.template)):
        out.append(literal)
        if name is not None:
            out.append(values[name])
    return "".join(out)


_ROW_SELECT = (
    f"{PERSON}, key AS {ROW_COLUMNS[1]}, value.status AS {ROW_COLUMNS[2]},\n"
    f"       {iso_utc('value.lastQualificationTime')} AS {ROW_COLUMNS[3]}"
)
#: Columns of :func:`count_sql`'s single row.
COUNT_COLUMNS = ("memberships", "identified")
_COUNT_SELECT = f"count(*) AS {COUNT_COLUMNS[0]}, count({PERSON}) AS {COUNT_COLUMNS[1]}"


def _batches_filter(q: MembershipQuery, sources: Sequence[str] | None) -> str:
    """``<batch column> = <this run's batch>``, or ``IN (...)`` over several export batches."""
    if not sources:
        return f"{q.batch_id_column} = {quote_literal(q.batch_id, 'batch id')}"
    if isinstance(sources, (str, bytes)):
        raise ValueError("sources must be a sequence of batch ids")
    ids = list(dict.fromkeys(sources))
    for batch in ids:
        _checked(v.batch_id, batch, "source batch id")
    return f"{q.batch_id_column} IN ({_in_list(ids, 'source batch id')})"


def _select(
    q: MembershipQuery,
    statuses: Sequence[str],
    partition: Partition,
    extra: Sequence[str],
    *,
    rows: bool,
    sources: Sequence[str] | None = None,
    distinct: bool = False,
    order: bool = True,
) -> str:
    """The shared shape: explode the membership maps of the export batch(es) and filter them.

    ``rows``: select the row columns of identified persons, ordered; else count all matches.
    ``sources``: read these export batches instead of ``q.batch_id`` alone. ``distinct``: one row per
    (person, audience, status, time), however many of the batches show it (counts count those too).
    """
    val = _values(q, partition)
    # Conditions on the person go inside, on the field path, so that rows are dropped before the
    # membership maps are exploded (about 20% less work per partition query in the emulator).
    inner = [_batches_filter(q, sources)]
    if rows:
        inner.append(f"{q.person_field} IS NOT NULL")
    if (
        partition.modulus > 1
    ):  # the whole result needs no filter (and counts NULL persons whatever hash(NULL) is)
        inner.append(partition.sql(q.person_field))
    outer = [f"key IN ({val['audience_ids']})", f"value.status IN ({_in_list(statuses, 'status')})", *extra]
    columns = _ROW_SELECT if rows or distinct else _COUNT_SELECT
    body = (
        f"FROM (\n"
        f"    SELECT {val['person']} AS {PERSON}, explode(segmentMembership.ups)\n"
        f"    FROM {val['table']}\n"
        f"    WHERE " + "\n      AND ".join(inner) + "\n"
        ")\n"
        "WHERE " + "\n  AND ".join(outer)
    )
    sql = f"SELECT {'DISTINCT ' if distinct else ''}{columns}\n{body}"
    if distinct and not rows:
        return f"SELECT {_COUNT_SELECT}\nFROM (\n{sql}\n)"
    if rows and order:
        # personID first: the transform needs a person's rows to be contiguous. The rest makes the
        # order total, so a retried query writes byte-identical files.
        sql += f"\nORDER BY {', '.join(ROW_COLUMNS[:2])}, {ROW_COLUMNS[3]}, {ROW_COLUMNS[2]}"
    return sql


def membership_sql(q: MembershipQuery, partition: Partition = Partition()) -> str:
    """Rows ``(personID, audienceId, status, qualificationTime)`` of one partition, ordered by person.

    One row per (person, audience) of the job's audiences with a member status, from this run's
    export batch only; rows without a person id are left out (see :func:`count_sql`).
    """
    if q.template is not None:
        return render_template(q, partition)
    return _select(q, q.statuses, partition, (), rows=True)


#: Query Service's documented override of the ad hoc row cap (the 10-minute limit still applies).
LIFT_ROW_CAP = "LIMIT 0"


def lift_row_cap(sql: str) -> str:
    """``sql`` ending with ``LIMIT 0``, which makes Query Service return *all* rows of an ad hoc query.

    ``sql`` must not have a ``LIMIT`` of its own (a template that does fails with a syntax error).
    """
    return f"{sql.rstrip()}\n{LIFT_ROW_CAP}"


def events_sql(
    q: MembershipQuery,
    window: TimeWindow,
    partition: Partition = Partition(),
    sources: Sequence[str] | None = None,
) -> str:
    """Membership changes proven in ``window``: the rows of :data:`EVENT_STATUSES` whose
    ``lastQualificationTime`` is in it, from the export batches ``sources`` (default: this run's).

    AEP keeps one status per membership: ``realized`` while a new membership is fresh (its
    ``lastQualificationTime`` is when it was entered), ``existing`` once it is not (its time is only
    when membership was last asserted: never an event), ``exited`` for 30 days after leaving (its
    time is the exit). So a ``realized`` row is an entry and an ``exited`` row an exit, at the true
    time, and the union over several exports proves more than one export alone. Rows that several
    exports show alike are returned once. Same columns, partitioning and order as
    :func:`membership_sql`.
    """
    if q.template is not None:
        raise ValueError("sql templates apply to the snapshot query only; events use the built-in SQL")
    if not isinstance(window, TimeWindow):
        raise ValueError(f"window must be a TimeWindow, got {type(window).__name__}")
    return _select(
        q, EVENT_STATUSES, partition, window.conditions(), rows=True, sources=sources, distinct=True
    )


def count_sql(
    q: MembershipQuery,
    partition: Partition = Partition(),
    window: TimeWindow | None = None,
    sources: Sequence[str] | None = None,
) -> str:
    """One row ``(memberships, identified)``: matching rows, and those with a non-NULL person id.

    ``memberships - identified`` rows lack a person id; when ``identified`` is 0 but ``memberships``
    is not, the identity field is empty for everyone (wrong field, or not requested in the export).
    With ``window`` (and ``sources``), counts the events query's distinct rows instead. Check
    identities on the whole result: in a partition's count the NULL-person rows appear only where
    ``hash(NULL)`` falls.
    """
    if q.template is not None:
        if window is not None:
            raise ValueError("sql templates apply to the snapshot query only; events use the built-in SQL")
        return f"SELECT {_COUNT_SELECT}\nFROM (\n{render_template(q, partition)}\n)"
    if window is None:
        return _select(q, q.statuses, partition, (), rows=False)
    return _select(
        q, EVENT_STATUSES, partition, window.conditions(), rows=False, sources=sources, distinct=True
    )


def export_rows_sql(q: MembershipQuery) -> str:
    """One row ``(rows)``: the export dataset's rows (one per exported profile) the batch filter finds,
    whatever their memberships; compared with the export job's own count
    (:mod:`airflow_cja_audiences.export_check`)."""
    return f"SELECT count(*) AS exportedRows FROM {q.table} WHERE {_batches_filter(q, None)}"


# ---------------------------------------------------------------------------------------------
# Per-audience counts (small results: one row per audience)
# ---------------------------------------------------------------------------------------------


#: How a (person, audience) pair changed between two exports, from the flags
#: :func:`_person_audience_flags` computes: (column, condition, separator before the FROM).
_CHANGES = (
    ("entered", "in_new = 1 AND in_old = 0", ","),
    ("entered_untimed", "in_new = 1 AND in_old = 0 AND realized_new = 0", ","),
    ("exited", "in_new = 0 AND in_old = 1 AND exited_new = 1", ","),
    ("untraced", "in_new = 0 AND in_old = 1 AND exited_new = 0", ""),
)


def _person_audience_flags(
    q: MembershipQuery,
    val: dict[str, str],
    new: str | None,
    old: str | None,
    *,
    identified_only: bool,
    with_rows: bool,
    read: Sequence[str] = (),
    per_row: Sequence[str] = (),
    per_group: Sequence[str] = (),
) -> str:
    """``FROM`` (one row per person and audience over the export batches ``new`` and ``old``, with the
    flags ``in_new``, ``realized_new``, ``exited_new``, ``in_old``; ``rows_new`` too ``with_rows``)
    to the end of the statement, grouped by audience: the part :func:`snapshot_counts_sql` and
    :func:`events_read_sql` share. All batches are read in one pass (no join).

    ``read``: the quoted batches to read instead of ``new`` and ``old`` (their flags still look at
    those two only); ``per_row``: more columns of each exploded row (``value`` in scope);
    ``per_group``: more aggregates per person and audience, over those columns."""

    def flag(batch: str | None, condition: str, agg: str = "max") -> str:
        return f"{agg}(CASE WHEN batchId = {batch} AND {condition} THEN 1 ELSE 0 END)" if batch else "0"

    batches = ", ".join(read) if read else ", ".join(b for b in (new, old) if b)
    member = f"status IN ({val['statuses']})"
    rows = f"           {flag(new, member, 'sum')} AS rows_new,\n" if with_rows else ""
    identified = f"              AND {q.person_field} IS NOT NULL\n" if identified_only else ""
    return (
        f"FROM (\n"
        f"    SELECT {PERSON}, audienceId,\n"
        f"{rows}"
        + "".join(f"           {agg},\n" for agg in per_group)
        + f"           {flag(new, member)} AS in_new,\n"
        f"           {flag(new, 'status = ' + quote_literal('realized', 'status'))} AS realized_new,\n"
        f"           {flag(new, 'status = ' + quote_literal(EXITED, 'status'))} AS exited_new,\n"
        f"           {flag(old, member)} AS in_old\n"
        f"    FROM (\n"
        f"        SELECT {PERSON}, batchId, key AS audienceId, value.status AS status"
        + "".join(f",\n               {col}" for col in per_row)
        + f"\n"
        f"        FROM (\n"
        f"            SELECT {val['person']} AS {PERSON}, {q.batch_id_column} AS batchId, "
        f"explode(segmentMembership.ups)\n"
        f"            FROM {val['table']}\n"
        f"            WHERE {q.batch_id_column} IN ({batches})\n"
        f"{identified}"
        f"        )\n"
        f"        WHERE key IN ({val['audience_ids']})\n"
        f"    )\n"
        f"    GROUP BY {PERSON}, audienceId\n"
        f")\n"
        f"GROUP BY audienceId\n"
        f"ORDER BY audienceId"
    )


# ---------------------------------------------------------------------------------------------
# What prepare reads, one statement each (every statement over an export batch is a full scan of
# it on Query Service: Spark has no index on the batch's rows, so folding counts that read the same
# batches into one aggregate saves a scan each)
# ---------------------------------------------------------------------------------------------

#: Columns of :func:`snapshot_counts_sql`, one row per audience.
SNAPSHOT_COUNT_COLUMNS = (
    "audienceId",
    "memberships",
    "identified",
    "members",
    "entered",
    "entered_untimed",
    "exited",
    "untraced",
)


def snapshot_counts_sql(q: MembershipQuery, previous_batch_id: str | None) -> str:
    """Per audience (:data:`SNAPSHOT_COUNT_COLUMNS`), in one read of this run's export batch and the
    previous snapshot's export ``previous_batch_id``:

    * ``memberships``, ``identified``: what :func:`count_sql` counts, per audience (their sums are its
      one row; ``memberships - identified`` are the members without a person id, which
      the per-audience unidentified count counted);
    * ``members``: members in this run's export;
    * ``entered``: members now who were not before; ``entered_untimed`` of them show ``existing``,
      not ``realized``: they entered in between, but AEP no longer says when;
    * ``exited``: members before whose membership now shows ``exited`` (a proven exit);
    * ``untraced``: members before who are absent now under the same person id: their membership
      was purged, or the person lost the identity field or was merged; not an exit.

    ``members`` .. ``untraced`` match persons by the identity field: persons without one are left
    out of them. Without a previous batch, only ``members`` of these is meaningful.

    Rows are first grouped by (person, audience), the NULL person being one group whose row count
    is kept (``rows_new``) and whose flags are ignored. Audiences with no row in either batch are
    absent from the result.
    """
    if q.template is not None:
        raise ValueError("snapshot counts use the built-in SQL; they are not available with a template")
    new = quote_literal(q.batch_id, "batch id")
    old = (
        quote_literal(_checked(v.batch_id, previous_batch_id, "previous batch id"), "previous batch id")
        if previous_batch_id
        else None
    )
    val = _values(q, Partition())
    known = f"{PERSON} IS NOT NULL"

    return (
        f"SELECT audienceId, sum(rows_new) AS memberships,\n"
        f"       sum(CASE WHEN {known} THEN rows_new ELSE 0 END) AS identified,\n"
        f"       sum(CASE WHEN {known} THEN in_new ELSE 0 END) AS members,\n"
        + "".join(
            f"       sum(CASE WHEN {known} AND {cond} THEN 1 ELSE 0 END) AS {name}{sep}\n"
            for name, cond, sep in _CHANGES
        )
        + _person_audience_flags(q, val, new, old, identified_only=False, with_rows=True)
    )


#: Columns of :func:`events_read_sql`, one row per audience.
EVENTS_READ_COLUMNS = (
    "audienceId",
    "entered",
    "entered_identified",
    "exited",
    "exited_identified",
    "entered_untimed",
)


def events_read_sql(
    q: MembershipQuery,
    window: TimeWindow,
    sources: Sequence[str] | None = None,
    untimed_pair: tuple[str, str] | None = None,
) -> str:
    """Per audience (:data:`EVENTS_READ_COLUMNS`), in one read of the export batches ``sources``
    (default: this run's) and those of ``untimed_pair`` (earlier, later):

    * ``entered``, ``exited``: the distinct ``realized``/``exited`` rows of ``sources`` in ``window``
      that :func:`count_sql` counts (their sums are its one row); ``*_identified`` of them those with
      a person id (what :func:`events_sql` publishes);
    * ``entered_untimed``: persons (with an id) who are members in the later export of the pair, not
      in the earlier one, and not ``realized`` in the later one: they entered in between, but AEP no
      longer says when (0 without a pair).

    Rows are grouped by (person, audience), the NULL person being one group (as ``SELECT DISTINCT``
    treats NULLs alike), whose events are counted and whose flags are ignored. An event is a distinct
    time per group: :func:`events_sql`'s rows are distinct per (person, audience, status, time). Audiences
    with no row in any batch read are absent from the result."""
    if q.template is not None:
        raise ValueError("sql templates apply to the snapshot query only; events use the built-in SQL")
    if not isinstance(window, TimeWindow):
        raise ValueError(f"window must be a TimeWindow, got {type(window).__name__}")
    if isinstance(sources, (str, bytes)):
        raise ValueError("sources must be a sequence of batch ids")
    from_sources: list[str] = []
    for batch in dict.fromkeys(sources or (q.batch_id,)):
        from_sources.append(quote_literal(_checked(v.batch_id, batch, "source batch id"), "source batch id"))
    old = new = None
    if untimed_pair is not None:
        old, new = (
            quote_literal(_checked(v.batch_id, batch, what), what)
            for batch, what in zip(untimed_pair, ("earlier batch id", "later batch id"), strict=True)
        )
    read = list(dict.fromkeys([*from_sources, *(b for b in (new, old) if b)]))
    # The window and the sources bound the event columns only; the pair's flags look at its batches.
    where = [f"batchId IN ({', '.join(from_sources)})"] if len(read) > len(from_sources) else []
    per_row = [
        "CASE WHEN "
        + " AND ".join([*where, f"value.status = {quote_literal(status, 'status')}", *window.conditions()])
        + f" THEN {iso_utc('value.lastQualificationTime')} END AS {name}At"
        for name, status in (("entered", EVENT_STATUSES[0]), ("exited", EXITED))
    ]
    known = f"{PERSON} IS NOT NULL"
    untimed = next(cond for name, cond, _ in _CHANGES if name == "entered_untimed")
    return (
        "SELECT audienceId,\n"
        + "".join(
            f"       sum({name}) AS {name},\n"
            f"       sum(CASE WHEN {known} THEN {name} ELSE 0 END) AS {name}_identified,\n"
            for name in ("entered", "exited")
        )
        + f"       sum(CASE WHEN {known} AND {untimed} THEN 1 ELSE 0 END) AS entered_untimed\n"
        + _person_audience_flags(
            q,
            _values(q, Partition()),
            new,
            old,
            identified_only=False,
            with_rows=False,
            read=read,
            per_row=per_row,
            per_group=[f"count(DISTINCT {name}At) AS {name}" for name in ("entered", "exited")],
        )
    )
