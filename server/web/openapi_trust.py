"""How sure an answer is, in the OpenAPI document: the differential, the verdict in words, calibration, the non-skin check.

``server/web/openapi.py`` places these pieces in the 200 answer of ``POST /predict``.
"""

from __future__ import annotations

from server.lesions import CLASS_CODES
from server.prediction import UNUSUAL_IMAGE_MESSAGE
from server.thresholds import DIFFERENTIAL_TARGET_COVERAGE

SUMMARY = {
    "type": "object",
    "required": ["kind", "title", "next_step", "key_figure", "differential", "uncertain", "malignant_flag"],
    "description": "The verdict in words, as the result page and the reports give it. kind is the first "
                   "that applies of: flagged (malignant_flag: see a dermatologist promptly, whatever the "
                   "type), uncertain (the differential holds more than one type), class (a confident answer).",
    "properties": {
        "kind": {"type": "string", "enum": ["flagged", "uncertain", "class"]},
        "title": {"type": "string", "description": "The verdict in one line."},
        "next_step": {"type": "string", "description": "What to do, in one line."},
        "key_figure": {
            "type": "object",
            "required": ["label", "value", "meaning"],
            "description": "The one number to read: P(malignant) when flagged; for one type its probability; for "
                           "several, how often the right type was among such lists on the test split (or, where "
                           "that was not measured, the probability the listed types hold together).",
            "properties": {"label": {"type": "string", "enum": ["Malignant", "Confidence", "Right type among these",
                                                                "These types together"]},
                           "value": {"type": "number", "minimum": 0, "maximum": 1},
                           "meaning": {"type": "string", "description": "The number in context: what it "
                                       "meant on the test images, and how often the flag misses."}},
        },
        "differential": {"type": "string",
                         "description": "The differential in words: 'Melanoma', or 'One of: Melanoma, Melanocytic nevus (mole)'."},
        "uncertain": {"type": "boolean"},
        "malignant_flag": {"type": ["boolean", "null"]},
    },
}

PROPERTIES = {
    "differential": {
        "type": "array", "minItems": 1, "maxItems": len(CLASS_CODES),
        "items": {"type": "object", "required": ["code", "name", "probability"],
                  "properties": {"code": {"type": "string", "enum": list(CLASS_CODES)}, "name": {"type": "string"},
                                 "probability": {"type": "number", "minimum": 0, "maximum": 1}}},
        "description": "The lesion types still possible, most likely first: the smallest list that held the true type "
                       "differential_coverage of the time on validation (split conformal prediction, thresholds in the "
                       "model card's `differential`). One type is a confident answer; more than one is the model saying "
                       "how unsure it is. A photo that is unusual for the model gets at least its two leading types.",
    },
    "differential_coverage": {
        "type": ["number", "null"], "minimum": 0, "maximum": 1,
        "description": f"The share of photos whose true type the list is calibrated to hold ({DIFFERENTIAL_TARGET_COVERAGE:g}); "
                       "the coverage measured on the test split is on /api/model (`differential.figures.test`). "
                       "null when the model card has no conformal thresholds: the list is then the top type when its "
                       "probability reaches uncertain_threshold, else the leading two or three.",
    },
    "uncertain": {"type": "boolean",
                  "description": "The differential holds more than one type: the model cannot narrow it down to one, "
                                 "and the person should see a dermatologist. Kept for clients that read a flag."},
    "uncertain_threshold": {"type": "number", "minimum": 0, "maximum": 1,
                            "description": "The model card's thresholds.uncertain, chosen on validation "
                                           "(0.5 when the card has none). It decides the differential only for a "
                                           "card without conformal thresholds (see differential_coverage)."},
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
                                     "skin: it is screened all the same, its differential holds at least two types (so "
                                     "`uncertain` is true), and the malignant flag is computed as usual, but the result "
                                     "is less reliable. null when the model "
                                     "has no non-skin statistics."},
    "unusual_message": {"type": ["string", "null"],
                        "description": f"The sentence every output shows for an unusual image: "
                                       f"\"{UNUSUAL_IMAGE_MESSAGE}\" null otherwise."},
    "ood_score": {"type": ["number", "null"], "minimum": 0,
                  "description": "The non-skin check: the distances of the image's features from the training "
                                 "images and its texture and colour against their floors, each as a ratio to its "
                                 "threshold; the largest of them. Above 1 the image is unusual (unusual_image), "
                                 "or refused (422) where the evidence says it is not skin."}
}

_RATE = {"type": ["number", "null"], "minimum": 0, "maximum": 1}
_COUNT = {"type": "integer", "minimum": 0}
SUBGROUP_WARNING = {
    "type": "object",
    "description": "Present only when the patient context given puts the lesion in a subgroup that the model card "
                   "flags (/model: melanoma recall well below the whole test split's): the group's own test figures, "
                   "which replace the whole split's for this patient. Absent without context.",
    "required": ["message", "overall_miss", "groups"],
    "properties": {
        "message": {"type": "string", "description": "The warning every output shows beside its key figure."},
        "overall_miss": {**_RATE, "description": "The malignant flag's miss rate on all test images (1 - sensitivity)."},
        "groups": {"type": "array", "minItems": 1, "items": {
            "type": "object",
            "required": ["grouping", "group", "miss", "miss_low", "miss_high", "malignant", "lesions", "recall",
                         "melanomas"],
            "properties": {
                "grouping": {"enum": ["sex", "age", "site"]}, "group": {"type": "string"},
                "miss": {**_RATE, "description": "The malignant flag's miss rate in this group (1 - its sensitivity)."},
                "miss_low": {**_RATE, "description": "Its bootstrap interval's low end (null: too few cases)."},
                "miss_high": {**_RATE, "description": "Its bootstrap interval's high end."},
                "malignant": {**_COUNT, "description": "Malignant test images in the group."},
                "lesions": {**_COUNT, "description": "The malignant lesions they show (the unit resampled)."},
                "recall": {**_RATE, "description": "Melanoma recall in the group (why /model flags it)."},
                "melanomas": {**_COUNT, "description": "Melanoma test images in the group."},
            }}},
    },
}
