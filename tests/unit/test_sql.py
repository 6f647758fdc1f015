"""Query Service SQL builder: golden SQL, hostile inputs, partition coverage."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from airflow_cja_audiences import sql
from airflow_cja_audiences.config import RefreshJob
from airflow_cja_audiences.sql import MembershipQuery, Partition, TimeWindow

BATCH = "01EQ1C48TR4GD4FE7NH2522TCQ"
AUD_1 = "4d4c6a59-2b4d-4bbd-9aa4-7c3b3f54d2e1"
AUD_2 = "aud-7"


def job_config(**overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "job_id": "luma_loyalty",
        "audiences": [{"id": AUD_1}, {"id": AUD_2}],
        "identity": {"field": "_{tenant}.identification.core.email"},
        "tenant": "acme",
    }
    cfg.update(overrides)
    return cfg


def make_query(**overrides: Any) -> MembershipQuery:
    kwargs: dict[str, Any] = {"table": "audience_export", "batch_id": BATCH}
    kwargs.update(overrides)
    return sql.build_membership_query(RefreshJob.model_validate(job_config()), **kwargs)


# --- golden SQL ---------------------------------------------------------------------------------


def test_membership_sql_golden() -> None:
    assert (
        sql.membership_sql(make_query(), Partition(4, 1))
        == """\
SELECT personID, key AS audienceId, value.status AS status,
       concat(date_format(value.lastQualificationTime, 'yyyy-MM-dd'), 'T', date_format(value.lastQualificationTime, 'HH:mm:ss'), 'Z') AS qualificationTime
FROM (
    SELECT _acme.identification.core.email AS personID, explode(segmentMembership.ups)
    FROM audience_export
    WHERE _acp_system_metadata.acp_sourceBatchId = '01EQ1C48TR4GD4FE7NH2522TCQ'
      AND _acme.identification.core.email IS NOT NULL
      AND pmod(hash(_acme.identification.core.email), 4) = 1
)
WHERE key IN ('4d4c6a59-2b4d-4bbd-9aa4-7c3b3f54d2e1', 'aud-7')
  AND value.status IN ('realized', 'existing')
ORDER BY personID, audienceId, qualificationTime, status"""
    )


def test_whole_result_has_no_partition_filter_and_count_keeps_null_persons() -> None:
    q = make_query()
    assert "pmod" not in sql.membership_sql(q)
    assert (
        sql.count_sql(q)
        == """\
SELECT count(*) AS memberships, count(personID) AS identified
FROM (
    SELECT _acme.identification.core.email AS personID, explode(segmentMembership.ups)
    FROM audience_export
    WHERE _acp_system_metadata.acp_sourceBatchId = '01EQ1C48TR4GD4FE7NH2522TCQ'
)
WHERE key IN ('4d4c6a59-2b4d-4bbd-9aa4-7c3b3f54d2e1', 'aud-7')
  AND value.status IN ('realized', 'existing')"""
    )
    assert "AND pmod(hash(_acme.identification.core.email), 2) = 0\n)" in sql.count_sql(q, Partition(2, 0))


def test_events_sql_golden() -> None:
    """Only realized (entered) and exited rows are events; existing is a re-assertion. Several exports
    are read and what they show alike comes back once."""
    window = TimeWindow(
        "2026-11-28T00:00:00Z", datetime(2026, 11, 29, 1, 0, tzinfo=timezone(timedelta(hours=1)))
    )
    assert (
        sql.events_sql(
            make_query(), window, Partition(2, 1), sources=["01PREVIOUS", "01EQ1C48TR4GD4FE7NH2522TCQ"]
        )
        == """\
SELECT DISTINCT personID, key AS audienceId, value.status AS status,
       concat(date_format(value.lastQualificationTime, 'yyyy-MM-dd'), 'T', date_format(value.lastQualificationTime, 'HH:mm:ss'), 'Z') AS qualificationTime
FROM (
    SELECT _acme.identification.core.email AS personID, explode(segmentMembership.ups)
    FROM audience_export
    WHERE _acp_system_metadata.acp_sourceBatchId IN ('01PREVIOUS', '01EQ1C48TR4GD4FE7NH2522TCQ')
      AND _acme.identification.core.email IS NOT NULL
      AND pmod(hash(_acme.identification.core.email), 2) = 1
)
WHERE key IN ('4d4c6a59-2b4d-4bbd-9aa4-7c3b3f54d2e1', 'aud-7')
  AND value.status IN ('realized', 'exited')
  AND value.lastQualificationTime >= '2026-11-28T00:00:00Z'
  AND value.lastQualificationTime < '2026-11-29T00:00:00Z'
ORDER BY personID, audienceId, qualificationTime, status"""
    )
    # Without sources: this run's export alone.
    assert "acp_sourceBatchId = '01EQ1C48TR4GD4FE7NH2522TCQ'" in sql.events_sql(make_query(), window)
    with pytest.raises(ValueError, match="source batch id"):
        sql.events_sql(make_query(), window, sources=["01X' OR '1'='1"])


def test_job_choices_reach_the_sql() -> None:
    job = RefreshJob.model_validate(
        job_config(
            statuses=["existing"],
            batch_id_column="_acp_batchid",
            identity={"field": "person.crmId"},
            tenant=None,
        )
    )
    q = sql.build_membership_query(job, table="t2", batch_id="b-1", tenant="_other")
    text = sql.membership_sql(q)
    assert "value.status IN ('existing')" in text
    assert "WHERE _acp_batchid = 'b-1'" in text
    assert "SELECT person.crmId AS personID" in text
    assert "FROM t2\n" in text


def test_audiences_by_name_need_resolved_ids() -> None:
    job = RefreshJob.model_validate(job_config(audiences=[{"name": "Gold members"}]))
    with pytest.raises(ValueError, match="audience_ids: the job selects audiences by name"):
        sql.build_membership_query(job, table="t", batch_id=BATCH)
    q = sql.build_membership_query(job, table="t", batch_id=BATCH, audience_ids=["aud-9"])
    assert "key IN ('aud-9')" in sql.membership_sql(q)


def test_missing_tenant_is_named() -> None:
    job = RefreshJob.model_validate(job_config(tenant=None))
    with pytest.raises(ValueError, match="^tenant: "):
        sql.build_membership_query(job, table="t", batch_id=BATCH)


LITERAL = re.compile(r"'([^']*)'")


def test_every_literal_is_quoted_from_the_safe_alphabet() -> None:
    window = TimeWindow("2026-11-28T00:00:00.5Z", "2026-11-29T00:00:00Z")
    q = make_query()
    for text in (sql.membership_sql(q, Partition(8, 3)), sql.count_sql(q), sql.events_sql(q, window)):
        outside_pattern = text
        assert '"' not in outside_pattern  # Query Service documents double quotes as identifiers
        assert outside_pattern.count("'") % 2 == 0
        for literal in LITERAL.findall(outside_pattern):
            assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]*", literal), literal


# --- hostile inputs -------------------------------------------------------------------------------

HOSTILE: list[Any] = [
    "'; DROP TABLE x; --",
    "a' OR '1'='1",
    "a''b",
    "a\\",
    "a\\' OR 1=1",
    "a\u2019b",  # right single quotation mark
    "a\u02bcb",  # modifier letter apostrophe
    "\uff07a",  # fullwidth apostrophe
    "a -- comment",
    "--a",
    "a/*x*/b",
    "/* */",
    "`a`",
    '"a"',
    "a\nb",
    "a\rb",
    "a\x00b",
    "a\tb",
    "a;b",
    " a",
    "a ",
    "",
    "\u0430",  # Cyrillic a
    "{table}",
    "${x}",
    "x" * 10_000,
    123,
    None,
    ["a"],
    b"a'",
    True,
]


def _raises_naming(exc: pytest.ExceptionInfo[BaseException], field: str) -> None:
    if isinstance(exc.value, ValidationError):
        locs = [".".join(str(p) for p in err["loc"]) for err in exc.value.errors()]
        assert any(field in loc for loc in locs), locs
    else:
        assert field in str(exc.value), str(exc.value)
    assert len(str(exc.value)) < 2_000  # a 10 kB hostile value is not echoed back in full


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
@pytest.mark.parametrize(
    "where, field",
    [
        (lambda x: {"audiences": [{"id": x}]}, "audiences.0.id"),
        (lambda x: {"statuses": [x]}, "statuses.0"),
        (lambda x: {"identity": {"field": x}}, "identity.field"),
        (
            lambda x: {"identity": {"field": f"_{{tenant}}.{x}" if isinstance(x, str) else x}},
            "identity.field",
        ),
        (lambda x: {"tenant": x}, "tenant"),
        (lambda x: {"batch_id_column": x}, "batch_id_column"),
        (lambda x: {"job_id": x}, "job_id"),
        (lambda x: {"output": {"audience_id": x}}, "output.audience_id"),
    ],
    ids=[
        "audience id",
        "status",
        "identity field",
        "identity field segment",
        "tenant",
        "batch id column",
        "job id",
        "output field name",
    ],
)
def test_hostile_config_strings_are_rejected_naming_the_field(where: Any, field: str, value: Any) -> None:
    if value is None and field == "tenant":
        pytest.skip("tenant is optional; None means 'read it from Schema Registry'")
    if value is None and field == "audiences.0.id":
        field = "audiences.0"  # id and name are both optional: "give exactly one of 'id' or 'name'"
    with pytest.raises(ValidationError) as exc:
        RefreshJob.model_validate(job_config(**where(value)))
    _raises_naming(exc, field)


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
@pytest.mark.parametrize(
    "kwarg, field",
    [
        ("table", "table"),
        ("batch_id", "batch id"),
        ("tenant", "tenant"),
        ("audience_ids", "audience_ids"),
    ],
    ids=["table", "batch id", "tenant", "audience ids"],
)
def test_hostile_run_time_values_are_rejected_at_the_builder(kwarg: str, field: str, value: Any) -> None:
    if kwarg == "tenant" and value is None:
        value = "'"  # None means "use the job's tenant"; covered by test_missing_tenant_is_named
    if kwarg == "audience_ids":
        value = [value]
    with pytest.raises(ValueError) as exc:
        make_query(**{kwarg: value})
    _raises_naming(exc, field)


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_hostile_values_cannot_bypass_the_builder(value: Any) -> None:
    """Constructing the query object directly runs the same checks (build time, not config time)."""
    base: dict[str, Any] = {"table": "t", "person_field": "a.b", "audience_ids": ("x",), "batch_id": "b"}
    for field, bad in [
        ("table", value),
        ("person_field", value),
        ("batch_id", value),
        ("batch_id_column", value),
        ("audience_ids", (value,)),
        ("statuses", (value,)),
    ]:
        with pytest.raises(ValueError) as exc:
            MembershipQuery(**{**base, field: bad})
        _raises_naming(exc, field.replace("_", " ") if field in ("person_field", "batch_id") else field)


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_quote_literal_refuses_instead_of_escaping(value: Any) -> None:
    with pytest.raises(ValueError, match="^thing "):
        sql.quote_literal(value, "thing")


@given(st.text(max_size=300))
def test_quote_literal_output_is_always_inert(text: str) -> None:
    try:
        quoted = sql.quote_literal(text, "x")
    except ValueError:
        return
    assert quoted == f"'{text}'"
    assert re.fullmatch(r"'[A-Za-z0-9][A-Za-z0-9._:-]*'", quoted)


def test_exited_is_not_a_member_status() -> None:
    with pytest.raises(ValidationError):
        RefreshJob.model_validate(job_config(statuses=["realized", "exited"]))
    with pytest.raises(ValueError, match="statuses"):
        MembershipQuery(
            table="t", person_field="a.b", audience_ids=("x",), batch_id="b", statuses=("exited",)
        )


def test_audience_ids_must_be_distinct_and_not_a_lone_string() -> None:
    with pytest.raises(ValueError, match="repeat"):
        make_query(audience_ids=["a", "a"])
    for bad in ("abc", b"abc", 7):
        with pytest.raises(ValueError, match="audience_ids must be a sequence of ids"):
            make_query(audience_ids=bad)
    with pytest.raises(ValueError, match="non-empty"):
        make_query(audience_ids=[])


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-28T00:00:00Z' OR '1'='1",
        "2026-11-28 00:00:00Z",
        "2026-11-28T00:00:00",
        "2026-11-28T00:00:00+00:00",
        "2026-13-01T00:00:00Z",
        "2026-02-30T00:00:00Z",
        "2026-11-28T24:00:00Z",
        "2026-11-28T00:00:00.1234567Z",
        "\uff12026-11-28T00:00:00Z",
        "2026-11-28T00:00:00Z\n",
        datetime(2026, 11, 28),  # naive
        1764288000,
        None,
    ],
)
def test_hostile_timestamps_are_rejected(value: Any) -> None:
    with pytest.raises(ValueError, match="window start"):
        TimeWindow(value, "2030-01-01T00:00:00Z")


def test_window_is_normalised_to_utc_and_ordered() -> None:
    w = TimeWindow(
        datetime(2026, 11, 28, 2, 0, 0, 250, tzinfo=timezone(timedelta(hours=2))), "2026-11-28T01:00:00Z"
    )
    assert (w.start, w.end) == ("2026-11-28T00:00:00.000250Z", "2026-11-28T01:00:00Z")
    with pytest.raises(ValueError, match="before its end"):
        TimeWindow("2026-11-28T01:00:00Z", "2026-11-28T01:00:00Z")


# --- templates ----------------------------------------------------------------------------------

TEMPLATE = """SELECT personID, key AS audienceId, value.status AS status,
       concat(date_format(value.lastQualificationTime, 'yyyy-MM-dd'), 'T', date_format(value.lastQualificationTime, 'HH:mm:ss'), 'Z') AS qualificationTime
FROM (SELECT {person} AS personID, explode(segmentMembership.ups) FROM {table} WHERE {batch_filter})
WHERE key IN ({audience_ids}) AND value.status IN ({statuses}) AND {partition_filter} AND '{{x}}' = '{{x}}'
ORDER BY personID, audienceId"""


def test_template_is_rendered_with_built_values_only() -> None:
    q = make_query(template=TEMPLATE)
    text = sql.membership_sql(q, Partition(4, 3))
    assert "SELECT _acme.identification.core.email AS personID" in text
    assert (
        "FROM audience_export WHERE _acp_system_metadata.acp_sourceBatchId = '01EQ1C48TR4GD4FE7NH2522TCQ'"
        in text
    )
    assert "key IN ('4d4c6a59-2b4d-4bbd-9aa4-7c3b3f54d2e1', 'aud-7')" in text
    assert "value.status IN ('realized', 'existing')" in text
    assert "pmod(hash(personID), 4) = 3" in text
    assert "'{x}' = '{x}'" in text  # doubled braces are literal braces
    assert sql.count_sql(q).startswith(
        "SELECT count(*) AS memberships, count(personID) AS identified\nFROM (\nSELECT"
    )
    with pytest.raises(ValueError, match="snapshot query only"):
        sql.events_sql(q, TimeWindow("2026-11-28T00:00:00Z", "2026-11-29T00:00:00Z"))


@pytest.mark.parametrize(
    "template, message",
    [
        (TEMPLATE.replace("{table}", "{table.__class__}"), "'table.__class__' is unknown"),
        (TEMPLATE.replace("{table}", "{table[0]}"), "unknown"),
        (TEMPLATE.replace("{table}", "{table!r}"), "format spec or conversion"),
        (TEMPLATE.replace("{table}", "{table:>40}"), "format spec or conversion"),
        (TEMPLATE + " {0}", "'0' is unknown"),
        (TEMPLATE + " {}", "'' is unknown"),
        (TEMPLATE + " {tenant}", "'tenant' is unknown"),
        (TEMPLATE + " {", "literal braces"),
        (TEMPLATE + " }", "literal braces"),
        (TEMPLATE.replace("{batch_filter}", "TRUE"), "must use {batch_filter}"),
        (TEMPLATE.replace("AND {partition_filter}", ""), "must use {partition_filter}"),
        (TEMPLATE + "; DROP TABLE x", "single statement"),
        (TEMPLATE + "\x00", "control character U\\+0000"),
        ("   ", "must not be empty"),
        (b"SELECT 1", "must be a string"),
        ("x" * 100_001, "limit is 100000"),
    ],
)
def test_bad_templates_are_rejected(template: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_query(template=template)


# --- partitions ---------------------------------------------------------------------------------

hash_values = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@given(
    count=st.integers(0, 2_000_000),
    max_rows=st.integers(1000, 60_000),
    hashes=st.lists(hash_values, max_size=20),
)
def test_a_plan_covers_every_hash_exactly_once(count: int, max_rows: int, hashes: list[int]) -> None:
    plan = sql.plan_partitions(count, max_rows)
    assert len(plan) * max_rows >= count
    assert len(plan) == 1 or (len(plan) - 1) * max_rows < count  # no more partitions than needed
    for h in hashes:
        assert sum(p.contains(h) for p in plan) == 1


@given(st.integers(1, 1000).flatmap(lambda m: st.tuples(st.just(m), st.integers(0, m - 1))), hash_values)
def test_split_children_cover_their_parent_exactly(mr: tuple[int, int], h: int) -> None:
    parent = Partition(*mr)
    a, b = parent.split()
    assert parent.contains(h) == (a.contains(h) or b.contains(h))
    assert not (a.contains(h) and b.contains(h))


@settings(max_examples=200)
@given(
    count=st.integers(0, 500_000),
    splits=st.lists(st.integers(0, 10**6), max_size=20),
    hashes=st.lists(hash_values, min_size=1, max_size=30),
)
def test_splitting_any_buckets_of_a_plan_keeps_an_exact_cover(
    count: int, splits: list[int], hashes: list[int]
) -> None:
    plan = sql.plan_partitions(count, 40_000)
    for pick in splits:
        victim = plan.pop(pick % len(plan))
        plan.extend(victim.split())
    for h in hashes:
        assert sum(p.contains(h) for p in plan) == 1


def test_partition_arguments_are_checked() -> None:
    for bad in [(0, 0), (2, 2), (2, -1), (True, 0), (2.0, 1), ("2", "1")]:
        with pytest.raises(ValueError, match="partition"):
            Partition(*bad)  # type: ignore[arg-type]
    for bad_args in [(-1, 10), (10, 0), (10.0, 1), (True, 1)]:
        with pytest.raises(ValueError):
            sql.plan_partitions(*bad_args)  # type: ignore[arg-type]
    assert sql.plan_partitions(0, 10) == [Partition()]
    assert Partition(8, 3).label == "p3of8"
    with pytest.raises(ValueError, match="must be a Partition"):
        sql.membership_sql(make_query(), (4, 1))  # type: ignore[arg-type]


# --- prepare's folded reads: one statement per export read -------------------------------------

PREVIOUS = "01EQ1C48TR4GD4FE7NH2522PRV"


def test_snapshot_counts_sql_reads_both_exports_once_and_keeps_persons_without_an_id() -> None:
    text = sql.snapshot_counts_sql(make_query(), PREVIOUS)
    assert text.count("FROM audience_export") == 1  # one read of the export table
    assert f"_acp_system_metadata.acp_sourceBatchId IN ('{BATCH}', '{PREVIOUS}')" in text
    # NULL persons stay in the read (they are counted as memberships, not as identified)...
    assert "email IS NOT NULL" not in text
    assert "sum(rows_new) AS memberships" in text
    assert "sum(CASE WHEN personID IS NOT NULL THEN rows_new ELSE 0 END) AS identified" in text
    # ...and out of the person-level change counts.
    assert (
        "sum(CASE WHEN personID IS NOT NULL AND in_new = 1 AND in_old = 0 THEN 1 ELSE 0 END) AS entered"
        in text
    )
    assert (
        f"max(CASE WHEN batchId = '{PREVIOUS}' AND status IN ('realized', 'existing') THEN 1 ELSE 0 END) AS in_old"
        in text
    )
    assert re.search(r"SELECT audienceId, sum\(rows_new\)", text)
    assert text.endswith("GROUP BY audienceId\nORDER BY audienceId")


def test_snapshot_counts_sql_without_a_previous_export_reads_this_one_alone() -> None:
    text = sql.snapshot_counts_sql(make_query(), None)
    assert f"acp_sourceBatchId IN ('{BATCH}')" in text
    assert "0 AS in_old" in text


@pytest.mark.parametrize("previous", ["x'; DROP TABLE t --", "a b", ""])
def test_snapshot_counts_sql_refuses_a_previous_batch_id_that_is_not_one(previous: str) -> None:
    if not previous:  # empty: no previous export, not an error
        assert "0 AS in_old" in sql.snapshot_counts_sql(make_query(), previous)
        return
    with pytest.raises(ValueError, match="previous batch id"):
        sql.snapshot_counts_sql(make_query(), previous)


def test_folded_reads_refuse_templates() -> None:
    q = make_query(template="SELECT * FROM {table} WHERE {batch_filter} AND {partition_filter}")
    with pytest.raises(ValueError, match="template"):
        sql.snapshot_counts_sql(q, None)
    with pytest.raises(ValueError, match="template"):
        sql.events_read_sql(q, TimeWindow("2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z"))


EARLIER = "01EQ1C48TR4GD4FE7NH2522ERL"


def test_events_read_sql_reads_the_sources_and_the_untimed_pair_once() -> None:
    window = TimeWindow("2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z")
    text = sql.events_read_sql(make_query(), window, [BATCH, PREVIOUS, BATCH], (EARLIER, BATCH))
    assert text.count("FROM audience_export") == 1  # one read of every batch
    assert f"acp_sourceBatchId IN ('{BATCH}', '{PREVIOUS}', '{EARLIER}')" in text
    assert "email IS NOT NULL" not in text  # the totals count rows without a person id too
    # the events: distinct times per (person, audience), of the sources only, in the window only
    events = f"CASE WHEN batchId IN ('{BATCH}', '{PREVIOUS}') AND value.status = 'realized' AND "
    assert events + "value.lastQualificationTime >= '2026-11-01T00:00:00Z' AND " in text
    assert "count(DISTINCT enteredAt) AS entered,\n" in text
    assert "count(DISTINCT exitedAt) AS exited,\n" in text
    assert "sum(CASE WHEN personID IS NOT NULL THEN exited ELSE 0 END) AS exited_identified" in text
    # the pair: persons with an id only, flags of its two batches
    assert (
        "sum(CASE WHEN personID IS NOT NULL AND in_new = 1 AND in_old = 0 AND realized_new = 0 "
        "THEN 1 ELSE 0 END) AS entered_untimed" in text
    )
    assert f"max(CASE WHEN batchId = '{EARLIER}' AND status IN ('realized', 'existing')" in text
    assert (
        f"max(CASE WHEN batchId = '{BATCH}' AND status = 'realized' THEN 1 ELSE 0 END) AS realized_new"
        in text
    )
    assert text.endswith("GROUP BY audienceId\nORDER BY audienceId")


def test_events_read_sql_without_an_untimed_pair_reads_the_sources_alone() -> None:
    window = TimeWindow("2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z")
    text = sql.events_read_sql(make_query(), window)
    assert f"acp_sourceBatchId IN ('{BATCH}')" in text
    assert "batchId IN" not in text  # every batch read is a source
    assert "0 AS in_new" in text and "0 AS in_old" in text
    with pytest.raises(ValueError, match="TimeWindow"):
        sql.events_read_sql(make_query(), "2026-11-01")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sources", "pair", "what"),
    [
        (["x'; DROP TABLE t --"], None, "source batch id"),
        ([BATCH], ("a b", BATCH), "earlier batch id"),
        ([BATCH], (EARLIER, "x' OR 1=1"), "later batch id"),
    ],
)
def test_events_read_sql_refuses_batch_ids_that_are_not_ones(
    sources: list[str], pair: tuple[str, str] | None, what: str
) -> None:
    window = TimeWindow("2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z")
    with pytest.raises(ValueError, match=what):
        sql.events_read_sql(make_query(), window, sources, pair)
