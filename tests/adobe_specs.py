"""Adobe's own OpenAPI/Swagger files as an oracle for recorded HTTP calls.

The files are Adobe's public ones (https://github.com/AdobeDocs/experience-platform-apis,
``static/swagger-specs``; https://github.com/AdobeDocs/cja-apis, ``static/swagger.json``), kept pruned
outside the repository: ``$ADOBE_SPECS_DIR``, by default ``../shared/adobe-specs`` next to it.

Plain helpers (no pytest import). :class:`SpecOracle` maps a recorded call (method, path, query,
request body, status, response body) to the operation of Adobe's spec and checks both sides with
``jsonschema``. Every mismatch is a :class:`Finding`; findings that match one of the spec defects the
specs' README documents (Adobe's prose docs contradict the spec) are *doubts*, all others *failures*.

Conventions, so that the oracle is not stricter or looser than Adobe's files mean:

* OpenAPI 3.0 ``nullable: true`` and Swagger's ``x-nullable: true`` allow ``null``; schemas are
  validated with Draft 4 semantics (what OpenAPI 3.0 / Swagger 2.0 schema objects are based on);
  ``format`` is not asserted.
* Query parameters arrive as strings: they are converted to the declared type (integer, number,
  boolean, comma-separated array) before validation; one that does not convert fails.
* A ``oneOf`` error where the value is valid under more than one branch is the documented
  "overlapping oneOf" defect (validated as ``anyOf``): a doubt, not a failure.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

# Where each service's spec lives (prefix of the request path -> (spec file, prefix to strip)).
SERVICES: list[tuple[str, str]] = [
    ("/ims", "ims-token.json"),
    ("/data/foundation/catalog", "catalog.json"),
    ("/data/foundation/import", "batch-ingestion.json"),
    ("/data/foundation/export", "data-access.json"),
    ("/data/foundation/schemaregistry", "schema-registry.json"),
    ("/data/foundation/query", "query-service.json"),
    ("/data/core/ups", "segmentation.json"),
    ("/data/connections", "cja.json"),
    ("/data/dataviews", "cja.json"),
]
# Paths that keep their service prefix in the spec (IMS and CJA paths are absolute in their files).
KEEP_PREFIX = {"ims-token.json", "cja.json"}


def specs_dir(repo_root: Path) -> Path:
    """``../shared/adobe-specs`` relative to the repository root (``ADOBE_SPECS_DIR`` overrides)."""
    override = os.environ.get("ADOBE_SPECS_DIR")
    return Path(override) if override else (repo_root.parent / "shared" / "adobe-specs")


@dataclass(frozen=True)
class Recorded:
    """One HTTP exchange of the provider, as it left the hook and as it came back."""

    method: str
    url: str
    params: tuple[tuple[str, str], ...]
    content_type: str | None
    body: Any  # parsed JSON, a dict of form fields, "<file>" for uploads, or None
    status: int
    response_type: str | None
    response_text: str
    header_names: frozenset[str] = frozenset()  # lower-case names of the headers sent (values not kept)
    transport: str = "requests"  # or "aiohttp" (the triggers' path)

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def query(self) -> list[tuple[str, str]]:
        return parse_qsl(urlsplit(self.url).query, keep_blank_values=True) + list(self.params)

    def response_json(self) -> Any:
        return json.loads(self.response_text) if self.response_text.strip() else None


@dataclass(frozen=True)
class Finding:
    """A mismatch between a call and the spec. ``doubt`` names the README's defect it matches, if any."""

    operation: str  # "catalog.json GET /dataSets/{DATASET_ID}"
    side: str  # "request" | "response 200" ...
    where: str  # JSON path with list indices as [*], or "status", "query.limit", "content-type"
    message: str
    doubt: str | None = None

    @property
    def key(self) -> tuple[str, str, str, str]:
        """Stable identity (no values, no ids): what the known-doubts list holds."""
        return (self.doubt or "FAIL", self.operation, self.side, self.where)

    def __str__(self) -> str:
        label = f"DOUBT ({self.doubt})" if self.doubt else "FAIL"
        return f"{label}: {self.operation} {self.side} at {self.where}: {self.message}"


@dataclass
class Operation:
    spec: str
    method: str
    template: str
    op: dict[str, Any]
    path_params: dict[str, str] = field(default_factory=dict)
    path_item: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.spec} {self.method.upper()} {self.template}"


def _nullable(node: Any) -> Any:
    """OpenAPI 3.0 ``nullable`` / Swagger ``x-nullable`` -> JSON Schema ``null`` in ``type``/``enum``."""
    if isinstance(node, dict):
        for value in node.values():
            _nullable(value)
        if node.get("nullable") is True or node.get("x-nullable") is True:
            kind = node.get("type")
            if isinstance(kind, str):
                node["type"] = [kind, "null"]
            if isinstance(node.get("enum"), list) and None not in node["enum"]:
                node["enum"] = [*node["enum"], None]
    elif isinstance(node, list):
        for value in node:
            _nullable(value)
    return node


def _pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


# Catalog answers are maps keyed by object id: the key is data, not a place in the schema.
_OBJECT_ID = re.compile(r"^(?:[0-9a-f]{24}|[0-9a-f]{32}|[0-9A-Z]{26})$")


def _json_path(path: Any) -> str:
    out = "$"
    for part in path:
        if isinstance(part, int):
            out += "[*]"
        else:
            out += ".{id}" if _OBJECT_ID.match(part) else f".{part}"
    return out


def _media(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


class SpecOracle:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.docs: dict[str, dict[str, Any]] = {}
        resources = []
        for path in sorted(folder.glob("*.json")):
            doc = _nullable(json.loads(path.read_text()))
            self.docs[path.name] = doc
            resources.append((self._uri(path.name), Resource(contents=doc, specification=DRAFT4)))
        missing = {spec for _, spec in SERVICES} - set(self.docs)
        if missing:
            raise FileNotFoundError(f"{folder}: no {', '.join(sorted(missing))}")
        self.registry: Registry = Registry().with_resources(resources)
        self._templates: dict[str, list[tuple[re.Pattern[str], str, int]]] = {}
        for name, doc in self.docs.items():
            rows = []
            for template in doc.get("paths", {}):
                regex = re.sub(r"\\\{(filePath)\\\}", r"(?P<\1>.+)", re.escape(template))
                regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", regex)
                literal = len(re.sub(r"\{\w+\}", "", template))
                rows.append((re.compile(regex + "$"), template, literal))
            rows.sort(key=lambda row: -row[2])  # /stats before /{CONTAINER_ID}/...
            self._templates[name] = rows

    @staticmethod
    def _uri(spec: str) -> str:
        return f"urn:adobe-spec:{spec}"

    def _validator(self, spec: str, *pointer: str) -> jsonschema.Draft4Validator:
        return jsonschema.Draft4Validator(
            {"$ref": f"{self._uri(spec)}#/{_pointer(*pointer)}"}, registry=self.registry
        )

    def _resolve(self, spec: str, node: Any) -> Any:
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            assert ref.startswith("#/"), f"{spec}: external $ref {ref} is not supported"
            node = self.docs[spec]
            for part in ref[2:].split("/"):
                node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    # ------------------------------------------------------------------ lookup

    def operation(self, method: str, path: str) -> Operation | None:
        for prefix, spec in SERVICES:
            if path == prefix or path.startswith(prefix + "/"):
                rest = path if spec in KEEP_PREFIX else path[len(prefix) :] or "/"
                for regex, template, _ in self._templates[spec]:
                    match = regex.match(rest)
                    item = self.docs[spec]["paths"][template]
                    if match and method.lower() in item:
                        return Operation(
                            spec,
                            method.lower(),
                            template,
                            item[method.lower()],
                            {k: unquote(v) for k, v in match.groupdict().items()},
                            item,
                        )
                return None
        return None

    def _parameters(self, op: Operation) -> list[dict[str, Any]]:
        params = [self._resolve(op.spec, p) for p in op.path_item.get("parameters", [])]
        params += [self._resolve(op.spec, p) for p in op.op.get("parameters", [])]
        return params

    # ------------------------------------------------------------------ checks

    def check(self, call: Recorded) -> list[Finding]:
        op = self.operation(call.method, call.path)
        if op is None:
            return [
                Finding(
                    f"{call.method} {call.path}",
                    "request",
                    "path",
                    "no operation of Adobe's specs matches this call",
                )
            ]
        return self._check_request(op, call) + self._check_response(op, call)

    def _schema_errors(
        self, op: Operation, side: str, pointer: tuple[str, ...], instance: Any, base: str = "$"
    ) -> list[Finding]:
        found = []
        for error in self._validator(op.spec, *pointer).iter_errors(instance):
            where = base + _json_path(error.absolute_path)[1:]
            message = error.message[:300]
            found.append(
                Finding(op.name, side, where, message, classify_doubt(op, side, where, error, instance))
            )
        return found

    def _check_request(self, op: Operation, call: Recorded) -> list[Finding]:
        found: list[Finding] = []
        params = self._parameters(op)
        query = call.query
        declared = {p["name"]: (i, p) for i, p in enumerate(params) if p.get("in") == "query"}
        for name, value in query:
            if name not in declared:
                found.append(
                    Finding(
                        op.name,
                        "request",
                        f"query.{name}",
                        "query parameter not declared by the spec",
                        classify_undeclared(op, name),
                    )
                )
                continue
            index, param = declared[name]
            schema_pointer = self._param_schema_pointer(op, index, param)
            found += self._schema_errors(
                op, "request", schema_pointer, self._coerce(op, param, value), base=f"query.{name}"
            )
        headers = call.header_names | ({"content-type"} if call.content_type else set())
        for param in params:
            if param.get("in") == "header" and param.get("required") and param["name"].lower() not in headers:
                found.append(
                    Finding(
                        op.name,
                        "request",
                        f"header.{param['name']}",
                        "required header missing",
                        classify_missing_header(op, call, param["name"]),
                    )
                )
        sent = {name for name, _ in query}
        for name, (_, param) in declared.items():
            if param.get("required") and name not in sent:
                found.append(Finding(op.name, "request", f"query.{name}", "required query parameter missing"))
        for index, param in enumerate(params):
            if param.get("in") == "path" and param["name"] in op.path_params:
                found += self._schema_errors(
                    op,
                    "request",
                    self._param_schema_pointer(op, index, param),
                    self._coerce(op, param, op.path_params[param["name"]]),
                    base=f"path.{param['name']}",
                )
        found += self._check_request_body(op, call, params)
        return found

    def _param_schema_pointer(self, op: Operation, index: int, param: dict[str, Any]) -> tuple[str, ...]:
        """Pointer to a parameter's schema (OpenAPI 3: ``schema``; Swagger 2: the parameter itself)."""
        # Re-find the parameter's location in the document: a $ref'd parameter lives in components.
        raw = (op.path_item.get("parameters", []) + op.op.get("parameters", []))[index]
        if "$ref" in raw:
            base = tuple(p.replace("~1", "/") for p in raw["$ref"][2:].split("/"))
        elif index < len(op.path_item.get("parameters", [])):
            base = ("paths", op.template, "parameters", str(index))
        else:
            base = (
                "paths",
                op.template,
                op.method,
                "parameters",
                str(index - len(op.path_item.get("parameters", []))),
            )
        return (*base, "schema") if "schema" in param else base

    def _coerce(self, op: Operation, param: dict[str, Any], value: str) -> Any:
        schema = self._resolve(op.spec, param.get("schema", param))
        kind = schema.get("type")
        kind = next((k for k in kind if k != "null"), None) if isinstance(kind, list) else kind
        if kind == "array":
            item = dict(schema.get("items") or {})
            return [self._coerce(op, {"schema": item}, part) for part in value.split(",")]
        try:
            if kind == "integer":
                return int(value)
            if kind == "number":
                return float(value)
        except ValueError:
            return value  # the schema then says why it is wrong
        if kind == "boolean" and value in ("true", "false"):
            return value == "true"
        return value

    def _check_request_body(
        self, op: Operation, call: Recorded, params: list[dict[str, Any]]
    ) -> list[Finding]:
        media = _media(call.content_type)
        if "requestBody" in op.op:  # OpenAPI 3
            body = self._resolve(op.spec, op.op["requestBody"])
            content = body.get("content", {})
            if call.body is None:
                return (
                    [Finding(op.name, "request", "body", "the spec requires a body")]
                    if body.get("required")
                    else []
                )
            if media not in content:
                return [
                    Finding(
                        op.name,
                        "request",
                        "content-type",
                        f"{media or 'no Content-Type'} is not one of {sorted(content)}",
                        classify_content_type(op, media, sorted(content)),
                    )
                ]
            if call.body == "<file>" or "schema" not in content[media]:
                return []
            pointer = ("paths", op.template, op.method, "requestBody", "content", media, "schema")
            if "$ref" in op.op["requestBody"]:
                ref = op.op["requestBody"]["$ref"][2:].split("/")
                pointer = (*ref, "content", media, "schema")
            return self._schema_errors(op, "request", pointer, call.body)
        # Swagger 2: one ``in: body`` parameter; ``consumes`` lists media types.
        raw = op.op.get("parameters", [])
        for index, param in enumerate(params[len(op.path_item.get("parameters", [])) :]):
            if param.get("in") == "body":
                if call.body is None:
                    return []
                ref = raw[index].get("$ref")
                pointer = (
                    (*ref[2:].split("/"), "schema")
                    if ref
                    else ("paths", op.template, op.method, "parameters", str(index), "schema")
                )
                return self._schema_errors(op, "request", pointer, call.body)
        if call.body not in (None, "<file>") and op.method in ("post", "put", "patch"):
            return [Finding(op.name, "request", "body", "a body is sent where the spec declares none")]
        return []

    def _check_response(self, op: Operation, call: Recorded) -> list[Finding]:
        side = f"response {call.status}"
        responses = op.op.get("responses", {})
        key = str(call.status) if str(call.status) in responses else None
        if key is None:
            return [
                Finding(
                    op.name,
                    side,
                    "status",
                    f"status {call.status} is not declared (declared: {', '.join(sorted(responses))})",
                    classify_status(op, call),
                )
            ]
        response = self._resolve(op.spec, responses[key])
        media = _media(call.response_type)
        if "content" in response or self.docs[op.spec].get("openapi"):
            content = response.get("content", {})
            if not content:
                if call.response_text.strip():
                    return [Finding(op.name, side, "body", "a body is returned where the spec declares none")]
                return []
            if not call.response_text.strip():
                return [
                    Finding(
                        op.name,
                        side,
                        "body",
                        f"empty body where the spec declares {sorted(content)}",
                        classify_empty_body(op, call),
                    )
                ]
            chosen = (
                media
                if media in content
                else ("application/json" if "application/json" in content else next(iter(content)))
            )
            if "schema" not in content[chosen]:
                return []
            pointer: tuple[str, ...] = (
                "paths",
                op.template,
                op.method,
                "responses",
                key,
                "content",
                chosen,
                "schema",
            )
            if "$ref" in responses[key]:
                pointer = (*responses[key]["$ref"][2:].split("/"), "content", chosen, "schema")
        else:  # Swagger 2
            if "schema" not in response:
                return []
            pointer = ("paths", op.template, op.method, "responses", key, "schema")
            if "$ref" in responses[key]:
                pointer = (*responses[key]["$ref"][2:].split("/"), "schema")
        try:
            instance = call.response_json()
        except ValueError as exc:
            return [Finding(op.name, side, "body", f"not JSON: {exc}", classify_not_json(op, call))]
        return self._schema_errors(op, side, pointer, instance)


# ---------------------------------------------------------------------------------------------------
# Known defects of the specs: Adobe's own prose docs contradict the spec there. "README": listed in
# the specs' README; "docs": found by this check and confirmed in Adobe's docs (source named).
# A classifier answers a defect's name, or None: a finding it does not recognise stays a failure.

DEFECTS: dict[str, tuple[str, str]] = {
    "oneOf-overlap": ("README", "oneOf lists overlap without a discriminator: validated as anyOf"),
    "lower-case-json-format": (
        "README",
        "inputFormat.format enumerates JSON|Parquet|CSV; every documented example sends lower-case json",
    ),
    "bare-200-batch-action": (
        "README",
        "COMPLETE/ABORT/REVERT declared with a JSON body; the docs show a bare 200 OK",
    ),
    "201-not-in-spec": (
        "README",
        "INITIALIZE and large-file COMPLETE answer 201 Created in the docs, not in the spec",
    ),
    "octet-stream-patch": (
        "README",
        "large-file PATCH declared multipart; the docs send application/octet-stream",
    ),
    "null-page-next": ("README", "Schema Registry paging _page.next may be null"),
    "cja-null-sort": ("README", "CJA sort may be null"),
    "cja-lower-case-enum": ("README", "CJA enums appear in lower case in responses"),
    "bodiless-large-file-action": (
        "docs",
        "POST .../files/{filePath}?action=INITIALIZE|COMPLETE has no body; "
        "the spec requires a Content-Type header, the Batch Ingestion API "
        "overview's examples send none",
    ),
    "create-batch-loading-status": (
        "docs",
        'the create-batch answer\'s status is "loading" in the Batch '
        "Ingestion API overview; the spec's status enum for that answer "
        "lacks it",
    ),
    "boolean-batch-tags": (
        "docs",
        "Catalog types batch tags as arrays of strings; the error-diagnostics and "
        'partial-ingestion guides show "acp_enableErrorDiagnostics": true and '
        '"acp_partialIngestionPercent": 5',
    ),
    "request-data-source-param": (
        "docs",
        "POST /dataSets?requestDataSource=true is documented in Catalog's "
        "create-dataset guide; the spec does not list the parameter",
    ),
    "row-error-file-content": (
        "docs",
        "GET /batches/{id}/meta?path=row_errors/<file> answers the file itself "
        "(JSON Lines, error-diagnostics guide); the spec declares only the "
        "JSON listing",
    ),
    "class-usage-object": (
        "docs",
        "GET /stats: classUsage is an object keyed by class id in the Schema "
        "Registry guide's example; the spec says array",
    ),
    "integer-source-version": (
        "docs",
        'descriptors carry "xdm:sourceVersion": 1 (an integer) in the '
        "descriptors guide's examples; the spec says string",
    ),
    "cja-dimensions-paging-params": (
        "provider",
        "the provider sends limit/page to GET .../dimensions, which "
        "the spec does not declare: harmless if ignored, and the "
        "provider reads every page if CJA pages the answer as its "
        "other listings do (unconfirmed either way)",
    ),
}


def classify_doubt(
    op: Operation, side: str, where: str, error: jsonschema.ValidationError, instance: Any
) -> str | None:
    if error.validator == "oneOf" and "is valid under each of" in error.message:
        return "oneOf-overlap"
    value = error.instance
    if (
        op.spec == "batch-ingestion.json"
        and side == "request"
        and where == "$.inputFormat.format"
        and error.validator == "enum"
        and isinstance(value, str)
        and value.upper() in [str(v).upper() for v in error.validator_value]
    ):
        return "lower-case-json-format"
    if (
        op.spec == "batch-ingestion.json"
        and op.template == "/batches"
        and side.startswith("response")
        and where == "$.status"
        and value == "loading"
    ):
        return "create-batch-loading-status"
    if (
        op.spec == "catalog.json"
        and side.startswith("response")
        and where in ("$.{id}.tags.acp_enableErrorDiagnostics", "$.{id}.tags.acp_partialIngestionPercent")
        and error.validator == "type"
        and isinstance(value, (bool, int, float))
    ):
        return "boolean-batch-tags"
    if op.spec == "schema-registry.json":
        if side.startswith("response") and where == "$._page.next" and value is None:
            return "null-page-next"
        if op.template == "/stats" and where == "$.classUsage" and isinstance(value, dict):
            return "class-usage-object"
        if where.endswith("xdm:sourceVersion") and isinstance(value, int) and not isinstance(value, bool):
            return "integer-source-version"
    if op.spec == "cja.json" and side.startswith("response"):
        if where.rsplit(".", 1)[-1] == "sort" and value is None:
            return "cja-null-sort"
        if (
            error.validator == "enum"
            and isinstance(value, str)
            and value != value.upper()
            and value.upper() in [str(v) for v in error.validator_value]
        ):
            return "cja-lower-case-enum"
    return None


def classify_status(op: Operation, call: Recorded) -> str | None:
    if (
        op.spec == "batch-ingestion.json"
        and call.status == 201
        and op.method == "post"
        and op.template.endswith("/files/{filePath}")
    ):
        return "201-not-in-spec"
    return None


def classify_empty_body(op: Operation, call: Recorded) -> str | None:
    if (
        op.spec == "batch-ingestion.json"
        and op.method == "post"
        and op.template == "/batches/{batchId}"
        and call.status == 200
    ):
        return "bare-200-batch-action"
    return None


def classify_content_type(op: Operation, media: str, declared: list[str]) -> str | None:
    if (
        op.spec == "batch-ingestion.json"
        and op.method == "patch"
        and media == "application/octet-stream"
        and any(d.startswith("multipart/") for d in declared)
    ):
        return "octet-stream-patch"
    return None


def classify_not_json(op: Operation, call: Recorded) -> str | None:
    path = dict(call.query).get("path", "")
    if (
        op.spec == "data-access.json"
        and op.template == "/batches/{batchId}/meta"
        and path.startswith("row_errors/")
    ):
        return "row-error-file-content"
    return None


def classify_missing_header(op: Operation, call: Recorded, name: str) -> str | None:
    if (
        op.spec == "batch-ingestion.json"
        and op.method == "post"
        and op.template.endswith("/files/{filePath}")
        and name.lower() == "content-type"
        and call.body is None
    ):
        return "bodiless-large-file-action"
    return None


def classify_undeclared(op: Operation, name: str) -> str | None:
    if (
        op.spec == "catalog.json"
        and op.template == "/dataSets"
        and op.method == "post"
        and name == "requestDataSource"
    ):
        return "request-data-source-param"
    if op.spec == "cja.json" and op.template.endswith("/dimensions") and name in ("limit", "page"):
        return "cja-dimensions-paging-params"
    return None
