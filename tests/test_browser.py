"""End to end in a real browser: upload through the page, see the result, download both reports.

Playwright drives Debian's Chromium (``/usr/bin/chromium``; Playwright's own browser
download needs the internet). ``make test`` installs both; elsewhere the test skips cleanly.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
from pathlib import Path

import pytest

from server.lesions import DISCLAIMER, lesion_class
from tests.conftest import image_bytes
from tests.fixture_model import BLUE_CLASS, RED_CLASS
from tests.test_nonskin_answers import branch_model, unusual_model  # noqa: F401  (fixtures: an unusual-lesion card)
from tests.test_differential import differential_model  # noqa: F401  (fixture: the colour model with conformal thresholds)
from tests.test_ood import ood_model  # noqa: F401  (fixture: the colour model with non-skin statistics)

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@contextlib.contextmanager
def serving(app):
    """Serve ``app`` on a free loopback port for the browser; yields its base URL."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)


@contextlib.contextmanager
def serving_model(model_file):
    """Serve an app on ``model_file`` (a fixture model whose card says what the test is about)."""
    from server import create_app

    with serving(create_app({"MODEL_PATH": str(model_file), "TESTING": True, "SECRET_KEY": "test-secret"})) as url:
        yield url


@pytest.fixture(scope="module")
def base_url(app):
    """Serve the session app on a free loopback port for the browser."""
    with serving(app) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} is missing (make browser installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as pw:
        # Playwright gives every launch a fresh temporary profile (it refuses --user-data-dir here).
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_upload_result_and_reports_in_a_browser(browser, base_url, tmp_path):
    from pypdf import PdfReader

    image = tmp_path / "lesion.png"
    image.write_bytes(image_bytes((210, 40, 40), size=(320, 240)))
    red = lesion_class(RED_CLASS)
    context = browser.new_context(accept_downloads=True, viewport={"width": 1100, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    try:
        page.goto(base_url + "/")
        page.click("#disclaimer summary")  # folded above the form, so the button stays on a phone's first screen
        assert DISCLAIMER in page.inner_text("main")
        page.set_input_files("#image", str(image))
        page.wait_for_selector("#preview:not([hidden])")  # the JS preview appeared
        assert page.get_attribute("#preview-img", "src").startswith("data:image/png")
        with page.expect_navigation():
            page.click("#submit")
        assert page.inner_text("#predicted-class") == red.name
        assert page.inner_text("#risk-level") == f"{red.risk.capitalize()} risk"
        assert page.locator("#breakdown li").count() == 7
        widths = page.eval_on_selector_all("#breakdown .bar-fill", "els => els.map(e => e.getBoundingClientRect().width)")
        assert widths == sorted(widths, reverse=True) and widths[0] > 10 * widths[-1]  # bars drawn, sorted
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "result-page.png"), full_page=True)

        with page.expect_download() as txt_info:
            page.click("#download-txt")
        text = Path(txt_info.value.path()).read_text()
        assert txt_info.value.suggested_filename.endswith(".txt")
        assert f"Predicted condition:  {red.name} ({red.code})" in text
        assert text.index("RESULT: ") < text.index("WHAT TO DO") < text.index("PROBABILITY BREAKDOWN")
        assert " ".join(DISCLAIMER.split()) in " ".join(text.split())

        with page.expect_download() as pdf_info:
            page.click("#download-pdf")
        pdf_path = Path(pdf_info.value.path())
        assert pdf_info.value.suggested_filename.endswith(".pdf")
        reader = PdfReader(str(pdf_path))
        pdf_text = " ".join(" ".join(p.extract_text() for p in reader.pages).split())
        assert f"{red.name} ({red.code})" in pdf_text
        assert len(reader.pages[0].images) == 2  # the thumbnail and the Grad-CAM heatmap
        shutil.copy(pdf_path, ARTIFACTS / "report.pdf")
        assert not errors, f"browser console errors (CSP?): {errors}"
    finally:
        context.close()


def test_client_side_check_stops_a_wrong_file_before_upload(browser, base_url, tmp_path):
    not_image = tmp_path / "notes.txt"
    not_image.write_text("not an image")
    page = browser.new_page()
    try:
        page.goto(base_url + "/")
        page.set_input_files("#image", str(not_image))
        assert "not a JPEG or PNG" in page.inner_text("#upload-error")
        page.click("#submit")
        assert page.url.rstrip("/") == base_url  # the form was not sent
        assert page.get_attribute("#image", "aria-invalid") == "true"
    finally:
        page.close()


def test_upload_works_with_javascript_disabled(browser, base_url, tmp_path):
    image = tmp_path / "lesion.png"
    image.write_bytes(image_bytes((210, 40, 40), size=(120, 90)))
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    try:
        page.goto(base_url + "/")
        assert page.is_hidden("#preview")  # no script, no preview: the plain form remains
        page.set_input_files("#image", str(image))
        with page.expect_navigation():
            page.click("#submit")
        assert page.inner_text("#predicted-class") == lesion_class(RED_CLASS).name
    finally:
        context.close()


# ---------------------------------------------------------------- issue #14: the answer first, on a phone too

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
VIEWPORTS = {"phone": PHONE, "desktop": DESKTOP}
GREY = (128, 128, 128)  # the colour fixture cannot tell: an uncertain answer
# Every green the stylesheet uses (--low, --low-bg), as computed styles give them, and any other clear green.
GREEN_JS = """root => {
  const known = ['rgb(29, 107, 53)', 'rgb(232, 245, 236)'];
  const green = c => { const m = c.match(/rgba?\\((\\d+), (\\d+), (\\d+)/); if (!m) return false;
    const [r, g, b] = m.slice(1).map(Number); return known.includes(`rgb(${r}, ${g}, ${b})`) || (g - Math.max(r, b) > 40); };
  const hits = [];
  for (const el of [root, ...root.querySelectorAll('*')]) {
    if (!el.getClientRects().length) continue;
    const s = getComputedStyle(el);
    for (const p of ['color', 'background-color', 'border-left-color', 'fill'])
      if (green(s[p]) && !(p === 'fill' && el.tagName !== 'rect'))
        hits.push(`${el.tagName}#${el.id}.${el.className.baseVal ?? el.className} ${p} ${s[p]}`);
  }
  return hits;
}"""


def watch(page) -> list[str]:
    """Requests answered 404 or 5xx while the page loads (the favicon included)."""
    failures: list[str] = []
    page.on("response", lambda r: failures.append(f"{r.status} {r.url}") if r.status == 404 or r.status >= 500 else None)
    return failures


def overflow(page) -> int:
    return page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")


def screen_in_browser(page, base_url, image_path):
    page.goto(base_url + "/")
    page.set_input_files("#image", str(image_path))
    with page.expect_navigation():
        page.click("#submit")


def assert_answer_above_the_fold(page, viewport):
    for selector in ("#verdict", "#advice"):
        box = page.locator(selector).bounding_box()
        assert box and box["y"] >= 0 and box["y"] + box["height"] <= viewport["height"], \
            f"{selector} is not on the first screen: {box}"


@pytest.fixture(scope="module")
def shot_dir():
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


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
        for selector in ("#next-step", "#key-figure", "#check-another"):
            box = page.locator(selector).bounding_box()
            assert box["y"] + box["height"] <= viewport["height"], f"{selector} is below the first screen"
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


@pytest.mark.parametrize("viewport_name", ["phone", "desktop"])
@pytest.mark.parametrize("path", ["/", "/model", "/docs"])
def test_pages_fit_the_screen_and_load_without_404s(browser, base_url, viewport_name, path):
    context = browser.new_context(viewport=VIEWPORTS[viewport_name])
    page = context.new_page()
    failures = watch(page)
    try:
        page.goto(base_url + path)
        page.wait_for_load_state("networkidle")
        assert overflow(page) <= 0, f"{path} scrolls sideways on a {viewport_name}"
        assert not failures, failures
    finally:
        context.close()


@pytest.mark.parametrize("javascript", [True, False])
def test_errors_read_the_same_with_or_without_javascript(browser, base_url, tmp_path, javascript):
    """A 12 MB upload: the message on the form, by the file input, which has the focus."""
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8" + b"\0" * (12 * 1024 * 1024))
    context = browser.new_context(java_script_enabled=javascript, viewport=PHONE)
    page = context.new_page()
    try:
        page.goto(base_url + "/")
        page.set_input_files("#image", str(big))
        if javascript:
            page.click("#submit")  # upload.js stops it before it is sent
        else:
            with page.expect_navigation():
                page.click("#submit")
            assert page.locator("#upload-form").count() == 1
        assert page.inner_text("#upload-error") == "The file is larger than 10 MB. Please choose a smaller photo."
        assert page.evaluate("document.activeElement && document.activeElement.id") == "image"
        assert page.get_attribute("#image", "aria-invalid") == "true"
    finally:
        context.close()


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
        assert page.locator(".aid-banner").bounding_box()["y"] < 200
        assert "Screening aid, not a diagnosis." in page.inner_text(".aid-banner")
        assert page.is_hidden(".drop-hint"), "no drag and drop on a touch screen"
        assert "drag and drop" not in page.inner_text("main")
        page.click("#disclaimer summary")  # the full disclaimer, folded, opens
        assert DISCLAIMER in page.inner_text("#disclaimer")
        assert page_overflow(page) <= 0


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
