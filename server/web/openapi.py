"""The OpenAPI 3 description of the JSON API, served at ``/openapi.json``.

Kept as data beside the code it describes; ``tests/test_api.py`` validates real
responses against these schemas and ``tests/test_fuzz.py`` fuzzes the service from it,
so the document cannot drift from the service. The query parameters are declared here
once (``QUERY_PARAMETERS``): the handlers read them through ``server.web.api.query_arg``,
which refuses a name this module does not declare.
"""

from __future__ import annotations

from server.decoding import upload_limits_in_words
from server.lesions import CLASS_CODES
from server.reports import PAPER_SIZES, REPORT_FORMATS
from server.web import openapi_filing as filing
from server.web import openapi_patient as patient
from server.web.openapi_schemas import ERROR_SCHEMA, PREDICTION_SCHEMA
from server.web.uploads import FIELD


def _error_response(description: str, *codes: str) -> dict:
    """An error answer: the Error shape, with ``error.code`` limited to the codes this status can carry."""
    schema = {"allOf": [{"$ref": "#/components/schemas/Error"},
                        {"properties": {"error": {"properties": {"code": {"enum": list(codes)}}}}}]}
    return {"description": f"{description} Codes: {', '.join(codes)}.", "content": {"application/json": {"schema": schema}}}


def _query(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


_FLAG = {"type": "string", "enum": ["0", "1"]}
# Every query parameter an API operation reads, keyed by (method, path): the one declaration
# that both the document and the handlers (through server.web.api.query_arg) use.
QUERY_PARAMETERS = {
    ("post", "/predict"): [
        _query("format", {"type": "string", "enum": list(REPORT_FORMATS)},
               "The answer's form: json (default), txt (a plain-text report) or pdf (a PDF report, with the "
               "Grad-CAM heatmap). Without it, the Accept header chooses among application/json, text/plain "
               "and application/pdf."),
        _query("paper", {"type": "string", "enum": list(PAPER_SIZES)},
               "The PDF report's paper size: a4 (default) or letter (US Letter)."),
        _query("explain", _FLAG, "1: add a Grad-CAM heatmap (`heatmap`): for the leading malignant class when "
                                 "malignant_flag is true (where the malignant evidence lies), else for the top class."),
        _query("explain_class", {"type": "string", "enum": list(CLASS_CODES)},
               "The class to explain instead (implies explain=1)."),
    ],
}

_BINARY = {"type": "string", "format": "binary"}
_STATUS = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}


def openapi_document(max_upload_mb: int) -> dict:
    """Build the OpenAPI 3.1 document (3.1 so schemas are plain JSON Schema)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Skin-lesion screening API",
            "version": "1.0.0",
            "description": (
                "Screens a dermoscopic photo of a skin lesion into the 7 HAM10000 classes. "
                "A screening aid, never a diagnosis."
            ),
        },
        "paths": {
            "/predict": {
                "post": {
                    "summary": "Screen one image",
                    "description": (
                        f"Send a JPEG or PNG (at most {max_upload_mb} MB, at least 32 px a side) as multipart field "
                        "`image`, or as the raw body with Content-Type image/jpeg or image/png. "
                        "415: not a JPEG/PNG. 422: a JPEG/PNG that cannot be decoded or used, or "
                        "`not_a_skin_lesion`: the non-skin check found evidence that the image is not a skin "
                        "lesion (an everyday object or scene it can name, a screenshot, a chart, a flat colour...); it "
                        "gets no diagnosis, and `error.looks_like` says what it seemed to be when the model can tell "
                        "(`tabby cat`). A lesion photo that is merely unusual for the model is screened (200) with "
                        "`unusual_image: true`, and marked uncertain. "
                        "A multipart upload may add the patient context, each field optional: `age`, `sex`, `site`; "
                        "the answer echoes it as `patient`, and a bad value is 400 `invalid_age`, `invalid_sex` or "
                        "`invalid_site` with `error.field` naming the field. A raw-body upload carries none. "
                        "It may also add `patient_id` and `clinician`, printed on the txt and pdf reports and nowhere "
                        "else (never in the JSON, never stored or logged); a bad value is 400 `invalid_patient_id` or "
                        "`invalid_clinician`. Every answer carries `report`: its random id, the image's file name and "
                        "SHA-256, the time in UTC and in REPORT_TIMEZONE, and the precision served. "
                        "Probabilities are calibrated by temperature scaling fitted on validation data."
                    ),
                    "parameters": QUERY_PARAMETERS[("post", "/predict")],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {"type": "object", "required": [FIELD],
                                           "properties": {FIELD: _BINARY, **patient.FORM_FIELDS,
                                                          **filing.FORM_FIELDS}}
                            },
                            "image/jpeg": {"schema": _BINARY},
                            "image/png": {"schema": _BINARY},
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "The screening result: JSON, or the text or PDF report with format=txt|pdf "
                                           "(or Accept: text/plain / application/pdf).",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/Prediction"}},
                                "text/plain": {"schema": {"type": "string"}},
                                "application/pdf": {"schema": _BINARY},
                            },
                        },
                        "400": _error_response("No image, an empty file, more than one file, a malformed upload, a "
                                               "query parameter outside its documented values, or a patient or "
                                               "filing field (age, sex, site, patient_id, clinician) outside its "
                                               "values or sent twice.",
                                               "missing_file", "empty_file", "too_many_files", "bad_request",
                                               *patient.ERROR_CODES, *filing.ERROR_CODES),
                        "408": _error_response("The upload stalled for UPLOAD_READ_TIMEOUT seconds, or took longer "
                                               "than UPLOAD_BODY_TIMEOUT in all.", "request_timeout"),
                        "413": _error_response(f"The upload is over {max_upload_mb} MB, or its form has too many "
                                               "parts or a field too large (the message says which).", "payload_too_large"),
                        "415": _error_response("Not a JPEG or PNG.", "unsupported_media_type"),
                        "422": _error_response("A JPEG or PNG that is truncated, corrupt, too small or too large "
                                               f"(invalid_image: {upload_limits_in_words()}), or not a skin "
                                               "lesion (not_a_skin_lesion).",
                                               "invalid_image", "not_a_skin_lesion"),
                        "429": _error_response("Over RATE_LIMIT (by default 60 a minute per client address; "
                                               "see Retry-After).", "too_many_requests"),
                        "503": _error_response("No model loaded.", "model_unavailable"),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "responses": {"200": {"description": "The process is up.",
                                          "content": {"application/json": {"schema": _STATUS}}}},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness",
                    "responses": {
                        "200": {"description": "A model is loaded: its version, the inference runtime serving it, "
                                               "its arithmetic (float32, or int8 graphs quantized from it) and why "
                                               "(int8 is served by default only after it passed a check on this CPU).",
                                "content": {"application/json": {"schema": {
                                    "allOf": [_STATUS],
                                    "required": ["model_loaded", "model", "runtime", "precision", "precision_reason"],
                                    "properties": {"model_loaded": {"const": True}, "model": {"type": "string"},
                                                   "runtime": {"type": "string"},
                                                   "precision": {"enum": ["float32", "int8"]},
                                                   "precision_reason": {"type": "string"}}}}}},
                        "503": {"description": "No model loaded.",
                                "content": {"application/json": {"schema": {
                                    "allOf": [_STATUS], "required": ["model_loaded"],
                                    "properties": {"model_loaded": {"const": False}}}}}},
                    },
                }
            },
            "/api/model": {
                "get": {
                    "summary": "The model card",
                    "responses": {
                        "200": {"description": "Classes, preprocessing, metrics, training data and licence.",
                                "content": {"application/json": {"schema": {"type": "object"}}}},
                        "503": _error_response("No model loaded.", "model_unavailable"),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": {"description": "The OpenAPI 3.1 description of the API.",
                                          "content": {"application/json": {"schema": {"type": "object"}}}}},
                }
            },
            "/docs": {
                "get": {
                    "summary": "API reference page",
                    "responses": {"200": {"description": "This document rendered as HTML, with curl examples.",
                                          "content": {"text/html": {"schema": {"type": "string"}}}}},
                }
            },
        },
        "components": {"schemas": {"Prediction": PREDICTION_SCHEMA, "Error": ERROR_SCHEMA}},
    }
