"""The one error type for a failure a client caused, and the one for an upload that cannot be screened.

``ServiceError`` carries an HTTP status, a stable machine code and a human message; the
web layer answers it as JSON or HTML (``server/web/errors.py``), the batch CLI writes
``code: message`` in its ``error`` column. ``ImageRejected`` is the kind that says "this
upload cannot be screened": not a JPEG/PNG (415), a broken or unusable one (422
``invalid_image``), or not a skin lesion (422 ``not_a_skin_lesion``).
"""

from __future__ import annotations


class ServiceError(Exception):
    """A client-facing failure: HTTP status, a stable machine code and a human message."""

    def __init__(self, status: int, code: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details = dict(details or {})  # more fields for the JSON error object, e.g. looks_like


class ImageRejected(ServiceError, ValueError):
    """An upload that cannot be screened, with the HTTP status and code to report."""


HEIF_PHOTO = ("This is a HEIC/HEIF photo, the iPhone camera's default format, which the service does not read. "
              "Share or export it as a JPEG (or set Settings > Camera > Formats to Most Compatible).")


class HeifPhoto(ImageRejected):
    """A HEIC/HEIF upload (415): said apart from other formats because the fix is one setting on the phone."""

    def __init__(self):
        super().__init__(415, "unsupported_media_type", f"{HEIF_PHOTO} Upload a JPEG or PNG photo.")


NOT_A_SKIN_LESION = (
    "This image does not look like a photo of a skin lesion, so it was not screened. Please upload a close-up, "
    "well-lit photo of the lesion alone (a dermoscopic photo if you have one). If this is a photo of a skin "
    "lesion, the model cannot judge it: please show the lesion to a dermatologist."
)


LOOKS_LIKE = "To the model it looks like: {label}."


class NotASkinLesion(ImageRejected):
    """The refusal of an image the non-skin check flags: no diagnosis is given for it.

    ``looks_like`` (what the ImageNet classifier saw, when it was confident) leads the
    message and rides in the JSON as ``error.looks_like``; ``reason`` is the message
    without it, for a page that shows the two apart.
    """

    def __init__(self, looks_like: str | None = None):
        self.looks_like, self.reason = looks_like, NOT_A_SKIN_LESION
        message = NOT_A_SKIN_LESION if looks_like is None else f"{LOOKS_LIKE.format(label=looks_like)} {NOT_A_SKIN_LESION}"
        super().__init__(422, "not_a_skin_lesion", message, {"looks_like": looks_like})


def not_a_skin_lesion(looks_like: str | None = None) -> NotASkinLesion:
    return NotASkinLesion(looks_like)
