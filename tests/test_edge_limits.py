"""Small edges an attacker found (#38, item 6): every message names the limit that was broken,
in words people read, and nothing a client sends comes back in a page a cache could keep."""

from __future__ import annotations

import io

import pytest

from server import create_app
from tests.conftest import image_bytes

MB = 1024 * 1024


@pytest.fixture(scope="module")
def client(model_path):
    return create_app({"MODEL_PATH": str(model_path), "TESTING": True, "SECRET_KEY": "edge-secret",
                       "RATE_LIMIT": "off"}).test_client()


def error(resp) -> dict:
    return resp.get_json()["error"]


def test_a_corrupt_png_header_is_described_without_a_python_class_name(client):
    corrupt = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + b"\xff" * 40
    resp = client.post("/predict", data=corrupt, content_type="image/png")
    assert resp.status_code == 422 and error(resp)["code"] == "invalid_image"
    message = error(resp)["message"]
    assert "PNG" in message and "Error" not in message and "(" not in message, message


def multipart(fields: list[tuple[str, bytes, str | None]]) -> tuple[bytes, str]:
    """A hand-made multipart body (name, value, filename or None), so a test controls every part."""
    boundary = "edge-boundary-38"
    out = io.BytesIO()
    for name, value, filename in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out.write(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def test_five_thousand_tiny_parts_are_refused_as_too_many_parts_not_as_too_large(client):
    body, content_type = multipart([("image", image_bytes(), "a.png")] + [(f"x{i}", b"1", None) for i in range(5000)])
    assert len(body) < MB  # far under the upload limit: only the number of parts is wrong
    resp = client.post("/predict", data=body, content_type=content_type)
    assert resp.status_code == 413 and error(resp)["code"] == "payload_too_large"
    message = error(resp)["message"]
    assert "parts" in message and "1,000" in message and "MB" not in message, message


def test_a_megabyte_age_field_is_refused_as_a_field_too_large(client):
    body, content_type = multipart([("image", image_bytes(), "a.png"), ("age", b"7" * MB, None)])
    resp = client.post("/predict", data=body, content_type=content_type)
    assert resp.status_code == 413 and error(resp)["code"] == "payload_too_large"
    message = error(resp)["message"]
    assert "'age'" in message and "10 MB" not in message, message


def test_the_raw_body_upload_has_the_same_exact_limit_as_the_form(client):
    """MAX_CONTENT_LENGTH leaves 64 KiB for multipart framing; a raw body has none, so 10 MB + 1 byte is over."""
    png = image_bytes()
    just_over = png + b"\x00" * (10 * MB + 1 - len(png))
    resp = client.post("/predict", data=just_over, content_type="image/png")
    assert resp.status_code == 413 and error(resp)["code"] == "payload_too_large"
    assert "10 MB" in error(resp)["message"]
    at_limit = png + b"\x00" * (10 * MB - len(png))  # trailing bytes after IEND: still a valid PNG
    assert client.post("/predict", data=at_limit, content_type="image/png").status_code == 200


def test_the_docs_page_varies_by_host_and_no_shared_cache_keeps_it(client):
    """/docs writes the curl examples with the address the client used: a shared cache keyed
    without Host would hand an attacker's address (where photos would be sent) to everyone."""
    resp = client.get("/docs", headers={"Host": "attacker.example"})
    assert resp.status_code == 200
    assert "private" in resp.headers.get("Cache-Control", "") or "no-store" in resp.headers.get("Cache-Control", "")
    assert "Host" in resp.headers.get("Vary", "")
