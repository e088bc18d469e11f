"""The verdict's rules and words in every output: the malignant flag, its precedence over an unsure type,
the card's figures behind each number, and colours that never reassure."""

from __future__ import annotations

from pathlib import Path

import pytest

from server import reports
from server.prediction import ModelInfo
from server.published import prediction_from_probabilities
from tests.test_reports import MODEL, CONFIDENT, UNSURE, squash, pdf_text


def _benign_top_with_malignant_mass(threshold):
    from server.lesions import CLASS_CODES

    probs = dict.fromkeys(CLASS_CODES, 0.0) | {"nv": 0.55, "mel": 0.40, "bkl": 0.05}
    info = ModelInfo(name="m", version="1", sha256="0" * 64, input_size=32)
    return prediction_from_probabilities([probs[c] for c in CLASS_CODES], info, 1.0, malignant_threshold=threshold)


def test_malignant_flag_sends_a_benign_top_class_to_a_dermatologist():
    flagged = _benign_top_with_malignant_mass(0.30)
    assert flagged.top.code == "nv" and flagged.malignant_flag is True
    verdict = reports.assess(flagged)
    assert verdict.see_dermatologist and verdict.headline == "See a dermatologist promptly"
    assert "at or above the 30.0% that raises the flag" in squash(reports.text_report(flagged))
    assert verdict.malignant.endswith(
        "actinic keratosis), at or above the 30.0% that raises the flag; no test figure is recorded for how often the "
        "flag misses.")

    below = _benign_top_with_malignant_mass(0.45)
    assert below.malignant_flag is False and not reports.assess(below).see_dermatologist

    no_operating_point = _benign_top_with_malignant_mass(None)
    assert no_operating_point.malignant_flag is None and not reports.assess(no_operating_point).see_dermatologist


def test_malignant_flag_fires_exactly_at_the_threshold():
    at = _benign_top_with_malignant_mass(0.40)
    assert at.malignant_probability == 0.40 and at.malignant_flag is True


def test_malignant_flag_survives_the_signed_report_round_trip():
    from server.prediction import Prediction

    flagged = _benign_top_with_malignant_mass(0.30)
    again = Prediction.from_dict(flagged.to_dict())
    assert again == flagged and again.malignant_flag is True


def card_at(path):
    """The typed card in a JSON file, read as the service reads it."""
    import json

    from server.model.card import ModelCard

    return ModelCard.from_dict(json.loads(path.read_text()))


def shipped_card():
    return card_at(Path(__file__).resolve().parents[1] / "saved_models" / "model_card.json")


def context_card():
    """A real card that reads the patient context and flags a subgroup (the face): v2's, as it shipped.

    The figures quoted for answers given with a context, and the flagged group's warning, must stay
    tested whichever model ships, a photo-only one included."""
    return card_at(Path(__file__).resolve().parent / "golden" / "context_card.json")


def test_the_shipped_model_is_said_to_fall_short_of_the_quality_bar():
    from server.reports import quality
    from server.thresholds import QUALITY_BAR

    card = shipped_card()
    checks = {c.key: c for c in quality.bar_checks(card)}
    assert set(checks) == {key for key, _, _ in QUALITY_BAR}
    assert checks["balanced_accuracy"].value == pytest.approx(0.690, abs=5e-4) and checks["balanced_accuracy"].met is False
    assert checks["melanoma_recall"].value == pytest.approx(0.673, abs=5e-4)
    assert quality.meets_bar(list(checks.values())) is False
    sentence = quality.bar_sentence(card)
    assert sentence.startswith("This model does not meet the product's quality bar") and "69.0%" in sentence
    rows = {r.code: r for r in quality.class_figures(card)}
    assert len(rows) == 7 and rows["mel"].precision == pytest.approx(0.353, abs=5e-4) and rows["mel"].support == 159


def test_numbers_carry_their_context_from_the_card():
    card = shipped_card()
    model = ModelInfo(name=card.name, version=card.version, sha256="ab" * 32, input_size=192, test_balanced_accuracy=0.69)
    melanoma = prediction_from_probabilities(CONFIDENT, model, 1.0, malignant_threshold=0.245, uncertain_threshold=0.73)
    text = squash(reports.text_report(melanoma, card))
    # one number leads (the flagged lesion's malignant share), with the flag's miss rate in words
    assert "Malignant: 86.0% 86.0% is the model's combined probability" in text
    assert "raises the flag; the flag missed about 1 in 9 malignant lesions on the test images." in text
    assert "right about 90 times in 100" in text and "does not meet the product's quality bar" in text
    # the per-class precision over every confidence read as a third, conflicting number: it stays on /model
    assert "turned out to be melanoma" not in text
    rule = {"min_probability": card.differential.image.min_probability, "coverage": card.differential.coverage}
    unsure = squash(reports.text_report(prediction_from_probabilities(UNSURE, model, 1.0, **rule), card))
    # the list, and the one figure that says how sure: how often such lists held the right type on test photos
    test_coverage = card.differential.image.measured("test")["coverage"]
    assert f"Right type among these: {reports.percent(test_coverage)}" in unsure
    assert "The right type is among these about 9 times in 10 on test photos." in unsure
    nevus = squash(reports.text_report(prediction_from_probabilities([0.01, 0.01, 0.02, 0.01, 0.02, 0.9, 0.03], model,
                                                                     1.0, **rule), card))
    assert "RESULT: Melanocytic nevus (mole): low risk." in nevus
    assert "answers that named one type alone were right about 9 times in 10" in nevus
    assert "sure were right" not in nevus  # one number in context, not three
    # a card of another model adds nothing (a report token made before the model changed)
    other = squash(reports.text_report(prediction_from_probabilities(CONFIDENT, MODEL, 1.0), card))
    assert "missed about" not in other and "quality bar" not in other
    pdf = pdf_text(reports.pdf_report(melanoma, None, card=card))
    assert pdf.index("Flagged as possibly malignant") < pdf.index("Next step") < pdf.index("What to do") \
        < pdf.index("probability breakdown")
    assert "missed about 1 in 9 malignant lesions" in pdf
    calm = squash(reports.text_report(prediction_from_probabilities([0.01, 0.01, 0.02, 0.01, 0.02, 0.9, 0.03], model,
                                                                    1.0, malignant_threshold=0.245), card))
    assert "The malignant flag is not raised, but it missed about 1 in 9 malignant lesions on the test images" in calm


def test_the_flag_outranks_uncertainty_by_one_rule_in_every_output():
    """A flagged lesion the model cannot type is 'flagged' first and 'cannot tell' second, on the
    verdict, the API summary and both reports: the flag is what the person must act on."""
    assert reports.assessment.VERDICT_ORDER == ("refused", "flagged", "uncertain", "class")
    assert reports.assessment.verdict_kind(refused=True, flagged=True, uncertain=True) == "refused"
    assert reports.assessment.verdict_kind(flagged=True, uncertain=True) == "flagged"
    assert reports.assessment.verdict_kind(uncertain=True) == "uncertain"
    assert reports.assessment.verdict_kind() == "class"
    both = prediction_from_probabilities(UNSURE, MODEL, 1.0, malignant_threshold=0.36, uncertain_threshold=0.73)
    assert both.uncertain and both.malignant_flag
    verdict = reports.assess(both)
    assert (verdict.kind, verdict.tone, verdict.title) == ("flagged", "high", "Flagged as possibly malignant")
    assert verdict.uncertain and verdict.headline == "See a dermatologist promptly"
    assert (verdict.key_label, verdict.key_figure) == ("Malignant", both.malignant_probability)
    assert [c.code for c in verdict.differential] == ["nv", "mel", "bkl"]
    assert reports.summary(both)["kind"] == "flagged" and reports.summary(both)["next_step"] == verdict.headline
    text = reports.text_report(both)
    assert text.index("RESULT: Flagged as possibly malignant.") < text.index("Possible types")
    assert "Uncertain:" not in text
    pdf = pdf_text(reports.pdf_report(both, None))
    assert pdf.index("Flagged as possibly malignant") < pdf.index("Possible types")
    # the heatmap explains the leading malignant class, not the benign top class
    assert both.top.code == "nv" and both.explained_class == "mel"
    assert prediction_from_probabilities(UNSURE, MODEL, 1.0).explained_class == "nv"


def test_one_in_says_small_rates_as_people_read_them():
    from server.reports.assessment import one_in

    assert [one_in(r) for r in (0.115, 0.1, 0.26, 0.02, 0.0, 0.6)] == [
        "about 1 in 9", "about 1 in 10", "about 1 in 4", "about 1 in 50", "none", "about 60 in 100"]


def test_an_uncertain_or_flagged_verdict_is_never_green():
    unsure = reports.assess(prediction_from_probabilities(UNSURE, MODEL, 1.0))
    assert unsure.kind == "uncertain" and unsure.tone == "uncertain" and not unsure.names_a_class
    assert [c.code for c in unsure.differential] == ["nv", "mel", "bkl"]
    flagged = reports.assess(_benign_top_with_malignant_mass(0.30))
    assert flagged.kind == "flagged" and flagged.tone == "high" and flagged.risk == "low"
