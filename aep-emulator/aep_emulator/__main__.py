"""``python -m aep_emulator``: run the local AEP emulator until SIGTERM / SIGINT.

When it serves, it prints exactly one line ``AEP emulator ready: {json}`` on stdout (and writes the
same JSON to ``--ready-file``); logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from aep_emulator.clock import parse_instant
from aep_emulator.settings import MODES, EmulatorSettings, load_audiences_file, load_faults

DEFAULTS = EmulatorSettings()


def _scopes(value: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in value.split(",") if s.strip())


def parser(defaults: EmulatorSettings = DEFAULTS) -> argparse.ArgumentParser:
    """The CLI; ``defaults`` are the mode's (``--realistic`` re-parses with the realistic preset, so
    an explicit option still wins over the preset)."""
    DEFAULTS = defaults  # the help texts below show the mode's defaults
    p = argparse.ArgumentParser(
        prog="python -m aep_emulator",
        description="Local emulator of the Adobe Experience Platform and CJA APIs.",
    )
    add = p.add_argument
    add(
        "--mode",
        choices=MODES,
        default=DEFAULTS.mode,
        help="default: fast and kind; realistic: Adobe's pace and limits on a compressed clock (durations "
        "in minutes, throttling with Retry-After, IMS scope checks, intermediate batch statuses); "
        "see README 'Realistic mode' (default %(default)s)",
    )
    add("--realistic", dest="mode", action="store_const", const="realistic", help="same as --mode realistic")
    add("--host", default=DEFAULTS.host, help="address to listen on (default %(default)s)")
    add("--port", type=int, default=DEFAULTS.port, help="REST port; 0 picks a free one (default %(default)s)")
    add("--profiles", type=int, default=DEFAULTS.profiles, help="synthetic profiles (default %(default)s)")
    add("--seed", type=int, default=DEFAULTS.seed, help="seed of the synthetic data (default %(default)s)")
    add("--client-id", default=DEFAULTS.client_id)
    add("--client-secret", default=DEFAULTS.client_secret)
    add("--org-id", default=DEFAULTS.org_id)
    add(
        "--sandbox",
        action="append",
        dest="sandboxes",
        help="sandbox name; repeat for several (default: prod). The first is the default sandbox",
    )
    add("--tenant", default=DEFAULTS.tenant, help="tenant id without '_' (default %(default)s)")
    add("--token-lifetime", type=float, default=DEFAULTS.token_lifetime, help="seconds (default %(default)s)")
    add(
        "--tls-cert",
        type=Path,
        help="server certificate (PEM); default: generate a private CA in --state-dir",
    )
    add("--tls-key", type=Path, help="private key of --tls-cert")
    add("--tls-ca", type=Path, help="CA bundle clients should trust for --tls-cert (default: --tls-cert)")
    add(
        "--tls-hostname",
        action="append",
        dest="tls_hostnames",
        metavar="NAME",
        help="also make the generated certificate valid for NAME (repeatable), e.g. the docker-compose "
        "service name clients use; needed when listening on 0.0.0.0",
    )
    add("--no-tls", action="store_true", help="plain HTTP (for debugging only; clients should use TLS)")
    add("--state-dir", type=Path, help="where certificates and uploads go (default: a temporary directory)")
    add("--pg-port", type=int, help="also serve Query Service (PostgreSQL wire) on this port; 0 = free port")
    add(
        "--qs-max-rows",
        type=int,
        default=DEFAULTS.qs_max_rows,
        help="rows per ad hoc query (default %(default)s)",
    )
    add(
        "--qs-over-limit",
        choices=("truncate", "error"),
        default=DEFAULTS.qs_over_limit,
        help="a result above --qs-max-rows is cut silently as production does (truncate, default) or fails "
        "with SQLSTATE 53400 (error)",
    )
    add(
        "--qs-timeout-seconds",
        type=float,
        default=DEFAULTS.qs_timeout_seconds,
        help="ad hoc query time limit (default %(default)s)",
    )
    add(
        "--qs-max-sessions",
        type=int,
        default=DEFAULTS.qs_max_sessions,
        help="Query Service sessions the org may have at once; past it a connection fails with 'Session Limit "
        "Reached' (SQLSTATE 53300). 0 = no limit (default %(default)s; realistic: 5)",
    )
    add(
        "--distinct-batch-ids",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS.distinct_batch_ids,
        help="export rows get a physical _acp_batchid unlike the job's (logical) batch id, which they carry "
        "in _acp_system_metadata.acp_sourceBatchId, as Adobe allows (default %(default)s; realistic: on)",
    )
    add(
        "--qs-seconds-per-million-rows",
        type=float,
        default=DEFAULTS.qs_seconds_per_million_rows,
        help="scan-cost model: modelled seconds per million export rows a query reads (default %(default)s; "
        "realistic: 5, a guess)",
    )
    add(
        "--qs-seconds-per-query",
        type=float,
        default=DEFAULTS.qs_seconds_per_query,
        help="scan-cost model: modelled start-up seconds of each query that reads a dataset (default "
        "%(default)s; realistic: 2, a guess)",
    )
    add(
        "--qs-batch-start-seconds",
        type=float,
        default=DEFAULTS.qs_batch_start_seconds,
        help="batch queries: Adobe seconds a query stays SUBMITTED (queueing, start-up) before it reads "
        "(default %(default)s; realistic: 120, a guess)",
    )
    add(
        "--qs-batch-write-seconds-per-million-records",
        type=float,
        default=DEFAULTS.qs_batch_write_seconds_per_million_records,
        help="batch queries: Adobe seconds per million records written, the batch loading "
        "(default %(default)s; realistic: 60, a guess)",
    )
    add(
        "--qs-batch-promote-seconds",
        type=float,
        default=DEFAULTS.qs_batch_promote_seconds,
        help="batch queries: Adobe seconds the written batch takes to become a success before the query "
        "does (default %(default)s; realistic: 300, a guess)",
    )
    add(
        "--qs-batch-concurrency",
        type=int,
        default=DEFAULTS.qs_batch_concurrency,
        help="batch queries running at once; the rest wait SUBMITTED. 0 = no limit (default %(default)s; "
        "realistic: 5, a guess: Adobe licenses it)",
    )
    add(
        "--qs-batch-max-seconds",
        type=float,
        default=DEFAULTS.qs_batch_max_seconds,
        help="batch queries whose modelled run time exceeds this many Adobe seconds end TIMEOUT. 0 = no "
        "limit (default %(default)s; realistic: 86400, Adobe's 24 hours)",
    )
    add(
        "--clock-start",
        help="RFC 3339 instant: the clock starts there and timelines spread around it "
        "(default: real time, timelines around today 00:00 UTC)",
    )
    add(
        "--time-scale",
        type=float,
        default=DEFAULTS.time_scale,
        help="real seconds per emulated Adobe second for job and batch durations (default %(default)s)",
    )
    add(
        "--export-job-seconds",
        type=float,
        default=DEFAULTS.export_job_seconds,
        help="duration of an export job, Adobe seconds (default %(default)s)",
    )
    add(
        "--export-batch-seconds",
        type=float,
        default=DEFAULTS.export_batch_seconds,
        help="time the export's batch stays staging after its job SUCCEEDED, Adobe seconds (default %(default)s)",
    )
    add(
        "--batch-seconds",
        type=float,
        default=DEFAULTS.batch_seconds,
        help="processing time of an ingestion batch, Adobe seconds (default %(default)s)",
    )
    add(
        "--intermediate-statuses",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS.intermediate_statuses,
        help="batches pass Catalog's loaded/staging statuses (default %(default)s)",
    )
    add(
        "--platform-rate-limit",
        type=int,
        default=DEFAULTS.platform_rate_limit,
        help="Platform requests per second per client id, then 429 with Retry-After; 0 = unlimited "
        "(default %(default)s)",
    )
    add(
        "--batch-create-rate-limit",
        type=int,
        default=DEFAULTS.batch_create_rate_limit,
        help="ingestion batches created per minute per client id; 0 = unlimited (default %(default)s)",
    )
    add(
        "--ims-scopes",
        type=_scopes,
        default=DEFAULTS.ims_scopes,
        metavar="A,B,...",
        help="the credential's scopes: a token request asking for another is refused; empty = any",
    )
    add(
        "--required-scopes",
        type=_scopes,
        default=DEFAULTS.required_scopes,
        metavar="A,B,...",
        help="scopes every API call's token must carry; empty = none",
    )
    add(
        "--audiences-file",
        type=Path,
        help='JSON list of {"id", "name", "probability"} replacing the defaults',
    )
    add("--faults", help="fault rules: inline JSON or a JSON file (see emulator/faults.py)")
    add(
        "--cja-rate-limit",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS.cja_rate_limit,
        help="enforce CJA's 12 requests / 6 s limit (default %(default)s)",
    )
    add("--db-path", type=Path, help="DuckDB database file (default: in memory)")
    add("--db-memory-limit", help="DuckDB memory limit, e.g. 2GB")
    add("--ready-file", type=Path, help="also write the ready JSON to this file")
    add("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    add("--log-requests", action="store_true", help="log every request at INFO (default: DEBUG)")
    return p


def settings_from(args: argparse.Namespace) -> EmulatorSettings:
    # The mode's preset first, so a realistic knob without a CLI option still gets its value.
    return EmulatorSettings.for_mode(
        args.mode,
        host=args.host,
        port=args.port,
        profiles=args.profiles,
        seed=args.seed,
        client_id=args.client_id,
        client_secret=args.client_secret,
        org_id=args.org_id,
        sandboxes=tuple(args.sandboxes or ("prod",)),
        tenant=args.tenant,
        token_lifetime=args.token_lifetime,
        tls=not args.no_tls,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_ca=args.tls_ca,
        tls_hostnames=tuple(args.tls_hostnames or ()),
        state_dir=args.state_dir,
        pg_port=args.pg_port,
        qs_max_rows=args.qs_max_rows,
        qs_over_limit=args.qs_over_limit,
        qs_timeout_seconds=args.qs_timeout_seconds,
        qs_max_sessions=args.qs_max_sessions,
        distinct_batch_ids=args.distinct_batch_ids,
        qs_seconds_per_million_rows=args.qs_seconds_per_million_rows,
        qs_seconds_per_query=args.qs_seconds_per_query,
        qs_batch_start_seconds=args.qs_batch_start_seconds,
        qs_batch_write_seconds_per_million_records=args.qs_batch_write_seconds_per_million_records,
        qs_batch_promote_seconds=args.qs_batch_promote_seconds,
        qs_batch_concurrency=args.qs_batch_concurrency,
        qs_batch_max_seconds=args.qs_batch_max_seconds,
        clock_start=parse_instant(args.clock_start) if args.clock_start else None,
        time_scale=args.time_scale,
        export_job_seconds=args.export_job_seconds,
        export_batch_seconds=args.export_batch_seconds,
        batch_seconds=args.batch_seconds,
        intermediate_statuses=args.intermediate_statuses,
        platform_rate_limit=args.platform_rate_limit,
        batch_create_rate_limit=args.batch_create_rate_limit,
        ims_scopes=tuple(args.ims_scopes),
        required_scopes=tuple(args.required_scopes),
        audiences=load_audiences_file(args.audiences_file) if args.audiences_file else None,
        faults=load_faults(args.faults) if args.faults else None,
        cja_rate_limit=args.cja_rate_limit,
        db_path=args.db_path,
        db_memory_limit=args.db_memory_limit,
        log_requests=args.log_requests,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = parser().parse_args(argv)
    if args.mode != DEFAULTS.mode:  # again, over the mode's preset: explicit options override it
        args = parser(EmulatorSettings.for_mode(args.mode)).parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    log = logging.getLogger("aep_emulator")
    try:
        settings = settings_from(args)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from aep_emulator.server import READY_PREFIX, EmulatorServer, EmulatorStartError

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    server = EmulatorServer(settings)
    try:
        server.start()
    except EmulatorStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        info = {**server.ready_info(), "pid": os.getpid()}
        text = json.dumps(info, sort_keys=True)
        if args.ready_file:
            tmp = args.ready_file.with_name(args.ready_file.name + ".tmp")
            tmp.write_text(text + "\n", encoding="utf-8")
            tmp.replace(args.ready_file)  # atomic: readers never see half a file
        print(READY_PREFIX + text, flush=True)
        while not stop.wait(0.5):
            pass
        log.info("stopping")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
