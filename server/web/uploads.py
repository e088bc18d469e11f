"""Pull the one uploaded image out of a request, for the API and the upload form alike.

Accepts multipart field ``image`` (curl ``-F image=@lesion.jpg``, the web form) or a raw
body sent with an ``image/*`` Content-Type. The bytes stay in memory; nothing is saved.
The optional patient fields (``age``, ``sex``, ``site``) ride beside the image in the same
multipart form; ``patient_context`` reads them, and ``server.patient`` alone parses them. So do
the optional filing fields (``patient_id``, ``clinician``: ``filing_details``, parsed by
``server.filing``), which only the printed reports show.
"""

from __future__ import annotations

import io
import re

from flask import Request, after_this_request, current_app, has_request_context, request
from flask.wrappers import Request as FlaskRequest
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.utils import cached_property
from werkzeug.wsgi import LimitedStream

from server.filing import FILING_FIELDS, FilingDetails, bad_filing_field
from server.patient import PATIENT_FIELDS, PatientContext, bad_patient_field
from server.problems import ServiceError
from server.web import slow_uploads

FIELD = "image"
MB = 1024 * 1024


def max_upload_bytes() -> int:
    """The exact limit on the image itself; MAX_CONTENT_LENGTH adds 64 KiB for multipart framing only."""
    return int(current_app.config["MAX_UPLOAD_MB"]) * MB


def too_large_message(exc: RequestEntityTooLarge | None = None) -> str:
    """Which limit a 413 broke: a form's own (``FormTooLarge``), else the upload's size."""
    if isinstance(exc, FormTooLarge):
        return exc.description
    return f"The upload is larger than the {current_app.config['MAX_UPLOAD_MB']} MB limit."


def upload_too_large() -> ServiceError:
    return ServiceError(413, "payload_too_large", too_large_message())


class FormTooLarge(RequestEntityTooLarge):
    """A multipart form within the byte limit that breaks another one (too many parts, a field too
    large): its ``description`` names that limit, so the 413 does not wrongly blame the upload's size."""


def check_form_limits(parts: list[bytes], max_parts: int | None, max_field: int | None) -> None:
    """Refuse a form by the limit it breaks, before Werkzeug refuses it with no reason.

    ``parts`` are the raw parts between boundaries (the first, the preamble, and the last, the
    epilogue, excluded). A text field (no filename) is held in memory as a string, hence its limit.
    """
    if max_parts is not None and len(parts) > max_parts:
        raise FormTooLarge(f"The form has {len(parts):,} parts; the limit is {max_parts:,}. "
                           f"Send the image in '{FIELD}' and at most the patient fields.")
    if max_field is None:
        return
    for part in parts:
        head, _, content = part.partition(b"\r\n\r\n")
        if b"filename=" in head or len(content) - 2 <= max_field:  # the part ends with CRLF before the boundary
            continue
        name = re.search(rb'name="([^"]*)"', head)
        field = name.group(1).decode("utf-8", "replace")[:40] if name else "?"
        raise FormTooLarge(f"The form field '{field}' is larger than the {max_field:,}-byte limit for a field.")


class StrictMaxStream(LimitedStream):
    """A streamed (chunked) body capped at MAX_CONTENT_LENGTH that is refused, not cut, past it.

    Werkzeug's capped stream raises 413 when read in pieces past the cap, but ``read()``
    of the whole body stops AT the cap and returns the first 10 MB as if that were all:
    a chunked 11 MB PNG was screened (200), a chunked 11 MB multipart upload lost its
    closing boundary and was answered "no file" (400). Both must be 413.
    """

    def __init__(self, stream, limit: int):
        super().__init__(stream, limit, is_max=True)
        self._source = stream

    def readall(self) -> bytes:
        data = super().readall()
        if self.is_exhausted and self._source.read(1):
            raise RequestEntityTooLarge()
        return data


def release_socket(response):
    """after_this_request hook: the body has been read, the response may take its time."""
    slow_uploads.release_socket(request.environ)
    return response


class InMemoryRequest(FlaskRequest):
    """Flask's request, but multipart file parts are kept in memory, never spooled to disk.

    Werkzeug's default spools any file part over 500 KB into a temporary file, so an
    ordinary photo would touch the disk. MAX_CONTENT_LENGTH bounds the whole body (10 MB
    by default), which bounds the memory this uses.
    """

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return io.BytesIO()

    @cached_property
    def stream(self):
        """The body stream: a slow client is cut off or turned away (``server/web/slow_uploads.py``), and a
        chunked body over MAX_CONTENT_LENGTH is refused (413) instead of truncated."""
        if has_request_context() and slow_uploads.guard_input(self.environ, current_app.config):
            after_this_request(release_socket)
        limit = self.max_content_length
        if self.content_length is None and limit is not None and self.environ.get("wsgi.input_terminated"):
            return StrictMaxStream(self.environ["wsgi.input"], limit)  # chunked: the server ends the stream
        return super().stream

    def _get_stream_for_parsing(self):
        """Repair non-UTF-8 part headers before Werkzeug parses the body.

        Werkzeug decodes part headers as UTF-8 and, on failure, silently drops the whole
        form, so a photo whose filename a client sent in Latin-1 or raw bytes would be
        answered "no file". The bytes are in memory anyway (bounded by MAX_CONTENT_LENGTH).
        """
        stream = super()._get_stream_for_parsing()
        boundary = self.mimetype_params.get("boundary", "")
        if self.mimetype != "multipart/form-data" or not boundary:
            return stream
        body, delimiter = stream.read(), b"--" + boundary.encode("latin-1", "replace")
        check_form_limits(body.split(delimiter)[1:-1], self.max_form_parts, self.max_form_memory_size)
        return io.BytesIO(utf8_part_headers(body, delimiter))


def utf8_part_headers(body: bytes, delimiter: bytes) -> bytes:
    """Re-encode any multipart part header block that is not UTF-8 (read as Latin-1).

    Only the header blocks change; part contents are copied byte for byte. The boundary
    cannot occur inside a part (RFC 2046), so splitting on its ``delimiter`` is safe.
    """
    parts = body.split(delimiter)
    for i in range(1, len(parts)):
        head, blank, rest = parts[i].partition(b"\r\n\r\n")
        if not blank:
            continue
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            parts[i] = head.decode("latin-1").encode("utf-8") + blank + rest
    return delimiter.join(parts)


def upload_bytes(request: Request) -> bytes:
    """Return the uploaded image's bytes or raise a ServiceError saying what was wrong."""
    mimetype = request.mimetype or ""
    if mimetype == "multipart/form-data":
        files = request.files.getlist(FIELD)
        if not files:
            others = ", ".join(sorted(request.files.keys())) or "none"
            raise ServiceError(400, "missing_file", f"Send the image in the multipart field '{FIELD}' (file fields received: {others}).")
        # One screening answers for one image: a second file, in any field, would be
        # silently ignored otherwise, and the client would not know which one was screened.
        received = len(list(request.files.items(multi=True)))
        if received > 1:
            raise ServiceError(400, "too_many_files", f"Send exactly one image in '{FIELD}'; received {received} files.")
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
    if len(data) > max_upload_bytes():  # a raw body has no framing: the 64 KiB of room are not for the image
        raise upload_too_large()
    return data


def upload_filename(request: Request) -> str | None:
    """The uploaded file's own name, as the client sent it (None for a raw body, or a part without one)."""
    upload = request.files.get(FIELD) if request.mimetype == "multipart/form-data" else None
    return (upload.filename or None) if upload is not None else None


def form_fields(request: Request, names: tuple[str, ...], refusal) -> dict[str, str | None]:
    """Each text field of ``names`` as sent (None when left out), or ``refusal(name, why)`` for one sent twice:
    one copy is never picked silently, since the client would not know which value was used."""
    values = {}
    for name in names:
        given = request.form.getlist(name)
        if len(given) > 1:
            raise refusal(name, f"{name} was sent {len(given)} times; send it once (or leave it out).")
        values[name] = given[0] if given else None
    return values


def filing_details(request: Request) -> FilingDetails:
    """The optional multipart fields ``patient_id`` and ``clinician``, parsed by ``server.filing``.

    Raises the 400 ``invalid_patient_id`` / ``invalid_clinician`` for a value outside the limits
    or sent twice. The values are printed on a report and go nowhere else.
    """
    return FilingDetails.parse(**form_fields(request, FILING_FIELDS, bad_filing_field))


def patient_context(request: Request) -> PatientContext:
    """The optional multipart fields ``age``, ``sex`` and ``site``, parsed by ``server.patient``.

    A raw-body upload has no form, so it carries no context. Raises the 400 ``invalid_age`` /
    ``invalid_sex`` / ``invalid_site`` for a bad value or a field sent twice.
    """
    return PatientContext.parse(**form_fields(request, PATIENT_FIELDS, bad_patient_field))
