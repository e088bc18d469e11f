"""What the benchmarks post: a real HAM10000 photo from ../shared (upscaled when asked), validation photos
in turn, or a textured synthetic JPEG, and the multipart body a browser or curl sends."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def sample_jpeg(size=(600, 450), seed=0) -> bytes:
    """A photo-sized JPEG with texture, so decode and resize cost what a real upload costs."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


SHARED_IMAGES = ROOT.parent / "shared" / "data" / "ham10000" / "images"


def upload_for(image: Path | None, size: tuple[int, int] | None = None) -> tuple[bytes, str]:
    """The JPEG every client posts: --image, else a real HAM10000 photo from ../shared when
    present (the trained model's non-skin check refuses synthetic noise), else a 600x450
    textured JPEG with the decode cost of a photo. With ``size``, the photo upscaled to it."""
    if image is None and SHARED_IMAGES.is_dir():
        image = next(iter(sorted(SHARED_IMAGES.glob("*.jpg"))), None)
    if image is not None and size:
        return upscaled_jpeg(image, size), f"{image.name} upscaled to {size[0]}x{size[1]}"
    if image is not None:
        return image.read_bytes(), f"{image.name}"
    return sample_jpeg(), "synthetic 600x450 JPEG"


def upscaled_jpeg(photo: Path, size: tuple[int, int], quality: int = 90) -> bytes:
    """The photo resized to ``size`` (bicubic) and saved as a JPEG: the pixels of a lesion, a phone's byte count."""
    with Image.open(photo) as img:
        big = img.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def multipart(jpeg: bytes) -> tuple[bytes, str]:
    """The body a browser or ``curl -F image=@lesion.jpg`` sends, built once, before timing."""
    boundary = "----bench-boundary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="lesion.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n").encode()
    return head + jpeg + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def validation_photos(n: int) -> list[bytes]:
    """The first ``n`` validation photos of the shipped split, as uploads (empty without ../shared)."""
    import csv

    with open(ROOT / "saved_models" / "split.csv", newline="") as f:
        ids = [row["image_id"] for row in csv.DictReader(f) if row["split"] == "val"][:n]
    return [(SHARED_IMAGES / f"{i}.jpg").read_bytes() for i in ids if (SHARED_IMAGES / f"{i}.jpg").is_file()]
