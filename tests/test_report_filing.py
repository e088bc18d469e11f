"""A report a clinic can file (#35, part 4).

The patient identifier and the requesting clinician are printed on the txt and pdf reports and go
nowhere else: not in the JSON, not on the result page, not in a log line, an error answer or the
rate-limit store; from the result page they reach the report only inside the encrypted token. Every
answer carries a report record (a random id, the image's name and SHA-256, the time in UTC and in
REPORT_TIMEZONE, the precision served) that the reports print beside the model's full SHA-256.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from datetime import datetime

import pytest

from server import create_app
from server.filing import FILING_MAX_CHARS, report_timezone
from server.web.openapi import openapi_document
from server.web.openapi_schemas import PREDICTION_SCHEMA
from tests.conftest import image_bytes
from tests.test_pages import csrf_token, html, upload
from tests.test_reports import pdf_text

RED = image_bytes((220, 30, 30), size=(80, 60))
# Distinctive values: any trace of them in a log, a page or the JSON is a leak.
PATIENT_ID = "MRN 7731-QX/04 #9"
CLINICIAN = "Dr Zoë Ñúñez-O’Brien"
FILING = {"patient_id": PATIENT_ID, "clinician": CLINICIAN}
FILENAME = "IMG_0417 left shoulder.png"
REPORT_ID = re.compile(r"LSR(-[0-9A-Z]{4}){4}")


@pytest.fixture(scope="module")
def filing_app(model_path):
    return create_app({"MODEL_PATH": str(model_path), "TESTING": True, "SECRET_KEY": "filing-secret",
                       "RATE_LIMIT": "60/minute", "REPORT_TIMEZONE": "Europe/Paris"})


@pytest.fixture()
def filing_client(filing_app):
    return filing_app.test_client()


def post(client, query: str = "", image: bytes = RED, filename: str = FILENAME, **fields):
    data = {"image": (io.BytesIO(image), filename), **fields}
    return client.post(f"/predict{query}", data=data, content_type="multipart/form-data")


def leaked(text: str) -> list[str]:
    """Which of the filing values (or a recognisable piece of one) ``text`` holds."""
    return [v for v in (PATIENT_ID, CLINICIAN, "7731-QX", "Ñúñez") if v in text]


@pytest.mark.parametrize("field", ["patient_id", "clinician"])
def test_the_api_refuses_a_bad_or_doubled_field_with_a_clear_400(filing_client, field):
    bad = post(filing_client, "?format=pdf", **{field: "<b>" + "x" * 10})
    assert bad.status_code == 400 and bad.mimetype == "application/json"
    error = bad.get_json()["error"]
    assert error["code"] == f"invalid_{field}" and error["field"] == field
    assert error["message"].startswith(f"{field} must be at most 64 characters") and "xxxxxxxxxx" not in error["message"]
    twice = post(filing_client, "", **{field: ["A1", "A2"]})
    assert twice.status_code == 400 and twice.get_json()["error"]["code"] == f"invalid_{field}"
    assert "2 times" in twice.get_json()["error"]["message"]
    too_long = post(filing_client, "?format=txt", **{field: "x" * 65})
    assert too_long.get_json()["error"]["message"].endswith("it has 65 characters.")


# ---------------------------------------------------------------- the report record, in the JSON and on both reports


def test_every_answer_carries_a_report_record_and_never_the_filing_fields(filing_client):
    import jsonschema

    first, second = post(filing_client, **FILING), post(filing_client, **FILING)
    assert first.status_code == second.status_code == 200
    jsonschema.validate(first.get_json(), {**PREDICTION_SCHEMA, "$defs": {}})
    record = first.get_json()["report"]
    assert REPORT_ID.fullmatch(record["id"]) and record["id"] != second.get_json()["report"]["id"]
    assert record["image"] == {"filename": FILENAME, "sha256": hashlib.sha256(RED).hexdigest()}
    assert record["precision"] == filing_client.get("/readyz").get_json()["precision"]
    utc, local = datetime.fromisoformat(record["time"]["utc"]), datetime.fromisoformat(record["time"]["local"])
    assert record["time"]["timezone"] == "Europe/Paris" and utc == local
    assert local.utcoffset() == utc.astimezone(report_timezone("Europe/Paris")).utcoffset() != utc.utcoffset()
    assert record["time"]["utc"] == first.get_json()["created_at"]
    assert leaked(first.get_data(as_text=True)) == [], "the filing fields are printed on a report only"


def test_a_raw_body_upload_has_a_record_without_a_file_name(filing_client):
    raw = filing_client.post("/predict", data=RED, content_type="image/png").get_json()["report"]
    assert raw["image"] == {"filename": None, "sha256": hashlib.sha256(RED).hexdigest()}


def test_a_client_path_for_a_file_name_is_cut_to_the_name(filing_client):
    answer = post(filing_client, filename="../clinic/2026/lesion\x07 scan.png").get_json()
    assert answer["report"]["image"]["filename"] == "lesion scan.png"


def test_the_text_report_prints_the_filing_fields_and_the_whole_record(filing_client):
    response = post(filing_client, "?format=txt", **FILING)
    text = response.get_data(as_text=True)
    head = text.split("RESULT:")[0]  # the filing header opens the report
    assert f"Patient ID:           {PATIENT_ID}\n" in head and f"Requesting clinician: {CLINICIAN}\n" in head
    report_id = re.search(r"Report ID: +(\S+)\n", head).group(1)
    assert REPORT_ID.fullmatch(report_id)
    assert response.headers["Content-Disposition"].endswith(f'-{report_id}.txt"'), "the file is named by its id"
    when = re.search(r"Date and time: +(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC \((\S+ \S+) (CES?T),\s+Europe/Paris\)",
                     head)
    assert when, head
    utc = datetime.fromisoformat(when.group(1) + "+00:00")
    assert utc.astimezone(report_timezone("Europe/Paris")).strftime("%Y-%m-%d %H:%M:%S") == when.group(2)
    model_sha = filing_client.get("/api/model").get_json()["sha256"]
    assert len(model_sha) == 64 and f"Model file SHA-256:   {model_sha}\n" in text
    assert f"Image file:           {FILENAME}\n" in text
    assert f"Image SHA-256:        {hashlib.sha256(RED).hexdigest()}\n" in text
    assert re.search(r"Precision served: +(float32|int8)\n", text)


def test_the_pdf_prints_the_filing_fields_and_the_whole_record_on_one_page(filing_client):
    from pypdf import PdfReader

    response = post(filing_client, "?format=pdf", **FILING)
    assert response.status_code == 200
    words = pdf_text(response.data)
    assert f"Patient ID: {PATIENT_ID}" in words and f"Requesting clinician: {CLINICIAN}" in words
    assert REPORT_ID.search(words.split("Report ID:")[1])
    assert hashlib.sha256(RED).hexdigest() in words and FILENAME in words
    assert filing_client.get("/api/model").get_json()["sha256"] in words
    assert re.search(r"UTC \(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d CES?T, Europe/Paris\)", words)
    assert re.search(r"Precision served (float32|int8)", words)
    assert len(PdfReader(io.BytesIO(response.data)).pages) == 1, "the header must not push the A4 report to 2 pages"


def test_names_in_other_alphabets_are_printed_in_an_embedded_unicode_font(filing_client):
    """Greek, Cyrillic and Vietnamese names print as themselves, not as boxes: the header switches to DejaVu
    Sans (embedded, only its used glyphs); a Western name keeps the standard font (the goldens pin that)."""
    from pypdf import PdfReader

    fields = {"patient_id": "Παπαδόπουλος-7", "clinician": "Иванова А. П., Nguyễn Thị Hường"}
    response = post(filing_client, "?format=pdf", **fields)
    assert response.status_code == 200
    words = pdf_text(response.data)
    assert f"Patient ID: {fields['patient_id']}" in words and f"Requesting clinician: {fields['clinician']}" in words
    page = PdfReader(io.BytesIO(response.data)).pages[0]
    fonts = {str(f.get_object()["/BaseFont"]) for f in page["/Resources"]["/Font"].values()}
    assert any(name.endswith("DejaVuSans") for name in fonts) and "/Helvetica" in fonts, fonts
    font_file = next(f.get_object()["/FontDescriptor"]["/FontFile2"].get_object()
                     for f in page["/Resources"]["/Font"].values() if "DejaVuSans" in str(f.get_object()["/BaseFont"]))
    assert len(font_file.get_data()) < 100_000  # a subset, not the whole 740 KB font


def test_a_report_without_filing_fields_says_nothing_of_them(filing_client):
    text = post(filing_client, "?format=txt").get_data(as_text=True)
    assert "Patient ID" not in text and "Requesting clinician" not in text and "Report ID:" in text


# ---------------------------------------------------------------- the web form and the report token


def test_the_form_path_prints_them_from_the_token_but_never_shows_them(filing_client):
    page = upload(filing_client, RED, filename=FILENAME, extra=FILING)
    body = html(page)
    assert page.status_code == 200 and leaked(body) == [], "the result page shows no patient identifier"
    shown_id = re.search(r"Report ID (LSR[-0-9A-Z]+)", body).group(1)
    token = re.search(r'name="token" value="([^"]+)"', body).group(1)
    assert leaked(token) == []
    form = {"csrf_token": csrf_token(filing_client), "token": token}
    text = filing_client.post("/report/txt", data=form).get_data(as_text=True)
    assert PATIENT_ID in text and CLINICIAN in text and f"Report ID:            {shown_id}\n" in text
    pdf = pdf_text(filing_client.post("/report/pdf", data=form).data)
    assert f"Patient ID: {PATIENT_ID}" in pdf and shown_id in pdf and FILENAME in pdf


def test_a_bad_field_on_the_form_comes_back_by_that_field_with_what_was_typed(filing_client):
    page = upload(filing_client, RED, extra={"patient_id": "<MRN>", "clinician": CLINICIAN, "age": "70"})
    body = html(page)
    assert page.status_code == 400
    field = re.search(r'<input type="text" id="patient_id"[^>]*>', body).group(0)
    assert 'aria-invalid="true"' in field and "autofocus" in field and 'value="&lt;MRN&gt;"' in field
    error = re.search(r'<p class="field-error" id="patient_id-error" role="alert">([^<]*)</p>', body).group(1)
    assert "patient id" in error and "at most 64 characters" in error and "choose the photo again" in error
    assert f'value="{CLINICIAN}"' in body and 'value="70"' in body
    assert re.search(r'<details class="filing-fields" id="filing-fields" open>', body), "the fold opens on its error"


def test_the_form_offers_the_fields_folded_and_unremembered(filing_client):
    body = html(filing_client.get("/"))
    fold = re.search(r'<details class="filing-fields" id="filing-fields">(.*?)</details>', body, re.S).group(1)
    for name in ("patient_id", "clinician"):
        field = re.search(rf'<input type="text" id="{name}"[^>]*>', fold).group(0)
        assert 'maxlength="64"' in field and 'autocomplete="off"' in field
    assert "Printed on the report only" in fold


# ---------------------------------------------------------------- never logged, never stored


def test_the_filing_fields_reach_no_log_and_no_rate_limit_key(filing_app, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    client = filing_app.test_client()
    printed = [post(client, "?format=txt", **FILING), post(client, "?format=pdf", **FILING),
               post(client, "", **FILING)]
    refused = post(client, "?format=txt", patient_id=PATIENT_ID + "<", clinician=CLINICIAN)
    page = upload(client, RED, filename=FILENAME, extra=FILING)
    assert [r.status_code for r in printed] == [200, 200, 200] and refused.status_code == 400
    assert page.status_code == 200
    assert PATIENT_ID in printed[0].get_data(as_text=True) and PATIENT_ID in pdf_text(printed[1].data)
    assert leaked(refused.get_data(as_text=True)) == []
    # An unexpected failure while the values are in hand: the error log and its traceback must not show them.
    from server.web import api

    def broken(*args, **kwargs):
        raise RuntimeError("the report renderer failed")

    monkeypatch.setattr(api.reports, "render_report", broken)
    failed = post(client, "?format=pdf", **FILING)
    assert failed.status_code == 500 and leaked(failed.get_data(as_text=True)) == []
    assert any("unhandled error on POST /predict" in r.getMessage() and r.exc_info for r in caplog.records), \
        "the failure was not logged: this check would prove nothing"
    logged = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert leaked(logged) == []
    keys = [str(key) for limiter in filing_app.extensions["limiter"] for key in limiter.storage.storage]
    assert keys and leaked(" ".join(keys)) == []


# ---------------------------------------------------------------- REPORT_TIMEZONE and the contract


def test_a_bad_report_timezone_stops_the_start_with_one_clear_line(model_path, monkeypatch):
    from server.boot import boot_problem
    from server.config import config_from_env

    problem = boot_problem({"SECRET_KEY": "x", "MODEL_PATH": str(model_path), "REPORT_TIMEZONE": "Europe/Pariss"})
    assert problem == "REPORT_TIMEZONE='Europe/Pariss' is not an IANA time zone name such as 'Europe/Paris' or 'UTC'"
    monkeypatch.setenv("REPORT_TIMEZONE", "Mars/Olympus")
    with pytest.raises(SystemExit, match="REPORT_TIMEZONE='Mars/Olympus'"):
        config_from_env()
    monkeypatch.setenv("REPORT_TIMEZONE", "")
    assert config_from_env()["REPORT_TIMEZONE"] == "UTC", "the documented default"
    with pytest.raises(ValueError, match="REPORT_TIMEZONE"):
        create_app({"MODEL_PATH": str(model_path), "LOAD_MODEL": False, "REPORT_TIMEZONE": "../../etc/passwd"})


def test_the_contract_documents_the_fields_the_errors_and_the_record():
    document = openapi_document(10)
    operation = document["paths"]["/predict"]["post"]
    form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert {form[name]["maxLength"] for name in ("patient_id", "clinician")} == {FILING_MAX_CHARS}
    assert "Printed on the report only" in form["patient_id"]["description"]
    codes = json.dumps(operation["responses"]["400"])
    assert "invalid_patient_id" in codes and "invalid_clinician" in codes
    error_field = document["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["field"]
    assert {"patient_id", "clinician"} <= set(error_field["enum"])
    prediction = document["components"]["schemas"]["Prediction"]
    assert "report" in prediction["required"]
    assert not {"patient_id", "clinician"} & set(prediction["properties"]), "printed on the report only"
