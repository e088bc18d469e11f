"""The bad-input corpus: image builders and every kind of upload with its documented answer.

Shared by ``tests/test_api*.py`` (Flask's test client) and ``tests/test_hardening.py`` (a
real gunicorn over HTTP). Each ``Kind`` is an exact HTTP body and Content-Type, so both
clients send the same bytes, multipart framing included (a non-UTF-8 filename cannot be
expressed through either client's file API). Everything is generated in memory.

Filenames carry ``SECRET_NAME`` so log and disk checks can look for it.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from server.decoding import MIN_SIDE
from tests.conftest import image_bytes
from tests.fixture_model import BLUE_CLASS, GREEN_CLASS, RED_CLASS

RED, GREEN, BLUE = (220, 30, 30), (30, 200, 30), (30, 30, 220)
SECRET_NAME = "patient-secret-name"
BOUNDARY = "corpusboundary7f3a"
OVER_LIMIT_BYTES = 11 * 1024 * 1024  # the limit is 10 MB


# ---------------------------------------------------------------- image builders


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def png_with_header(width: int, height: int, idat: bytes = zlib.compress(b"\x00" * 64)) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` but carries almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def save(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def halves(left, right, size=(64, 48), mode="RGB") -> Image.Image:
    img = Image.new(mode, size, right)
    img.paste(left, (0, 0, size[0] // 2, size[1]))
    return img


def palette_with_transparent_red() -> bytes:
    # Blue left, red right; red is the transparent index, so it must become white, not red.
    img = halves(BLUE, RED).quantize(colors=2)
    red_index = next(i for i, c in enumerate(img.getpalette()[:6][::3]) if c > 128)
    return save(img, "PNG", transparency=red_index)


def cmyk_jpeg(colour) -> bytes:
    return save(Image.new("RGB", (64, 48), colour).convert("CMYK"), "JPEG", quality=95)


def mpo(colour) -> bytes:
    frame = Image.new("RGB", (64, 48), colour)
    return save(frame, "MPO", save_all=True, append_images=[frame])


def grey16(level16: int) -> bytes:
    return save(Image.fromarray(np.full((48, 64), level16, np.uint16)), "PNG")


def exif_rotated_jpeg(colour, orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return save(Image.new("RGB", (64, 48), colour), "JPEG", exif=exif.tobytes(), quality=95)


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (64, 48), c) for c in (RED, BLUE)]
    return save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def truncated_jpeg() -> bytes:
    noise = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    data = save(Image.fromarray(noise), "JPEG", quality=90)
    return data[: len(data) * 2 // 3]


def decompression_bomb() -> bytes:
    """30000x30000 RGB (2.7 GB decoded) in under 2 KB: refused from the header."""
    return png_with_header(30000, 30000, zlib.compress(b"\x00" * 200_000, 9))


TEXT_NOTES = b"just some notes, not a photo\n" * 10
HTML_PAGE = b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>"
SVG_IMAGE = b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect width="64" height="64"/></svg>'

# The start of an iPhone photo: an ISO media ftyp box (brand heic, compatible mif1 and heic), then a meta box.
HEIC_HEADER = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00\x00\x01\x00meta" + bytes(248)

UNSUPPORTED = {
    "text-renamed.jpg": TEXT_NOTES,
    "page.html": HTML_PAGE,
    "vector.svg": SVG_IMAGE,
    "animated.gif": animated_gif(),
    "photo.webp": image_bytes(RED, fmt="WEBP"),
    "scan.tiff": image_bytes(RED, fmt="TIFF"),
    "iphone.heic": HEIC_HEADER,
}

BROKEN = {
    "truncated.jpg": truncated_jpeg(),
    "corrupt-header.jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\xde\xad\xbe\xef" * 64,
    "zero-pixels.png": png_with_header(0, 0, zlib.compress(b"")),
    "one-pixel.png": image_bytes(RED, size=(1, 1)),
    "too-thin.png": image_bytes(RED, size=(MIN_SIDE - 1, 400)),
}


# ---------------------------------------------------------------- HTTP bodies


def multipart(*parts: tuple[str, bytes | None, str, bytes], boundary: str = BOUNDARY) -> tuple[bytes, str]:
    """Encode ``(field, filename, part content type, data)`` parts; filename bytes are sent as is."""
    out = b""
    for field, filename, ctype, data in parts:
        disposition = f'Content-Disposition: form-data; name="{field}"'.encode()
        if filename is not None:
            disposition += b'; filename="' + filename + b'"'
        out += f"--{boundary}\r\n".encode() + disposition + f"\r\nContent-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def secret_filename(suffix: str) -> bytes:
    return f"{SECRET_NAME}-{suffix}".encode()


@dataclass(frozen=True)
class Kind:
    """One kind of upload and its documented answer.

    ``status`` 200 means a valid prediction whose top class is ``expect`` (or any class
    when ``expect`` is None); otherwise ``expect`` is the JSON error code.
    """

    name: str
    body: bytes
    content_type: str | None
    status: int
    expect: str | None
    filename: bytes | None = None
    upload: bytes | None = None  # the file's own bytes, for the no-leak checks

    def headers(self) -> dict:
        return {"Content-Type": self.content_type} if self.content_type else {}


def file_kind(name: str, data: bytes, status: int, expect: str | None, *, filename: bytes | None = None,
              ctype: str = "application/octet-stream") -> Kind:
    filename = filename if filename is not None else secret_filename(name)
    body, content_type = multipart(("image", filename, ctype, data))
    return Kind(name, body, content_type, status, expect, filename, data)


def raw_kind(name: str, data: bytes, content_type: str | None, status: int, expect: str | None) -> Kind:
    return Kind(name, data, content_type, status, expect, None, data)


@functools.lru_cache(maxsize=1)
def corpus() -> tuple[Kind, ...]:
    """Every kind, with the status and code (or class) the README documents for it."""
    big = image_bytes(RED) + b"\x00" * OVER_LIMIT_BYTES
    kinds = [
        # supported modes and oddities that must still be screened
        file_kind("rgb.jpg", image_bytes(RED, fmt="JPEG"), 200, RED_CLASS, ctype="image/jpeg"),
        file_kind("cmyk.jpg", cmyk_jpeg(BLUE), 200, BLUE_CLASS),
        file_kind("grey-16bit.png", grey16(60000), 200, RED_CLASS),  # bright grey ties break to vasc
        file_kind("palette-transparency.png", palette_with_transparent_red(), 200, BLUE_CLASS),
        file_kind("rgba.png", image_bytes(GREEN, mode="RGBA"), 200, GREEN_CLASS),
        file_kind("exif-rotated.jpg", exif_rotated_jpeg(GREEN), 200, GREEN_CLASS),
        file_kind("mpo-phone.jpg", mpo(GREEN), 200, GREEN_CLASS),
        file_kind("huge-filename.png", image_bytes(RED), 200, RED_CLASS,
                  filename=secret_filename("x" * 5000 + ".png")),
        file_kind("non-utf8-filename.png", image_bytes(GREEN), 200, GREEN_CLASS,
                  filename=SECRET_NAME.encode() + b"-\xff\xfe\xe9\x80.png"),
        raw_kind("raw-jpeg-body", image_bytes(BLUE, fmt="JPEG"), "image/jpeg", 200, BLUE_CLASS),
        raw_kind("raw-png-declared-jpeg", image_bytes(BLUE), "image/jpeg", 200, BLUE_CLASS),
        # the wrong kind of file: 415
        *(file_kind(name, data, 415, "unsupported_media_type") for name, data in UNSUPPORTED.items()),
        raw_kind("raw-webp-body", image_bytes(RED, fmt="WEBP"), "image/webp", 415, "unsupported_media_type"),
        raw_kind("wrong-content-type", b"image=not-really", "text/plain", 415, "unsupported_media_type"),
        raw_kind("json-body", b'{"image": "aGVsbG8="}', "application/json", 415, "unsupported_media_type"),
        # a JPEG/PNG that cannot be used: 422
        *(file_kind(name, data, 422, "invalid_image") for name, data in BROKEN.items()),
        file_kind("bomb-30000x30000.png", decompression_bomb(), 422, "invalid_image"),
        # request mistakes: 400
        file_kind("empty.png", b"", 400, "empty_file"),
        raw_kind("empty-raw-body", b"", "image/png", 400, "empty_file"),
        raw_kind("no-body", b"", None, 400, "missing_file"),
        Kind("wrong-field-name", *multipart(("photo", secret_filename("wrong-field.png"), "image/png", image_bytes())),
             400, "missing_file", secret_filename("wrong-field.png")),
        Kind("two-files", *multipart(("image", secret_filename("a.png"), "image/png", image_bytes(RED)),
                                     ("image", secret_filename("b.png"), "image/png", image_bytes(BLUE))),
             400, "too_many_files", secret_filename("a.png")),
        Kind("two-file-fields", *multipart(("image", secret_filename("c.png"), "image/png", image_bytes(RED)),
                                           ("other", secret_filename("d.png"), "image/png", image_bytes(BLUE))),
             400, "too_many_files", secret_filename("c.png")),
        # too large: 413
        file_kind("11mb.png", big, 413, "payload_too_large"),
        raw_kind("11mb-raw-body", big, "image/png", 413, "payload_too_large"),
    ]
    names = [k.name for k in kinds]
    assert len(names) == len(set(names)), "corpus kinds must have unique names"
    return tuple(kinds)


def kinds_by_name() -> dict[str, Kind]:
    return {k.name: k for k in corpus()}


# ---------------------------------------------------------------- checking an answer


def check_answer(kind: Kind, status: int, mimetype: str, body: dict | None) -> None:
    """Assert one answer is the documented one for ``kind`` (any client: Flask or HTTP)."""
    import jsonschema

    from server.lesions import CLASS_CODES
    from server.web.openapi import openapi_document

    schemas = openapi_document(10)["components"]["schemas"]
    assert status == kind.status, (kind.name, status, body)
    assert mimetype == "application/json", (kind.name, mimetype)
    if status == 200:
        jsonschema.Draft202012Validator(schemas["Prediction"]).validate(body)
        assert sorted(p["code"] for p in body["probabilities"]) == sorted(CLASS_CODES)
        assert abs(sum(p["probability"] for p in body["probabilities"]) - 1.0) <= 1e-6
        if kind.expect:
            assert body["prediction"]["code"] == kind.expect, (kind.name, body["prediction"])
    else:
        jsonschema.Draft202012Validator(schemas["Error"]).validate(body)
        assert body["error"]["code"] == kind.expect, (kind.name, body)
        assert body["error"]["message"].strip()


def leak_probes(kind: Kind) -> list[bytes]:
    """Byte strings that must never show up in a log or a file: the filename and upload bytes."""
    probes = [SECRET_NAME.encode()]
    data = kind.upload or b""
    if data:
        middle = data[len(data) // 2: len(data) // 2 + 24] if len(data) > 48 else data
        if middle.strip(b"\x00"):  # a run of zeros would match innocent binary files
            probes += [middle, middle.hex().encode()]
    return probes
