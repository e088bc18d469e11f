"""The OpenAPI document as rows for the ``/docs`` page: every operation, parameter, media type,
status, error code and schema field, with JSON Schema types written as words.

The page is rendered on the server from the same document ``/openapi.json`` serves, so it
needs no script (the Content-Security-Policy allows none inline) and cannot drift from it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from markupsafe import Markup, escape


def type_text(schema: Mapping | None, document: Mapping | None = None) -> str:
    """A JSON Schema's type in words: ['number', 'null'] -> 'number or null', a $ref -> its name."""
    if not schema:
        return "any"
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "allOf" in schema and "type" not in schema:  # a named schema narrowed by inline parts: the name says it
        named = [type_text(part) for part in schema["allOf"] if "$ref" in part]
        return " and ".join(named) if named else "object"
    if "const" in schema:
        return f"always {_json(schema['const'])}"
    kind = schema.get("type")
    if isinstance(kind, list):
        text = " or ".join(kind)
    elif kind == "array":
        text = f"array of {type_text(schema.get('items'), document)}"
    elif kind:
        text = kind
    else:
        text = "object" if "properties" in schema else "any"
    if schema.get("format"):
        text += f" ({schema['format']})"
    return text


def _json(value) -> str:
    return {True: "true", False: "false", None: "null"}.get(value, str(value)) if not isinstance(value, str) else value


def constraints(schema: Mapping | None) -> str:
    """Allowed values and bounds in words: 'one of: a4, letter', 'from 0 to 1', '7 items'."""
    if not schema:
        return ""
    parts = []
    if "enum" in schema:
        parts.append("one of: " + ", ".join(_json(v) for v in schema["enum"]))
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and high is not None:
        parts.append(f"from {low} to {high}")
    elif low is not None:
        parts.append(f"at least {low}")
    if schema.get("minItems") is not None and schema.get("minItems") == schema.get("maxItems"):
        parts.append(f"exactly {schema['minItems']} items")
    if "default" in schema:
        parts.append(f"default {_json(schema['default'])}")
    return "; ".join(parts)


def error_codes(schema: Mapping | None) -> list[str]:
    """The ``error.code`` values an error response declares (its allOf narrows the Error schema)."""
    codes: list[str] = []
    for part in (schema or {}).get("allOf", []):
        code = part.get("properties", {}).get("error", {}).get("properties", {}).get("code", {})
        codes += list(code.get("enum", []))
    return codes


def _properties(schema: Mapping) -> tuple[dict, set]:
    """Properties and required names of a schema, its allOf parts included."""
    props, required = {}, set(schema.get("required", []))
    for part in schema.get("allOf", []):
        if "$ref" not in part:
            inner, req = _properties(part)
            props.update(inner)
            required |= req
    props.update(schema.get("properties", {}))
    return props, required


def field_rows(schema: Mapping, prefix: str = "") -> list[dict]:
    """Every field of a schema, nested objects as dotted names (``calibration.temperature``)."""
    rows = []
    props, required = _properties(schema)
    for name, prop in props.items():
        path = f"{prefix}{name}"
        rows.append({"name": path, "type": type_text(prop), "required": name in required,
                     "constraints": constraints(prop), "description": prop.get("description", "")})
        nested = prop.get("items") if prop.get("type") == "array" else prop
        if isinstance(nested, Mapping) and ("properties" in nested or "allOf" in nested) and "$ref" not in nested:
            rows += field_rows(nested, prefix=f"{path}{'[]' if nested is not prop else ''}.")
    return rows


def operations(document: Mapping) -> list[dict]:
    """Each operation with what the page shows of it: parameters, request media types, responses."""
    rows = []
    for path, methods in document["paths"].items():
        for method, op in methods.items():
            body = op.get("requestBody") or {}
            rows.append({
                "method": method.upper(), "path": path, "anchor": f"{method}-{path.strip('/').replace('/', '-').replace('.', '-')}",
                "summary": op.get("summary", ""), "description": op.get("description", ""),
                "parameters": [{"name": p["name"], "in": p.get("in", "query"), "required": p.get("required", False),
                                "type": type_text(p.get("schema")), "constraints": constraints(p.get("schema")),
                                "description": p.get("description", "")} for p in op.get("parameters", [])],
                "body_required": body.get("required", False),
                "body": [{"media_type": media, "type": type_text(spec.get("schema")),
                          "fields": field_rows(spec["schema"]) if "properties" in spec.get("schema", {}) else []}
                         for media, spec in body.get("content", {}).items()],
                "responses": [{"status": status, "description": resp.get("description", ""),
                               "media": [{"media_type": media, "type": type_text(spec.get("schema")),
                                          "codes": error_codes(spec.get("schema"))}
                                         for media, spec in (resp.get("content") or {}).items()]}
                              for status, resp in op.get("responses", {}).items()],
            })
    return rows


def schemas(document: Mapping) -> list[dict]:
    return [{"name": name, "fields": field_rows(schema)}
            for name, schema in document.get("components", {}).get("schemas", {}).items()]


def inline_code(text: str) -> Markup:
    """A description's `backticked` names as <code>, everything else escaped."""
    return Markup(re.sub(r"`([^`<>]+)`", r"<code>\1</code>", str(escape(text))))
