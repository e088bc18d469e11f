"""Probes, the model card, the OpenAPI document and its docs page, and the headers every answer carries."""

from __future__ import annotations

import re

import ast
import io
from pathlib import Path

import pytest

from server import create_app
from server.lesions import CATALOGUE, CLASS_CODES, MALIGNANT_CODES, RISK_LEVELS
from server.web.openapi import openapi_document
from tests.conftest import image_bytes
from tests.corpus import RED
from tests.api_checks import assert_error, post_file, post_raw

ROOT = Path(__file__).resolve().parent.parent


def test_healthz_and_readyz(client):
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json["model_loaded"] is True


@pytest.fixture(scope="module")
def app_without_model():
    return create_app({"LOAD_MODEL": False, "TESTING": True, "SECRET_KEY": "test-secret"})


def test_not_ready_without_a_model(app_without_model):
    client = app_without_model.test_client()
    resp = client.get("/readyz")
    assert resp.status_code == 503 and resp.json["model_loaded"] is False
    assert client.get("/healthz").status_code == 200
    assert_error(post_file(client, image_bytes()), 503, "model_unavailable")
    assert_error(client.get("/api/model"), 503, "model_unavailable")


def test_model_card_matches_the_catalogue(client):
    card = client.get("/api/model").json
    assert tuple(card["classes"]) == CLASS_CODES
    assert card["name"] == "colour-fixture" and len(card["sha256"]) == 64
    assert MALIGNANT_CODES == {"mel", "bcc", "akiec"}
    assert all(c.risk in RISK_LEVELS and c.name and c.advice for c in CATALOGUE)
    assert len({c.code for c in CATALOGUE}) == len(CATALOGUE) == 7


def test_openapi_document_is_valid_and_matches_the_routes(client, app):
    from openapi_spec_validator import validate

    doc = client.get("/openapi.json").json
    assert doc["openapi"].startswith("3.1")
    validate(doc)
    api_rules = {r.rule for r in app.url_map.iter_rules() if r.endpoint.startswith("api.")}
    assert api_rules == set(doc["paths"])  # every API route documented, no phantom paths
    for path, methods in doc["paths"].items():
        for method in methods:
            rule_methods = next(r.methods for r in app.url_map.iter_rules() if r.rule == path)
            assert method.upper() in rule_methods, (method, path)


def route_handlers(module: Path):
    """(method, path, function node) for every ``@bp.get/post("...")`` handler in a server module."""
    for node in ast.parse(module.read_text()).body:
        for deco in getattr(node, "decorator_list", []):
            if isinstance(deco, ast.Call) and isinstance(deco.func, ast.Attribute) and getattr(deco.func.value, "id", "") == "bp":
                yield deco.func.attr, deco.args[0].value, node


def test_handlers_read_exactly_the_query_parameters_the_document_declares():
    """A handler reading a parameter the document does not name (or the document naming one no
    handler reads) fails here: the API reads the query string only through ``query_arg``."""
    api = ROOT / "server" / "web" / "api.py"
    tree = ast.parse(api.read_text())
    readers = {fn.name for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef)
               for node in ast.walk(fn) if isinstance(node, ast.Attribute) and node.attr == "args"
               and getattr(node.value, "id", "") == "request"}
    assert readers == {"query_arg"}, f"read the query string through query_arg, not request.args, in {readers}"
    doc = openapi_document(10)
    for method, path, fn in route_handlers(api):
        read = {call.args[0].value for call in ast.walk(fn) if isinstance(call, ast.Call)
                and getattr(call.func, "id", "") in ("query_arg", "flag_arg")}
        documented = {p["name"] for p in doc["paths"][path][method].get("parameters", []) if p["in"] == "query"}
        assert read == documented, (method, path)


def test_an_undeclared_query_parameter_is_refused(app):
    from server.web.api import query_arg

    with app.test_request_context("/predict?format=pdf&colour=red", method="POST"):
        assert query_arg("format") == "pdf"
        with pytest.raises(LookupError, match="colour"):
            query_arg("colour")


def test_a_pdf_report_can_be_requested_from_the_document_alone(client):
    """What a client generated from /openapi.json does: find the operation that can answer
    application/pdf, the query parameter that selects it and the upload field, then ask."""
    doc = client.get("/openapi.json").json
    (path, method, op), = [(path, method, op) for path, methods in doc["paths"].items()
                           for method, op in methods.items()
                           if "application/pdf" in op["responses"]["200"].get("content", {})]
    (param,) = [p for p in op["parameters"] if p["in"] == "query" and "pdf" in p["schema"].get("enum", [])]
    (field,) = op["requestBody"]["content"]["multipart/form-data"]["schema"]["required"]
    resp = client.open(path, method=method.upper(), query_string={param["name"]: "pdf"},
                       data={field: (io.BytesIO(image_bytes(RED)), "lesion.png")})
    assert (method, path, param["name"], field) == ("post", "/predict", "format", "image")
    assert resp.status_code == 200 and resp.mimetype == "application/pdf"
    assert resp.data.startswith(b"%PDF-")


def test_docs_page_renders_the_whole_document_without_external_assets(client):
    import html as html_lib

    from server.web.docs import error_codes, field_rows

    resp = client.get("/docs")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    page = resp.get_data(as_text=True)
    document = openapi_document(10)
    for path, methods in document["paths"].items():
        for method, op in methods.items():
            anchor = f"{method}-{path.strip('/').replace('/', '-').replace('.', '-')}"
            section = page[page.index(f'<section class="card op" id="{anchor}"'):]
            section = section[:section.index("</section>")]
            assert f"<code>{path}</code>" in section
            for param in op.get("parameters", []):  # every parameter, with every value it allows
                row = re.search(rf'<tr class="param" data-name="{param["name"]}">.*?</tr>', section).group(0)
                for value in param["schema"].get("enum", []):
                    assert value in row
            for media in (op.get("requestBody") or {}).get("content", {}):
                assert f'data-media-type="{media}"' in section
            for status, response in op["responses"].items():
                row = re.search(rf'<tr class="response" data-status="{status}">.*?</tr>', section, re.S).group(0)
                for media, spec in (response.get("content") or {}).items():
                    assert f'data-media-type="{media}"' in row
                    for code in error_codes(spec["schema"]):
                        assert f'<code class="error-code">{code}</code>' in row
    for name, schema in document["components"]["schemas"].items():
        for field in field_rows(schema):
            assert f'<tr class="field" data-name="{html_lib.escape(field["name"])}">' in page
    assert 'data-name="prediction.advice"' in page and 'data-name="calibration.temperature"' in page
    assert "number or null" in page and "['" not in page and "[&#39;" not in page  # types in words, not Python lists
    assert "curl -F image=@lesion.jpg http://localhost/predict" in page and "--data-binary" in page
    assert "src=\"http" not in page and "href=\"http" not in page and "<script" not in page
    assert "<style" not in page, "styles come from /static/style.css (the CSP allows no inline style)"
    assert '<link rel="icon" href="/static/favicon.svg"' in page


def test_favicon_ico_is_served(client):
    resp = client.get("/favicon.ico")
    assert resp.status_code == 200 and resp.mimetype == "image/svg+xml"


def test_security_and_request_id_headers(client):
    resp = client.get("/healthz")
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "img-src 'self' data:" in csp
    assert "unsafe-inline" not in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "same-origin"
    assert len(resp.headers["X-Request-ID"]) == 32
    assert client.get("/healthz").headers["X-Request-ID"] != resp.headers["X-Request-ID"]


def test_every_predict_answer_is_never_cached(client):
    """A screening answer is personal health data, in any format and when it is an error: no-store, as the pages."""
    lesion = image_bytes(RED)
    answers = {
        "json": (post_file(client, lesion), 200),
        "txt": (client.post("/predict?format=txt", data={"image": (io.BytesIO(lesion), "a.png")}), 200),
        "pdf": (client.post("/predict?format=pdf", data={"image": (io.BytesIO(lesion), "a.png")}), 200),
        "bad format": (client.post("/predict?format=docx", data={"image": (io.BytesIO(lesion), "a.png")}), 400),
        "no file": (client.post("/predict"), 400),
        "too large": (post_raw(client, lesion + b"\x00" * (11 * 1024 * 1024), "image/png"), 413),
        "not an image": (post_raw(client, b"image=not-really", "text/plain"), 415),
        "truncated": (post_file(client, lesion[:60]), 422),
        "wrong method": (client.get("/predict"), 405),
    }
    for name, (resp, status) in answers.items():
        assert resp.status_code == status, name
        assert resp.headers.get("Cache-Control") == "no-store", name


def test_request_id_is_echoed_only_when_safe_to_log(client):
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123.x_y"}).headers["X-Request-ID"] == "abc-123.x_y"
    sneaky = client.get("/healthz", headers={"X-Request-ID": 'x" injected="1'}).headers["X-Request-ID"]
    assert sneaky != 'x" injected="1' and len(sneaky) == 32
    assert "X-Request-ID" in post_file(client, b"not an image").headers  # errors carry it too
