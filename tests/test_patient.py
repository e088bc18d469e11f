"""The optional patient context (age, sex, body site) through the API, the screening use case,
the Prediction and the reports, on the real app and the colour fixture model.

The fixture model does not read the context, so these tests assert what the service does
with it (parses, refuses, passes on, echoes, prints), never that it changes probabilities.
"""

from __future__ import annotations

import io
from dataclasses import replace

import jsonschema
import pytest
from pypdf import PdfReader

from server.patient import GENERAL_SITES, PATIENT_FIELDS, SEXES, SITE_WORDS, SITES, PatientContext
from server.prediction import ModelInfo, Prediction
from server.published import prediction_from_probabilities
from server.screening import ScreeningOptions, screen
from server.web.openapi import openapi_document
from tests.conftest import image_bytes
from tests.fixture_model import RED_CLASS

RED = image_bytes((220, 30, 30))
FULL = {"age": "70", "sex": "male", "site": "back"}
MODEL = ModelInfo(name="ham-test", version="9.9", sha256="ab" * 32, input_size=224)


def post(client, fields: dict | None = None, query: str = "", image: bytes = RED):
    data = {"image": (io.BytesIO(image), "lesion.png"), **(fields or {})}
    return client.post(f"/predict{query}", data=data, content_type="multipart/form-data")


def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(openapi_document(10)["components"]["schemas"][name])


# ---------------------------------------------------------------- the words and the JSON form


@pytest.mark.parametrize("given, words", [
    (("70", "male", "back"), "age 70, male, back"),
    (("45", None, "upper extremity"), "age 45, arm (upper extremity); not given: sex"),
    ((None, "F", None), "female; not given: age, body site"),
    ((None, None, None), "none given"),
    (("unknown", "", "n/a"), "none given"),
])
def test_describe_says_what_was_given_in_plain_words(given, words):
    context = PatientContext.parse(*given)
    assert context.describe() == words
    assert context.sentence() == f"Patient context: {words}."


def test_every_site_has_plain_words():
    assert set(SITE_WORDS) == set(SITES)
    assert all(SITE_WORDS[site] for site in SITES)


def test_whole_ages_are_echoed_as_integers_and_the_dict_round_trips():
    echo = PatientContext.parse("70", "m", "Lower_Extremity").to_dict()
    assert echo == {"age": 70, "sex": "male", "site": "lower extremity"}
    assert isinstance(PatientContext.parse("70.0").to_dict()["age"], int)
    assert PatientContext.parse("2.5").to_dict() == {"age": 2.5}
    for context in (PatientContext.parse(*FULL.values()), PatientContext.parse(site="acral"), PatientContext()):
        assert PatientContext.from_dict(context.to_dict()) == context
    assert PatientContext.from_dict(None) == PatientContext()


def test_prediction_carries_the_context_through_its_dict():
    prediction = prediction_from_probabilities([0.02, 0.03, 0.05, 0.01, 0.81, 0.06, 0.02], MODEL, 1.0)
    assert prediction.to_dict()["patient"] == {}
    with_context = replace(prediction, patient=PatientContext.parse(*FULL.values()))
    data = with_context.to_dict()
    assert data["patient"] == {"age": 70, "sex": "male", "site": "back"}
    assert Prediction.from_dict(data) == with_context
    old_token = {k: v for k, v in data.items() if k != "patient"}  # a report link made before the field existed
    assert Prediction.from_dict(old_token).patient == PatientContext()


# ---------------------------------------------------------------- the use case passes it on


class SpyPredictor:
    """The real predictor, recording the context each call was given."""

    def __init__(self, real):
        self.real, self.seen = real, []
        self.precision = real.precision

    def predict_image(self, image, **kwargs):
        self.seen.append(kwargs.get("patient", "not passed"))
        return self.real.predict_image(image, **kwargs)


def test_screen_gives_the_predictor_the_context_and_attaches_it(app):
    from server.web.service import current_predictor

    with app.app_context():
        spy = SpyPredictor(current_predictor())
    context = PatientContext.parse("70", "male", "back")
    prediction = screen(RED, ScreeningOptions(), spy, patient=context)
    assert spy.seen == [context] and prediction.patient == context
    assert prediction.top.code == RED_CLASS
    assert screen(RED, ScreeningOptions(), spy).patient == PatientContext()
    assert spy.seen[-1] == PatientContext(), "no context is the empty context, the model's 'not given'"


# ---------------------------------------------------------------- POST /predict


def test_predict_echoes_the_context_it_was_given(client):
    with_fields = post(client, FULL)
    assert with_fields.status_code == 200, with_fields.json
    validator("Prediction").validate(with_fields.json)
    assert with_fields.json["patient"] == {"age": 70, "sex": "male", "site": "back"}
    without = post(client)
    assert without.status_code == 200
    validator("Prediction").validate(without.json)
    assert without.json["patient"] == {}
    assert without.json["prediction"]["code"] == with_fields.json["prediction"]["code"] == RED_CLASS


@pytest.mark.parametrize("fields, echo", [
    ({"site": "Lower_Extremity"}, {"site": "lower extremity"}),
    ({"sex": "F", "age": " 45 "}, {"age": 45, "sex": "female"}),
    ({"age": "", "sex": "unknown", "site": ""}, {}),
    ({"age": "0"}, {"age": 0}),
    ({"age": "120"}, {"age": 120}),
])
def test_predict_reads_partial_and_forgiving_input(client, fields, echo):
    response = post(client, fields)
    assert response.status_code == 200, response.json
    assert response.json["patient"] == echo


@pytest.mark.parametrize("fields, field", [
    ({"age": "seventy"}, "age"), ({"age": "-1"}, "age"), ({"age": "121"}, "age"), ({"age": "nan"}, "age"),
    ({"age": "inf"}, "age"), ({"sex": "x"}, "sex"), ({"sex": "other"}, "sex"), ({"site": "elbow"}, "site"),
    ({"age": "70", "site": "back; drop table"}, "site"),
])
def test_a_bad_field_is_a_400_naming_it(client, fields, field):
    response = post(client, fields)
    assert response.status_code == 400 and response.mimetype == "application/json"
    validator("Error").validate(response.json)
    error = response.json["error"]
    assert error["code"] == f"invalid_{field}" and error["field"] == field
    assert field in error["message"] and error["message"].strip()
    documented = openapi_document(10)["paths"]["/predict"]["post"]["responses"]["400"]["description"]
    assert f"invalid_{field}" in documented


def test_a_field_sent_twice_is_refused(client):
    data = {"image": (io.BytesIO(RED), "lesion.png"), "age": ["70", "40"]}
    response = client.post("/predict", data=data, content_type="multipart/form-data")
    assert response.status_code == 400
    assert response.json["error"]["code"] == "invalid_age" and "2 times" in response.json["error"]["message"]


def test_a_raw_body_upload_has_no_context(client):
    response = client.post("/predict", data=RED, content_type="image/png")
    assert response.status_code == 200 and response.json["patient"] == {}


def test_the_text_and_pdf_reports_print_the_context(client):
    text = post(client, FULL, "?format=txt").get_data(as_text=True)
    assert "Patient context:      age 70, male, back\n" in text
    assert "Patient context:      none given\n" in post(client, None, "?format=txt").get_data(as_text=True)
    pdf = post(client, {"age": "70", "site": "acral"}, "?format=pdf")
    assert pdf.status_code == 200
    words = " ".join(" ".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf.data)).pages).split())
    assert "Patient context: age 70, palm or sole (acral); not given: sex." in words
    without = post(client, None, "?format=pdf")
    assert len(PdfReader(io.BytesIO(pdf.data)).pages) == len(PdfReader(io.BytesIO(without.data)).pages) == 1, \
        "the context line must not push the A4 report onto a second page"


# ---------------------------------------------------------------- the OpenAPI document


def test_the_document_lists_the_fields_their_values_and_errors():
    op = openapi_document(10)["paths"]["/predict"]["post"]
    form = op["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["image"], "the patient fields are optional"
    assert form["properties"]["sex"]["enum"] == list(SEXES)
    assert form["properties"]["site"]["enum"] == [*SITES, *GENERAL_SITES]
    assert (form["properties"]["age"]["minimum"], form["properties"]["age"]["maximum"]) == (0, 120)
    codes = op["responses"]["400"]["content"]["application/json"]["schema"]["allOf"][1]
    assert {f"invalid_{name}" for name in PATIENT_FIELDS} <= set(codes["properties"]["error"]["properties"]["code"]["enum"])
    prediction = openapi_document(10)["components"]["schemas"]["Prediction"]
    assert "patient" in prediction["required"]
    echo = jsonschema.Draft202012Validator(prediction["properties"]["patient"])
    assert echo.is_valid({}) and echo.is_valid({"age": 70, "sex": "male", "site": "back"})
    assert not echo.is_valid({"age": 130}) and not echo.is_valid({"site": "elbow"}) and not echo.is_valid({"name": "x"})


def test_the_docs_page_shows_the_fields(client):
    body = client.get("/docs").get_data(as_text=True)
    for text in ("invalid_age", "invalid_site", "lower extremity", "from 0 to 120"):
        assert text in body, text


def test_the_context_is_not_logged(client, caplog):
    """The README promises it, as for the image: health data stays out of the app's logs, a bad value
    included (PIL's own debug records of the image's chunks are not the app's)."""
    import logging

    caplog.set_level(logging.DEBUG)
    assert post(client, {"age": "87", "sex": "female", "site": "genital"}).status_code == 200
    assert post(client, {"age": "87", "site": "secret-site-4821"}).status_code == 400
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records if not r.name.startswith("PIL"))
    assert "secret-site-4821" not in logged and "genital" not in logged and "87" not in logged
