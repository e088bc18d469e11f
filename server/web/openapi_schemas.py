"""The JSON shapes the OpenAPI document names (Error, a class probability, the model, the
prediction): data beside ``server/web/openapi.py``, which builds the document around them."""

from __future__ import annotations

from server.lesions import CLASS_CODES, RISK_LEVELS
from server.prediction import UNUSUAL_IMAGE_MESSAGE
from server.thresholds import MALIGNANT_TARGET_SENSITIVITY
from server.web import openapi_patient as patient

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
                "field": patient.ERROR_FIELD,
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
        "test_balanced_accuracy": {"type": ["number", "null"]},
    },
}

PREDICTION_SCHEMA = {
    "type": "object",
    "required": ["prediction", "probabilities", "malignant_probability", "malignant_threshold", "malignant_flag",
                 "uncertain", "uncertain_threshold", "uncertain_message", "calibration", "out_of_distribution",
                 "unusual_image", "unusual_message",
                 "model", "timing", "created_at", "disclaimer", "patient", "summary"],
    "properties": {
        "summary": {
            "type": "object",
            "required": ["kind", "title", "next_step", "key_figure", "uncertain", "malignant_flag"],
            "description": "The verdict in words, as the result page and the reports give it. kind is the first "
                           "that applies of: flagged (malignant_flag: see a dermatologist promptly, whatever the "
                           "type), uncertain (the model cannot tell which type), class (a confident answer).",
            "properties": {
                "kind": {"type": "string", "enum": ["flagged", "uncertain", "class"]},
                "title": {"type": "string", "description": "The verdict in one line."},
                "next_step": {"type": "string", "description": "What to do, in one line."},
                "key_figure": {
                    "type": "object",
                    "required": ["label", "value", "meaning"],
                    "description": "The one number to read: P(malignant) when flagged, else the top probability.",
                    "properties": {"label": {"type": "string", "enum": ["Malignant", "Confidence"]},
                                   "value": {"type": "number", "minimum": 0, "maximum": 1},
                                   "meaning": {"type": "string", "description": "The number in context: what it "
                                               "meant on the test images, and how often the flag misses."}},
                },
                "uncertain": {"type": "boolean"},
                "malignant_flag": {"type": ["boolean", "null"]},
            },
        },
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
                                "description": "Always false in a 200 answer (an image that is not a skin lesion is "
                                               "refused with 422 not_a_skin_lesion); null when the model has no "
                                               "non-skin statistics."},
        "unusual_image": {"type": ["boolean", "null"],
                          "description": "True when the photo lies far from the images the model learnt from (another "
                                         "dermatoscope, lighting, colour balance or framing) but nothing says it is not "
                                         "skin: it is screened all the same, `uncertain` is true and the malignant flag "
                                         "is computed as usual, but the result is less reliable. null when the model "
                                         "has no non-skin statistics."},
        "unusual_message": {"type": ["string", "null"],
                            "description": f"The sentence every output shows for an unusual image: "
                                           f"\"{UNUSUAL_IMAGE_MESSAGE}\" null otherwise."},
        "ood_score": {"type": ["number", "null"], "minimum": 0,
                      "description": "The non-skin check: the distances of the image's features from the training "
                                     "images and its texture and colour against their floors, each as a ratio to its "
                                     "threshold; the largest of them. Above 1 the image is unusual (unusual_image), "
                                     "or refused (422) where the evidence says it is not skin."},
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
    },
}
