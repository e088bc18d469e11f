"""In a real browser: the result page gives the answer first, as one message (issue #14), for every kind of
answer: confident, flagged, a list of several types (issue #34), a refused and an unusual image.
"""

from __future__ import annotations

import pytest

from server.lesions import lesion_class
from tests.browser_support import (
    GREEN_JS, GREY, VIEWPORTS, assert_answer_above_the_fold, overflow, screen_in_browser, serving_model, watch)
from tests.conftest import image_bytes
from tests.fixture_model import BLUE_CLASS, RED_CLASS
from tests.test_differential import differential_model  # noqa: F401  (fixture: the colour model with conformal thresholds)
from tests.test_nonskin_answers import branch_model, unusual_model  # noqa: F401  (fixtures: an unusual-lesion card)
from tests.test_ood import ood_model  # noqa: F401  (fixture: the colour model with non-skin statistics)

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------- issue #14: the answer first, on a phone too

FLAGGED_UNCERTAIN = (0, 150, 165)  # melanoma leads with 48%, malignant 59%: flagged, and no type reaches 50%


@pytest.mark.parametrize("viewport_name", ["phone", "desktop"])
@pytest.mark.parametrize("case, colour", [("confident", (220, 30, 30)), ("flagged", (30, 30, 220)), ("uncertain", GREY),
                                          ("flagged-uncertain", FLAGGED_UNCERTAIN)])
def test_the_answer_comes_first_as_one_message(browser, base_url, tmp_path, shot_dir, viewport_name, case, colour):
    viewport = VIEWPORTS[viewport_name]
    image = tmp_path / "lesion.png"
    image.write_bytes(image_bytes(colour, size=(64, 64)))
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    failures = watch(page)
    try:
        screen_in_browser(page, base_url, image)
        assert overflow(page) <= 0, "the page scrolls sideways"
        assert_answer_above_the_fold(page, viewport)
        for selector in ("#next-step", "#key-figure", "#misses-bar", "#check-another"):
            box = page.locator(selector).bounding_box()
            assert box["y"] + box["height"] <= viewport["height"], f"{selector} is below the first screen"
        # the model's missed bar is said in the banner above the answer, unfolded, linking to its figures
        assert page.inner_text("#misses-bar") == "This model misses its quality bar"
        assert page.get_attribute("#misses-bar", "href") == "/model#quality-title"
        if viewport_name == "phone":
            # photo and heatmap follow the answer; the details start within three screens, folded
            photo, advice = page.locator(".result-image").first.bounding_box(), page.locator("#advice").bounding_box()
            assert photo["y"] > advice["y"]
            assert page.locator("#details").bounding_box()["y"] <= 3 * viewport["height"]
            assert page.evaluate("document.documentElement.scrollHeight") <= 3.5 * viewport["height"]
            assert not page.locator("#breakdown").is_visible(), "the breakdown is folded on a phone"
        verdict = page.inner_text("#verdict")
        assert page.inner_text("#key-meaning").strip(), "the number says what it means"
        if case == "uncertain":
            assert verdict.startswith("One of: ") and 2 <= len(verdict.split(", ")) <= 3
            assert page.locator("#predicted-class").count() == 0 and page.locator("#risk-level").count() == 0
            assert "Confidence" not in page.inner_text("#verdict-card")
            assert "missed about" in page.inner_text("#advice") or "not raised" in page.inner_text("#advice")
            assert page.evaluate(GREEN_JS, page.query_selector("main")) == [], "an uncertain answer shows no green"
        elif case in ("flagged", "flagged-uncertain"):
            assert verdict.startswith("Flagged as possibly malignant")
            assert page.inner_text("#next-step") == "See a dermatologist promptly."
            assert "melanoma, basal cell carcinoma or actinic keratosis" in page.inner_text("#key-meaning")
            assert page.locator("#verdict-card.tone-high").count() == 1 and page.locator(".tone-uncertain").count() == 0
            # the flag's red headline sits above any word of uncertainty
            red = page.eval_on_selector("#verdict", "el => getComputedStyle(el).color")
            assert red == "rgb(179, 38, 30)", red
            if case == "flagged-uncertain":
                assert page.locator("#predicted-class").count() == 0, "an uncertain answer names no type"
                types = page.locator("#differential").bounding_box()
                assert types["y"] > page.locator("#verdict").bounding_box()["y"]
                assert page.inner_text("#differential").startswith("One of: Melanoma, ")
            else:
                assert page.inner_text("#predicted-class") == lesion_class(BLUE_CLASS).name
            # the heatmap shows the malignant evidence
            assert page.inner_text("#heatmap-class") == lesion_class(BLUE_CLASS).name
            assert page.evaluate(GREEN_JS, page.query_selector("main")) == [], "a flagged answer is never green"
        else:
            red = lesion_class(RED_CLASS)
            assert page.inner_text("#predicted-class") == red.name
            assert page.inner_text("#risk-level") == f"{red.risk.capitalize()} risk"
            # the detector sees green where there is some: the low-risk classes of the breakdown
            page.click("#breakdown-details summary")
            assert page.evaluate(GREEN_JS, page.query_selector("#breakdown"))
        # every class's heatmap can be shown without JavaScript: the folded figures open on a click
        page.click("#other-heatmaps summary")
        assert page.locator(".heatmap-choice img").count() == 6
        assert all(page.locator(".heatmap-choice img").nth(i).evaluate("img => img.naturalWidth > 0") for i in range(6))
        page.screenshot(path=str(shot_dir / f"result-{case}-{viewport_name}.png"))
        assert not failures, failures
    finally:
        context.close()


@pytest.fixture(scope="module")
def ood_base_url(ood_model):  # noqa: F811 (the imported fixture)
    with serving_model(ood_model) as url:
        yield url


@pytest.mark.parametrize("viewport_name", ["phone", "desktop"])
def test_a_refused_image_says_so_first_and_offers_another_try(browser, ood_base_url, tmp_path, viewport_name):
    viewport = VIEWPORTS[viewport_name]
    image = tmp_path / "green.png"
    image.write_bytes(image_bytes((30, 200, 40), size=(64, 64)))
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    failures = watch(page)
    try:
        screen_in_browser(page, ood_base_url, image)
        assert page.inner_text("#verdict") == "Not screened: this image was refused"
        assert "does not look like a photo of a skin lesion" in page.inner_text("#refusal-message")
        assert page.locator("#predicted-class").count() == 0 and page.locator("#upload-form").count() == 1
        assert_answer_above_the_fold(page, viewport)
        assert overflow(page) <= 0
        assert not failures, failures
    finally:
        context.close()


@pytest.fixture(scope="module")
def unusual_base_url(unusual_model):  # noqa: F811 (the imported fixture)
    with serving_model(unusual_model) as url:
        yield url


@pytest.mark.parametrize("viewport_name", ["phone", "desktop"])
def test_an_unusual_lesion_is_screened_uncertain_with_its_warning(browser, unusual_base_url, tmp_path, shot_dir,
                                                                  viewport_name):
    from server.prediction import UNUSUAL_IMAGE_MESSAGE
    from tests.test_nonskin_answers import skin_png

    viewport = VIEWPORTS[viewport_name]
    image = tmp_path / "unusual.png"
    image.write_bytes(skin_png())
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    failures = watch(page)
    try:
        screen_in_browser(page, unusual_base_url, image)
        assert page.inner_text("#verdict").startswith("One of: ")  # an unusual photo: at least the two leading types
        assert "measured only on photos like the training ones" in page.inner_text("#key-meaning")
        assert UNUSUAL_IMAGE_MESSAGE in page.inner_text("#advice")
        assert "melanoma, basal cell carcinoma or actinic keratosis" in page.text_content("#malignant-meaning")
        assert_answer_above_the_fold(page, viewport)
        assert overflow(page) <= 0
        page.screenshot(path=str(shot_dir / f"result-unusual-{viewport_name}.png"))
        assert not failures, failures
    finally:
        context.close()


# ---------------------------------------------------------------- issue #34: the differential in words

@pytest.fixture(scope="module")
def differential_url(differential_model):  # noqa: F811 (the imported fixture)
    with serving_model(differential_model) as url:
        yield url


@pytest.mark.parametrize("viewport_name", ["phone", "desktop"])
def test_the_page_says_the_differential_in_words(browser, differential_url, tmp_path, viewport_name):
    """One type: its name and one number; several: 'One of: ...', how often such lists held the right type on
    test photos, and no 'Confidence' under it; at 390 px and at 1280 px, on the first screen."""
    viewport = VIEWPORTS[viewport_name]
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    try:
        for colour, several in (((128, 128, 128), True), ((220, 30, 30), False)):
            image = tmp_path / "lesion.png"
            image.write_bytes(image_bytes(colour, size=(64, 64)))
            screen_in_browser(page, differential_url, image)
            assert overflow(page) <= 0, "the page scrolls sideways"
            assert_answer_above_the_fold(page, viewport)
            box = page.locator("#key-figure").bounding_box()
            assert box["y"] + box["height"] <= viewport["height"], "the one number is below the first screen"
            verdict, card = page.inner_text("#verdict"), page.inner_text("#verdict-card")
            numbers = page.locator("#key-figure .fact-value").all_inner_texts()
            assert len(numbers) == 1, "one number in the answer, not three"
            if several:
                names = verdict.removeprefix("One of: ").split(", ")
                assert verdict.startswith("One of: ") and len(names) >= 2
                assert page.inner_text("#key-figure .key-label") == "Right type among these"
                assert "The right type is among these about 9 times in 10 on test photos." in page.inner_text("#key-meaning")
                assert "Confidence" not in card and "Uncertain" not in card and "none of them" not in card.lower()
                page.click("#numbers-details summary")
                assert all(name in page.inner_text("#numbers-details") for name in names)
            else:
                assert verdict.startswith(lesion_class(RED_CLASS).name)
                assert page.inner_text("#key-figure .key-label") == "Confidence"
                assert "answers that named one type alone were right" in page.inner_text("#key-meaning")
    finally:
        context.close()
