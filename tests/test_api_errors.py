"""Every bad upload or request to the JSON API gets its own status and a clear JSON error."""

from __future__ import annotations

import io
import resource
import time
import zlib

import pytest

from server.decoding import open_upload
from tests.conftest import image_bytes
from tests.corpus import BROKEN, RED, UNSUPPORTED, png_with_header
from tests.api_checks import assert_error, post_file, post_raw


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


def test_an_iphone_heic_photo_is_415_with_how_to_send_it_as_jpeg(client):
    from tests.corpus import HEIC_HEADER

    body = post_file(client, HEIC_HEADER, "IMG_0412.HEIC").get_json()
    assert "HEIC" in body["error"]["message"] and "JPEG" in body["error"]["message"]
    other = post_file(client, UNSUPPORTED["vector.svg"], "vector.svg").get_json()
    assert "HEIC" not in other["error"]["message"]
