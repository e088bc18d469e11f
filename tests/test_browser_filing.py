"""In Chromium at 390 and 1280 px: the form's "For the printed report" fields (#35, part 4).

Folded, so a phone keeps its submit button on the first screen; open, usable and inside the screen;
what is typed reaches the downloaded reports and not the result page; a bad value comes back by its
field, with or without JavaScript.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.browser_support import PHONE, VIEWPORTS, overflow, watch
from tests.conftest import image_bytes
from tests.test_reports import pdf_text

pytestmark = pytest.mark.slow

PATIENT_ID = "MRN 0048213-7 #2"
CLINICIAN = "Dr Zoë Ñúñez"


@pytest.fixture()
def lesion(tmp_path) -> Path:
    image = tmp_path / "IMG_2041 left shoulder.png"
    image.write_bytes(image_bytes((210, 40, 40), size=(120, 90)))
    return image


@pytest.mark.parametrize("viewport_name", ["phone", "desktop"])
def test_the_filing_fields_reach_the_reports_and_not_the_page(browser, base_url, lesion, shot_dir, viewport_name):
    viewport = VIEWPORTS[viewport_name]
    context = browser.new_context(viewport=viewport, accept_downloads=True, has_touch=viewport is PHONE)
    page = context.new_page()
    failures = watch(page)
    try:
        page.goto(base_url + "/")
        assert page.is_hidden("#patient_id"), "folded until asked for"
        submit = page.locator("#submit").bounding_box()
        assert submit["y"] + submit["height"] <= viewport["height"], "the fold keeps the button on the first screen"
        page.click("#filing-fields summary")
        for label, selector in (("Patient ID", "#patient_id"), ("Requesting clinician", "#clinician")):
            field = page.get_by_label(label, exact=True)
            assert field.evaluate("el => '#' + el.id") == selector
            box = field.bounding_box()
            assert box["height"] >= 40 and box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"], (label, box)
        page.fill("#patient_id", PATIENT_ID)
        page.fill("#clinician", CLINICIAN)
        page.set_input_files("#image", str(lesion))
        assert overflow(page) <= 0
        page.screenshot(path=str(shot_dir / f"filing-form-{viewport_name}.png"), full_page=True)
        with page.expect_navigation():
            page.click("#submit")
        main = page.inner_text("main")
        assert "0048213" not in main and "Ñúñez" not in main, "printed on the report only"
        assert "printed on these reports only" in main
        report_id = re.search(r"Report ID (LSR[-0-9A-Z]+)", page.inner_text("#model-line")).group(1)
        assert overflow(page) <= 0
        page.screenshot(path=str(shot_dir / f"filing-result-{viewport_name}.png"), full_page=True)
        with page.expect_download() as pdf_info:
            page.click("#download-pdf")
        words = pdf_text(Path(pdf_info.value.path()).read_bytes())
        assert f"Patient ID: {PATIENT_ID}" in words and f"Requesting clinician: {CLINICIAN}" in words
        assert f"Report ID: {report_id}" in words and lesion.name in words
        with page.expect_download() as txt_info:
            page.click("#download-txt")
        text = Path(txt_info.value.path()).read_text(encoding="utf-8")
        assert f"Patient ID:           {PATIENT_ID}\n" in text and f"Report ID:            {report_id}\n" in text
        assert not failures, failures
    finally:
        context.close()


@pytest.mark.parametrize("javascript", [True, False])
def test_a_bad_clinician_comes_back_by_its_field_on_a_phone(browser, base_url, lesion, shot_dir, javascript):
    context = browser.new_context(viewport=PHONE, java_script_enabled=javascript)
    page = context.new_page()
    try:
        page.goto(base_url + "/")
        page.click("#filing-fields summary")
        page.fill("#patient_id", PATIENT_ID)
        page.fill("#clinician", "Dr <Ñúñez>")
        page.set_input_files("#image", str(lesion))
        with page.expect_navigation():
            page.click("#submit")
        assert page.inner_text("#clinician-error").startswith("Please keep the requesting clinician to at most 64")
        assert page.evaluate("document.activeElement && document.activeElement.id") == "clinician"
        assert page.get_attribute("#clinician", "aria-invalid") == "true"
        assert page.input_value("#clinician") == "Dr <Ñúñez>" and page.input_value("#patient_id") == PATIENT_ID
        assert page.inner_text("#upload-error") == "" and page.is_visible("#clinician-error")
        box = page.locator("#clinician-error").bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"] and overflow(page) <= 0
        page.screenshot(path=str(shot_dir / f"filing-error-{'js' if javascript else 'nojs'}.png"), full_page=True)
    finally:
        context.close()
