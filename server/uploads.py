"""Pull the one uploaded image out of a request, for the API and the upload form alike.

Accepts multipart field ``image`` (curl ``-F image=@lesion.jpg``, the web form) or a raw
body sent with an ``image/*`` Content-Type. The bytes stay in memory; nothing is saved.
"""

from __future__ import annotations

from flask import Request

from server.errors import ServiceError

FIELD = "image"


def upload_bytes(request: Request) -> bytes:
    """Return the uploaded image's bytes or raise a ServiceError saying what was wrong."""
    mimetype = request.mimetype or ""
    if mimetype == "multipart/form-data":
        files = request.files.getlist(FIELD)
        if not files:
            others = ", ".join(sorted(request.files.keys())) or "none"
            raise ServiceError(400, "missing_file", f"Send the image in the multipart field '{FIELD}' (fields received: {others}).")
        if len(files) > 1:
            raise ServiceError(400, "too_many_files", f"Send exactly one image in '{FIELD}'; received {len(files)}.")
        data = files[0].read()
    elif mimetype.startswith("image/"):
        data = request.get_data(cache=False)
    elif not request.content_length and not mimetype:
        raise ServiceError(400, "missing_file", f"No image was sent. Use multipart field '{FIELD}' or an image/* body.")
    else:
        raise ServiceError(
            415,
            "unsupported_media_type",
            f"Content-Type {mimetype or 'unknown'} is not accepted: send multipart/form-data with field '{FIELD}', "
            "or the raw image with Content-Type image/jpeg or image/png.",
        )
    if not data:
        raise ServiceError(400, "empty_file", "The uploaded file is empty.")
    return data
