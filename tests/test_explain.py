"""Grad-CAM (issue #6): shape, sign, *where* it points, and how it reaches the API, page and PDF."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from server.model import explain
from tests.fixture_model import BLUE_CLASS, FIXTURE_SIZE, RED_CLASS
from tests.test_pages import html, upload

GREY = (128, 128, 128)


def squares_image(size: int = 64) -> Image.Image:
    """Grey, a red square top-left and a blue square bottom-right: each decides one class."""
    arr = np.full((size, size, 3), GREY, np.uint8)
    q = size // 4
    arr[q // 2:q // 2 + q, q // 2:q // 2 + q] = (230, 20, 20)
    arr[-q // 2 - q:-q // 2, -q // 2 - q:-q // 2] = (20, 20, 230)
    return Image.fromarray(arr)


def mask_at_input(size: int = 64, which: str = "red") -> np.ndarray:
    """The square's footprint in the model's FIXTURE_SIZE input (the image is square: no crop)."""
    arr = np.asarray(squares_image(size).resize((FIXTURE_SIZE, FIXTURE_SIZE), Image.Resampling.BILINEAR))
    channel = 0 if which == "red" else 2
    return arr[..., channel] > 150


@pytest.fixture(scope="module")
def predictor(app):
    return app.extensions["predictor"]


def png_of(b64: str) -> Image.Image:
    data = base64.b64decode(b64, validate=True)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_heatmap_has_the_inputs_shape_and_is_non_negative(predictor):
    prediction = predictor.predict_image(squares_image(), explain=True)
    heat = prediction.heatmap
    assert heat is not None and heat.class_code == prediction.top.code
    cam = explain.upsample(explain.from_grid(heat.grid), predictor.input_size)
    assert cam.shape == (predictor.input_size, predictor.input_size)
    assert cam.min() >= 0 and cam.max() == pytest.approx(1.0, abs=1e-6)
    assert png_of(base64.b64encode(heat.png).decode()).size == (predictor.input_size, predictor.input_size)


@pytest.mark.parametrize("code, where, elsewhere", [(RED_CLASS, "red", "blue"), (BLUE_CLASS, "blue", "red")])
def test_heatmap_points_at_the_region_that_decides_the_class(predictor, code, where, elsewhere):
    heat = predictor.predict_image(squares_image(), explain=True, explain_class=code).heatmap
    assert heat.class_code == code
    cam = explain.from_grid(heat.grid)
    inside, other = mask_at_input(which=where), mask_at_input(which=elsewhere)
    rest = ~inside
    # Mass per pixel inside the deciding square dwarfs the rest, and the other square gets ~none.
    assert cam[inside].mean() > 10 * cam[rest].mean()
    assert cam[inside].sum() > 0.8 * cam.sum()
    assert cam[other].max() < 0.05


def test_grad_cam_is_relu_of_gradient_weighted_channels():
    fmap = np.zeros((2, 2, 2), np.float32)
    fmap[0, 0] = (1.0, 0.0)
    fmap[1, 1] = (0.0, 3.0)
    cam = explain.grad_cam(fmap, np.array([2.0, -1.0]))
    assert cam[0, 0] == 1.0 and cam[1, 1] == 0.0  # negative evidence is cut, not shown
    assert np.all(explain.grad_cam(fmap, np.zeros(2)) == 0)


def test_jet_runs_from_blue_to_red():
    cold, hot = explain.jet(np.array([0.0, 1.0]))
    assert cold[2] > 100 and cold[0] == 0
    assert hot[0] > 100 and hot[2] == 0


def test_api_explain_returns_a_decodable_png(client):
    buf = io.BytesIO()
    squares_image().save(buf, format="PNG")
    body = buf.getvalue()
    plain = client.post("/predict", data=body, content_type="image/png").json
    assert "heatmap" not in plain
    resp = client.post("/predict?explain=1", data=body, content_type="image/png")
    assert resp.status_code == 200, resp.data[:300]
    heat = resp.json["heatmap"]
    assert heat["class"] == resp.json["prediction"]["code"]
    assert png_of(heat["png_base64"]).size == (FIXTURE_SIZE, FIXTURE_SIZE)
    assert len(heat["grid"]) == FIXTURE_SIZE and max(max(r) for r in heat["grid"]) == 255
    assert resp.json["timing"]["explain_ms"] >= 0
    other = client.post(f"/predict?explain=1&explain_class={BLUE_CLASS}", data=body, content_type="image/png").json
    assert other["heatmap"]["class"] == BLUE_CLASS
    bad = client.post("/predict?explain_class=cat", data=body, content_type="image/png")
    assert bad.status_code == 400 and "explain_class" in bad.json["error"]["message"]
    assert client.post("/predict?explain=maybe", data=body, content_type="image/png").status_code == 400


def test_result_page_shows_the_heatmap_beside_the_image(client):
    buf = io.BytesIO()
    squares_image().save(buf, format="PNG")
    body = html(upload(client, buf.getvalue()))
    figure = re.search(r'<figure class="result-figure" id="heatmap">(.*?)</figure>', body, flags=re.S)
    assert figure, "no heatmap figure on the result page"
    src = re.search(r'src="data:image/png;base64,([^"]+)"', figure.group(1)).group(1)
    assert png_of(src).size == (FIXTURE_SIZE, FIXTURE_SIZE)
    assert "Where the model saw evidence for" in figure.group(1)
    assert ' style="' not in body


def test_report_token_stays_small_with_the_heatmap(client):
    """A noisy 600x450 photo is the worst case for the JPEG thumbnail; the heatmap adds only its grid."""
    noisy = np.random.default_rng(1).integers(0, 256, (450, 600, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, format="PNG")
    page = html(upload(client, buf.getvalue()))
    token = re.search(r'name="token" value="([^"]+)"', page).group(1)
    assert len(token) < 200_000, "the token is posted back as a form field; keep it far under form limits"
    pdf = client.post("/report/pdf", data={"token": token})
    assert pdf.status_code == 200 and pdf.mimetype == "application/pdf"


def test_pdf_shows_the_heatmap_and_still_fits_one_page(predictor):
    from pypdf import PdfReader

    from server import reports

    img = squares_image(200)
    prediction = predictor.predict_image(img, explain=True, explain_class=RED_CLASS)
    data = reports.pdf_report(prediction, reports.thumbnail_jpeg(img))
    reader = PdfReader(io.BytesIO(data))
    assert len(reader.pages) == 1 and len(reader.pages[0].images) == 2
    assert "where the model looked" in reader.pages[0].extract_text().lower()
