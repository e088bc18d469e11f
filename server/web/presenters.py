"""Presenters for the pages: pictures as data URIs, the model card's figures and safeguards in words,
the upload form's optional patient and filing fields."""

from __future__ import annotations

import base64
from collections.abc import Mapping

from server.filing import FILING_FIELDS, FILING_LABELS, FILING_MAX_CHARS, FILING_PRINTED_ONLY
from server.model import explain
from server.model.card import ModelCard
from server.patient import GENERAL_SITE_WORDS, MAX_AGE, MIN_AGE, PATIENT_FIELDS, SEXES, SITE_WORDS
from server.prediction import Prediction
from server.reports import percent


def data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def heatmap_uri(prediction: Prediction) -> str | None:
    if prediction.heatmap is None or not prediction.heatmap.png:
        return None
    return "data:image/png;base64," + base64.b64encode(prediction.heatmap.png).decode("ascii")


def other_heatmap_uris(prediction: Prediction) -> list[tuple[str, str]]:
    """(class code, JPEG data URI) of every class but the main heatmap's, most probable first.

    Drawn from the grids over the thumbnail, so the page can show any class's heatmap
    without JavaScript and without a second pass through the model.
    """
    out = []
    for c in prediction.classes:
        heatmap = prediction.heatmap_for(c.code)
        if heatmap is None or heatmap is prediction.heatmap:
            continue
        out.append((c.code, data_uri(explain.heatmap_jpeg(heatmap, prediction.thumbnail))))
    return out


_METRIC_LABELS = {  # key -> (label, as a percentage?)
    "n": ("Test images", False),
    "balanced_accuracy": ("Balanced accuracy", True),
    "accuracy": ("Accuracy", True),
    "macro_auc_ovr": ("Macro one-vs-rest AUC", False),
    "log_loss": ("Log loss (lower is better)", False),
}


def metric_rows(test: Mapping) -> list[tuple[str, str]]:
    """The card's scalar test figures as (label, text): rates as percentages, AUC and log loss as numbers."""
    rows = []
    for key, value in test.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        label, as_percent = _METRIC_LABELS.get(key, (key.replace("_", " ").capitalize(), False))
        text = percent(value) if as_percent else (str(value) if isinstance(value, int) else f"{value:.3f}")
        rows.append((label, text))
    return rows


def safeguards(card: ModelCard | Mapping) -> list[tuple[str, str]]:
    """The card's safety settings in plain words, for the model page (absent ones are left out).

    ``card`` may also be a card document holding only some sections.
    """
    card = card if isinstance(card, ModelCard) else ModelCard.partial(card)
    out = []
    thresholds = card.thresholds
    test_mal = card.test_metrics.get("malignant") or {}
    if thresholds.malignant is not None:
        text = (f"A lesion is flagged for a dermatologist when the combined probability of melanoma, basal cell "
                f"carcinoma and actinic keratosis reaches {percent(thresholds.malignant)}, chosen on "
                f"validation images to catch at least {percent(thresholds.malignant_target, 0)} of malignant lesions.")
        if "sensitivity" in test_mal:
            text += (f" On the test images it caught {percent(test_mal['sensitivity'])} of malignant lesions "
                     f"and cleared {percent(test_mal['specificity'])} of benign ones.")
        out.append(("Malignant flag", text))
    if card.differential is not None:
        out.append(("Uncertain answers", "When the list of possible types holds more than one, the answer is called "
                    "uncertain and you are advised to see a dermatologist (the table above gives how often the list "
                    "held the right type)."))
    elif thresholds.uncertain is not None:
        out.append(("Uncertain answers", f"When the model's top probability is below "
                    f"{percent(thresholds.uncertain, 0)}, the answer is called uncertain and you are "
                    "advised to see a dermatologist."))
    calibration = card.calibration
    if calibration is not None and calibration.temperature is not None:
        out.append(("Calibration", f"Probabilities are temperature-scaled (T = {calibration.temperature:.3f}); "
                    f"calibration error on test {calibration.figure('ece_test_before', float('nan')):.3f} before, "
                    f"{calibration.figure('ece_test_after', float('nan')):.3f} after."))
    ood = card.ood
    if ood is not None and ood.figure("everyday_true_flag_rate") is not None:
        out.append(("Non-skin images", nonskin_in_words(ood)))
    elif ood is not None and ood.figure("nonskin_true_flag_rate") is not None:
        out.append(("Non-skin images", f"Images that do not look like a skin lesion are refused without a diagnosis: "
                    f"{percent(ood.figure('nonskin_true_flag_rate'))} of the non-skin test pictures were refused, and "
                    f"{percent(ood.figure('test_false_flag_rate', 0.0))} of real lesion photos were wrongly refused."))
    return out


def precision_in_words(precision: str, card: ModelCard, choice=None) -> str:
    """Which arithmetic answers (``Predictor.precision``) and why (its ``PrecisionChoice``), and for int8 how
    closely it was measured to follow float32."""
    why = f" Why: {choice.reason}." if choice is not None and choice.reason else ""
    if precision != "int8":
        return "float32, the arithmetic the model was trained in." + why
    text = "int8: graphs quantized from this model (static, per channel), which answer faster on a CPU."
    figures = (card.int8.figure("bar") or {}) if card.int8 is not None else {}
    test = figures.get("test") or {}
    if "float32" in test and "int8" in test:
        text += (f" On the {figures.get('images')} test images their balanced accuracy was "
                 f"{percent(test['int8']['balanced_accuracy'])} against {percent(test['float32']['balanced_accuracy'])} "
                 f"in float32, and no class probability moved by more than "
                 f"{percent(figures.get('largest_probability_change', float('nan')))}.")
    return text + why


def nonskin_in_words(ood) -> str:
    """The non-skin check's measured rates, on pictures its thresholds were not fitted on."""
    def share(rate_key: str, count_key: str) -> str:
        return f"{percent(ood.figure(rate_key))} of {ood.figure(count_key)}"

    checked = ("Checked on pictures the thresholds were not fitted on, except that an everyday photograph or made "
               "picture counts as refused only when an object check fitted without it refuses it: "
               if ood.object_threshold is not None else "Checked on pictures the thresholds were not fitted on: ")
    text = ("Images that do not look like a skin lesion are refused without a diagnosis, and the refusal says what "
            "the image seemed to be when the model can tell. " + checked +
            f"{share('everyday_true_flag_rate', 'everyday_images')} everyday photographs (food, animals, vehicles, "
            f"rooms, streets, a cat, coffee...) and {share('made_true_flag_rate', 'made_images')} made pictures "
            "(flat skin tones, gradients, sunsets, "
            "screenshots, charts) were refused; "
            f"{percent(ood.figure('test_false_flag_rate', 0.0))} of the real lesion photos of the test split, and "
            f"{share('hard_test_false_flag_rate', 'hard_test_images')} of them made harder (darker, brighter, blurred, "
            "rotated, with a ruler or hair, at 150 px), were wrongly refused.")
    if ood.figure("shifted_test_false_flag_rate") is None:
        return text
    return text + (" A lesion photo that is merely unusual for the model, as another clinic's may be, is screened "
                   "all the same, marked uncertain, with a warning: of the test lesions shifted as other clinics "
                   f"photograph them (colour casts, contrast, round fields, glare, hair, ink, JPEG, blur, a wider "
                   f"field), {share('shifted_test_false_flag_rate', 'shifted_test_images')} were refused and "
                   f"{percent(ood.figure('shifted_test_unusual_rate'))} carried the warning.")


def sorted_options(words: Mapping[str, str]) -> list[tuple[str, str]]:
    """(value, label) select options, sorted by what a person reads."""
    return sorted(((value, text[0].upper() + text[1:]) for value, text in words.items()), key=lambda option: option[1])


def patient_form(values: Mapping | None = None, error_field: str | None = None, error: str | None = None) -> dict:
    """What the form's optional patient fieldset shows: the choices, the person's values kept, the one error.

    ``values`` are the text the person sent (kept as sent, so a wrong age is shown to be
    corrected, not blanked); the choices are ``server.patient``'s values with plain labels,
    the sites sorted by what a person reads. A select's "Not given" is the empty value.
    """
    values = values or {}
    fields = {name: {"value": str(values.get(name) or ""), "error": error if name == error_field else ""}
              for name in PATIENT_FIELDS}
    fields["sex"]["options"] = [(sex, sex.capitalize()) for sex in SEXES]
    fields["site"]["options"] = sorted_options(SITE_WORDS)
    fields["site"]["general_options"] = sorted_options(GENERAL_SITE_WORDS)
    return {"fields": fields, "min_age": MIN_AGE, "max_age": MAX_AGE}


def filing_form(values: Mapping | None = None, error_field: str | None = None, error: str | None = None) -> dict:
    """What the form's folded "for the printed report" fields show: labels, the person's values kept, the one error.

    The fold opens by itself when it holds a value or the error, so nothing typed is hidden.
    """
    values = values or {}
    fields = {name: {"label": FILING_LABELS[name], "value": str(values.get(name) or ""),
                     "error": error if name == error_field else ""} for name in FILING_FIELDS}
    return {"fields": fields, "max_chars": FILING_MAX_CHARS, "hint": FILING_PRINTED_ONLY,
            "open": any(f["value"] or f["error"] for f in fields.values())}
