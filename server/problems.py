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

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class ImageRejected(ServiceError, ValueError):
    """An upload that cannot be screened, with the HTTP status and code to report."""


NOT_A_SKIN_LESION = (
    "This image does not look like a photo of a skin lesion, so it was not screened. Please upload a close-up, "
    "well-lit photo of the lesion alone (a dermoscopic photo if you have one). If this is a photo of a skin "
    "lesion, the model cannot judge it: please show the lesion to a dermatologist."
)


def not_a_skin_lesion() -> ImageRejected:
    """The refusal of an image the non-skin check flags: no diagnosis is given for it."""
    return ImageRejected(422, "not_a_skin_lesion", NOT_A_SKIN_LESION)
