"""Upload bytes -> validated, upright, 8-bit RGB image at working size. The ONE decoding path.

A phone's camera writes 12 to 50 megapixels; the model reads a 192 px square, the result page a
384 px thumbnail (its longer side). Decoding every pixel would cost a 12 MP upload several times
a 600x450 one, and let a small file that declares a huge canvas cost seconds and gigabytes. So
an upload is decoded only down to ``WORKING_SIDE`` on its shorter side: a JPEG in the DCT
(``Image.draft``, 1/2 to 1/8 scale), any other file reduced by whole-pixel box averaging, band by
band, before its conversion to RGB. A photo whose shorter side is under twice ``WORKING_SIDE`` (HAM10000's
600x450 included) is decoded exactly as before, so the model, its thresholds and the non-skin
statistics see the same pixels they were fitted on.

What a file may declare is checked from its header, before any pixel is decoded: at most
``MAX_PIXELS``, at least ``MIN_SIDE`` a side, and above ``LIGHT_PIXELS`` no more pixels per
byte than a real photo of its kind could carry (``MAX_PIXELS_PER_BYTE``), so no upload costs much
more than its bytes suggest. Nothing here touches the disk or logs the bytes.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from server.problems import HeifPhoto, ImageRejected

# MPO is how Pillow names the multi-picture JPEGs many phone cameras write: a JPEG whose
# first frame is the photo. Refusing it would refuse ordinary phone photos.
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG"})
# File signatures of the formats we accept. Bytes that start like a JPEG or PNG but that
# Pillow cannot identify are a broken JPEG/PNG (422), not an unsupported format (415).
SIGNATURES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG"}
# ISO media brands of HEIC/HEIF, the iPhone camera's default format since iOS 11: Pillow cannot
# read them, and a client posting an iPhone photo as it was shot is told how to send it (HeifPhoto).
HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"})
MIN_SIDE = 32  # below this a photo cannot show a lesion's structure
# 50 MP: the 48 and 50 MP modes of current phone cameras (8160x6120 is 49.9 MP). Their larger
# modes (64 to 200 MP) write JPEGs well past the 10 MB upload limit anyway.
MAX_PIXELS = 50_000_000
# The shorter side an upload is decoded down to (not below): nearly twice the model's 192 px input,
# and a 4:3 photo's longer side then holds the 384 px thumbnail. Chosen by measurement (bench/
# bench_photo_size.py, README "Phone photos"): a 12 MP JPEG reaches it at 1/8 scale (500x375),
# 2.4 ms faster than 384 px at 1/4, and its answers match the 600x450 copy's as often.
WORKING_SIDE = 360
# Up to this many pixels any file is decoded whatever its size (about 12 ms at worst, a flat RGBA
# PNG): HAM10000's 600x450 photos and the non-skin check's 224 px test pictures among them.
LIGHT_PIXELS = 500_000
# Above LIGHT_PIXELS, the most pixels a file may declare per byte it carries. A baseline JPEG
# needs about a byte per 8x8 block even when flat (64 px/B); camera photos carry 2-10 px/B.
# Only arithmetic coding or a flat canvas gets past 128. A progressive JPEG decodes every
# scan over the whole canvas (about 7 times a baseline one's cost, and a full-size coefficient
# buffer), and PNG inflates every pixel, so their bounds are tighter: a lossless photo carries
# about a byte a pixel, a progressive photo upscaled from 600x450 about 27 px/B.
MAX_PIXELS_PER_BYTE = {"JPEG": 128, "progressive JPEG": 32, "PNG": 8}
BAND_ROWS = 32  # rows of the reduced image converted at a time: bounds the conversion's copies

# Pillow's own bomb guard warns at MAX_IMAGE_PIXELS and raises at twice that. Our check in
# ``open_upload`` reads the header dimensions and refuses anything over MAX_PIXELS before
# decoding, so Pillow's guard is a second line of defence. Its warning is silenced (for
# Pillow's module only) instead of being turned into an error with ``catch_warnings``,
# which swaps process-wide state and is not safe in a threaded worker.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

ORIENTATION_TAG = 0x0112
TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _unsupported(detail: str) -> ImageRejected:
    return ImageRejected(415, "unsupported_media_type", f"{detail} Upload a JPEG or PNG photo.")


def _invalid(detail: str) -> ImageRejected:
    return ImageRejected(422, "invalid_image", detail)


def open_upload(data: bytes, working_side: int = WORKING_SIDE) -> Image.Image:
    """Decode upload bytes into an upright 8-bit RGB image, or raise ImageRejected.

    The image comes back at its own size when its shorter side is under twice ``working_side``,
    else reduced to a shorter side of ``working_side`` to twice that. The size is checked from
    the header before any pixel is decoded, so a small file that declares a huge canvas is
    refused without allocating it.
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
        if is_heif(data):
            raise HeifPhoto() from None
        raise _unsupported("The file is not a recognised image.") from None
    if img.format not in SUPPORTED_FORMATS:
        raise _unsupported(f"{img.format or 'This'} images are not supported.")
    check_declared_size(img, len(data))
    try:
        return decode_reduced(img, working_side)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        raise _invalid("The image is truncated or corrupt and could not be decoded.") from None


def upload_limits_in_words() -> str:
    """What ``check_declared_size`` refuses, for the API contract and the docs page."""
    per_byte = ", ".join(f"{n} for a {kind}" for kind, n in MAX_PIXELS_PER_BYTE.items())
    return (f"at least {MIN_SIDE} px a side, at most {MAX_PIXELS:,} pixels, and above {LIGHT_PIXELS:,} pixels "
            f"no more pixels per byte of the file than {per_byte}; checked from the header, before decoding")


def check_declared_size(img: Image.Image, n_bytes: int) -> None:
    """Refuse (422) a header whose canvas is too large, too small, or too large for the file's bytes.

    The last is what makes a 14 KB file that claims 6000x6000 cost nothing: no real photo of
    that kind is that light, and decoding it would cost what a photo a hundred times larger does.
    """
    width, height = img.size
    pixels = width * height
    if pixels > MAX_PIXELS:
        raise _invalid(f"The image is {width}x{height} pixels; the limit is {MAX_PIXELS:,} pixels.")
    if min(width, height) < MIN_SIDE:
        raise _invalid(f"The image is {width}x{height} pixels; each side must be at least {MIN_SIDE} px.")
    kind = file_kind(img)
    if pixels > LIGHT_PIXELS and pixels > n_bytes * MAX_PIXELS_PER_BYTE[kind]:
        raise _invalid(f"The image declares {width}x{height} pixels in only {n_bytes:,} bytes, far fewer than a "
                       f"{kind} photo that size carries. Upload the photo as the camera saved it.")


def file_kind(img: Image.Image) -> str:
    """The key of ``MAX_PIXELS_PER_BYTE`` for an opened file: PNG, JPEG or progressive JPEG."""
    if img.format == "PNG":
        return "PNG"
    return "progressive JPEG" if img.info.get("progressive") or img.info.get("progression") else "JPEG"


def decode_reduced(img: Image.Image, working_side: int) -> Image.Image:
    """Decode an opened upload to upright 8-bit RGB, no larger than needed (see the module).

    A JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps ``working_side``
    (the DCT's scaled inverse averages each 8x8 block: an antialiased reduction); whole
    multiples of ``working_side`` left are box-averaged away band by band (``reduced_rgb8``).
    The EXIF orientation is read from the file and applied last, to the small image.
    """
    if img.format in ("JPEG", "MPO"):
        img.draft(None, (working_side, working_side))
    img.load()
    orientation = img.getexif().get(ORIENTATION_TAG)
    rgb = reduced_rgb8(img, box_factor(img.size, working_side))
    method = TRANSPOSE_FOR_ORIENTATION.get(orientation)
    return rgb if method is None else rgb.transpose(method)


def box_factor(size: tuple[int, int], working_side: int) -> int:
    """The whole-pixel factor that brings the shorter side of ``size`` down to ``working_side`` or
    just above: 1 (unchanged) below twice ``working_side``."""
    return max(1, min(size) // working_side)


def reduced_rgb8(img: Image.Image, factor: int) -> Image.Image:
    """``to_rgb8`` of ``img`` box-averaged by ``factor``, converted a band at a time.

    Converting first would copy the whole canvas in RGB (three bytes a pixel, and a float
    array for 16-bit files); a band of ``BAND_ROWS`` output rows bounds those copies whatever
    the canvas. A palette image is converted before averaging (indices do not average).
    """
    if factor == 1:
        return to_rgb8(img)
    width, height = img.size
    out = Image.new("RGB", (width // factor, height // factor))
    top = tone_top(img)
    step = BAND_ROWS * factor
    for y in range(0, out.height * factor, step):
        band = img.crop((0, y, out.width * factor, min(y + step, out.height * factor)))
        out.paste(to_rgb8(band, top).reduce(factor), (0, y // factor))
    return out


def tone_top(img: Image.Image) -> float | None:
    """The white level of a 16- or 32-bit greyscale image (65535, or 255 when its values fit 8 bits), else None.

    Decided on the whole image, so every band of one picture is scaled alike."""
    if img.mode.startswith("I;16"):
        return 65535.0
    if img.mode in ("I", "F"):
        return 65535.0 if img.getextrema()[1] > 255 else 255.0
    return None


def sniff_format(data: bytes) -> str | None:
    """Name the accepted format ``data`` starts like (JPEG or PNG), or None.

    Decides 415 versus 422 for bytes Pillow cannot identify: a file with a JPEG or PNG
    signature is a damaged upload of a supported type, anything else is the wrong type.
    """
    for signature, name in SIGNATURES.items():
        if data.startswith(signature):
            return name
    return None


def is_heif(data: bytes) -> bool:
    """Whether ``data`` opens with an ISO media ``ftyp`` box of a HEIC/HEIF brand."""
    return data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS


def to_rgb8(img: Image.Image, top: float | None = None) -> Image.Image:
    """Convert any mode real files use to 8-bit RGB without crushing its tones.

    Pillow's ``convert("RGB")`` clips 16-bit and 32-bit greyscale at 255, which would turn
    a 16-bit PNG white; those are rescaled from their full range (``top``: the white level,
    by default ``tone_top`` of ``img``) instead, in float32. Alpha is dropped by compositing
    onto white, the usual background of a saved photo with transparency.
    """
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        top = top or tone_top(img)
        arr = np.asarray(img, dtype=np.float32) * np.float32(255.0 / top)
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode == "RGB":
        return img  # convert() would copy every pixel: 30 ms of a 12 MP phone photo
    return img.convert("RGB")
