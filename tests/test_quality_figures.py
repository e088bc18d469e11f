"""Issue #35 part 3: every answer quotes the test figure measured as it was made, names it, and says
(on the home page, the result page and both reports) that the model misses its quality bar."""

from __future__ import annotations

import pytest

from server import reports
from server.model.card_quality import quoted_figure, recorded_figures
from server.model.files import model_info
from server.prediction import Prediction
from server.published import prediction_from_probabilities
from server.reports import quality
from tests.fixture_model import with_card_changes
from tests.test_reports import CONFIDENT, pdf_text, squash
from tests.test_verdict import context_card


@pytest.mark.parametrize("served, given, precision, inputs, value", [
    ("float32", False, "float32", "photo alone", ("test", "without_context")),
    ("float32", True, "float32", "photo and patient context", ("test", "with_context")),
    ("int8", False, "int8", "photo alone", None),
    ("int8", True, "float32", "photo and patient context", ("test", "with_context")),
])
def test_the_quoted_figure_is_the_one_measured_as_the_answer_was_served(served, given, precision, inputs, value):
    card = context_card()
    figure = quoted_figure(card, served, given)
    expected = (card.patient_context.figure("served")[value[0]][value[1]]["balanced_accuracy"] if value
                else card.int8.figure("bar")["test"]["int8"]["balanced_accuracy"])
    assert figure.balanced_accuracy == expected and figure.precision == precision and figure.inputs == inputs
    assert figure.served == served
    # int8 with the context has no figure of its own: the name says float32's is quoted instead
    assert figure.name.endswith("int8 served, not measured so") == (precision != served)


def test_the_card_records_three_figures_and_they_differ():
    figures = recorded_figures(context_card())
    assert set(figures) == {("float32", False), ("float32", True), ("int8", False)}
    assert figures[("float32", True)] - figures[("float32", False)] > 0.05  # 0.749 against 0.690: worth naming


def test_every_output_names_the_figure_it_quotes_and_the_token_keeps_it():
    card = context_card()
    info = model_info(card, "ab" * 32, "float32", context_given=True)
    answer = prediction_from_probabilities(CONFIDENT, info, 1.0, malignant_threshold=0.36)
    body = answer.to_dict()
    assert body["model"]["test_balanced_accuracy"] == pytest.approx(0.7494, abs=1e-4)
    assert body["model"]["test_figure"]["inputs"] == "photo and patient context"
    assert Prediction.from_dict(body) == answer
    named = "74.9% (float32, photo and patient context)"
    assert reports.balanced_accuracy_text(answer) == named
    assert named in squash(reports.text_report(answer, card))
    assert named in squash(pdf_text(reports.pdf_report(answer, None, card=card)))


def test_the_bar_sentence_counts_the_failing_rows_from_the_table():
    card = context_card()
    short = [c for c in quality.bar_checks(card) if c.met is False]
    assert len(short) == len(quality.bar_checks(card)) == 5
    assert quality.bar_sentence(card).startswith(
        "This model does not meet the product's quality bar: all 5 figures on its held-out test images fall short of it; "
        "the first, its balanced accuracy, is 69.0% against a bar of 80%.")
    two_short = {"balanced_accuracy": 0.85, "accuracy": 0.9, "malignant": {"auc": 0.97},
                 "per_class": {"mel": {"recall": 0.5}, "nv": {"recall": 0.95}}}
    checks = quality.bar_checks(two_short)
    count = sum(c.met is False for c in checks)
    assert count == 2 and f"{count} of its {len(checks)} figures" in quality.bar_sentence(two_short)


def test_both_reports_say_near_their_top_that_the_model_misses_its_bar():
    card = context_card()
    answer = prediction_from_probabilities(CONFIDENT, model_info(card, "ab" * 32), 1.0, malignant_threshold=0.36)
    text = reports.text_report(answer, card)
    note = "MODEL QUALITY: This model misses its quality bar on its held-out test images: its figures are on this"
    assert note in squash(text) and text.index("MODEL QUALITY") < text.index("WHAT TO DO")
    pdf = squash(pdf_text(reports.pdf_report(answer, None, card=card)))
    assert ("This model misses its quality bar: all 5 figures on its held-out test images fall short of it; the first, "
            "its balanced accuracy, is 69.0% against a bar of 80%. Its test figures: /model.") in pdf
    assert pdf.index("Model quality") < pdf.index("What to do")  # near the top, in the summary
    assert "This model does not meet the product's quality bar" not in pdf  # said once, not twice
    # a card that meets its bar adds no such sentence
    assert quality.bar_note(None) is None


def test_the_home_page_and_the_result_page_say_it_and_link_to_model(client):
    from server.web.service import current_card

    with client.application.app_context():
        assert quality.misses_bar(current_card())  # the fixture model misses the bar
    home = client.get("/").get_data(as_text=True)
    assert '<a id="misses-bar" href="/model#quality-title">This model misses its quality bar</a>;' in home
    assert home.index('id="misses-bar"') < home.index('id="upload-form"')  # first screen: in the banner above the form
    assert "Results can be wrong" not in home


@pytest.fixture(scope="module")
def context_figures_client(context_model_path, tmp_path_factory):
    """The context fixture model, its card recording test figures with and without the context."""
    from server import create_app

    model = with_card_changes(context_model_path, tmp_path_factory.mktemp("figures") / "model", patient_context={
        "shipped": "image + patient context", "reads": ["age", "sex", "site"],
        "served": {"test": {"without_context": {"balanced_accuracy": 0.61}, "with_context": {"balanced_accuracy": 0.67}}}})
    app = create_app({"MODEL_PATH": str(model), "TESTING": True, "SECRET_KEY": "test-secret"})
    return app.test_client()


@pytest.mark.parametrize("fields, value, inputs", [({}, 0.61, "photo alone"),
                                                   ({"site": "face"}, 0.67, "photo and patient context")])
def test_a_served_answer_quotes_the_figure_for_the_inputs_it_was_given(context_figures_client, fields, value, inputs):
    import io

    from tests.conftest import image_bytes

    data = {"image": (io.BytesIO(image_bytes((200, 40, 40), size=(64, 64))), "lesion.png"), **fields}
    body = context_figures_client.post("/predict", data=data, content_type="multipart/form-data").json
    assert body["model"]["test_balanced_accuracy"] == value
    assert body["model"]["test_figure"] == {"balanced_accuracy": value, "precision": "float32", "inputs": inputs,
                                            "served": "float32"}
