"""Issue #35 part 2: when the patient context given puts a lesion in a subgroup the card flags, every
output says so beside its key figure, with that group's own miss rate, interval and counts."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest

from server import reports
from server.model.files import model_info
from server.patient import PatientContext
from server.published import prediction_from_probabilities
from tests.conftest import image_bytes
from tests.fixture_model import with_card_changes
from tests.test_reports import pdf_text, squash
from tests.test_verdict import context_card

BENIGN = [0.02, 0.03, 0.05, 0.01, 0.11, 0.76, 0.02]  # nv leads, P(malignant) 16%: the flag is not raised
WARNING_START = "This patient's group is flagged on /model: for lesions on the face, "


def answer(card, **patient):
    made = prediction_from_probabilities(BENIGN, model_info(card, card.sha256, "float32", bool(patient)), 1.0,
                                         malignant_threshold=card.thresholds.malignant)
    return replace(made, patient=PatientContext.parse(**patient))


def test_a_face_lesion_quotes_the_face_groups_own_miss_rate_interval_and_counts():
    card = context_card()
    face = next(r for r in card.subgroups.rows if (r.grouping, r.group) == ("site", "face"))
    assert face.flagged
    sensitivity = face.figure("malignant_sensitivity")
    warning = reports.assess(answer(card, age="80", sex="female", site="face"), card).subgroup_warning
    (group,) = warning.groups
    assert group.flag_miss_rate == pytest.approx(1 - sensitivity.value)
    assert (group.miss_low, group.miss_high) == pytest.approx((1 - sensitivity.high, 1 - sensitivity.low))
    assert (group.malignant_images, group.malignant_lesions, group.melanomas) == (37, sensitivity.cases, 12)
    assert warning.message == (
        WARNING_START + "the malignant flag missed 18.9% (6.1 to 33.4%) of 37 malignant test images (25 lesions); "
        "melanoma recall 16.7% of 12 melanomas (all test images: 11.5% missed).")
    shown = warning.to_dict()["groups"][0]
    assert (shown["miss"], shown["malignant"], shown["lesions"]) == (pytest.approx(0.189, abs=5e-4), 37, 25)


def test_a_general_site_that_covers_a_flagged_group_gets_its_warning():
    """Other clinics write ISIC's "head/neck" where HAM10000 writes face, scalp, ear or neck."""
    card = context_card()
    warning = reports.assess(answer(card, site="head/neck"), card).subgroup_warning
    assert [(g.grouping, g.group) for g in warning.groups] == [("site", "face")]
    assert warning.message.startswith(WARNING_START)
    assert reports.assess(answer(card, site="posterior torso"), card).subgroup_warning is None


def test_the_flags_miss_rate_is_no_longer_quoted_alone_for_a_flagged_group():
    card = context_card()
    verdict = reports.assess(answer(card, site="face"), card)
    assert "missed about 1 in 9 malignant lesions on the test images (about 1 in 5 for lesions on the face" in \
        " ".join(verdict.advice)
    assert "about 1 in 5 for lesions on the face" in verdict.malignant


@pytest.mark.parametrize("patient", [{}, {"site": "back"}, {"age": "50", "sex": "male"}])
def test_no_context_or_an_unflagged_group_changes_nothing(patient):
    card = context_card()
    given = answer(card, **patient)
    assert reports.assess(given, card).subgroup_warning is None
    text = reports.text_report(given, card)
    assert "THIS PATIENT'S GROUP" not in text and "for lesions on the face" not in text
    assert "missed about 1 in 9 malignant lesions on the test images: if" in squash(text)


def test_both_reports_say_it_beside_the_key_figure():
    card = context_card()
    face = answer(card, age="80", sex="female", site="face")
    text = reports.text_report(face, card)
    assert text.index("Confidence:") < text.index("THIS PATIENT'S GROUP: " + WARNING_START[:30]) < text.index("WHAT TO DO")
    pdf = squash(pdf_text(reports.pdf_report(face, None, card=card)))
    assert "This patient's group" in pdf and "the malignant flag missed 18.9% (6.1 to 33.4%) of 37 malignant" in pdf


@pytest.fixture(scope="module")
def flagged_face_model(context_model_path, tmp_path_factory):
    """The context fixture model with v2's subgroup table (tests/golden/context_card.json), which flags the face."""
    return with_card_changes(context_model_path, tmp_path_factory.mktemp("face") / "model",
                             subgroups=context_card().subgroups.to_dict())


@pytest.fixture(scope="module")
def face_client(flagged_face_model):
    from server import create_app

    return create_app({"MODEL_PATH": str(flagged_face_model), "TESTING": True, "SECRET_KEY": "test-secret"}).test_client()


def post(client, path="/predict", **fields):
    data = {"image": (io.BytesIO(image_bytes((200, 40, 40), size=(64, 64))), "lesion.png"), **fields}
    if path == "/screen":
        from tests.test_pages import csrf_token

        data["csrf_token"] = csrf_token(client)
    return client.post(path, data=data, content_type="multipart/form-data", headers={"Accept": "text/html"})


def test_the_json_carries_it_in_the_contract_only_when_the_context_puts_the_lesion_in_a_flagged_group(face_client):
    import jsonschema

    from server.web.openapi_schemas import PREDICTION_SCHEMA

    face = post(face_client, site="face", age="80")
    assert face.status_code == 200
    warning = face.json["subgroup_warning"]
    assert warning["message"].startswith(WARNING_START) and warning["groups"][0]["group"] == "face"
    jsonschema.validate(warning, PREDICTION_SCHEMA["properties"]["subgroup_warning"])
    for fields in ({}, {"site": "back"}):
        assert "subgroup_warning" not in post(face_client, **fields).json
    text = post(face_client, "/predict?format=txt", site="face").get_data(as_text=True)
    assert "THIS PATIENT'S GROUP: " + WARNING_START[:30] in text


def test_the_result_page_says_it_next_to_the_key_figure(face_client):
    page = post(face_client, "/screen", site="face").get_data(as_text=True)
    key, warning = page.index('id="key-figure"'), page.index('id="subgroup-warning"')
    assert key < warning < page.index('id="advice"')
    assert 'href="/model#subgroups-title"' in page[warning:page.index("</p>", warning)]
    assert 'id="subgroup-warning"' not in post(face_client, "/screen").get_data(as_text=True)


@pytest.mark.slow
@pytest.mark.parametrize("viewport_name", ["phone", "desktop"])
def test_in_a_browser_the_warning_sits_on_the_first_screen_by_the_key_figure(browser, flagged_face_model, shot_dir,
                                                                             tmp_path, viewport_name):
    from server import create_app
    from tests.browser_support import VIEWPORTS, overflow, serving, watch

    viewport = VIEWPORTS[viewport_name]
    image = tmp_path / "lesion.png"
    image.write_bytes(image_bytes((200, 40, 40), size=(64, 64)))
    app = create_app({"MODEL_PATH": str(flagged_face_model), "TESTING": True, "SECRET_KEY": "test-secret"})
    with serving(app) as url:
        context = browser.new_context(viewport=viewport)
        page = context.new_page()
        failures = watch(page)
        try:
            page.goto(url + "/")
            page.set_input_files("#image", str(image))
            page.select_option("#site", "face")
            with page.expect_navigation():
                page.click("#submit")
            box = page.locator("#subgroup-warning").bounding_box()
            assert box and box["y"] > page.locator("#key-meaning").bounding_box()["y"]
            if viewport_name == "desktop":  # a phone shows the verdict and key figure first; the warning follows them
                assert box["y"] + box["height"] <= viewport["height"], box
            assert page.inner_text("#subgroup-warning").startswith(WARNING_START)
            assert overflow(page) <= 0
            page.screenshot(path=str(shot_dir / f"result-subgroup-warning-{viewport_name}.png"))
            assert not failures, failures
        finally:
            context.close()


def test_the_pdf_prints_the_warning_on_its_first_page_beside_the_key_figure(face_client):
    """The warning sits in the summary on page 1; the model card's table may move to page 2 (it is kept whole)."""
    from pypdf import PdfReader

    pdf = post(face_client, "/predict?format=pdf", site="face", age="80", sex="female")
    assert pdf.status_code == 200
    first = squash(PdfReader(io.BytesIO(pdf.data)).pages[0].extract_text())
    assert first.index("Confidence") < first.index("This patient's group") < first.index("What to do")
    assert "This patient's group is flagged on /model: for lesions on the face, the malignant flag missed 18.9% (6.1 to" in first
