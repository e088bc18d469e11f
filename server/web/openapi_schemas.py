"""The JSON shapes the OpenAPI document names (Error, a class probability, the model, the
prediction): data beside ``server/web/openapi.py``, which builds the document around them."""

from __future__ import annotations

from server.lesions import CLASS_CODES, RISK_LEVELS
from server.thresholds import MALIGNANT_TARGET_SENSITIVITY
from server.web import openapi_filing as filing
from server.web import openapi_patient as patient
from server.web import openapi_trust as trust

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "looks_like": {"type": ["string", "null"],
                               "description": "422 not_a_skin_lesion only: what the image seemed to show in the words "
                                              "of an ImageNet classifier (e.g. 'tabby cat'), or null when it was "
                                              "not confident."},
                "field": {**patient.ERROR_FIELD, "enum": [*patient.ERROR_FIELD["enum"], *filing.FORM_FIELDS],
                          "description": "400 invalid_<field> only: the multipart field to correct."},
            },
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
        "test_balanced_accuracy": {"type": ["number", "null"],
                                   "description": "the card's test balanced accuracy measured as this answer was made"},
        "test_figure": {
            "type": ["object", "null"],
            "description": "what test_balanced_accuracy measured: the precision, the inputs, and the precision served",
            "required": ["balanced_accuracy", "precision", "inputs", "served"],
            "properties": {"balanced_accuracy": {"type": "number"}, "precision": {"enum": ["float32", "int8"]},
                           "inputs": {"enum": ["photo alone", "photo and patient context"]},
                           "served": {"enum": ["float32", "int8"]}},
        },
    },
}

PREDICTION_SCHEMA = {
    "type": "object",
    "required": ["prediction", "probabilities", "malignant_probability", "malignant_threshold", "malignant_flag",
                 "differential", "differential_coverage",
                 "uncertain", "uncertain_threshold", "uncertain_message", "calibration", "out_of_distribution",
                 "unusual_image", "unusual_message",
                 "model", "timing", "created_at", "disclaimer", "patient", "summary", "report"],
    "properties": {
        "summary": trust.SUMMARY,
        "subgroup_warning": trust.SUBGROUP_WARNING,
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
                                               f"sensitivity >= {MALIGNANT_TARGET_SENSITIVITY:.2f}; null if the model "
                                               "card has none."},
        "malignant_flag": {"type": ["boolean", "null"],
                           "description": "malignant_probability >= malignant_threshold: see a dermatologist."},
        "malignant_probability": {"type": "number", "minimum": 0, "maximum": 1,
                                  "description": "P(mel) + P(bcc) + P(akiec)."},
        **trust.PROPERTIES,
        "heatmap": {
            "type": "object",
            "required": ["class", "grid", "png_base64"],
            "description": "Only with ?explain=1: Grad-CAM for one class: explain_class, else the leading "
                           "malignant class when malignant_flag is true, else the top class.",
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
        "patient": patient.ECHO,
        "report": filing.RECORD,
    },
}
