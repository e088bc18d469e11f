"""The JSON API's answers through Flask's test client, on the real colour fixture model.

The fixture model answers by colour (red -> vasc, green -> nv, blue -> mel; grey ties
break towards vasc), so these tests assert *which* class wins, not just that a 200 came
back. Responses are validated against the OpenAPI document the service publishes
(``tests/api_checks.py``); the error paths, the documents and start-up have modules of their own.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from server.decoding import open_upload, to_rgb8
from server.lesions import CLASS_CODES, MALIGNANT_CODES
from tests.conftest import image_bytes
from tests.corpus import BLUE, GREEN, RED, cmyk_jpeg, grey16, halves, mpo, palette_with_transparent_red, save
from tests.fixture_model import BLUE_CLASS, GREEN_CLASS, RED_CLASS
from tests.api_checks import assert_valid_prediction, post_file, post_raw, probabilities


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
