"""The report's filing fields and record in the OpenAPI document.

Built from ``server.filing`` (field names, length limit, the allowed characters in words), so
the document says exactly what the parser accepts; ``server/web/openapi.py`` and
``openapi_schemas.py`` place these pieces.
"""

from __future__ import annotations

from server.filing import FILING_FIELDS, FILING_MAX_CHARS, FILING_PRINTED_ONLY, FILING_RULE

ERROR_CODES = tuple(f"invalid_{name}" for name in FILING_FIELDS)
_TEXT = {"type": "string", "maxLength": FILING_MAX_CHARS}

# The multipart fields beside ``image``, each optional. No ``pattern``: "any script's letters" has no
# portable JSON Schema regex, and the service, not the document, is where the rule is enforced.
FORM_FIELDS = {
    "patient_id": {**_TEXT, "description": f"Optional: the clinic's patient identifier, {FILING_RULE}. "
                                           f"{FILING_PRINTED_ONLY} Anything else is 400 `invalid_patient_id`."},
    "clinician": {**_TEXT, "description": f"Optional: the requesting clinician, {FILING_RULE}. "
                                          f"{FILING_PRINTED_ONLY} Anything else is 400 `invalid_clinician`."},
}

_SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}

# ``report`` in every 200 answer.
RECORD = {
    "type": "object",
    "additionalProperties": False,
    "required": ["id", "image", "time", "precision"],
    "description": "What a filed report is traced by; the txt and pdf reports print the same values.",
    "properties": {
        "id": {"type": "string", "pattern": "^LSR(-[0-9A-Z]{4}){4}$",
               "description": "A random report id, new for every screening (80 bits)."},
        "image": {"type": "object", "additionalProperties": False, "required": ["filename", "sha256"],
                  "properties": {"filename": {"type": ["string", "null"],
                                              "description": "The uploaded file's name (null for a raw-body upload)."},
                                 "sha256": {**_SHA256, "description": "SHA-256 of the uploaded bytes."}}},
        "time": {"type": "object", "additionalProperties": False, "required": ["utc", "local", "timezone"],
                 "properties": {"utc": {"type": "string", "format": "date-time"},
                                "local": {"type": "string", "format": "date-time",
                                          "description": "The same instant in the deployment's REPORT_TIMEZONE."},
                                "timezone": {"type": "string", "description": "REPORT_TIMEZONE, an IANA name."}}},
        "precision": {"enum": ["float32", "int8"], "description": "The arithmetic that served this answer."},
    },
}
