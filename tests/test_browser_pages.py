"""In a real browser: the form's optional patient fields on a phone, and the home, /model and /docs pages (issue #26)."""

from __future__ import annotations

import contextlib
import shutil

import pytest

from server.lesions import DISCLAIMER
from tests.browser_support import DESKTOP, PHONE, VIEWPORTS, overflow, serving, watch
from tests.conftest import image_bytes

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------- the optional patient fields on a phone


def test_patient_fields_are_usable_on_a_phone(browser, base_url, tmp_path):
    """Labelled, big enough to tap, reachable by keyboard, inside the screen; the result says what was given."""
    image = tmp_path / "lesion.png"
    image.write_bytes(image_bytes((210, 40, 40), size=(120, 90)))
    context = browser.new_context(viewport=PHONE, has_touch=True, is_mobile=True)
    page = context.new_page()
    failures = watch(page)
    try:
        page.goto(base_url + "/")
        assert overflow(page) <= 0
        for label, selector in (("Age in years", "#age"), ("Sex", "#sex"), ("Where on the body", "#site")):
            field = page.get_by_label(label, exact=True)
            assert field.evaluate("el => '#' + el.id") == selector, label
            box = field.bounding_box()
            assert box["height"] >= 40 and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], (label, box)
        assert page.get_attribute("#age", "inputmode") == "numeric"
        assert page.eval_on_selector("#sex", "el => el.selectedOptions[0].text") == "Not given"
        page.set_input_files("#image", str(image))
        page.focus("#age")
        page.keyboard.type("70")
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "sex", "Tab goes from age to sex"
        page.select_option("#sex", "female")
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "site"
        page.select_option("#site", "upper extremity")
        with page.expect_navigation():
            page.click("#submit")
        page.click("#patient-details summary")  # folded under Details, one tap away
        assert page.inner_text("#patient-context") == "Patient context: age 70, female, arm (upper extremity)."
        assert "does not read patient context" in page.inner_text("#context-use")  # the fixture model reads none
        assert not failures, failures
    finally:
        context.close()


def fill_patient_form(page, image, age: str, site: str) -> None:
    page.set_input_files("#image", str(image))
    page.fill("#age", age)
    page.select_option("#site", site)


@pytest.mark.parametrize("javascript", [True, False])
def test_a_bad_age_shows_its_error_on_a_phone(browser, base_url, tmp_path, javascript):
    """The browser refuses 130 itself (min/max); a browser that does not check gets the server's
    message by the age field, which has the focus, with everything typed kept."""
    image = tmp_path / "lesion.png"
    image.write_bytes(image_bytes((210, 40, 40), size=(120, 90)))
    context = browser.new_context(viewport=PHONE, java_script_enabled=javascript)
    page = context.new_page()
    try:
        page.goto(base_url + "/")
        fill_patient_form(page, image, "130", "back")
        page.click("#submit")
        assert page.url.rstrip("/") == base_url, "the browser's own check stopped the form"
        assert page.eval_on_selector("#age", "el => el.validity.rangeOverflow")

        # As a browser without constraint validation: the same page marked novalidate, the server is the check.
        def without_validation(route):
            response = route.fetch()  # its headers, the Content-Security-Policy included, are kept
            route.fulfill(response=response, body=response.text().replace('id="upload-form"', 'id="upload-form" novalidate'))

        page.route(base_url + "/", without_validation)
        page.goto(base_url + "/")
        fill_patient_form(page, image, "130", "back")
        with page.expect_navigation():
            page.click("#submit")
        assert page.inner_text("#age-error").startswith("Please enter the age as a number of years from 0 to 120")
        assert page.evaluate("document.activeElement && document.activeElement.id") == "age"
        assert page.get_attribute("#age", "aria-invalid") == "true"
        assert page.input_value("#age") == "130" and page.input_value("#site") == "back"
        assert page.inner_text("#upload-error") == ""
        box = page.locator("#age-error").bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
        assert overflow(page) <= 0
    finally:
        context.close()


# ---------------------------------------------------------------- issue #26: the home page on a phone, /model, /docs, GET /screen

TOUCH_PHONE = {"viewport": PHONE, "has_touch": True, "is_mobile": True}


@contextlib.contextmanager
def browser_page(browser, **context_options):
    """A page in a fresh browser context (viewport, touch, JavaScript...), closed afterwards."""
    context = browser.new_context(**context_options)
    try:
        yield context.new_page()
    finally:
        context.close()


def page_overflow(page) -> int:
    """How far the page scrolls sideways (0: it fits the screen)."""
    return page.evaluate("document.scrollingElement.scrollWidth - innerWidth")


def cut_off_tables(page) -> list[str]:
    """Tables wider than their box (a column hidden in a scroll box) or than the screen."""
    return page.evaluate("""() => [...document.querySelectorAll('table')]
        .filter(t => t.scrollWidth > t.parentElement.clientWidth + 1 || t.getBoundingClientRect().right > innerWidth)
        .map(t => `${t.id || t.className} ${t.scrollWidth}px in ${t.parentElement.clientWidth}px`)""")


@pytest.fixture(scope="module")
def relative_base_url(model_path, tmp_path_factory):
    """The app served as ``make run`` serves it: MODEL_PATH relative to the working directory, a plot beside the card."""
    import os

    from server import create_app

    folder = tmp_path_factory.mktemp("relative-model")
    for name in (model_path.name, "model_card.json"):
        shutil.copy(model_path.parent / name, folder / name)
    (folder / "confusion_matrix.png").write_bytes(image_bytes((90, 120, 200), size=(300, 240)))
    app = create_app({"MODEL_PATH": os.path.relpath(folder / model_path.name), "SECRET_KEY": "test-secret"})
    with serving(app) as url:
        yield url


@pytest.mark.parametrize("viewport_name", ["phone", "desktop"])
def test_every_image_on_the_model_page_loads_under_a_relative_model_path(browser, relative_base_url, viewport_name):
    with browser_page(browser, viewport=VIEWPORTS[viewport_name]) as page:
        failures = watch(page)
        page.goto(relative_base_url + "/model")
        images = page.locator("main img")
        assert images.count() >= 1, "the plot beside the card is shown"
        for image in images.all():
            image.scroll_into_view_if_needed()  # the plot loads lazily
            page.wait_for_function("img => img.complete", arg=image.element_handle())
            assert image.evaluate("img => img.naturalWidth") > 0, image.get_attribute("src")
        assert not failures, failures


@pytest.mark.parametrize("path", ["/model", "/docs"])
def test_model_and_docs_fit_a_phone_with_no_table_cut_off(browser, base_url, path):
    with browser_page(browser, **TOUCH_PHONE) as page:
        page.goto(base_url + path)
        assert page_overflow(page) <= 0, f"{path} scrolls sideways on a phone"
        assert cut_off_tables(page) == []
        if path == "/model":
            headings = page.eval_on_selector_all("main h2", "hs => hs.map(h => h.id)")
            assert headings[:2] == ["quality-title", "limits-title"], "the limits follow the quality bar"


# The shipped card's per-class test figures: long names, and the weakest class named beside its recall.
SHIPPED_PER_CLASS = {"akiec": (0.403, 0.630, 46), "bcc": (0.625, 0.811, 74), "bkl": (0.533, 0.618, 157),
                     "df": (0.250, 0.471, 17), "mel": (0.353, 0.673, 159), "nv": (0.969, 0.728, 958),
                     "vasc": (0.667, 0.900, 20)}


@pytest.fixture(scope="module")
def per_class_base_url(model_path, tmp_path_factory):
    """The fixture model with the shipped card's per-class figures (the lowest recall: "47.1% (Dermatofibroma)")."""
    import json

    from server import create_app

    folder = tmp_path_factory.mktemp("per-class-model")
    shutil.copy(model_path, folder / model_path.name)
    card = json.loads(model_path.with_name("model_card.json").read_text())
    card["metrics"]["test"]["per_class"] = {code: {"precision": p, "recall": r, "support": n}
                                            for code, (p, r, n) in SHIPPED_PER_CLASS.items()}
    (folder / "model_card.json").write_text(json.dumps(card))
    app = create_app({"MODEL_PATH": str(folder / model_path.name), "SECRET_KEY": "test-secret"})
    with serving(app) as url:
        yield url


def test_the_quality_bar_and_per_class_tables_fit_a_phone(browser, per_class_base_url):
    """The "Met?" column was once cut off on a phone, inside a scroll box that showed no sign of scrolling."""
    with browser_page(browser, **TOUCH_PHONE) as page:
        page.goto(per_class_base_url + "/model")
        assert page.locator("#per-class tbody tr").count() == 7
        assert "(Dermatofibroma)" in page.inner_text("#quality-bar")
        assert cut_off_tables(page) == [] and page_overflow(page) <= 0
        for row in page.locator("#quality-bar tbody tr").all():
            met = row.locator("td").last
            box = met.bounding_box()
            assert met.is_visible() and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], box
            assert met.inner_text().endswith(("yes", "no", "not recorded"))


def test_the_home_page_submit_button_is_on_a_phones_first_screen(browser, base_url):
    with browser_page(browser, **TOUCH_PHONE) as page:
        page.goto(base_url + "/")
        box = page.locator("#submit").bounding_box()
        assert box and box["y"] + box["height"] <= PHONE["height"], f"the submit button is below the first screen: {box}"
        bar = page.locator("#misses-bar").bounding_box()  # the model's missed bar is said on the first screen too
        assert bar and bar["y"] + bar["height"] <= PHONE["height"], f"the quality-bar sentence is below the first screen: {bar}"
        assert page.inner_text("#misses-bar").startswith("This model misses its quality bar")
        assert page.locator(".aid-banner").bounding_box()["y"] < 200
        assert "Screening aid, not a diagnosis." in page.inner_text(".aid-banner")
        assert page.is_hidden(".drop-hint"), "no drag and drop on a touch screen"
        assert "drag and drop" not in page.inner_text("main")
        page.click("#disclaimer summary")  # the full disclaimer, folded, opens
        assert DISCLAIMER in page.inner_text("#disclaimer")
        assert page_overflow(page) <= 0


@pytest.mark.parametrize("viewport_name", ["phone", "desktop"])
def test_the_home_page_says_the_model_misses_its_bar_and_links_its_figures(browser, base_url, shot_dir, viewport_name):
    viewport = VIEWPORTS[viewport_name]
    with browser_page(browser, viewport=viewport) as page:
        page.goto(base_url + "/")
        box = page.locator("#misses-bar").bounding_box()
        assert box and box["y"] + box["height"] <= viewport["height"] and page_overflow(page) <= 0
        page.screenshot(path=str(shot_dir / f"home-{viewport_name}.png"))
        assert page.inner_text(".aid-banner").startswith("Screening aid, not a diagnosis. This model misses its quality bar;")
        page.click("#misses-bar")
        assert page.url.endswith("/model#quality-title")
        assert page.inner_text("#bar-verdict").startswith("No.")


def test_the_drag_and_drop_hint_shows_with_a_mouse_only(browser, base_url):
    with browser_page(browser, viewport=DESKTOP) as page:
        page.goto(base_url + "/")
        assert page.is_visible(".drop-hint")


@pytest.mark.parametrize("size, shown", [(12 * 1024, "12 KB"), (300, "1 KB"), (1536 * 1024, "1.5 MB")])
def test_the_file_preview_says_its_size_in_kb_or_mb(browser, base_url, tmp_path, size, shown):
    image = tmp_path / "lesion.png"
    png = image_bytes((210, 40, 40), size=(8, 8))
    image.write_bytes(png + b"\0" * (size - len(png)))  # a PNG decoder ignores what follows IEND
    with browser_page(browser) as page:
        page.goto(base_url + "/")
        page.set_input_files("#image", str(image))
        page.wait_for_selector("#preview:not([hidden])")
        assert page.inner_text("#preview-name") == f"lesion.png ({shown})"


@pytest.mark.parametrize("viewport_name", ["phone", "desktop"])
def test_a_reloaded_result_address_explains_and_offers_the_form(browser, base_url, viewport_name):
    with browser_page(browser, viewport=VIEWPORTS[viewport_name]) as page:
        response = page.goto(base_url + "/screen")
        assert response.status == 200
        notice = page.inner_text("#notice")
        assert "never stored on the server" in notice and "upload the photo again" in notice
        box = page.locator("#notice").bounding_box()
        assert box["y"] + box["height"] <= VIEWPORTS[viewport_name]["height"]
        assert page.locator("#upload-form").count() == 1
        assert page_overflow(page) <= 0


@pytest.mark.parametrize("viewport_name", ["phone", "desktop"])
def test_docs_tables_break_no_name_mid_token(browser, base_url, viewport_name):
    """A parameter name, a status or a field name sits on one line ("forma/t" once came from overflow-wrap: anywhere)."""
    with browser_page(browser, viewport=VIEWPORTS[viewport_name]) as page:
        page.goto(base_url + "/docs")
        broken = page.eval_on_selector_all(".doc-table th code, .doc-table thead th",
                                           "els => els.filter(e => { const r = document.createRange(); r.selectNodeContents(e);"
                                           " return new Set([...r.getClientRects()].map(x => Math.round(x.top))).size > 1"
                                           " && !e.textContent.trim().includes(' '); }).map(e => e.textContent)")
        assert broken == []
        assert page.locator(".doc-table th code").count() > 10
