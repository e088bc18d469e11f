"""What every JSON API test checks of an answer: posting an upload, and validating the answer
or the error against the OpenAPI document the service publishes."""

from __future__ import annotations

import io

import jsonschema
import pytest

from server.lesions import CLASS_CODES
from server.web.openapi import openapi_document


def post_file(client, data: bytes, filename: str = "lesion.png", field: str = "image"):
    return client.post("/predict", data={field: (io.BytesIO(data), filename)}, content_type="multipart/form-data")


def post_raw(client, data: bytes, content_type: str):
    return client.post("/predict", data=data, content_type=content_type)


def schema_validator(name: str) -> jsonschema.Draft202012Validator:
    """A validator for one schema of the published document (OpenAPI 3.1 schemas are JSON Schema 2020-12)."""
    schema = openapi_document(10)["components"]["schemas"][name]
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def assert_error(resp, status: int, code: str | None = None) -> None:
    assert resp.status_code == status, (resp.status_code, resp.get_data(as_text=True)[:300])
    assert resp.mimetype == "application/json"
    schema_validator("Error").validate(resp.json)
    assert resp.json["error"]["message"].strip()
    if code:
        assert resp.json["error"]["code"] == code


def assert_valid_prediction(body: dict, expected_code: str | None = None) -> None:
    schema_validator("Prediction").validate(body)
    probs = body["probabilities"]
    assert sorted(p["code"] for p in probs) == sorted(CLASS_CODES)
    values = [p["probability"] for p in probs]
    assert values == sorted(values, reverse=True)
    assert abs(sum(values) - 1.0) <= 1e-6
    by_code = {p["code"]: p["probability"] for p in probs}
    assert body["malignant_probability"] == pytest.approx(by_code["mel"] + by_code["bcc"] + by_code["akiec"], abs=2e-6)
    assert body["prediction"]["code"] == probs[0]["code"]
    assert body["model"]["name"] == "colour-fixture" and body["model"]["version"] == "test"
    assert len(body["model"]["sha256"]) == 64
    assert body["timing"]["inference_ms"] >= 0 and body["timing"]["total_ms"] >= body["timing"]["inference_ms"]
    if expected_code:
        assert body["prediction"]["code"] == expected_code


def probabilities(resp) -> dict:
    return {p["code"]: p["probability"] for p in resp.json["probabilities"]}
