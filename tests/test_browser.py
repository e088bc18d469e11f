"""End to end in a real browser: upload through the page, see the result, download both reports.

Playwright drives Debian's Chromium (``/usr/bin/chromium``); ``tests/browser_support.py`` has what the
browser tests share. The result page's answer is in ``tests/test_browser_result.py``, the patient fields
and the other pages on a phone in ``tests/test_browser_pages.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from server.lesions import DISCLAIMER, lesion_class
from tests.browser_support import ARTIFACTS, PHONE, VIEWPORTS, overflow, watch
from tests.conftest import image_bytes
from tests.fixture_model import RED_CLASS

pytestmark = pytest.mark.slow


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


def test_a_heic_photo_is_stopped_before_upload_with_how_to_send_a_jpeg(browser, base_url, tmp_path):
    from server.web.pages import HEIF_FORM_MESSAGE
    from tests.corpus import HEIC_HEADER

    photo = tmp_path / "IMG_0412.HEIC"
    photo.write_bytes(HEIC_HEADER)
    page = browser.new_page()
    try:
        page.goto(base_url + "/")
        page.set_input_files("#image", str(photo))
        assert page.inner_text("#upload-error") == HEIF_FORM_MESSAGE  # the server's words, from the form's data
        page.click("#submit")
        assert page.url.rstrip("/") == base_url
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
