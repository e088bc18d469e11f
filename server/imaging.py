"""Upload bytes -> validated RGB image -> model input (and its thumbnail). The ONE preprocessing path.

Training (``training/``) and serving both call these functions, so a model never sees
pixels prepared differently from the ones it learned on. The geometry is fixed and
recorded in every model card as ``PREPROCESSING_ID``; the predictor refuses a model whose
card names another.

Geometry: honour EXIF orientation, convert to 8-bit RGB, centre-crop to the largest
square, resize to ``size`` x ``size`` (bilinear, antialiased), scale to [-1, 1] as
MobileNetV2 expects. Centre-cropping rather than squashing keeps lesion shape (aspect
distortion changes border irregularity, a melanoma cue) and makes HAM10000's two framings
(224 px centre crops and 200x150 full frames) show the same field of view.

Nothing here touches the disk or logs the bytes: uploads stay in memory.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from server.problems import ImageRejected

PREPROCESSING_ID = "exif-rgb8/centre-square/bilinear/mobilenet_v2[-1,1]"
# Optional colour constancy, applied to the centre square before scaling. A model's card
# names it inside its preprocessing id (``preprocessing_id``), and trainer and service
# both apply it through ``colour_normalised``.
COLOUR_NONE = "none"
COLOUR_SHADES_OF_GRAY = "shades-of-gray"
COLOURS = (COLOUR_NONE, COLOUR_SHADES_OF_GRAY)
SHADES_OF_GRAY_POWER = 6  # Finlayson and Trezzi's p; 6 is what ISIC challenge entries used
# MPO is how Pillow names the multi-picture JPEGs many phone cameras write: a JPEG whose
# first frame is the photo. Refusing it would refuse ordinary phone photos.
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG"})
# File signatures of the formats we accept. Bytes that start like a JPEG or PNG but that
# Pillow cannot identify are a broken JPEG/PNG (422), not an unsupported format (415).
SIGNATURES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG"}
THUMBNAIL_PX = 384  # the upload's copy on the result page, in the report token and the PDF
MIN_SIDE = 32  # below this a photo cannot show a lesion's structure
MAX_PIXELS = 40_000_000  # a 40 MP photo is plausible; a 30000x30000 PNG is a decompression bomb
# MobileNetV2's input range: x / PIXEL_SCALE - PIXEL_OFFSET maps [0, 255] to [-1, 1].
# The trainer's tf.data pipeline applies the same two constants to tensors.
PIXEL_SCALE = 127.5
PIXEL_OFFSET = 1.0

# Pillow's own bomb guard warns at MAX_IMAGE_PIXELS and raises at twice that. Our check in
# ``open_upload`` reads the header dimensions and refuses anything over MAX_PIXELS before
# decoding, so Pillow's guard is a second line of defence. Its warning is silenced (for
# Pillow's module only) instead of being turned into an error with ``catch_warnings``,
# which swaps process-wide state and is not safe in a threaded worker.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _unsupported(detail: str) -> ImageRejected:
    return ImageRejected(415, "unsupported_media_type", f"{detail} Upload a JPEG or PNG photo.")


def _invalid(detail: str) -> ImageRejected:
    return ImageRejected(422, "invalid_image", detail)


def open_upload(data: bytes) -> Image.Image:
    """Decode upload bytes into an upright 8-bit RGB image, or raise ImageRejected.

    The size is checked from the header before any pixel is decoded, so a small file that
    declares a huge canvas is refused without allocating it.
    """
    if not data:
        raise ImageRejected(400, "empty_file", "The uploaded file is empty.")
    claimed = sniff_format(data)
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise _invalid(f"The image declares too many pixels (limit {MAX_PIXELS:,}).") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        if claimed:  # starts like a JPEG/PNG, but the header cannot be parsed
            raise _invalid(f"The {claimed} header is corrupt.") from None
        raise _unsupported("The file is not a recognised image.") from None
    if img.format not in SUPPORTED_FORMATS:
        raise _unsupported(f"{img.format or 'This'} images are not supported.")
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise _invalid(f"The image is {width}x{height} pixels; the limit is {MAX_PIXELS:,} pixels.")
    if min(width, height) < MIN_SIDE:
        raise _invalid(f"The image is {width}x{height} pixels; each side must be at least {MIN_SIDE} px.")
    try:
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # a decoded upload is ours to turn: no full-size copy
        return to_rgb8(img)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        raise _invalid("The image is truncated or corrupt and could not be decoded.") from None


def sniff_format(data: bytes) -> str | None:
    """Name the accepted format ``data`` starts like (JPEG or PNG), or None.

    Decides 415 versus 422 for bytes Pillow cannot identify: a file with a JPEG or PNG
    signature is a damaged upload of a supported type, anything else is the wrong type.
    """
    for signature, name in SIGNATURES.items():
        if data.startswith(signature):
            return name
    return None


def to_rgb8(img: Image.Image) -> Image.Image:
    """Convert any mode real files use to 8-bit RGB without crushing its tones.

    Pillow's ``convert("RGB")`` clips 16-bit and 32-bit greyscale at 255, which would turn
    a 16-bit PNG white; those are rescaled from their full range instead. Alpha is dropped
    by compositing onto white, the usual background of a saved photo with transparency.
    """
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode == "RGB":
        return img  # convert() would copy every pixel: 30 ms of a 12 MP phone photo
    return img.convert("RGB")


def centre_square(img: Image.Image, size: int) -> Image.Image:
    """Centre-crop to the largest square and resize it to ``size`` x ``size``."""
    width, height = img.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))


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
    """Read an image file from disk as the trainer does: upright RGB, centre square, colour, uint8.

    Training keeps images as uint8 so augmentation can run before ``scale_pixels``.
    """
    with Image.open(path) as img:
        img = to_rgb8(ImageOps.exif_transpose(img))
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
