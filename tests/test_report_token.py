"""The report token (#38, item 2): unreadable without the service's key, useless without the
browser session that screened the photo, and alive for 30 minutes only.

Before #38 it was signed but not encrypted: base64 and zlib gave back the thumbnail, the
patient's age, sex and site and the whole result, and replayed with no cookie it gave 200.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
import io
import zlib

import pytest
from pypdf import PdfReader

from server import create_app
from server.lesions import lesion_class
from tests.conftest import image_bytes
from tests.fixture_model import RED_CLASS
from tests.test_pages import html, upload
from tests.test_reports import pdf_text, result_page_token

PATIENT = {"age": "70", "sex": "male", "site": "back"}


@pytest.fixture(scope="module")
def token_app(model_path):
    return create_app({"MODEL_PATH": str(model_path), "TESTING": True, "SECRET_KEY": "token-secret",
                       "RATE_LIMIT": "off"})


def screened(client) -> str:
    """The report token of a result page screened by ``client`` (its cookie jar is the session)."""
    page = upload(client, image_bytes((220, 30, 30), size=(80, 60)), extra=PATIENT)
    assert page.status_code == 200, html(page)[:300]
    return re.search(r'name="token" value="([^"]+)"', html(page)).group(1)


def readable_without_the_key(token: str) -> str:
    """Everything base64 and zlib give back from the token's pieces, with no key (what an attacker reads)."""
    found = []
    for piece in re.split(r"[.]", token):
        for decode in (base64.urlsafe_b64decode, base64.b64decode):
            try:
                raw = decode(piece + "=" * (-len(piece) % 4))
            except (binascii.Error, ValueError):
                continue
            for unpack in (zlib.decompress, lambda b: b):
                try:
                    found.append(unpack(raw).decode("utf-8", "replace"))
                except zlib.error:
                    pass
    return "\n".join(found)


def test_the_token_reveals_nothing_without_the_key(token_app):
    token = screened(token_app.test_client())
    exposed = readable_without_the_key(token)
    for secret in ('"age"', '"site"', "back", "probabilities", "thumbnail", "JFIF"):
        assert secret not in exposed, secret


def test_the_token_downloads_only_in_the_session_that_screened(token_app):
    owner = token_app.test_client()
    token = screened(owner)
    for fmt in ("txt", "pdf", "txt"):  # the person may download both, and again
        assert owner.post(f"/report/{fmt}", data={"token": token}).status_code == 200
    replayed = [token_app.test_client().post("/report/txt", data={"token": token}, headers={"Accept": "application/json"})
                for _ in range(3)]
    assert [r.status_code for r in replayed] == [400, 400, 400]  # no cookie: refused, every time
    assert replayed[0].get_json()["error"]["code"] == "invalid_report_token"
    other = token_app.test_client()
    screened(other)  # a session of its own, with its own binding
    refused = other.post("/report/txt", data={"token": token}, headers={"Accept": "text/html"})
    assert refused.status_code == 400 and "another browser session" in html(refused)


def test_the_token_lives_30_minutes(token_app, monkeypatch):
    owner = token_app.test_client()
    token = screened(owner)
    made = time.time()
    from server.web import report_token

    class Clock:
        now = made

        @staticmethod
        def time():
            return Clock.now

    monkeypatch.setattr(report_token, "time", Clock)  # the clock the token is made and checked by
    Clock.now = made + 29 * 60
    assert owner.post("/report/txt", data={"token": token}).status_code == 200
    Clock.now = made + 31 * 60
    expired = owner.post("/report/txt", data={"token": token}, headers={"Accept": "text/html"})
    assert expired.status_code == 400 and "30 minutes" in html(expired) and "too old" in html(expired)


def test_altered_or_forged_tokens_are_refused(token_app, model_path):
    owner = token_app.test_client()
    token = screened(owner)
    altered = token[:40] + ("A" if token[40] != "A" else "B") + token[41:]
    forger = create_app({"MODEL_PATH": str(model_path), "TESTING": True, "SECRET_KEY": "not-the-secret",
                         "RATE_LIMIT": "off"}).test_client()
    forged = screened(forger)  # a real token, made with another key
    for bad in (altered, forged, "garbage", "ü", ""):
        response = owner.post("/report/txt", data={"token": bad}, headers={"Accept": "text/html"})
        assert response.status_code == 400, bad
        assert response.mimetype == "text/html" and "upload the image again" in html(response)
    assert owner.post("/report/pdf?paper=a3", data={"token": token}).status_code == 400


def test_reports_download_from_the_result_page_token(client):
    csrf, token = result_page_token(client)
    red = lesion_class(RED_CLASS)
    txt = client.post("/report/txt", data={"csrf_token": csrf, "token": token})
    assert txt.status_code == 200 and txt.mimetype == "text/plain"
    assert "attachment;" in txt.headers["Content-Disposition"] and ".txt" in txt.headers["Content-Disposition"]
    assert f"Predicted condition:  {red.name} ({red.code})" in txt.get_data(as_text=True)
    for paper, height in (("a4", 842), ("letter", 792)):
        pdf = client.post(f"/report/pdf?paper={paper}", data={"csrf_token": csrf, "token": token})
        assert pdf.status_code == 200 and pdf.mimetype == "application/pdf"
        reader = PdfReader(io.BytesIO(pdf.data))
        assert round(float(reader.pages[0].mediabox.top)) == height
        assert len(reader.pages[0].images) == 2, "the thumbnail and the heatmap grid travel in the token"
        assert f"{red.name} ({red.code})" in pdf_text(pdf.data)
        assert "colour-fixture" in pdf_text(pdf.data)  # model card summary from the serving model
