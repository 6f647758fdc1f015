"""The server-side path (Data Distiller): one batch query writes the CJA records (pure: no Airflow).

:func:`snapshot_insert_sql` builds ``INSERT INTO <profile dataset table> SELECT ...`` that computes, in
Query Service, exactly the records :mod:`airflow_cja_audiences.transform` builds on a worker from the
rows of :func:`airflow_cja_audiences.sql.membership_sql`:

* ``per_person``: one record per person, ``{"_id", "personID", "_<tenant>": {<memberships>: [{<audience_id>,
  <audience_name>, <status>, <qualification_time>}, ...], <audience_ids>: "a,b", <audience_names>: "A,B"}}``
  with the memberships in audience id order;
* ``per_membership``: one record per (person, audience), ``{"_id", "personID", "_<tenant>": {<audience_id>,
  <audience_name>, <status>, <qualification_time>}}``.

The same rules as the transform: a person's repeated audience keeps its first row (ordered by
qualification time, then status), rows without a person id (NULL or empty) are left out, ``_id`` is
:func:`airflow_cja_audiences.transform.stable_id` computed with ``md5`` over the parts joined by
U+001F (``chr(31)``). The rows come from :func:`~airflow_cja_audiences.sql.membership_sql` itself
(one partition covering everything), so a job's SQL template applies here too.

Safety: the statement is built only from values checked here or by :mod:`airflow_cja_audiences.sql`
(identifiers by their grammars, literals through :func:`~airflow_cja_audiences.sql.quote_literal`).
Audience names are free text: they go in as hex of their UTF-8 (``decode(unhex('...'), 'UTF-8')``),
never as quoted text, so no name can end a literal.

:func:`events_insert_sql` builds the change events of an interval: one record per row of
:func:`airflow_cja_audiences.sql.events_sql` (the distinct ``realized``/``exited`` rows of the sources
whose time is in the interval), ``{"_id", "timestamp", "_<tenant>": {"personID", <audience_id>,
<audience_name>, <event_type>}}``, ``_id`` the transform's ``stable_id(job, person, audience, event type,
timestamp)``. Entries AEP no longer dates (``existing`` rows, the "untimed" ones prepare_events counts)
are no events on either path: they are counted, never published.

Query Service facts relied on (experience-platform docs, help/query-service/sql/syntax.md): ``INSERT
INTO table SELECT ...`` appends a batch to the dataset, the select is not parenthesised, nested fields
are built as structs under the tenant namespace. Spark SQL functions used: ``named_struct``,
``collect_list``, ``array_sort``, ``transform`` (a lambda), ``concat_ws``, ``row_number() OVER``,
``md5``, ``chr``, ``unhex``, ``decode``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from airflow_cja_audiences import sql
from airflow_cja_audiences import validation as v
from airflow_cja_audiences.config import OutputFields

#: Snapshot layouts the server path writes (change events: :func:`events_insert_sql`).
LAYOUTS = ("per_person", "per_membership")
#: The event type of a change-event row, by status (the transform's ``EVENT_TYPES``).
EVENT_TYPES = (("realized", "entered"), (sql.EXITED, "exited"))
_ROW_NUMBER = "cjaRowNumber"
_MEMBERSHIPS = "cjaMemberships"


def _field(name: str, what: str) -> str:
    return sql._checked(v.field_name, name, what)


def text_literal(value: str, what: str) -> str:
    """SQL for the string ``value`` whatever it contains: ``decode(unhex('<hex of UTF-8>'), 'UTF-8')``."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} {v.shown(value)} is not valid Unicode text (lone surrogate)") from None
    if not data:
        return "''"
    return f"decode(unhex('{data.hex().upper()}'), 'UTF-8')"


def _name_case(audience_names: Mapping[str, str]) -> str:
    if not isinstance(audience_names, Mapping) or not audience_names:
        raise ValueError("audience_names must be a non-empty mapping of audience id -> name")
    whens = " ".join(
        f"WHEN {sql.quote_literal(aud, 'audience id')} THEN {text_literal(name, f'name of audience {aud}')}"
        for aud, name in sorted(audience_names.items())
    )
    return f"CASE {sql.ROW_COLUMNS[1]} {whens} END"


def _inputs(
    q: sql.MembershipQuery,
    target_table: str,
    job_id: str,
    tenant: str,
    audience_names: Mapping[str, str],
    fields: OutputFields | None,
) -> tuple[str, str, str, OutputFields, dict[str, str]]:
    """The checked inputs of a batch query: target table, job id literal, tenant, fields, and the name
    of each audience of ``q``."""
    if not isinstance(q, sql.MembershipQuery):
        raise ValueError(f"q must be a MembershipQuery, got {type(q).__name__}")
    target = sql._checked(v.table_name, target_table, "target table")
    job = sql.quote_literal(v.job_id(job_id), "job id")
    tenant = sql._checked(v.tenant_id, tenant, "tenant")
    f = fields if fields is not None else OutputFields()
    if not isinstance(f, OutputFields):
        raise ValueError("fields must be an OutputFields")
    missing = [a for a in q.audience_ids if a not in audience_names]
    if missing:
        raise ValueError(f"audience_names has no name for audience ids {missing}")
    return target, job, tenant, f, {a: audience_names[a] for a in q.audience_ids}


def snapshot_insert_sql(
    q: sql.MembershipQuery,
    *,
    target_table: str,
    job_id: str,
    tenant: str,
    audience_names: Mapping[str, str],
    layout: str = "per_person",
    fields: OutputFields | None = None,
) -> str:
    """``INSERT INTO target_table SELECT ...``: the job's snapshot records, computed by Query Service.

    ``q`` is the run's membership query (:func:`airflow_cja_audiences.sql.build_membership_query`),
    ``target_table`` the profile dataset's table (its ``adobe/pqs/table`` tag), ``audience_names`` the
    friendly name of every audience id of ``q``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {v.shown(layout)}: the server path writes {list(LAYOUTS)}")
    target, job, tenant, f, names = _inputs(q, target_table, job_id, tenant, audience_names, fields)
    person, audience, status, when = sql.ROW_COLUMNS
    membership = (
        f"named_struct('{_field(f.audience_id, 'output.audience_id')}', {audience}, "
        f"'{_field(f.audience_name, 'output.audience_name')}', {_name_case(names)}, "
        f"'{_field(f.status, 'output.status')}', {status}, "
        f"'{_field(f.qualification_time, 'output.qualification_time')}', {when})"
    )
    # One row per (person, audience): the first by time, then status (the transform's "first row wins").
    rows = (
        f"    SELECT {person}, {audience}, {status}, {when},\n"
        f"           row_number() OVER (PARTITION BY {person}, {audience} ORDER BY {when}, {status}) AS {_ROW_NUMBER}\n"
        f"    FROM (\n{sql.membership_sql(q)}\n    )"
    )
    kept = f"{_ROW_NUMBER} = 1 AND {person} IS NOT NULL AND {person} <> ''"
    if layout == "per_membership":
        return (
            f"INSERT INTO {target}\n"
            f"SELECT md5(concat_ws(chr(31), {job}, {person}, {audience})) AS _id, {person},\n"
            f"       {membership} AS _{tenant}\n"
            f"FROM (\n{rows}\n)\n"
            f"WHERE {kept}"
        )
    ids = _field(f.audience_id, "output.audience_id")
    label = _field(f.audience_name, "output.audience_name")
    return (
        f"INSERT INTO {target}\n"
        f"SELECT md5(concat({job}, chr(31), {person})) AS _id, {person},\n"
        f"       named_struct('{_field(f.memberships, 'output.memberships')}', {_MEMBERSHIPS},\n"
        f"                    '{_field(f.audience_ids, 'output.audience_ids')}', "
        f"concat_ws(',', transform({_MEMBERSHIPS}, m -> m.{ids})),\n"
        f"                    '{_field(f.audience_names, 'output.audience_names')}', "
        f"concat_ws(',', transform({_MEMBERSHIPS}, m -> m.{label}))) AS _{tenant}\n"
        f"FROM (\n"
        f"  SELECT {person}, array_sort(collect_list({membership})) AS {_MEMBERSHIPS}\n"
        f"  FROM (\n{rows}\n  )\n"
        f"  WHERE {kept}\n"
        f"  GROUP BY {person}\n"
        f")"
    )


def events_insert_sql(
    q: sql.MembershipQuery,
    window: sql.TimeWindow,
    sources: Sequence[str] | None,
    *,
    target_table: str,
    job_id: str,
    tenant: str,
    audience_names: Mapping[str, str],
    fields: OutputFields | None = None,
) -> str:
    """``INSERT INTO target_table SELECT ...``: the change events of ``window``, computed by Query Service.

    ``window`` and ``sources`` are what ``prepare_events`` decided (the hull of the run's interval and
    the live intervals it overlaps; the export batches that prove its events), ``target_table`` the
    events dataset's table. The records equal those the client path's transform makes of
    :func:`airflow_cja_audiences.sql.events_sql` rows over the same window and sources.
    """
    target, job, tenant, f, names = _inputs(q, target_table, job_id, tenant, audience_names, fields)
    rows = sql.events_sql(q, window, sql.Partition(), sources)  # validates window and sources
    person, audience, status, when = sql.ROW_COLUMNS
    event = (
        f"CASE {status} "
        + " ".join(
            f"WHEN {sql.quote_literal(st, 'status')} THEN {sql.quote_literal(ev, 'event type')}"
            for st, ev in EVENT_TYPES
        )
        + " END"
    )
    tenant_struct = (
        f"named_struct('personID', {person}, "
        f"'{_field(f.audience_id, 'output.audience_id')}', {audience}, "
        f"'{_field(f.audience_name, 'output.audience_name')}', {_name_case(names)}, "
        f"'{_field(f.event_type, 'output.event_type')}', {event})"
    )
    # The rows are distinct per (person, audience, status, time), so each record's _id is unique; the
    # transform drops rows without a person id, NULL (already left out by events_sql) or empty.
    # `timestamp` is the ISO-8601 text the client path writes (XDM date-time, experience-platform docs
    # help/xdm/schema/field-constraints.md); the backticks keep the word from reading as a type name.
    return (
        f"INSERT INTO {target}\n"
        f"SELECT md5(concat_ws(chr(31), {job}, {person}, {audience}, {event}, {when})) AS _id,\n"
        f"       {when} AS `timestamp`,\n"
        f"       {tenant_struct} AS _{tenant}\n"
        f"FROM (\n{rows}\n)\n"
        f"WHERE {person} IS NOT NULL AND {person} <> ''"
    )
