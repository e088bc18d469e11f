"""The OpenAPI 3 description of the JSON API, served at ``/openapi.json``.

Kept as data beside the code it describes; ``tests/test_api.py`` validates real
responses against these schemas so the document cannot drift from the service.
"""

from __future__ import annotations

from server.lesions import CLASS_CODES, RISK_LEVELS

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}

_CLASS_PROB = {
    "type": "object",
    "required": ["code", "name", "risk", "probability"],
    "properties": {
        "code": {"type": "string", "enum": list(CLASS_CODES)},
        "name": {"type": "string"},
        "risk": {"type": "string", "enum": list(RISK_LEVELS)},
        "probability": {"type": "number", "minimum": 0, "maximum": 1},
    },
}

_MODEL_INFO = {
    "type": "object",
    "required": ["name", "version", "sha256", "input_size"],
    "properties": {
        "name": {"type": "string"},
        "version": {"type": "string"},
        "sha256": {"type": "string"},
        "input_size": {"type": "integer"},
        "test_balanced_accuracy": {"type": ["number", "null"]},
    },
}

PREDICTION_SCHEMA = {
    "type": "object",
    "required": ["prediction", "probabilities", "malignant_probability", "malignant_threshold", "malignant_flag",
                 "uncertain", "uncertain_threshold", "uncertain_message", "calibration", "out_of_distribution",
                 "model", "timing", "created_at", "disclaimer"],
    "properties": {
        "prediction": {
            "allOf": [_CLASS_PROB],
            "type": "object",
            "required": ["advice"],
            "properties": {"advice": {"type": "string"}},
        },
        "probabilities": {
            "type": "array",
            "minItems": len(CLASS_CODES),
            "maxItems": len(CLASS_CODES),
            "items": _CLASS_PROB,
            "description": "All classes, sorted by probability (highest first); they sum to 1.",
        },
        "malignant_threshold": {"type": ["number", "null"], "minimum": 0, "maximum": 1,
                                "description": "Operating point on P(malignant), chosen on validation for "
                                               "sensitivity >= 0.90; null if the model card has none."},
        "malignant_flag": {"type": ["boolean", "null"],
                           "description": "malignant_probability >= malignant_threshold: see a dermatologist."},
        "malignant_probability": {"type": "number", "minimum": 0, "maximum": 1,
                                  "description": "P(mel) + P(bcc) + P(akiec)."},
        "uncertain": {"type": "boolean",
                      "description": "The calibrated top probability is below uncertain_threshold: the answer is not "
                                     "reliable and the person should see a dermatologist."},
        "uncertain_threshold": {"type": "number", "minimum": 0, "maximum": 1,
                                "description": "The model card's thresholds.uncertain, chosen on validation "
                                               "(0.5 when the card has none). A top probability equal to it is "
                                               "not uncertain."},
        "uncertain_message": {"type": ["string", "null"], "description": "Plain words for an uncertain answer."},
        "calibration": {
            "type": "object",
            "required": ["temperature", "tta"],
            "properties": {
                "temperature": {"type": ["number", "null"],
                                "description": "Temperature scaling applied to every probability in this answer "
                                               "(fitted on validation); null: raw model output."},
                "tta": {"type": "string", "enum": ["off", "flips", "full"],
                        "description": "Test-time augmentation averaged into the probabilities."},
            },
        },
        "out_of_distribution": {"type": ["boolean", "null"],
                                "description": "Always false in a 200 answer (a flagged image is refused with 422 "
                                               "not_a_skin_lesion); null when the model has no non-skin statistics."},
        "ood_score": {"type": ["number", "null"], "minimum": 0,
                      "description": "The non-skin check: Mahalanobis distance of the image's deep features, and of "
                                     "its picture statistics, from the training images, each divided by its "
                                     "threshold; the larger of the two. Above 1 the image is refused (422)."},
        "heatmap": {
            "type": "object",
            "required": ["class", "grid", "png_base64"],
            "description": "Only with ?explain=1: Grad-CAM for one class.",
            "properties": {
                "class": {"type": "string", "enum": list(CLASS_CODES)},
                "png_base64": {"type": "string", "description": "PNG overlay of the heatmap on the centre square "
                                                                "the model analysed (input_size px a side)."},
                "grid": {"type": "array",
                         "items": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 255}},
                         "description": "The heatmap at the feature map's resolution, 0..255 (255 = strongest)."},
            },
        },
        "model": _MODEL_INFO,
        "timing": {
            "type": "object",
            "required": ["inference_ms"],
            "properties": {
                "inference_ms": {"type": "number", "description": "Model time in milliseconds."},
                "explain_ms": {"type": "number", "description": "Grad-CAM time in milliseconds (with explain=1)."},
                "total_ms": {"type": "number", "description": "Decode, preprocess and model time in milliseconds."},
            },
        },
        "created_at": {"type": "string", "format": "date-time"},
        "disclaimer": {"type": "string"},
    },
}


def _error_response(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def openapi_document(max_upload_mb: int) -> dict:
    """Build the OpenAPI 3.1 document (3.1 so schemas are plain JSON Schema)."""
    image_body = {"type": "string", "format": "binary"}
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
                        "`not_a_skin_lesion`: the non-skin check found the image unlike the dermoscopic photos the "
                        "model knows (a portrait, a screenshot, a chart, a flat colour...); it gets no diagnosis. "
                        "Probabilities are calibrated by temperature scaling fitted on validation data."
                    ),
                    "parameters": [
                        {"name": "explain", "in": "query", "required": False,
                         "schema": {"type": "string", "enum": ["0", "1"]},
                         "description": "1: add a Grad-CAM heatmap (`heatmap`) for the top class."},
                        {"name": "explain_class", "in": "query", "required": False,
                         "schema": {"type": "string", "enum": list(CLASS_CODES)},
                         "description": "The class to explain instead of the top one (implies explain=1)."},
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {"type": "object", "required": ["image"], "properties": {"image": image_body}}
                            },
                            "image/jpeg": {"schema": image_body},
                            "image/png": {"schema": image_body},
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "The screening result.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Prediction"}}},
                        },
                        "400": _error_response("No image, an empty file or more than one file."),
                        "408": _error_response("The upload stalled for UPLOAD_READ_TIMEOUT seconds (request_timeout)."),
                        "413": _error_response(f"The upload is over {max_upload_mb} MB."),
                        "415": _error_response("Not a JPEG or PNG."),
                        "422": _error_response("A JPEG or PNG that is truncated, corrupt, too small or too many "
                                               "pixels (invalid_image), or not a skin lesion (not_a_skin_lesion)."),
                        "429": _error_response("Over RATE_LIMIT, when one is set (too_many_requests)."),
                        "503": _error_response("No model loaded."),
                    },
                }
            },
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "The process is up."}}}},
            "/readyz": {
                "get": {
                    "summary": "Readiness",
                    "responses": {"200": {"description": "A model is loaded."}, "503": {"description": "No model loaded."}},
                }
            },
            "/api/model": {
                "get": {
                    "summary": "The model card",
                    "responses": {
                        "200": {"description": "Classes, preprocessing, metrics, training data and licence.",
                                "content": {"application/json": {"schema": {"type": "object"}}}},
                        "503": _error_response("No model loaded."),
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
        "components": {"schemas": {"Prediction": PREDICTION_SCHEMA, "Error": _ERROR}},
    }
