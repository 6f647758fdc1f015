"""``python -m aep_emulator``: run the local AEP emulator until SIGTERM / SIGINT.

When it serves, it prints exactly one line ``AEP emulator ready: {json}`` on stdout (and writes the
same JSON to ``--ready-file``); logs go to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from aep_emulator.clock import parse_instant
from aep_emulator.settings import MODES, EmulatorSettings, load_audiences_file, load_faults

DEFAULTS = EmulatorSettings()


def _scopes(value: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in value.split(",") if s.strip())


def _field(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def parser(defaults: EmulatorSettings = DEFAULTS) -> argparse.ArgumentParser:
    """The CLI; ``defaults`` are the mode's (``--realistic`` re-parses with the realistic preset, so
    an explicit option still wins over the preset)."""
    DEFAULTS = defaults  # the help texts below show the mode's defaults
    p = argparse.ArgumentParser(
        prog="python -m aep_emulator",
        description="Local emulator of the Adobe Experience Platform and CJA APIs.",
    )
    add = p.add_argument

    def setting(flag: str, **options: Any) -> None:
        """An option for the ``EmulatorSettings`` field of the same name (``--qs-max-rows`` ->
        ``qs_max_rows``), defaulting to the mode's value; ``settings_from`` copies it as is."""
        add(flag, default=getattr(DEFAULTS, _field(flag)), **options)

    setting(
        "--mode",
        choices=MODES,
        help="default: fast and kind; realistic: Adobe's pace and limits on a compressed clock (durations "
        "in minutes, throttling with Retry-After, IMS scope checks, intermediate batch statuses); "
        "see README 'Realistic mode' (default %(default)s)",
    )
    add("--realistic", dest="mode", action="store_const", const="realistic", help="same as --mode realistic")
    setting("--host", help="address to listen on (default %(default)s)")
    setting("--port", type=int, help="REST port; 0 picks a free one (default %(default)s)")
    setting("--profiles", type=int, help="synthetic profiles (default %(default)s)")
    setting("--seed", type=int, help="seed of the synthetic data (default %(default)s)")
    setting("--client-id")
    setting("--client-secret")
    setting("--org-id")
    add(
        "--sandbox",
        action="append",
        dest="sandboxes",
        help="sandbox name; repeat for several (default: prod). The first is the default sandbox",
    )
    setting("--tenant", help="tenant id without '_' (default %(default)s)")
    setting("--token-lifetime", type=float, help="seconds (default %(default)s)")
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
    setting(
        "--qs-max-rows",
        type=int,
        help="rows per ad hoc query (default %(default)s)",
    )
    setting(
        "--qs-over-limit",
        choices=("truncate", "error"),
        help="a result above --qs-max-rows is cut silently as production does (truncate, default) or fails "
        "with SQLSTATE 53400 (error)",
    )
    setting(
        "--qs-timeout-seconds",
        type=float,
        help="ad hoc query time limit (default %(default)s)",
    )
    setting(
        "--qs-max-sessions",
        type=int,
        help="Query Service sessions the org may have at once; past it a connection fails with 'Session Limit "
        "Reached' (SQLSTATE 53300). 0 = no limit (default %(default)s; realistic: 5)",
    )
    setting(
        "--distinct-batch-ids",
        action=argparse.BooleanOptionalAction,
        help="export rows get a physical _acp_batchid unlike the job's (logical) batch id, which they carry "
        "in _acp_system_metadata.acp_sourceBatchId, as Adobe allows (default %(default)s; realistic: on)",
    )
    setting(
        "--qs-seconds-per-million-rows",
        type=float,
        help="scan-cost model: modelled seconds per million export rows a query reads (default %(default)s; "
        "realistic: 5, a guess)",
    )
    setting(
        "--qs-seconds-per-query",
        type=float,
        help="scan-cost model: modelled start-up seconds of each query that reads a dataset (default "
        "%(default)s; realistic: 2, a guess)",
    )
    setting(
        "--qs-batch-start-seconds",
        type=float,
        help="batch queries: Adobe seconds a query stays SUBMITTED (queueing, start-up) before it reads "
        "(default %(default)s; realistic: 120, a guess)",
    )
    setting(
        "--qs-batch-write-seconds-per-million-records",
        type=float,
        help="batch queries: Adobe seconds per million records written, the batch loading "
        "(default %(default)s; realistic: 60, a guess)",
    )
    setting(
        "--qs-batch-promote-seconds",
        type=float,
        help="batch queries: Adobe seconds the written batch takes to become a success before the query "
        "does (default %(default)s; realistic: 300, a guess)",
    )
    setting(
        "--qs-batch-concurrency",
        type=int,
        help="batch queries running at once; the rest wait SUBMITTED. 0 = no limit (default %(default)s; "
        "realistic: 5, a guess: Adobe licenses it)",
    )
    setting(
        "--qs-batch-max-seconds",
        type=float,
        help="batch queries whose modelled run time exceeds this many Adobe seconds end TIMEOUT. 0 = no "
        "limit (default %(default)s; realistic: 86400, Adobe's 24 hours)",
    )
    add(
        "--clock-start",
        help="RFC 3339 instant: the clock starts there and timelines spread around it "
        "(default: real time, timelines around today 00:00 UTC)",
    )
    setting(
        "--time-scale",
        type=float,
        help="real seconds per emulated Adobe second for job and batch durations (default %(default)s)",
    )
    setting(
        "--export-job-seconds",
        type=float,
        help="duration of an export job, Adobe seconds (default %(default)s)",
    )
    setting(
        "--export-batch-seconds",
        type=float,
        help="time the export's batch stays staging after its job SUCCEEDED, Adobe seconds (default %(default)s)",
    )
    setting(
        "--batch-seconds",
        type=float,
        help="processing time of an ingestion batch, Adobe seconds (default %(default)s)",
    )
    setting(
        "--intermediate-statuses",
        action=argparse.BooleanOptionalAction,
        help="batches pass Catalog's loaded/staging statuses (default %(default)s)",
    )
    setting(
        "--platform-rate-limit",
        type=int,
        help="Platform requests per second per client id, then 429 with Retry-After; 0 = unlimited "
        "(default %(default)s)",
    )
    setting(
        "--batch-create-rate-limit",
        type=int,
        help="ingestion batches created per minute per client id; 0 = unlimited (default %(default)s)",
    )
    setting(
        "--ims-scopes",
        type=_scopes,
        metavar="A,B,...",
        help="the credential's scopes: a token request asking for another is refused; empty = any",
    )
    setting(
        "--required-scopes",
        type=_scopes,
        metavar="A,B,...",
        help="scopes every API call's token must carry; empty = none",
    )
    add(
        "--audiences-file",
        type=Path,
        help='JSON list of {"id", "name", "probability"} replacing the defaults',
    )
    add("--faults", help="fault rules: inline JSON or a JSON file (see emulator/faults.py)")
    setting(
        "--cja-rate-limit",
        action=argparse.BooleanOptionalAction,
        help="enforce CJA's 12 requests / 6 s limit (default %(default)s)",
    )
    add("--db-path", type=Path, help="DuckDB database file (default: in memory)")
    add("--db-memory-limit", help="DuckDB memory limit, e.g. 2GB")
    add("--ready-file", type=Path, help="also write the ready JSON to this file")
    add("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    add("--log-requests", action="store_true", help="log every request at INFO (default: DEBUG)")
    return p


# Options whose value needs converting into its settings field. Every other option named like a
# settings field is copied as is (most are ``setting(...)`` options above).
_CONVERTED = ("mode", "sandboxes", "tls_hostnames", "clock_start", "ims_scopes", "required_scopes", "faults")


def settings_from(args: argparse.Namespace) -> EmulatorSettings:
    copied = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(EmulatorSettings)
        if f.name not in _CONVERTED and hasattr(args, f.name)
    }
    # The mode's preset first, so a realistic knob without a CLI option still gets its value.
    return EmulatorSettings.for_mode(
        args.mode,
        **copied,
        sandboxes=tuple(args.sandboxes or ("prod",)),
        tls=not args.no_tls,
        tls_hostnames=tuple(args.tls_hostnames or ()),
        clock_start=parse_instant(args.clock_start) if args.clock_start else None,
        ims_scopes=tuple(args.ims_scopes),
        required_scopes=tuple(args.required_scopes),
        audiences=load_audiences_file(args.audiences_file) if args.audiences_file else None,
        faults=load_faults(args.faults) if args.faults else None,
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
