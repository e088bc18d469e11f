"""Text and PDF reports: their content, the signed report token, and /predict?format=."""

from __future__ import annotations

import io
import re

import pytest
from pypdf import PdfReader

from server import reports
from server.lesions import DISCLAIMER, lesion_class
from server.prediction import ModelInfo
from server.published import prediction_from_probabilities
from tests.conftest import image_bytes
from tests.fixture_model import BLUE_CLASS
from tests.test_pages import html, upload

MODEL = ModelInfo(name="ham-test", version="9.9", sha256="ab" * 32, input_size=224, test_balanced_accuracy=0.7312)
#               akiec bcc   bkl   df    mel   nv    vasc
CONFIDENT = [0.02, 0.03, 0.05, 0.01, 0.81, 0.06, 0.02]
UNSURE = [0.05, 0.03, 0.10, 0.02, 0.35, 0.42, 0.03]


def squash(text: str) -> str:
    """PDF text extraction breaks lines anywhere; compare with whitespace collapsed."""
    return " ".join(text.split())


def pdf_text(data: bytes) -> str:
    return squash(" ".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages))


def test_text_report_has_every_field():
    prediction = prediction_from_probabilities(CONFIDENT, MODEL, 12.0)
    text = reports.text_report(prediction)
    assert text.startswith(reports.REPORT_TITLE)
    assert re.search(r"Date and time: +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", text)
    assert reports.SYSTEM_NAME in text
    assert "ham-test, version 9.9" in text
    assert "Test balanced accuracy of the model: 73.1%" in text
    assert "Predicted condition:  Melanoma (mel)" in text
    assert "Confidence:           81.0%" in text
    assert "Risk level:           HIGH" in text
    assert ("86.0% is the model's combined probability that this lesion is malignant (melanoma, basal cell carcinoma "
            "or actinic keratosis); this model has no screening threshold for it.") in squash(text)
    assert "akiec + bcc + mel" not in text
    assert text.index("RESULT: Melanoma: high risk.") < text.index("NEXT STEP: See a dermatologist promptly.") \
        < text.index("WHAT TO DO") < text.index("WHAT THE NUMBERS MEAN") < text.index("PROBABILITY BREAKDOWN")
    rows = re.findall(r"^ *([\d.]+)%  [# ]{20}  (.+) \[(\w+), (\w+) risk\]$", text, flags=re.MULTILINE)
    assert [code for _, _, code, _ in rows] == ["mel", "nv", "bkl", "bcc", "akiec", "vasc", "df"]
    assert [float(p) for p, *_ in rows] == sorted((float(p) for p, *_ in rows), reverse=True)
    assert lesion_class("mel").advice.split(":")[0] in text
    assert "(uncertain)" not in text and "Uncertain" not in text
    assert squash(DISCLAIMER) in squash(text)


def test_text_report_flags_uncertain_and_low_risk_results():
    unsure = reports.text_report(prediction_from_probabilities(UNSURE, MODEL, 1.0))
    assert "dermatologist" in unsure and "none of them" not in unsure.lower()
    assert ("RESULT: One of: Melanocytic nevus (mole), Melanoma, Benign keratosis-like lesion. NEXT STEP: See a "
            "dermatologist") in squash(unsure)
    # no single class is the answer: no predicted condition, no risk level, the types still possible with their share
    assert "Predicted condition" not in unsure and "Risk level" not in unsure and "Confidence" not in unsure
    assert re.search(r"Possible types.*\n +42\.0%  Melanocytic nevus \(mole\) \[nv\]\n +35\.0%  Melanoma \[mel\]\n"
                     r" +10\.0%  Benign keratosis-like lesion \[bkl\]\n\n", unsure)
    calm = reports.assess(prediction_from_probabilities([0.01, 0.01, 0.02, 0.01, 0.02, 0.9, 0.03], MODEL, 1.0))
    assert not calm.see_dermatologist and calm.risk == "low"


def test_missing_balanced_accuracy_is_reported_as_such():
    bare = ModelInfo(name="m", version="1", sha256="0" * 64, input_size=32)
    assert "balanced accuracy of the model: not recorded" in reports.text_report(prediction_from_probabilities(CONFIDENT, bare, 1.0))


@pytest.mark.parametrize("paper, size_pt", [("a4", (595, 842)), ("letter", (612, 792))])
def test_pdf_report_content_and_paper(paper, size_pt):
    prediction = prediction_from_probabilities(CONFIDENT, MODEL, 12.0)
    thumb = reports.thumbnail_jpeg(__import__("PIL.Image", fromlist=["Image"]).open(io.BytesIO(image_bytes(size=(600, 400)))))
    data = reports.pdf_report(prediction, thumb, paper=paper)
    assert data.startswith(b"%PDF")
    reader = PdfReader(io.BytesIO(data))
    width, height = (round(float(v)) for v in reader.pages[0].mediabox.upper_right)
    assert (width, height) == size_pt
    text = pdf_text(data)
    assert "Melanoma (mel)" in text and "81.0%" in text and "HIGH" in text
    for c in prediction.classes:
        assert f"{c.name} ({c.code})" in text
        assert reports.percent(c.probability) in text
    assert squash(DISCLAIMER) in text
    assert "Model card summary" in text and "73.1%" in text
    assert len(reader.pages[0].images) == 1  # the thumbnail


def test_pdf_report_without_thumbnail_still_renders():
    text = pdf_text(reports.pdf_report(prediction_from_probabilities(UNSURE, MODEL, 1.0), None))
    assert "(no image)" in text and "One of: Melanocytic nevus (mole), Melanoma" in text


def test_requested_format_prefers_query_then_accept_then_json():
    from werkzeug.datastructures import MIMEAccept

    assert reports.requested_format("pdf", MIMEAccept([("application/json", 1)])) == "pdf"
    assert reports.requested_format(None, MIMEAccept([("*/*", 1)])) == "json"
    assert reports.requested_format(None, MIMEAccept()) == "json"
    assert reports.requested_format(None, MIMEAccept([("text/plain", 1)])) == "txt"
    assert reports.requested_format(None, MIMEAccept([("application/pdf", 1)])) == "pdf"
    with pytest.raises(ValueError):
        reports.requested_format("docx", MIMEAccept())


# ---------------------------------------------------------------- through the app

def result_page_token(client, colour=(220, 30, 30)):
    body = html(upload(client, image_bytes(colour, size=(80, 60))))
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', body).group(1)
    token = re.search(r'name="token" value="([^"]+)"', body).group(1)
    return csrf, token


@pytest.mark.parametrize("query, headers, mimetype", [
    ("?format=txt", {}, "text/plain"),
    ("?format=pdf", {}, "application/pdf"),
    ("?format=pdf&paper=letter", {}, "application/pdf"),
    ("", {"Accept": "text/plain"}, "text/plain"),
    ("", {"Accept": "application/pdf"}, "application/pdf"),
    ("", {"Accept": "*/*"}, "application/json"),
    ("?format=json", {}, "application/json"),
])
def test_predict_api_returns_reports_on_request(client, query, headers, mimetype):
    response = client.post(f"/predict{query}", data={"image": (io.BytesIO(image_bytes((30, 30, 220))), "b.png")},
                           headers=headers)
    assert response.status_code == 200, response.data[:300]
    assert response.mimetype == mimetype
    blue = lesion_class(BLUE_CLASS)
    if mimetype == "text/plain":
        assert f"Predicted condition:  {blue.name} ({blue.code})" in response.get_data(as_text=True)
    elif mimetype == "application/pdf":
        assert f"{blue.name} ({blue.code})" in pdf_text(response.data)
        expected_height = 792 if "letter" in query else 842
        assert round(float(PdfReader(io.BytesIO(response.data)).pages[0].mediabox.top)) == expected_height
    else:
        assert response.json["prediction"]["code"] == BLUE_CLASS and "total_ms" in response.json["timing"]


def test_reports_name_their_content_type_once(client):
    """One charset in the header: ``text/plain; charset=utf-8``, from the page's download and from the API."""
    csrf, token = result_page_token(client)
    lesion = image_bytes((30, 30, 220))
    answers = {
        "page txt": (client.post("/report/txt", data={"csrf_token": csrf, "token": token}), "text/plain; charset=utf-8"),
        "api txt": (client.post("/predict?format=txt", data={"image": (io.BytesIO(lesion), "b.png")}),
                    "text/plain; charset=utf-8"),
        "api Accept txt": (client.post("/predict", data={"image": (io.BytesIO(lesion), "b.png")}, headers={"Accept": "text/plain"}),
                           "text/plain; charset=utf-8"),
        "page pdf": (client.post("/report/pdf", data={"csrf_token": csrf, "token": token}), "application/pdf"),
        "api pdf": (client.post("/predict?format=pdf", data={"image": (io.BytesIO(lesion), "b.png")}), "application/pdf"),
    }
    for name, (response, content_type) in answers.items():
        assert response.status_code == 200, name
        assert response.headers["Content-Type"] == content_type, name


def test_predict_api_refuses_unknown_format(client):
    response = client.post("/predict?format=docx", data={"image": (io.BytesIO(image_bytes()), "a.png")})
    assert response.status_code == 400 and response.json["error"]["code"] == "bad_request"
