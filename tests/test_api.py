"""The JSON API end to end through Flask's test client, on the real colour fixture model.

The fixture model answers by colour (red -> vasc, green -> nv, blue -> mel; grey ties
break towards vasc), so these tests assert *which* class wins, not just that a 200 came
back. Responses are validated against the OpenAPI document the service publishes.
"""

from __future__ import annotations

import re

import ast
import io
import json
import os
import resource
import shutil
import tempfile
import time
import zlib
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from PIL import Image

from server import create_app
from server.decoding import open_upload, to_rgb8
from server.lesions import CATALOGUE, CLASS_CODES, MALIGNANT_CODES, RISK_LEVELS
from server.web.openapi import openapi_document
from server.model.files import ModelLoadError
from tests.conftest import image_bytes
from tests.corpus import (
    BLUE,
    BROKEN,
    GREEN,
    RED,
    UNSUPPORTED,
    cmyk_jpeg,
    grey16,
    halves,
    mpo,
    palette_with_transparent_red,
    png_with_header,
    save,
)
from tests.fixture_model import BLUE_CLASS, GREEN_CLASS, RED_CLASS
ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- helpers


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


# ---------------------------------------------------------------- happy paths


def test_the_summary_puts_the_flag_first_and_the_heatmap_on_the_malignant_evidence(client):
    """A lesion the model cannot type but flags: the API's summary says "flagged" first, as the
    page and the reports do, and explain=1 shows where the melanoma evidence lies."""
    resp = client.post("/predict?explain=1", data={"image": (io.BytesIO(image_bytes((0, 150, 165), size=(64, 64))),
                                                             "lesion.png")}, content_type="multipart/form-data")
    assert resp.status_code == 200, resp.get_data(as_text=True)[:300]
    body = resp.json
    assert_valid_prediction(body)
    assert body["uncertain"] is True and body["malignant_flag"] is True
    assert body["prediction"]["code"] == BLUE_CLASS == "mel"
    summary = body["summary"]
    assert (summary["kind"], summary["title"], summary["next_step"]) == (
        "flagged", "Flagged as possibly malignant", "See a dermatologist promptly")
    assert summary["key_figure"]["label"] == "Malignant"
    assert summary["key_figure"]["value"] == body["malignant_probability"]
    assert body["heatmap"]["class"] in MALIGNANT_CODES
    calm = post_file(client, image_bytes((220, 30, 30), size=(64, 64))).json
    assert calm["summary"]["kind"] == "class" and calm["summary"]["key_figure"]["label"] == "Confidence"


@pytest.mark.parametrize("colour, expected", [(RED, RED_CLASS), (GREEN, GREEN_CLASS), (BLUE, BLUE_CLASS)])
def test_multipart_prediction_is_valid_and_follows_colour(client, colour, expected):
    resp = post_file(client, image_bytes(colour))
    assert resp.status_code == 200, resp.json
    assert_valid_prediction(resp.json, expected)


@pytest.mark.parametrize("fmt, ctype", [("PNG", "image/png"), ("JPEG", "image/jpeg")])
def test_raw_body_prediction(client, fmt, ctype):
    resp = post_raw(client, image_bytes(BLUE, fmt=fmt), ctype)
    assert resp.status_code == 200, resp.json
    assert_valid_prediction(resp.json, BLUE_CLASS)


COLOUR_MODES = {
    "rgb-jpeg": (lambda: image_bytes(RED, fmt="JPEG"), RED_CLASS),
    "rgba-png": (lambda: image_bytes(GREEN, mode="RGBA"), GREEN_CLASS),
    "palette-png": (lambda: image_bytes(BLUE, mode="P"), BLUE_CLASS),
    "palette-transparency-png": (palette_with_transparent_red, BLUE_CLASS),
    "rgba-half-transparent-png": (
        lambda: save(halves((220, 30, 30, 0), (30, 30, 220, 255), mode="RGBA"), "PNG"), BLUE_CLASS),
    "cmyk-jpeg": (lambda: cmyk_jpeg(BLUE), BLUE_CLASS),
    "progressive-jpeg": (lambda: image_bytes(GREEN, fmt="JPEG", progressive=True, quality=90), GREEN_CLASS),
    "mpo-phone-jpeg": (lambda: mpo(GREEN), GREEN_CLASS),
}


@pytest.mark.parametrize("name", sorted(COLOUR_MODES))
def test_every_colour_mode_is_predicted_by_colour(client, name):
    make, expected = COLOUR_MODES[name]
    resp = post_file(client, make(), filename=f"{name}.img")
    assert resp.status_code == 200, resp.json
    assert_valid_prediction(resp.json, expected)


GREY_MODES = {
    # name: (bytes maker, the 8-bit grey the pixels must read as)
    "L": (lambda: image_bytes((60, 60, 60), mode="L"), 60),
    "LA": (lambda: save(Image.new("LA", (64, 48), (60, 255)), "PNG"), 60),
    "I;16-dark": (lambda: grey16(20000), 77),  # 20000/65535*255
    "I;16-bright": (lambda: grey16(60000), 233),
    "1-bit": (lambda: image_bytes((255, 255, 255), mode="1"), 255),
}


@pytest.mark.parametrize("name", sorted(GREY_MODES))
def test_grey_modes_predict_like_the_same_grey_in_rgb(client, name):
    """Grey images cannot show colour, so the check is tonal: same answer as RGB of that grey."""
    make, level = GREY_MODES[name]
    resp = post_file(client, make())
    reference = post_file(client, image_bytes((level, level, level)))
    assert resp.status_code == 200 and reference.status_code == 200
    assert_valid_prediction(resp.json)
    got, want = probabilities(resp), probabilities(reference)
    assert all(abs(got[c] - want[c]) < 2e-3 for c in CLASS_CODES), (got, want)


def test_sixteen_bit_grey_keeps_its_tones():
    """Pillow's plain convert('RGB') clips 16-bit values at 255, turning every photo white."""
    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    img = Image.open(io.BytesIO(save(Image.fromarray(ramp), "PNG")))
    assert img.mode.startswith("I")
    rgb = np.asarray(to_rgb8(img))
    assert rgb.dtype == np.uint8 and rgb.shape == (48, 64, 3)
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255
    assert 110 < rgb[24, 32, 0] < 145  # mid-ramp stays mid-grey
    assert len(np.unique(rgb[..., 0])) > 200  # a full tonal range, not crushed to two values


@pytest.mark.parametrize("orientation, red_at", [(6, "top"), (8, "bottom")])
def test_exif_orientation_is_honoured(client, orientation, red_at):
    """A 64x48 photo, red on its left, tagged 'rotate to display' must come out 48x64."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = save(halves(RED, BLUE), "JPEG", exif=exif.tobytes(), quality=95)
    upright = open_upload(data)
    assert upright.size == (48, 64)
    top, bottom = upright.getpixel((24, 4)), upright.getpixel((24, 60))
    red_pixel, blue_pixel = (top, bottom) if red_at == "top" else (bottom, top)
    assert red_pixel[0] > 200 and red_pixel[2] < 60
    assert blue_pixel[2] > 200 and blue_pixel[0] < 60
    assert post_file(client, data, "rotated.jpg").status_code == 200


@pytest.mark.parametrize("filename", ["x" * 5000 + ".png", "ünïcödé 病変.png"])
def test_odd_filenames_are_still_predicted(client, filename):
    resp = post_file(client, image_bytes(RED), filename=filename)
    assert resp.status_code == 200, resp.json
    assert_valid_prediction(resp.json, RED_CLASS)


def test_non_utf8_filename_is_still_predicted(client):
    boundary = "lesionboundary"
    body = (
        f"--{boundary}\r\n".encode()
        + b'Content-Disposition: form-data; name="image"; filename="\xff\xfe\xe9\x80.png"\r\n'
        + b"Content-Type: image/png\r\n\r\n"
        + image_bytes(GREEN)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    resp = client.post("/predict", data=body, content_type=f"multipart/form-data; boundary={boundary}")
    assert resp.status_code == 200, resp.json
    assert_valid_prediction(resp.json, GREEN_CLASS)


# ---------------------------------------------------------------- error paths


@pytest.mark.parametrize("filename", sorted(UNSUPPORTED))
def test_non_jpeg_png_files_are_415(client, filename):
    assert_error(post_file(client, UNSUPPORTED[filename], filename), 415, "unsupported_media_type")


def test_unsupported_format_sent_as_raw_image_body_is_415(client):
    assert_error(post_raw(client, image_bytes(RED, fmt="WEBP"), "image/webp"), 415, "unsupported_media_type")


@pytest.mark.parametrize("filename", sorted(BROKEN))
def test_broken_or_tiny_images_are_422(client, filename):
    assert_error(post_file(client, BROKEN[filename], filename), 422, "invalid_image")


def test_decompression_bomb_is_refused_from_its_header(client):
    """30000x30000 RGB would need 2.7 GB decoded; the check must fire before any decoding."""
    bomb = png_with_header(30000, 30000, zlib.compress(b"\x00" * 200_000, 9))
    assert len(bomb) < 2000
    peak_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    resp = post_file(client, bomb, "bomb.png")
    elapsed = time.perf_counter() - started
    assert_error(resp, 422, "invalid_image")
    assert "pixels" in resp.json["error"]["message"]
    assert elapsed < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before_kb < 100_000  # < 100 MB growth


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_image_just_over_the_pixel_limit_is_refused_without_decoding():
    from server.decoding import ImageRejected

    with pytest.raises(ImageRejected) as info:
        open_upload(png_with_header(8000, 6251))  # 50.008 MP: just over, under Pillow's own 2x error
    assert info.value.status == 422


@pytest.mark.parametrize(
    "kwargs, status, code",
    [
        ({"data": {"photo": (io.BytesIO(image_bytes()), "a.png")}}, 400, "missing_file"),
        ({"data": {"image": (io.BytesIO(b""), "empty.png")}}, 400, "empty_file"),
        ({"data": {"image": [(io.BytesIO(image_bytes()), "a.png"), (io.BytesIO(image_bytes()), "b.png")]}},
         400, "too_many_files"),
        ({"data": {"image": (io.BytesIO(image_bytes()), "a.png"), "other": (io.BytesIO(image_bytes()), "b.png")}},
         400, "too_many_files"),
        ({"data": {"note": "no file at all"}}, 400, "missing_file"),
    ],
    ids=["wrong-field", "empty-file", "two-files-one-field", "two-file-fields", "no-file"],
)
def test_multipart_mistakes_are_400(client, kwargs, status, code):
    assert_error(client.post("/predict", content_type="multipart/form-data", **kwargs), status, code)


def test_empty_raw_body_is_400(client):
    assert_error(post_raw(client, b"", "image/png"), 400, "empty_file")


def test_no_body_at_all_is_400(client):
    assert_error(client.post("/predict"), 400, "missing_file")


@pytest.mark.parametrize("ctype", ["text/plain", "application/json", "application/x-www-form-urlencoded"])
def test_wrong_content_type_is_415(client, ctype):
    assert_error(post_raw(client, b"image=not-really", ctype), 415, "unsupported_media_type")


@pytest.mark.parametrize("how", ["multipart", "raw"])
def test_upload_over_the_limit_is_413(client, how):
    big = image_bytes(RED) + b"\x00" * (11 * 1024 * 1024)
    resp = post_file(client, big, "big.png") if how == "multipart" else post_raw(client, big, "image/png")
    assert_error(resp, 413, "payload_too_large")
    assert "10 MB" in resp.json["error"]["message"]


def test_wrong_method_is_405_json_with_allow_header(client):
    resp = client.get("/predict")
    assert_error(resp, 405, "method_not_allowed")
    assert "POST" in resp.headers["Allow"]


def test_unknown_api_path_is_404_json(client):
    assert_error(client.get("/api/xyz"), 404, "not_found")


def test_browser_gets_html_error_page_off_the_api(client):
    resp = client.get("/no-such-page", headers={"Accept": "text/html"})
    assert resp.status_code == 404 and resp.mimetype == "text/html"


# ---------------------------------------------------------------- probes, card, documents


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


# ---------------------------------------------------------------- startup errors


@pytest.fixture()
def model_copy(model_path, tmp_path):
    """A private copy of the fixture model and card that a test may break."""
    for name in (model_path.name, "model_card.json"):
        shutil.copy(model_path.with_name(name), tmp_path / name)
    return tmp_path / model_path.name


def _edit_card(model_file: Path, **changes) -> None:
    card_path = model_file.with_name("model_card.json")
    card = json.loads(card_path.read_text())
    card.update(changes)
    card_path.write_text(json.dumps(card))


def _make_app(model_file):
    return create_app({"MODEL_PATH": str(model_file), "TESTING": True, "SECRET_KEY": "x"})


def test_missing_model_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "model.h5"
    with pytest.raises(ModelLoadError, match=str(missing).replace(".", r"\.")):
        _make_app(missing)


def test_corrupt_h5_names_the_path(model_copy):
    from server.model.files import file_sha256

    model_copy.write_bytes(os.urandom(4096))
    _edit_card(model_copy, sha256=file_sha256(model_copy))  # so the load itself is what fails
    with pytest.raises(ModelLoadError, match="could not load model") as info:
        _make_app(model_copy)
    assert str(model_copy) in str(info.value)


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"classes": list(reversed(CLASS_CODES))}, "lists classes"),
        ({"classes": list(CLASS_CODES[:6])}, "lists classes"),
        ({"preprocessing": "squash/nearest/[0,1]"}, "preprocessing"),
        ({"sha256": "0" * 64}, "do not belong together"),
    ],
    ids=["class-order", "class-count", "preprocessing", "sha256"],
)
def test_card_mismatches_refuse_to_start(model_copy, changes, words):
    _edit_card(model_copy, **changes)
    with pytest.raises(ModelLoadError, match=words) as info:
        _make_app(model_copy)
    assert str(model_copy.parent) in str(info.value)


# ---------------------------------------------------------------- privacy


def _snapshot(roots: list[Path], skip: tuple[Path, ...]) -> set[str]:
    """Every file path under ``roots``, except under ``skip`` and bytecode caches."""
    found = set()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            dirnames[:] = [
                d for d in dirnames
                if d not in {"__pycache__", ".git", ".venv", ".pytest_cache", "runs"}
                and not d.startswith(("pytest-of-", "bash_jobs"))
                and not any((here / d).resolve() == s for s in skip)
            ]
            found.update(str(here / f) for f in filenames)
    return found


def test_uploads_are_never_written_to_disk(client, tmp_path_factory):
    """Snapshot the repo and temp dirs around a batch of uploads, large enough that
    Werkzeug would normally spool them to a temporary file (> 500 KB)."""
    roots = sorted({ROOT, Path(tempfile.gettempdir()).resolve(), Path("/tmp").resolve(), Path("/var/tmp").resolve()})
    skip = (tmp_path_factory.getbasetemp().resolve(),)
    noise = np.random.default_rng(1).integers(0, 255, (600, 600, 3), dtype=np.uint8)
    big_png = save(Image.fromarray(noise), "PNG")
    assert len(big_png) > 600_000
    marker = "upload-marker-7f3a"
    before = _snapshot(roots, skip)
    for i in range(3):
        assert post_file(client, big_png, f"{marker}-{i}.png").status_code == 200
        assert post_raw(client, big_png, "image/png").status_code == 200
        assert post_file(client, b"not an image", f"{marker}-bad.jpg").status_code == 415
    after = _snapshot(roots, skip)
    assert after - before == set()
    assert not any(marker in p for p in after)


def test_multipart_files_are_buffered_in_memory(app):
    """Werkzeug spools file parts over 500 KB to an (unlinked) temp file; ours must not."""
    big = b"\x00" * 700_000
    with app.test_request_context("/predict", method="POST", content_type="multipart/form-data",
                                  data={"image": (io.BytesIO(big), "x.png")}):
        from flask import request

        stream = request.files["image"].stream
        assert isinstance(stream, io.BytesIO)
