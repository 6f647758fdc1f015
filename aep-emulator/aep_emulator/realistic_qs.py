"""Realistic mode, Query Service side: the values the realistic preset gives the Query Service knobs.

Merged into the emulator's realistic preset (``settings.py``, owned by the REST side) as
``EmulatorSettings(**{..., **REALISTIC_QUERY_SERVICE})``. Each value is production's where Adobe
documents one, and a guess (marked) where it does not.

* ``qs_max_sessions = 5``: Query Service guardrails (experience-platform docs, query-service
  ``guardrails.md``, "Concurrent Query Service users"): how many sessions an org may have at once is
  licensed ("as specified in the product description", +5 per ad hoc query user add-on), and past it
  "the user receives a Session Limit Reached error". 5 is the smallest licensed step Adobe names,
  and the issue's "5 concurrent interactive queries per org". Guesses: that every PostgreSQL
  connection counts as a session (Adobe counts *users*; a technical account opening 5 connections
  may count once, so counting connections is the stricter reading); that the error comes as a FATAL
  at connection time with SQLSTATE 53300 (PostgreSQL's too_many_connections; Adobe documents only
  the text). A session runs one query at a time, so this also caps the org's concurrent
  interactive queries at 5. Adobe's separate *query* concurrency cap queues excess queries instead
  of failing them; the emulator does not model that queue (a queued query is only slower).
* ``distinct_batch_ids = True``: Adobe documents that the physical data-lake batch of a row
  (``_acp_batchid``) and the logical, ingested batch (``_acp_system_metadata.acp_sourceBatchId``)
  need not match (reference 8.2a). The export job reports the logical batch
  (``destination.batchId``, the Catalog batch id); rows carry both. In realistic mode every export
  gets a physical batch id of its own, so a reader filtering on ``_acp_batchid`` with the job's
  batch id finds nothing, as it may in production. Default off: Adobe's own use-case example reads a
  batch with ``_acp_batchid = '<Batch ID from the dataset activity page>'``, so equal ids are what
  production also shows, and the default keeps the existing tests' expectations.
"""

from __future__ import annotations

from typing import Any

# ---- realistic preset: Query Service values (merged into settings' realistic preset) ----------------
REALISTIC_QUERY_SERVICE: dict[str, Any] = {
    "qs_max_sessions": 5,  # Adobe: "Session Limit Reached" past the licensed sessions (5 per add-on)
    "distinct_batch_ids": True,  # Adobe: physical (_acp_batchid) and logical batches need not match
}
# -------------------------------------------------------------------------------------------------------

#: What Query Service answers a connection past the org's session limit (text: Adobe's guardrails doc).
SESSION_LIMIT_MESSAGE = "Session Limit Reached"
