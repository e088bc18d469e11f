"""End to end in a real browser: upload through the page, see the result, download both reports.

Playwright drives Debian's Chromium (``/usr/bin/chromium``; Playwright's own browser
download needs the internet). ``make test`` installs both; elsewhere the test skips cleanly.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from server.lesions import DISCLAIMER, lesion_class
from tests.conftest import image_bytes
from tests.fixture_model import RED_CLASS

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="module")
def base_url(app):
    """Serve the session app on a free loopback port for the browser."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=5)


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
        assert "not a JPEG or PNG" in page.inner_text("#client-error")
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
