"""The named corpus that checks the non-skin refusal: made pictures, and lesions made harder.

Every picture made here or shipped inside a package, none fetched:

- ``skimage_pictures``: scikit-image's photographs and pictures, the first part of the
  everyday corpus (``training/nonskin_everyday.py`` adds the rest). Must be refused.
- ``made_pictures``: flat colours (skin tones above all), gradients, sunsets, noise, text
  screenshots, charts, a face-like drawing. Must be refused.
- ``hard_cases``: real lesion photos made harder the way phones and clinics make them
  (darker, brighter, slightly blurred, rotated, with a ruler or hair, at 150 px). Must
  still be screened. Lesions shifted as other clinics photograph them are in
  ``training/nonskin_shifted.py``.

The refusal's thresholds are fitted on the training split and only *checked* on these
pictures: they are few, and fitting to them would make the figures meaningless.
Each item is ``(name, kind, PIL image)`` so a figure can be broken down by kind.
"""

from __future__ import annotations

import io
import logging
import math
import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

# skimage.data images that are photographs or pictures a user might plausibly upload;
# the 3-D volumes and the ones that need a download (pooch) are left out.
SKIMAGE_PICTURES = (
    "astronaut", "binary_blobs", "brick", "camera", "cat", "cell", "checkerboard", "clock", "coffee", "coins",
    "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
    "microaneurysms", "moon", "page", "retina", "rocket", "shepp_logan_phantom", "text",
)
SKIN_TONES = {"skin_light": (235, 200, 175), "skin_medium": (200, 150, 115), "skin_tan": (176, 122, 86),
              "skin_dark": (120, 80, 55), "skin_deep": (80, 52, 38)}
FLAT_COLOURS = {"white": (255, 255, 255), "black": (0, 0, 0), "grey": (128, 128, 128), "red": (220, 20, 20),
                "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (240, 220, 30), "purple": (120, 40, 160),
                "brown": (120, 70, 40), **SKIN_TONES}
# How the hard cases are made: moderate changes a real photo of a lesion goes through.
DARKER, BRIGHTER = 0.7, 1.3  # brightness factors (about half a stop either way)
BLUR_RADIUS = 1.0  # Gaussian, in pixels of a 224 px picture
ROTATION_DEGREES = 20
SMALL_SIDE = 150
HARD_KINDS = ("darker", "brighter", "blurred", "rotated", "ruler", "hair", "150 px")


def _as_rgb8(array) -> Image.Image:
    """Any skimage array (bool, float, 16-bit, grey, RGBA) -> an 8-bit RGB picture."""
    a = np.asarray(array)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = a.astype(np.float64)
        a = (255 * (a - a.min()) / max(float(a.max() - a.min()), 1e-9)).astype(np.uint8)
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    return Image.fromarray(a[..., :3])


def skimage_pictures() -> list[tuple[str, str, Image.Image]]:
    """scikit-image's photographs and pictures (``SKIMAGE_PICTURES``); none when scikit-image is missing."""
    try:
        import skimage.data
    except ImportError:  # said aloud: a non-skin check fitted without them is fitted on a smaller corpus
        logging.getLogger(__name__).warning("scikit-image is not installed: the non-skin corpus lacks its photographs "
                                            "(pip install -e '.[train]')")
        return []
    out = []
    for name in SKIMAGE_PICTURES:
        try:
            out.append((f"skimage.{name}", "photo (scikit-image)", _as_rgb8(getattr(skimage.data, name)())))
        except Exception:  # an image this scikit-image release lacks, or one that needs a download
            continue
    return out


def made_pictures(size: int = 224, seed: int = 0) -> list[tuple[str, str, Image.Image]]:
    """Pictures made here that a confused or careless user might upload."""
    rng = np.random.default_rng(seed)
    out = [(f"flat.{n}", "flat colour", Image.new("RGB", (size, size), c)) for n, c in FLAT_COLOURS.items()]
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    for i, (a, b) in enumerate((((0, 0, 0), (255, 255, 255)), ((255, 0, 0), (0, 0, 255)),
                                ((240, 200, 170), (90, 50, 30)), ((0, 120, 255), (255, 255, 0)))):
        g = np.asarray(a, np.float32) + (np.asarray(b, np.float32) - a) * ramp[:, None]
        out.append((f"gradient.{i}h", "gradient", Image.fromarray(np.repeat(g[None], size, 0).astype(np.uint8))))
        out.append((f"gradient.{i}v", "gradient", Image.fromarray(np.repeat(g[:, None], size, 1).astype(np.uint8))))
    out += [(f"sunset.{i}", "sunset", sunset(size, i)) for i in range(3)]
    for i in range(3):
        out.append((f"noise.colour{i}", "noise", Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))))
        grey = np.clip(rng.normal(128, 50, (size, size)), 0, 255).astype(np.uint8)
        out.append((f"noise.grey{i}", "noise", Image.fromarray(grey).convert("RGB")))
    out += [(f"screenshot.{i}", "text screenshot", text_screenshot(size, i, rng)) for i in range(6)]
    out += [(f"chart.{k}", "chart", img) for k, img in charts(size, rng)]
    out += [(f"face.{i}", "face-like drawing", face_drawing(size, i)) for i in range(2)]
    return out


def sunset(size: int, variant: int) -> Image.Image:
    """Sky from orange to deep blue, a sun disc and a dark horizon: warm, smooth, lesion-coloured in parts."""
    t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    top = np.asarray([(40, 40, 110), (70, 30, 90), (20, 60, 140)][variant], np.float32)
    bottom = np.asarray([(250, 150, 60), (240, 110, 70), (255, 190, 90)][variant], np.float32)
    sky = np.broadcast_to(top + (bottom - top) * t, (size, size, 3)).copy()
    img = Image.fromarray(sky.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    r = size // 8
    cx, cy = size // 2 + (variant - 1) * size // 5, int(size * 0.62)
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(255, 220, 120))
    draw.rectangle([0, int(size * 0.7), size, size], fill=(30 + 10 * variant, 25, 20))
    return img


def text_screenshot(size: int, variant: int, rng) -> Image.Image:
    bg, fg = ((255, 255, 255), (20, 20, 20)) if variant % 2 == 0 else ((30, 30, 36), (220, 220, 220))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, size, 18], fill=(60, 110, 200) if variant % 3 else (200, 200, 200))
    words = "the quick brown fox jumps over the lazy dog settings account login error 404 submit cancel".split()
    font = ImageFont.load_default()
    for line in range(14):
        draw.text((6, 24 + line * 14), " ".join(rng.choice(words, 5)), fill=fg, font=font)
    if variant >= 3:
        draw.rectangle([size - 80, size - 36, size - 10, size - 12], outline=fg, fill=(0, 120, 215))
    return img


def face_drawing(size: int, variant: int) -> Image.Image:
    """A skin-coloured oval with eyes and a mouth: the simplest 'portrait'."""
    img = Image.new("RGB", (size, size), [(230, 230, 240), (90, 130, 90)][variant])
    draw = ImageDraw.Draw(img)
    draw.ellipse([size * 0.2, size * 0.1, size * 0.8, size * 0.9], fill=list(SKIN_TONES.values())[variant * 2])
    for x in (0.38, 0.62):
        draw.ellipse([size * (x - 0.05), size * 0.38, size * (x + 0.05), size * 0.46], fill=(40, 30, 30))
    draw.arc([size * 0.35, size * 0.55, size * 0.65, size * 0.75], 20, 160, fill=(150, 40, 40), width=max(2, size // 60))
    return img


def charts(size: int, rng) -> list[tuple[str, Image.Image]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    for kind in ("line", "bar", "scatter", "pie", "hist", "imshow"):
        fig, ax = plt.subplots(figsize=(3, 3), dpi=size / 3)
        x = np.arange(20)
        if kind == "line":
            ax.plot(x, np.cumsum(rng.normal(size=20)))
            ax.plot(x, np.cumsum(rng.normal(size=20)))
        elif kind == "bar":
            ax.bar(list("abcdefg"), rng.uniform(1, 10, 7))
        elif kind == "scatter":
            ax.scatter(rng.normal(size=80), rng.normal(size=80), c=rng.uniform(size=80))
        elif kind == "pie":
            ax.pie(rng.uniform(1, 5, 5))
        elif kind == "hist":
            ax.hist(rng.normal(size=500), bins=25)
        else:
            ax.imshow(rng.normal(size=(12, 12)), cmap="viridis")
        ax.set_title(kind)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        buf.seek(0)
        out.append((kind, Image.open(buf).convert("RGB")))
    return out


# ---------------------------------------------------------------- hard cases: lesions that must pass


def rotated(img: Image.Image, degrees: float = ROTATION_DEGREES) -> Image.Image:
    """Rotate and keep the largest centred square with no empty corners, as a tilted phone would frame it."""
    w, h = img.size
    turned = img.rotate(degrees, resample=Image.BILINEAR)
    a = math.radians(degrees)
    side = int(min(w, h) / (abs(math.cos(a)) + abs(math.sin(a))))
    left, top = (w - side) // 2, (h - side) // 2
    return turned.crop((left, top, left + side, top + side))


def with_ruler(img: Image.Image) -> Image.Image:
    """A millimetre ruler along the bottom edge, as clinics photograph lesions beside one."""
    img = img.copy()
    draw = ImageDraw.Draw(img)
    w, h = img.size
    band = max(8, h // 12)
    draw.rectangle([0, h - band, w, h], fill=(235, 235, 225))
    step = max(3, w // 40)
    for i, x in enumerate(range(0, w, step)):
        tick = band * (0.6 if i % 5 == 0 else 0.3)
        draw.line([x, h - band, x, h - band + tick], fill=(20, 20, 20), width=1)
    return img


def with_hair(img: Image.Image, seed: int) -> Image.Image:
    """A few dark, thin, gently curved hairs across the field, drawn as quadratic Bézier curves."""
    rng = np.random.default_rng(seed)
    img = img.copy()
    draw = ImageDraw.Draw(img)
    w, h = img.size
    width = max(1, round(min(w, h) / 200))
    for _ in range(int(rng.integers(3, 7))):
        p0, p2 = rng.uniform(0, 1, 2) * (w, h), rng.uniform(0, 1, 2) * (w, h)
        p1 = (p0 + p2) / 2 + rng.normal(0, min(w, h) / 8, 2)
        t = np.linspace(0, 1, 40)[:, None]
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
        colour = tuple(int(c) for c in rng.integers(15, 70) + rng.integers(0, 15, 3))
        draw.line([tuple(p) for p in pts], fill=colour, width=width)
    return img


def at_side(img: Image.Image, side: int = SMALL_SIDE) -> Image.Image:
    w, h = img.size
    f = side / min(w, h)
    return img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.BILINEAR)


def harden(img: Image.Image, kind: str, seed: int = 0) -> Image.Image:
    """One lesion photo made harder in one of ``HARD_KINDS`` ways."""
    if kind == "darker":
        return ImageEnhance.Brightness(img).enhance(DARKER)
    if kind == "brighter":
        return ImageEnhance.Brightness(img).enhance(BRIGHTER)
    if kind == "blurred":
        return img.filter(ImageFilter.GaussianBlur(BLUR_RADIUS * min(img.size) / 224))
    if kind == "rotated":
        return rotated(img)
    if kind == "ruler":
        return with_ruler(img)
    if kind == "hair":
        return with_hair(img, seed)
    if kind == "150 px":
        return at_side(img)
    raise ValueError(f"hard-case kind must be one of {', '.join(HARD_KINDS)}; got {kind!r}")


def hard_cases(lesions: list[Image.Image], seed: int = 0) -> list[tuple[str, str, Image.Image]]:
    """Every lesion in every ``HARD_KINDS`` way: ``len(lesions) * 7`` pictures that must be screened."""
    return [(f"lesion{i}.{kind}", kind, harden(img, kind, seed + i))
            for kind in HARD_KINDS for i, img in enumerate(lesions)]
