"""Validated RGB image -> model input (and its thumbnail). The ONE preprocessing path.

Training (``training/``) and serving both call these functions, so a model never sees
pixels prepared differently from the ones it learned on. The geometry is fixed and
recorded in every model card as ``PREPROCESSING_ID``; the predictor refuses a model whose
card names another.

Geometry: honour EXIF orientation, convert to 8-bit RGB, centre-crop to the largest
square, resize to ``size`` x ``size`` (bilinear, antialiased), scale to [-1, 1] as
MobileNetV2 expects. Centre-cropping rather than squashing keeps lesion shape (aspect
distortion changes border irregularity, a melanoma cue) and makes HAM10000's two framings
(224 px centre crops and 200x150 full frames) show the same field of view.

Upload bytes become that RGB image in ``server/decoding.py`` (``open_upload``). Nothing here
touches the disk or logs the bytes: uploads stay in memory.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from server.decoding import open_upload

PREPROCESSING_ID = "exif-rgb8/centre-square/bilinear/mobilenet_v2[-1,1]"
# Optional colour constancy, applied to the centre square before scaling. A model's card
# names it inside its preprocessing id (``preprocessing_id``), and trainer and service
# both apply it through ``colour_normalised``.
COLOUR_NONE = "none"
COLOUR_SHADES_OF_GRAY = "shades-of-gray"
COLOURS = (COLOUR_NONE, COLOUR_SHADES_OF_GRAY)
SHADES_OF_GRAY_POWER = 6  # Finlayson and Trezzi's p; 6 is what ISIC challenge entries used
THUMBNAIL_PX = 384  # the upload's copy on the result page, in the report token and the PDF
# MobileNetV2's input range: x / PIXEL_SCALE - PIXEL_OFFSET maps [0, 255] to [-1, 1].
# The trainer's tf.data pipeline applies the same two constants to tensors.
# Pillow's two-step resize threshold for ``centre_square`` (see there): reductions under 3x are exact.
REDUCING_GAP = 1.5
PIXEL_SCALE = 127.5
PIXEL_OFFSET = 1.0


def centre_square(img: Image.Image, size: int) -> Image.Image:
    """Centre-crop to the largest square and resize it to ``size`` x ``size``.

    The square is centred exactly, at a half pixel when the sides differ by an odd count: a photo
    reduced in the DCT (500x375 from 4000x3000) then frames the field of view its 600x450 copy does,
    where rounding shifted it half a pixel and changed about 1 answer in 100 (bench/bench_photo_size.py).
    Even differences (HAM10000's 600x450, 200x150 and 224 px squares) crop the same pixels as ever.

    ``REDUCING_GAP``: a square three or more times ``size`` (a phone photo's, decoded at a quarter)
    is first box-reduced by a whole factor, which costs 1.1 instead of 1.9 ms from 750 px; a smaller
    one (HAM10000's 450 px, training and serving alike) is resized exactly as without it.
    """
    width, height = img.size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side),
                      reducing_gap=REDUCING_GAP)


def preprocessing_id(colour: str = COLOUR_NONE) -> str:
    """The id a model card records for this geometry with ``colour`` constancy."""
    if colour not in COLOURS:
        raise ValueError(f"colour must be one of {', '.join(COLOURS)}; got {colour!r}")
    if colour == COLOUR_NONE:
        return PREPROCESSING_ID
    head, tail = PREPROCESSING_ID.rsplit("/", 1)
    return f"{head}/{colour}-p{SHADES_OF_GRAY_POWER}/{tail}"


def colour_of(preprocessing: str) -> str | None:
    """The colour constancy a card's preprocessing id names, or None when this service implements no such id."""
    return next((c for c in COLOURS if preprocessing_id(c) == preprocessing), None)


def shades_of_gray(rgb: np.ndarray, power: int = SHADES_OF_GRAY_POWER) -> np.ndarray:
    """Shades of Gray colour constancy (Finlayson and Trezzi, 2004) of uint8 RGB (h, w, 3) or (n, h, w, 3).

    Estimates the illuminant as the Minkowski p-mean of each channel and divides it out,
    so a photo under a yellow lamp and one under a blue flash come out alike: images from
    other clinics and cameras differ most in colour cast.
    """
    x = np.asarray(rgb, np.float32)
    axes = (-3, -2)
    illuminant = np.power(np.mean(np.power(x / 255.0, power), axis=axes, keepdims=True), 1.0 / power)
    illuminant = illuminant / np.maximum(np.linalg.norm(illuminant, axis=-1, keepdims=True), 1e-6)
    gains = 1.0 / (np.maximum(illuminant, 1e-3) * np.sqrt(3.0))
    return np.clip(x * gains + 0.5, 0, 255).astype(np.uint8)


def colour_normalised(rgb: np.ndarray, colour: str = COLOUR_NONE) -> np.ndarray:
    """``rgb`` (uint8) with the named colour constancy applied; unchanged for 'none'."""
    if colour == COLOUR_NONE:
        return rgb
    if colour == COLOUR_SHADES_OF_GRAY:
        return shades_of_gray(rgb)
    raise ValueError(f"colour must be one of {', '.join(COLOURS)}; got {colour!r}")


def scale_pixels(rgb: np.ndarray) -> np.ndarray:
    """Map uint8 RGB to float32 in [-1, 1], the range MobileNetV2 was trained on."""
    return rgb.astype(np.float32) / PIXEL_SCALE - PIXEL_OFFSET


def model_input(img: Image.Image, size: int, colour: str = COLOUR_NONE) -> np.ndarray:
    """An RGB PIL image -> a (size, size, 3) float32 array ready for the model."""
    return scale_pixels(colour_normalised(np.asarray(centre_square(img, size), dtype=np.uint8), colour))


def load_square_uint8(path, size: int, colour: str = COLOUR_NONE) -> np.ndarray:
    """Read a training photo from disk as an upload of it would be read: upright RGB, centre square, colour, uint8.

    Through ``open_upload``, so a new dataset's 12 MP photos are reduced in the DCT as the service
    reduces its uploads (HAM10000's 600x450 are decoded whole either way), and a file the service
    would refuse raises the same ``ImageRejected``. Training keeps uint8 so augmentation runs before
    ``scale_pixels``.
    """
    img = open_upload(Path(path).read_bytes())
    return colour_normalised(np.asarray(centre_square(img, size), dtype=np.uint8), colour)


def jpeg_bytes(img: Image.Image, quality: int = 80) -> bytes:
    """Encode a picture as JPEG in memory (thumbnails, the PDF's heatmap)."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def thumbnail_jpeg(image: Image.Image, size: int = THUMBNAIL_PX, quality: int = 80) -> bytes:
    """A small JPEG of the upload for the result page, the report token and the PDF.

    Made in memory only: the service never writes an upload to disk.
    """
    thumb = image.convert("RGB")
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
    return jpeg_bytes(thumb, quality)
