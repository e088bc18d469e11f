"""The everyday corpus: photographs that must be refused, from the packages installed here.

Every photo is read at run time from a package (none is committed, none fetched), and each
item's name says where it came from (``package:path``):

- scikit-image's ``skimage.data`` photographs, scikit-learn's two sample images and
  matplotlib's portrait (PyPI wheels: scikit-image from the ``train`` and ``test`` extras);
- Debian's ``opencv-doc``: the photographs among OpenCV's sample data (fruit, sweets, a
  packet of peanuts, a dog, a squirrel, a baboon, a footballer, buildings, streets, rooms);
- Debian's ``tuxpaint-stamps-default``: photographed objects cut out for Tux Paint (food,
  animals, vehicles, household things, plants, clothes, people), each put large on a
  backdrop the way a phone photographs a thing on a table: a blurred crop of a wallpaper
  photograph, or a skin-toned, textured surface (a hand or an arm under the object);
- Debian's ``plasma-workspace-wallpapers``: landscape and nature photographs.

``lesion_like_versions`` then makes hard cases of the food photos: close crops, colour casts
towards skin tones, blur and heavy JPEG, so that colour and texture look like a lesion's
while the object stays what it is. Each item is ``(name, kind, PIL image)``; the kind says
what it shows and how it was made, so a figure can be broken down by kind.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
STAMPS = Path("/usr/share/tuxpaint/stamps")
WALLPAPERS = Path("/usr/share/wallpapers")
# The photographs among OpenCV's sample data, by what they show (drawings, charts, logos, text
# and calibration patterns are left out: the made pictures cover those).
OPENCV_PHOTOS = {
    "food": ("apple.jpg", "orange.jpg", "fruits.jpg", "smarties.png", "box.png"),
    "animal": ("baboon.jpg", "chicky_512.png", "squirrel_cls.jpg", "butterfly.jpg"),
    "person": ("messi5.jpg", "basketball1.png"),
    "scene": ("aero1.jpg", "building.jpg", "home.jpg", "leuvenA.jpg", "graf1.png", "stuff.jpg", "box_in_scene.png",
              "rubberwhale1.png", "board.jpg", "aloeL.jpg", "ela_original.jpg", "starry_night.jpg"),
    "vehicle": ("licenseplate_motion.jpg",),
}
# Tux Paint's stamp folders whose stamps are photographs of things (symbols, seasonal drawings,
# space pictures and every "cartoon" subfolder are drawings).
STAMP_FOLDERS = {"food": "food", "animals": "animal", "vehicles": "vehicle", "household": "household",
                 "plants": "plant", "clothes": "clothes", "people": "person", "hobbies": "household",
                 "sports": "household", "town": "scene", "medical": "household", "military": "vehicle"}
# Skin tones a thing may lie on when photographed in a hand or on an arm (light to deep).
SKIN_BACKDROPS = ((232, 196, 170), (205, 155, 120), (175, 120, 88), (122, 82, 58), (84, 56, 40))
STAMP_SIDE = 320  # the side of a composed stamp photo
STAMP_FILL = 0.8  # the object's longer side, as a share of the photo's side
PHOTO_SIDE = 640  # every package photo is brought down to at most this side: the service decodes to its working size anyway
SKIN_CAST = 0.35  # how far a lesion-like version's colours are pulled towards a skin tone
LESION_LIKE_JPEG_QUALITY = 35


def package_photos() -> list[tuple[str, str, Image.Image]]:
    """Every photograph this corpus reads from installed packages; a package that is missing is skipped."""
    return (python_package_photos() + opencv_photos() + stamp_photos() + wallpaper_photos())


def everyday_photos() -> list[tuple[str, str, Image.Image]]:
    """The whole everyday corpus: the packages' photographs, then lesion-like versions of the food among them."""
    photos = package_photos()
    return photos + lesion_like_versions([item for item in photos if item[1].startswith("food")])


def _small(img: Image.Image, side: int = PHOTO_SIDE) -> Image.Image:
    img = img.convert("RGB")
    img.thumbnail((side, side), Image.BILINEAR)
    return img


def python_package_photos() -> list[tuple[str, str, Image.Image]]:
    """The photographs of the Python packages the project installs: scikit-image, scikit-learn, matplotlib."""
    from training.nonskin_corpus import skimage_pictures

    out = skimage_pictures()
    try:
        from sklearn.datasets import load_sample_images

        sample = load_sample_images()
        for fname, img in zip(sample.filenames, sample.images):
            out.append((f"sklearn.{Path(fname).stem}", "photo (scikit-learn)", Image.fromarray(img)))
    except ImportError:
        pass
    try:
        from matplotlib import cbook

        with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as im:
            out.append(("matplotlib.grace_hopper", "photo (matplotlib)", im.convert("RGB")))
    except (ImportError, OSError):
        pass
    return out


def opencv_photos(folder: Path = OPENCV_DATA) -> list[tuple[str, str, Image.Image]]:
    """The photographs among OpenCV's sample data (Debian's opencv-doc), by ``OPENCV_PHOTOS``."""
    out = []
    for kind, names in OPENCV_PHOTOS.items():
        for name in names:
            if (folder / name).is_file():
                with Image.open(folder / name) as im:
                    out.append((f"opencv-doc:{name}", f"{kind} (opencv-doc)", _small(im)))
    return out


def stamp_files(folder: Path = STAMPS) -> list[tuple[Path, str]]:
    """(file, kind) of every photographed Tux Paint stamp, in a stable order."""
    out = []
    for sub, kind in STAMP_FOLDERS.items():
        for path in sorted((folder / sub).rglob("*.png")) if (folder / sub).is_dir() else ():
            if "cartoon" not in path.relative_to(folder).parts:
                out.append((path, kind))
    return out


def _backdrops() -> list[Image.Image]:
    """Surfaces a thing is photographed on: blurred crops of wallpaper photos when those are installed."""
    out = []
    for _, _, img in wallpaper_photos():
        w, h = img.size
        side = min(w, h)
        crop = img.crop(((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2))
        out.append(crop.resize((STAMP_SIDE, STAMP_SIDE), Image.BILINEAR).filter(ImageFilter.GaussianBlur(6)))
    return out


def skin_surface(tone, rng, side: int = STAMP_SIDE) -> Image.Image:
    """A skin-toned surface with the fine texture and soft shading of skin photographed close up."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    shade = 1.0 + 0.12 * (xx - 0.5) - 0.1 * (yy - 0.5)
    grain = rng.normal(0.0, 6.0, (side, side, 1)).astype(np.float32)
    pixels = np.asarray(tone, np.float32) * shade[..., None] + grain
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.8))


def on_backdrop(stamp: Image.Image, backdrop: Image.Image) -> Image.Image:
    """The cut-out ``stamp`` large in the middle of ``backdrop``, as a phone photographs a thing up close."""
    stamp = stamp.convert("RGBA")
    scale = STAMP_FILL * backdrop.width / max(stamp.size)
    stamp = stamp.resize((max(1, round(stamp.width * scale)), max(1, round(stamp.height * scale))), Image.BILINEAR)
    out = backdrop.convert("RGBA")
    out.alpha_composite(stamp, ((out.width - stamp.width) // 2, (out.height - stamp.height) // 2))
    return out.convert("RGB")


def stamp_photos(folder: Path = STAMPS, seed: int = 0) -> list[tuple[str, str, Image.Image]]:
    """Each photographed Tux Paint stamp on a backdrop: every other one on skin, the rest on a wallpaper
    photo (or on skin too when no wallpaper is installed)."""
    rng = np.random.default_rng(seed)
    backdrops = _backdrops()
    out = []
    for i, (path, kind) in enumerate(stamp_files(folder)):
        on_skin = i % 2 == 0 or not backdrops
        backdrop = (skin_surface(SKIN_BACKDROPS[i % len(SKIN_BACKDROPS)], rng) if on_skin
                    else backdrops[i % len(backdrops)])
        with Image.open(path) as im:
            photo = on_backdrop(im, backdrop)
        where = "on skin" if on_skin else "on a surface"
        out.append((f"tuxpaint-stamps-default:{path.relative_to(folder)}", f"{kind} {where} (tuxpaint-stamps-default)",
                    photo))
    return out


def wallpaper_photos(folder: Path = WALLPAPERS) -> list[tuple[str, str, Image.Image]]:
    """Each KDE wallpaper's smallest landscape image (Debian's plasma-workspace-wallpapers)."""
    out = []
    for theme in sorted(folder.iterdir()) if folder.is_dir() else ():
        images = [p for p in (theme / "contents" / "images").glob("*.*") if "x" in p.stem]
        landscape = [p for p in images if _landscape_pixels(p.stem) is not None]
        if landscape:
            path = min(landscape, key=lambda p: _landscape_pixels(p.stem))
            with Image.open(path) as im:
                out.append((f"plasma-workspace-wallpapers:{theme.name}", "scene (plasma-workspace-wallpapers)", _small(im)))
    return out


def _landscape_pixels(stem: str) -> int | None:
    """'1920x1080' -> its pixel count when it is a landscape size, else None."""
    try:
        w, h = (int(v) for v in stem.split("x"))
    except ValueError:
        return None
    return w * h if w >= h else None


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def close_crop(img: Image.Image) -> Image.Image:
    """The middle three quarters of the picture: the object fills the frame as a lesion fills a dermatoscope's,
    and is still whole enough to be named."""
    w, h = img.size
    return img.crop((w // 8, h // 8, w - w // 8, h - h // 8))


def skin_cast(img: Image.Image, tone) -> Image.Image:
    """Colours pulled ``SKIN_CAST`` of the way towards a skin tone, contrast kept: a warm, lesion-like palette."""
    pixels = np.asarray(img.convert("RGB"), np.float32)
    grey = pixels.mean(axis=2, keepdims=True)
    toned = grey / 128.0 * np.asarray(tone, np.float32)
    return Image.fromarray(np.clip((1 - SKIN_CAST) * pixels + SKIN_CAST * toned, 0, 255).astype(np.uint8))


def lesion_like_versions(items, seed: int = 0) -> list[tuple[str, str, Image.Image]]:
    """Each photo made to look more like a lesion photo in three ways: a close crop with a skin-tone cast,
    the same softly blurred, and a heavy JPEG of a dimmer, warmer version."""
    out = []
    for i, (name, _, img) in enumerate(items):
        tone = SKIN_BACKDROPS[(seed + i) % len(SKIN_BACKDROPS)]
        cast = skin_cast(close_crop(img), tone)
        out.append((f"{name}+crop+skin cast", "food, lesion-like (crop, skin-tone cast)", cast))
        out.append((f"{name}+crop+skin cast+blur", "food, lesion-like (crop, skin-tone cast, blur)",
                    cast.filter(ImageFilter.GaussianBlur(1.5 * min(cast.size) / 224))))
        dim = ImageEnhance.Brightness(skin_cast(img, tone)).enhance(0.8)
        out.append((f"{name}+dim+skin cast+jpeg", "food, lesion-like (dimmer, skin-tone cast, jpeg)",
                    _jpeg(dim, LESION_LIKE_JPEG_QUALITY)))
    return out
