"""Fuzz the JSON API from its own ``/openapi.json`` with schemathesis (#7).

Every documented operation gets a bounded, derandomized set of generated requests, valid
and invalid (positive and negative generation), through the WSGI app on the real fixture
model. Each response must: not be a 5xx, use a status the document lists, carry the
documented content type, and match the documented schema. ``positive_data_acceptance``
is left out on purpose: the schema can only say "binary" for the image, and random bytes
are rightly refused (415), not screened.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from server.patient import PATIENT_FIELDS, PatientContext
from server.web.openapi import openapi_document
from tests.conftest import image_bytes
from tests.corpus import BLUE, GREEN, RED

pytestmark = pytest.mark.slow

MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))  # bounded: the suite stays fast
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


DOCUMENT = openapi_document(10)
# Negative cases need something to break: operations without a body or parameters get positive only.
CASES = [
    (path, method, mode)
    for path, methods in DOCUMENT["paths"].items()
    for method, operation in methods.items()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or operation.get("requestBody") or operation.get("parameters")
]


@pytest.fixture(scope="module")
def api_schema(app):
    """The document the running app serves (not the module's dict): what clients see."""
    return schemathesis.openapi.from_wsgi("/openapi.json", app)


@pytest.mark.parametrize("path, method, mode", CASES, ids=[f"{m.upper()} {p} {mode}" for p, m, mode in CASES])
def test_api_conforms_to_its_openapi_document(api_schema, path, method, mode):
    operation = api_schema[path][method.upper()]
    seen: list[int] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
    def fuzz(case):
        response = case.call()
        seen.append(response.status_code)
        assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
        case.validate_response(response, checks=CHECKS)
        if response.status_code >= 400 and path != "/docs":
            error = response.json()["error"]
            assert error["code"] and error["message"]

    fuzz()
    assert seen, "schemathesis generated no request"
    print(f"\n{method.upper()} {path} [{mode}]: {len(seen)} requests, statuses {dict(sorted(Counter(seen).items()))}")


SCREENABLE = st.sampled_from([image_bytes(RED), image_bytes(GREEN, fmt="JPEG"), image_bytes(BLUE, size=(120, 90))])


def test_predict_with_real_images_and_fuzzed_parameters(api_schema):
    """Random bytes never reach the model (415/422), so this run swaps a real JPEG/PNG into
    each generated request: the query parameters (report format and paper included) and media types are fuzzed, the
    answer must be a schema-valid 200 (or a documented 4xx for a parameter combination the API
    refuses), and every media type the document lists for a 200 must come back. The patient
    fields generated from the document are kept: a JSON answer must echo them as parsed."""
    operation = api_schema["/predict"]["POST"]
    seen: list[int] = []
    media_types: set[str] = set()
    patients: list[dict] = []

    @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE), image=SCREENABLE)
    @settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
    def fuzz(case, image):
        fields = {}
        if case.media_type == "multipart/form-data":  # the generated patient fields stay, beside a real image
            fields = {k: v for k, v in (case.body or {}).items() if k in PATIENT_FIELDS}
            case.body = {**fields, "image": image}
        else:
            case.body = image
        response = case.call()
        seen.append(response.status_code)
        assert response.status_code < 500, (case.query, response.status_code, response.text[:300])
        case.validate_response(response, checks=CHECKS)
        if response.status_code == 200:
            media_types.add(response.headers["content-type"][0].split(";")[0])
            if response.headers["content-type"][0].startswith("application/json"):
                assert response.json()["patient"] == PatientContext.parse(**fields).to_dict(), fields
                patients.append(response.json()["patient"])

    fuzz()
    print(f"\nPOST /predict [positive, real images]: {len(seen)} requests, statuses {dict(sorted(Counter(seen).items()))}, "
          f"200 answers as {sorted(media_types)}")
    assert seen.count(200) >= len(seen) // 2, Counter(seen)
    assert media_types == set(DOCUMENT["paths"]["/predict"]["post"]["responses"]["200"]["content"])  # the reports too
    assert any(patients), "the generated requests sent some patient context, and it was echoed"
