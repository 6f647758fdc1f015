"""Batch ingestion processing: parse JSON (Lines), validate against the dataset schema, keep results.

Runs in the emulator's executor (never on the event loop). The result is applied to the batch by
the state's lazy ``tick`` once the configured processing time has passed.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from aep_emulator import xdm

CODE_TEXT = {
    xdm.PARSE: "The row has corrupted data and cannot be read or parsed. Fix the corrupted data and try again.",
    xdm.REQUIRED: "A required field is either missing or has a value of null. Add the required field to the "
    "input row and try again.",
    xdm.SCHEMA: "A field is not defined in the dataset's schema or its value cannot be converted to the "
    "field's type. Fix the row and try again.",
}
ERROR_FILE = {xdm.PARSE: "parsing_errors", xdm.REQUIRED: "conversion_errors", xdm.SCHEMA: "conversion_errors"}


@dataclass
class IngestResult:
    input_records: int = 0
    output_records: int = 0
    failed_records: int = 0
    input_bytes: int = 0
    file_count: int = 0
    failed_by_code: Counter = field(default_factory=Counter)
    fatal: dict | None = None  # batch-level error, e.g. {"code": "106", "description": ...}


def _records(text: str, multiline: bool) -> list[tuple[str, object | None]]:
    """(raw text, parsed object or None when corrupt) per record."""
    if multiline:
        decoder = json.JSONDecoder()
        out: list[tuple[str, object | None]] = []
        stripped = text.strip()
        try:
            whole = json.loads(stripped)
            items = whole if isinstance(whole, list) else [whole]
            return [(json.dumps(i), i) for i in items]
        except json.JSONDecodeError:
            pos = 0
            while pos < len(stripped):
                try:
                    obj, end = decoder.raw_decode(stripped, pos)
                except json.JSONDecodeError:
                    out.append((stripped[pos:], None))
                    break
                out.append((stripped[pos:end], obj))
                pos = end
                while pos < len(stripped) and stripped[pos] in " \r\n\t,":
                    pos += 1
            return out
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            out.append((line, json.loads(line)))
        except json.JSONDecodeError:
            out.append((line, None))
    return out


def process(
    files: list[tuple[str, Path]],
    schema: xdm.RecordSchema,
    *,
    multiline: bool,
    records_out: Path,
    row_errors_dir: Path | None,
    reject_first: int = 0,
) -> IngestResult:
    """Validate every record of the batch's files; write accepted records and (if enabled) row errors.

    ``row_errors_dir`` is None when the batch was created without ``enableErrorDiagnostics``:
    AEP then keeps no per-row diagnostics. ``reject_first`` records are rejected whatever they hold
    (fault injection).
    """
    result = IngestResult(file_count=len(files))
    if not files:
        result.fatal = {"code": "106", "description": "Dataset file is empty. Please upload file with data."}
        return result
    error_lines: dict[str, list[str]] = {}
    with records_out.open("w", encoding="utf-8") as accepted:
        for name, path in files:
            data = path.read_bytes()
            result.input_bytes += len(data)
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                result.fatal = {
                    "code": "INGEST-1401-400",
                    "description": f"File {name} is not UTF-8 text (byte {exc.start}).",
                }
                return result
            for raw, record in _records(text, multiline):
                result.input_records += 1
                problems = (
                    [(xdm.PARSE, "Row is corrupted and cannot be read, please fix and resend.")]
                    if record is None
                    else schema.validate(record)
                )
                if result.input_records <= reject_first:
                    problems = [(xdm.SCHEMA, "record rejected (failure injected by the emulator)")]
                if not problems:
                    result.output_records += 1
                    accepted.write((raw if not multiline else json.dumps(record)) + "\n")
                    continue
                result.failed_records += 1
                code = problems[0][0]
                result.failed_by_code[code] += 1
                if row_errors_dir is not None:
                    file_name = f"{ERROR_FILE[code]}_0.json"
                    error_lines.setdefault(file_name, []).append(
                        json.dumps(
                            {
                                "_corrupt_record": raw,
                                "_errors": [{"code": c.split("-")[1], "message": m} for c, m in problems],
                                "_filename": name,
                            }
                        )
                    )
    if row_errors_dir is not None and error_lines:
        row_errors_dir.mkdir(parents=True, exist_ok=True)
        for file_name, lines in error_lines.items():
            (row_errors_dir / file_name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return result


def outcome(
    result: IngestResult, *, partial_percent: float | None, diagnostics: bool
) -> tuple[bool, list[dict]]:
    """(success?, Catalog ``errors``) following the partial-ingestion rules."""
    if result.fatal is not None:
        return False, [result.fatal]
    if result.failed_records == 0:
        return True, []
    share = 100.0 * result.failed_records / max(1, result.input_records)
    ok = partial_percent is not None and share <= partial_percent
    if not diagnostics:
        return ok, [
            {
                "code": "INGEST-1211-400",
                "description": "Encountered errors while parsing, converting or otherwise validating the "
                "data. Please resend the data with error diagnostics enabled to collect "
                "additional information on failure types",
            }
        ]
    errors = [
        {
            "code": "INGEST-1212-400",
            "description": f"Encountered {result.failed_records} errors in the data. Successfully ingested "
            f"{result.output_records if ok else 0} rows. Please review the associated "
            f"diagnostic files for more details.",
        }
    ]
    errors += [
        {"code": code, "description": CODE_TEXT[code], "recordCount": count}
        for code, count in sorted(result.failed_by_code.items())
    ]
    return ok, errors
