"""Twilio's published OpenAPI description of Conversations v1, and validation of traffic against it.

The spec is not copied into this repository: it comes from the npm package pinned in
``tests/twilio_spec/package.json`` (``@twilio-alpha/mcp``, which ships Twilio's ``twilio-oai`` JSON files).
Install it with ``npm ci --prefix tests/twilio_spec``.

The validator below implements the subset of OpenAPI 3.0 schema keywords the Twilio spec uses (``type``,
``nullable``, ``enum``, ``pattern``, ``minLength``/``maxLength``, ``minimum``/``maximum``, ``format``,
``properties``, ``required``, ``items``, ``additionalProperties``, ``allOf``/``anyOf``/``oneOf``, ``$ref``).
``jsonschema`` is not installed in this project, and it does not understand OpenAPI's ``nullable`` anyway.
A keyword outside that subset raises :class:`UnsupportedSchema` instead of being silently ignored, so a newer
spec cannot quietly weaken the checks.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

REPO_ROOT = Path(__file__).resolve().parents[2]
SPEC_PACKAGE_DIR = Path("tests/twilio_spec")
SPEC_RELATIVE_PATH = (
    SPEC_PACKAGE_DIR / "node_modules/@twilio-alpha/mcp/twilio-oai/spec/json" / "twilio_conversations_v1.json"
)
INSTALL_HINT = "npm ci --prefix tests/twilio_spec"

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
JSON_CONTENT_TYPE = "application/json"

# Twilio's REST error body. It is NOT part of the published spec (which lists success responses only), so it is
# described here, from https://www.twilio.com/docs/usage/twilios-response#response-formats-exceptions.
TWILIO_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["code", "message", "more_info", "status"],
    "properties": {
        "code": {"type": "integer"},
        "message": {"type": "string"},
        "more_info": {"type": "string", "format": "uri"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
    },
    "additionalProperties": False,
}

# Keywords that only annotate; everything else must be understood by validate_schema().
_ANNOTATIONS = frozenset(
    {"description", "title", "example", "examples", "default", "readOnly", "writeOnly", "deprecated", "externalDocs"}
)
_VALIDATING = frozenset(
    {
        "$ref", "type", "nullable", "enum", "pattern", "minLength", "maxLength", "minimum", "maximum",
        "format", "properties", "required", "items", "additionalProperties", "allOf", "anyOf", "oneOf",
    }
)  # fmt: skip


class SpecNotInstalled(RuntimeError):
    """The npm package carrying Twilio's OpenAPI description is not installed."""


class UnsupportedSchema(RuntimeError):
    """The spec uses a schema keyword this validator does not implement."""


def spec_path(repo_root: Path = REPO_ROOT) -> Path:
    return repo_root / SPEC_RELATIVE_PATH


@functools.cache
def load_spec_document(path: Path | None = None) -> dict[str, Any]:
    path = path or spec_path()
    if not path.is_file():
        raise SpecNotInstalled(
            f"Twilio's Conversations OpenAPI description is missing: {path}\n"
            f"It ships in the npm package pinned by {SPEC_PACKAGE_DIR}/package.json. Install it with:\n"
            f"    {INSTALL_HINT}"
        )
    with path.open(encoding="utf-8") as fh:
        return json.load(fh)


@functools.cache
def conversations_v1() -> OpenApiSpec:
    """The (cached) Conversations v1 spec from the pinned npm package."""
    return OpenApiSpec(load_spec_document())


# --------------------------------------------------------------------------------------------------------------
# schema validation


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _type_ok(expected: str, value: Any) -> bool:
    actual = _type_name(value)
    if expected == "number":
        return actual in ("integer", "number")
    return actual == expected


def _format_errors(fmt: str, value: Any, where: str) -> list[str]:
    if fmt == "date-time" and isinstance(value, str):
        # RFC 3339 date-time, as Twilio sends it: 2019-12-16T22:18:37Z
        if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", value):
            return [f"{where}: {value!r} is not an RFC 3339 date-time"]
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return [f"{where}: {value!r} is not a valid date-time"]
    elif fmt == "uri" and isinstance(value, str):
        parts = urlsplit(value)
        if not parts.scheme or not parts.netloc:
            return [f"{where}: {value!r} is not an absolute URI"]
    elif fmt == "uri-map" and isinstance(value, dict):
        return [err for key, url in value.items() for err in _format_errors("uri", url, f"{where}.{key}")]
    elif fmt == "int32" and isinstance(value, int) and not -(2**31) <= value < 2**31:
        return [f"{where}: {value} does not fit int32"]
    elif fmt == "int64" and isinstance(value, int) and not -(2**63) <= value < 2**63:
        return [f"{where}: {value} does not fit int64"]
    # other formats (phone-number, sid, ...) are annotations for our purposes
    return []


class SchemaValidator:
    """Validates JSON-like values against OpenAPI 3.0 schemas from one document (``$ref`` resolved there)."""

    def __init__(self, document: Mapping[str, Any]):
        self.document = document

    def resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        seen = set()
        while "$ref" in schema:
            ref = schema["$ref"]
            if ref in seen or not isinstance(ref, str) or not ref.startswith("#/"):
                raise UnsupportedSchema(f"unsupported or cyclic $ref {ref!r}")
            seen.add(ref)
            node: Any = self.document
            for part in ref[2:].split("/"):
                node = node[part.replace("~1", "/").replace("~0", "~")]
            schema = node
        return schema

    def errors(self, schema: Mapping[str, Any], value: Any, where: str = "$", *, closed: bool = False) -> list[str]:
        """All the ways ``value`` violates ``schema`` (empty list: valid).

        ``closed`` additionally demands that objects carry exactly the declared properties (no more, no fewer) –
        used for the stand-in's own responses, which must contain every field the spec declares.
        """
        schema = self.resolve(schema)
        unknown = set(schema) - _VALIDATING - _ANNOTATIONS
        unknown = {k for k in unknown if not k.startswith("x-")}
        if unknown:
            raise UnsupportedSchema(f"{where}: schema keywords {sorted(unknown)} are not implemented")

        if value is None:
            if schema.get("nullable") or "type" not in schema and not schema.get("enum"):
                return []
            return [f"{where}: null is not allowed"]

        errs: list[str] = []
        expected = schema.get("type")
        if expected is not None and not _type_ok(expected, value):
            return [f"{where}: expected {expected}, got {_type_name(value)} {value!r:.80}"]

        if "enum" in schema and value not in schema["enum"]:
            errs.append(f"{where}: {value!r} is not one of {schema['enum']}")
        if isinstance(value, str):
            if "minLength" in schema and len(value) < schema["minLength"]:
                errs.append(f"{where}: {value!r} is shorter than {schema['minLength']}")
            if "maxLength" in schema and len(value) > schema["maxLength"]:
                errs.append(f"{where}: {value!r} is longer than {schema['maxLength']}")
            if "pattern" in schema and not re.search(schema["pattern"], value):
                errs.append(f"{where}: {value!r} does not match {schema['pattern']}")
        if isinstance(value, int | float) and not isinstance(value, bool):
            if "minimum" in schema and value < schema["minimum"]:
                errs.append(f"{where}: {value} is less than the minimum {schema['minimum']}")
            if "maximum" in schema and value > schema["maximum"]:
                errs.append(f"{where}: {value} is greater than the maximum {schema['maximum']}")
        if "format" in schema:
            errs.extend(_format_errors(schema["format"], value, where))

        if isinstance(value, dict):
            props: Mapping[str, Any] = schema.get("properties", {})
            for name in schema.get("required", []):
                if name not in value:
                    errs.append(f"{where}: required property {name!r} is missing")
            for name, sub in props.items():
                if name in value:
                    errs.extend(self.errors(sub, value[name], f"{where}.{name}", closed=closed))
                elif closed and name not in schema.get("required", []):
                    errs.append(f"{where}: declared property {name!r} is missing")
            extra = [k for k in value if k not in props]
            additional = schema.get("additionalProperties", not (closed and props))
            if additional is False:
                errs.extend(f"{where}: property {k!r} is not declared" for k in extra)
            elif isinstance(additional, Mapping):
                for k in extra:
                    errs.extend(self.errors(additional, value[k], f"{where}.{k}", closed=closed))
        if isinstance(value, list) and "items" in schema:
            for i, item in enumerate(value):
                errs.extend(self.errors(schema["items"], item, f"{where}[{i}]", closed=closed))

        for sub in schema.get("allOf", []):
            errs.extend(self.errors(sub, value, where, closed=closed))
        if "anyOf" in schema and not any(not self.errors(s, value, where) for s in schema["anyOf"]):
            errs.append(f"{where}: matches none of anyOf")
        if "oneOf" in schema:
            matching = sum(1 for s in schema["oneOf"] if not self.errors(s, value, where))
            if matching != 1:
                errs.append(f"{where}: matches {matching} of oneOf (exactly 1 required)")
        return errs

    def coerce_form_value(self, schema: Mapping[str, Any], raw: list[str], where: str) -> tuple[Any, list[str]]:
        """Turn the string(s) of a form/query/path parameter into the typed value its schema describes."""
        schema = self.resolve(schema)
        expected = schema.get("type")
        if expected == "array":
            items = self.resolve(schema.get("items", {}))
            values, errs = [], []
            for i, one in enumerate(raw):
                value, e = self._coerce_scalar(items, one, f"{where}[{i}]")
                values.append(value)
                errs.extend(e)
            return values, errs
        if len(raw) != 1:
            return raw, [f"{where}: sent {len(raw)} times but is not an array parameter"]
        return self._coerce_scalar(schema, raw[0], where)

    @staticmethod
    def _coerce_scalar(schema: Mapping[str, Any], raw: str, where: str) -> tuple[Any, list[str]]:
        expected = schema.get("type")
        if expected == "integer":
            if re.fullmatch(r"-?\d+", raw):
                return int(raw), []
            return raw, [f"{where}: {raw!r} is not an integer"]
        if expected == "number":
            try:
                return float(raw), []
            except ValueError:
                return raw, [f"{where}: {raw!r} is not a number"]
        if expected == "boolean":
            if raw in ("true", "false", "True", "False"):
                return raw.lower() == "true", []
            return raw, [f"{where}: {raw!r} is not a boolean"]
        if expected in ("object", "array"):
            return raw, [f"{where}: {expected} values cannot be form-encoded as a single string"]
        return raw, []


# --------------------------------------------------------------------------------------------------------------
# operations


@dataclass(frozen=True)
class Operation:
    method: str  # upper case
    template: str  # e.g. /v1/Services/{ChatServiceSid}/Users/{Sid}
    operation_id: str
    definition: Mapping[str, Any] = field(repr=False)
    parameters: tuple[Mapping[str, Any], ...] = field(repr=False)
    regex: re.Pattern[str] = field(repr=False)

    def params_in(self, location: str) -> dict[str, Mapping[str, Any]]:
        return {p["name"]: p for p in self.parameters if p.get("in") == location}

    @property
    def form_schema(self) -> Mapping[str, Any] | None:
        body = self.definition.get("requestBody")
        if not body:
            return None
        return body.get("content", {}).get(FORM_CONTENT_TYPE, {}).get("schema", {})


@dataclass
class RequestCheck:
    """Outcome of validating one request. ``operation`` is None when no operation matched."""

    operation: Operation | None
    path_params: dict[str, str]
    errors: list[str]
    status_if_unmatched: int = 404  # 404 (no such path) or 405 (path exists, method does not)


def _template_regex(template: str) -> re.Pattern[str]:
    out, pos = [], 0
    for m in re.finditer(r"\{([^}/]+)\}", template):
        out.append(re.escape(template[pos : m.start()]))
        out.append(f"(?P<{m.group(1)}>[^/]+)")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("^" + "".join(out) + "$")


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


class OpenApiSpec:
    """Operations of one OpenAPI document, and checks of requests and responses against them."""

    METHODS = ("get", "post", "put", "patch", "delete")

    def __init__(self, document: Mapping[str, Any]):
        self.document = document
        self.schemas = SchemaValidator(document)
        self.operations: list[Operation] = []
        for template, item in document["paths"].items():
            shared = [self.schemas.resolve(p) for p in item.get("parameters", [])]
            for method in self.METHODS:
                if method not in item:
                    continue
                op = item[method]
                own = [self.schemas.resolve(p) for p in op.get("parameters", [])]
                names = {(p["name"], p["in"]) for p in own}
                params = tuple(own + [p for p in shared if (p["name"], p["in"]) not in names])
                self.operations.append(
                    Operation(method.upper(), template, op["operationId"], op, params, _template_regex(template))
                )
        # literal segments beat parameters: /v1/Users/{Sid} must not swallow a longer literal path
        self.operations.sort(key=lambda o: (o.template.count("{"), -len(o.template)))

    def operation(self, operation_id: str) -> Operation:
        for op in self.operations:
            if op.operation_id == operation_id:
                return op
        raise KeyError(operation_id)

    def match(self, method: str, raw_path: str) -> tuple[Operation | None, dict[str, str], int]:
        """The operation for ``method`` + ``raw_path`` (percent-encoded, no query), its decoded path params."""
        path_exists = False
        for op in self.operations:
            m = op.regex.match(raw_path)
            if not m:
                continue
            path_exists = True
            if op.method == method.upper():
                return op, {k: unquote(v) for k, v in m.groupdict().items()}, 200
        return None, {}, 405 if path_exists else 404

    # -- requests ------------------------------------------------------------------------------------------------

    def check_request(
        self,
        method: str,
        raw_path: str,
        query: Mapping[str, list[str]],
        headers: Mapping[str, str],
        content_type: str | None,
        form: Mapping[str, list[str]],
        has_body: bool,
    ) -> RequestCheck:
        """Validate one request: operation exists, path/query/header params and the form body per the spec.

        ``headers`` must be case-insensitive (e.g. ``http.client.HTTPMessage`` or ``requests``' dict).
        """
        where = f"{method.upper()} {raw_path}"
        op, path_params, status = self.match(method, raw_path)
        if op is None:
            reason = "no operation for this method" if status == 405 else "no such path"
            return RequestCheck(None, {}, [f"{where}: {reason} in the spec"], status)

        errs: list[str] = []
        v = self.schemas
        for name, param in op.params_in("path").items():
            if name not in path_params:
                errs.append(f"{where}: path parameter {name} missing")
                continue
            schema = param.get("schema", {})
            value, e = v.coerce_form_value(schema, [path_params[name]], f"path {name}")
            errs.extend(e or v.errors(schema, value, f"path {name}"))

        errs.extend(self._check_params(op.params_in("query"), query, "query", unknown_allowed=False))
        header_params = op.params_in("header")
        present = {name: [headers[name]] for name in header_params if headers.get(name) is not None}
        errs.extend(self._check_params(header_params, present, "header", unknown_allowed=True))

        form_schema = op.form_schema
        if form_schema is None:
            if has_body:
                errs.append(f"{where}: the operation takes no request body, but one was sent")
        else:
            if has_body and _media_type(content_type) != FORM_CONTENT_TYPE:
                errs.append(f"{where}: body must be {FORM_CONTENT_TYPE}, got Content-Type {content_type!r}")
            form_schema = v.resolve(form_schema)
            props = form_schema.get("properties", {})
            for name in form_schema.get("required", []):
                if name not in form:
                    errs.append(f"body: required parameter {name!r} is missing")
            for name, raw in form.items():
                if name not in props:
                    errs.append(f"body: parameter {name!r} is not in the spec (allowed: {sorted(props)})")
                    continue
                value, e = v.coerce_form_value(props[name], raw, f"body {name}")
                errs.extend(e or v.errors(props[name], value, f"body {name}"))
        return RequestCheck(op, path_params, [f"{op.operation_id}: {e}" for e in errs])

    def _check_params(
        self,
        declared: Mapping[str, Mapping[str, Any]],
        sent: Mapping[str, list[str]],
        location: str,
        *,
        unknown_allowed: bool,
    ) -> list[str]:
        errs = []
        for name, param in declared.items():
            if param.get("required") and name not in sent:
                errs.append(f"{location} parameter {name!r} is required")
        for name, raw in sent.items():
            if name not in declared:
                if not unknown_allowed:
                    errs.append(f"{location} parameter {name!r} is not in the spec (allowed: {sorted(declared)})")
                continue
            schema = declared[name].get("schema", {})
            value, e = self.schemas.coerce_form_value(schema, raw, f"{location} {name}")
            errs.extend(e or self.schemas.errors(schema, value, f"{location} {name}"))
        return errs

    # -- responses -----------------------------------------------------------------------------------------------

    def check_response(
        self,
        operation: Operation | None,
        status: int,
        content_type: str | None,
        body: bytes,
        *,
        closed: bool = False,
    ) -> list[str]:
        """Validate one response. Success statuses must be listed for the operation and match its schema.

        Error statuses (4xx/5xx) are not described by Twilio's spec; their body must be Twilio's error JSON
        (:data:`TWILIO_ERROR_SCHEMA`) with ``status`` equal to the HTTP status.
        """
        name = operation.operation_id if operation else "(no operation)"
        where = f"{name} -> {status}"
        if status >= 400:
            return [f"{where}: {e}" for e in self._check_json(TWILIO_ERROR_SCHEMA, content_type, body, status)]
        if operation is None:
            return [f"{where}: a success status for a request that matches no operation"]
        responses = operation.definition.get("responses", {})
        declared = responses.get(str(status))
        if declared is None:
            return [f"{where}: status {status} is not listed for the operation (listed: {sorted(responses)})"]
        declared = self.schemas.resolve(declared)
        content = declared.get("content")
        if not content:
            return [] if not body else [f"{where}: the spec declares no body, but {len(body)} bytes were sent"]
        media = _media_type(content_type)
        if media not in content:
            return [f"{where}: Content-Type {content_type!r} not among {sorted(content)}"]
        schema = content[media].get("schema", {})
        return [f"{where}: {e}" for e in self._check_json(schema, content_type, body, None, closed=closed)]

    def _check_json(
        self,
        schema: Mapping[str, Any],
        content_type: str | None,
        body: bytes,
        status: int | None,
        closed: bool = False,
    ) -> list[str]:
        if _media_type(content_type) != JSON_CONTENT_TYPE:
            return [f"Content-Type {content_type!r} is not {JSON_CONTENT_TYPE}"]
        try:
            payload = json.loads(body)
        except ValueError as exc:
            return [f"body is not JSON: {exc}"]
        errs = self.schemas.errors(schema, payload, "$", closed=closed)
        if status is not None and isinstance(payload, dict) and payload.get("status") != status:
            errs.append(f"$.status {payload.get('status')!r} differs from the HTTP status {status}")
        return errs
