"""Real lesion photos shifted the way other clinics photograph them: they must be screened, never refused.

Each shift is a moderate, plausible change (another camera's white balance, contrast, a round
dermatoscope field, gel bubbles, hair, a ruler and marker ink, JPEG, soft focus, a wider
field), seeded per lesion so the set is the same on every run; three combined shifts stand
for whole clinics. Each item is ``(name, kind, PIL image)``.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from training.nonskin_corpus import with_hair, with_ruler

# How other clinics' photos differ from HAM10000's: each shift a moderate, plausible change,
# seeded per lesion so the set is the same on every run.
CAST_GAIN = 0.15  # per-channel white-balance gain drawn in [1 - g, 1 + g]
MORE_CONTRAST, LESS_CONTRAST = 1.4, 0.65
FIELD_RADIUS = (0.88, 1.05)  # where a round dermatoscope field ends, as a share of the half-side
JPEG_QUALITY = (60, 95)
SHIFT_BLUR_RADIUS = 1.5  # Gaussian, in pixels of a 224 px picture: a slightly soft focus
WIDER_FIELD = (1.3, 1.6)  # the picture's side grows by this factor with skin around it, then shrinks back
SHIFT_KINDS = ("white balance", "more contrast", "less contrast", "round field", "gel bubbles and glare", "hair",
               "ruler and ink", "jpeg", "blur", "wider field")
COMBINED_SHIFTS = {
    "clinic A (warm, round field, jpeg)": ("white balance", "round field", "jpeg"),
    "clinic B (wider, less contrast, blur)": ("wider field", "less contrast", "blur"),
    "clinic C (bubbles, hair, ruler, more contrast)": ("more contrast", "gel bubbles and glare", "hair", "ruler and ink"),
}


def white_balance(img: Image.Image, rng) -> Image.Image:
    """Another camera's white balance: each channel scaled by its own gain (a warm, cool or tinted cast)."""
    gains = rng.uniform(1 - CAST_GAIN, 1 + CAST_GAIN, 3).astype(np.float32)
    return Image.fromarray(np.clip(np.asarray(img, np.float32) * gains, 0, 255).astype(np.uint8))


def round_field(img: Image.Image, rng) -> Image.Image:
    """The dark corners of a dermatoscope's circular field, with a soft rim, as a contact lens frames it."""
    w, h = img.size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.hypot(xx - (w - 1) / 2, yy - (h - 1) / 2) / (min(w, h) / 2)
    edge = float(rng.uniform(*FIELD_RADIUS))
    light = np.clip((edge - r) / 0.06, 0.0, 1.0)[..., None]
    dark = rng.uniform(0, 25)
    return Image.fromarray((np.asarray(img, np.float32) * light + dark * (1 - light)).astype(np.uint8))


def gel_bubbles(img: Image.Image, rng) -> Image.Image:
    """Air bubbles in the immersion gel (bright rims, lighter inside) and a specular glare spot."""
    w, h = img.size
    s = min(w, h)
    base = img.convert("RGBA")
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(3, 9))):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.01, 0.05) * s
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(255, 255, 255, 40), outline=(255, 255, 255, 200),
                     width=max(1, round(r / 6)))
    gx, gy, gr = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h, rng.uniform(0.03, 0.08) * s
    draw.ellipse([gx - gr, gy - gr * 0.6, gx + gr, gy + gr * 0.6], fill=(255, 255, 250, 210))
    layer = layer.filter(ImageFilter.GaussianBlur(max(1.0, s / 300)))
    return Image.alpha_composite(base, layer).convert("RGB")


def ruler_and_ink(img: Image.Image, rng) -> Image.Image:
    """A ruler along one edge and surgical-marker ink: a ring drawn around the lesion and a few dots."""
    img = with_ruler(img)
    draw = ImageDraw.Draw(img)
    w, h = img.size
    ink = tuple(int(c) for c in rng.integers((60, 20, 90), (130, 60, 170)))  # violet to blue skin marker
    r = rng.uniform(0.3, 0.42) * min(w, h)
    cx, cy = w / 2 + rng.normal(0, w / 30), h / 2 + rng.normal(0, h / 30)
    start = float(rng.uniform(0, 360))
    draw.arc([cx - r, cy - r, cx + r, cy + r], start, start + float(rng.uniform(200, 330)), fill=ink,
             width=max(2, round(min(w, h) / 90)))
    for _ in range(int(rng.integers(1, 4))):
        x, y, d = rng.uniform(0, w), rng.uniform(0, h * 0.85), max(2, min(w, h) / 70)
        draw.ellipse([x - d, y - d, x + d, y + d], fill=ink)
    return img


def jpeg_again(img: Image.Image, rng) -> Image.Image:
    """Re-encoded as a JPEG of quality in ``JPEG_QUALITY``, as a phone, a PACS or an email would."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def wider_field(img: Image.Image, rng) -> Image.Image:
    """Framed from further away: mirrored skin around the photo, the whole shrunk back to its size,
    so the lesion is smaller and more skin surrounds it."""
    w, h = img.size
    grow = float(rng.uniform(*WIDER_FIELD))
    px, py = round(w * (grow - 1) / 2), round(h * (grow - 1) / 2)
    a = np.pad(np.asarray(img), ((py, py), (px, px), (0, 0)), mode="symmetric")
    return Image.fromarray(a).resize((w, h), Image.BILINEAR)


def shift(img: Image.Image, kind: str, seed: int = 0) -> Image.Image:
    """One lesion photo as another clinic might take it, in one of ``SHIFT_KINDS`` ways."""
    rng = np.random.default_rng(seed)
    if kind == "white balance":
        return white_balance(img, rng)
    if kind == "more contrast":
        return ImageEnhance.Contrast(img).enhance(MORE_CONTRAST)
    if kind == "less contrast":
        return ImageEnhance.Contrast(img).enhance(LESS_CONTRAST)
    if kind == "round field":
        return round_field(img, rng)
    if kind == "gel bubbles and glare":
        return gel_bubbles(img, rng)
    if kind == "hair":
        return with_hair(img, seed)
    if kind == "ruler and ink":
        return ruler_and_ink(img, rng)
    if kind == "jpeg":
        return jpeg_again(img, rng)
    if kind == "blur":
        return img.filter(ImageFilter.GaussianBlur(SHIFT_BLUR_RADIUS * min(img.size) / 224))
    if kind == "wider field":
        return wider_field(img, rng)
    raise ValueError(f"shift must be one of {', '.join(SHIFT_KINDS)}; got {kind!r}")


def shifted_kinds() -> tuple[str, ...]:
    """Every shift on its own, then the combined ones, in report order."""
    return SHIFT_KINDS + tuple(COMBINED_SHIFTS)


def shifted(img: Image.Image, kind: str, seed: int = 0) -> Image.Image:
    """One lesion photo shifted one way (a ``SHIFT_KINDS`` name) or several (a ``COMBINED_SHIFTS`` name)."""
    for i, step in enumerate(COMBINED_SHIFTS.get(kind, (kind,))):
        img = shift(img, step, seed * 31 + i)
    return img


def shifted_lesions(lesions: list[Image.Image], seed: int = 0) -> list[tuple[str, str, Image.Image]]:
    """Every lesion in every ``shifted_kinds`` way: real lesions as other clinics photograph them, which must
    be screened (perhaps with the unusual-image warning), never refused."""
    return [(f"lesion{i}.{kind}", kind, shifted(img, kind, seed + i))
            for kind in shifted_kinds() for i, img in enumerate(lesions)]
