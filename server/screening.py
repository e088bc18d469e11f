"""The screening use case: one upload in, one ``Prediction`` out, the same for every caller.

``screen`` is what the API (``POST /predict``), the upload form (``POST /screen``) and the
batch CLI all run: decode and validate the bytes, predict, refuse a non-skin image, and
time the whole (``timing.total_ms`` travels inside the Prediction). It is also the one place the
optional patient context (``server.patient.PatientContext``) reaches the predictor and is
attached to the answer, so no caller can screen with one context and report another, and the place each
answer gets its report record (``server.filing.ReportRecord``: a report id, the image's name and SHA-256, the
time, the precision served). A failure the upload caused is an ``ImageRejected`` (status, code, message),
whoever asked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from server import filing
from server.decoding import open_upload
from server.imaging import thumbnail_jpeg
from server.patient import PatientContext
from server.prediction import Prediction
from server.problems import ServiceError, not_a_skin_lesion


@dataclass(frozen=True)
class ScreeningOptions:
    """What the caller wants beyond the prediction itself."""

    explain: bool = False  # add a Grad-CAM heatmap
    explain_class: str | None = None  # of this class instead of ``Prediction.explained_class``
    explain_all: bool = False  # and every other class's grid, so a page can switch between them
    thumbnail: bool = False  # keep a small JPEG of the upload (result page, PDF report)
    filename: str | None = None  # the upload's own file name, for the report record (None: a raw body)
    timezone: str = filing.DEFAULT_REPORT_TIMEZONE  # REPORT_TIMEZONE: the record's local time


def screen(upload: bytes, options: ScreeningOptions, predictor, patient: PatientContext | None = None) -> Prediction:
    """Read, validate and screen one upload with ``predictor`` (a ``server.model.predictor.Predictor``).

    ``patient``: what the user said about the patient, already parsed (None: nothing given);
    the predictor gets it and the Prediction carries it.

    Raises ``ImageRejected`` for bytes that are not a usable JPEG/PNG and for an image the
    non-skin check flags (422 ``not_a_skin_lesion``: no diagnosis), and a 400
    ``ServiceError`` for an unknown ``explain_class``.
    """
    patient = patient or PatientContext()
    started, when = time.perf_counter(), filing.utc_now()
    image = open_upload(upload)
    try:
        prediction = predictor.predict_image(image, explain=options.explain, explain_class=options.explain_class,
                                             patient=patient, explain_all=options.explain_all)
    except ValueError as exc:  # an unknown explain_class
        raise ServiceError(400, "bad_request", str(exc)) from None
    if prediction.out_of_distribution:
        raise not_a_skin_lesion(prediction.nonskin.looks_like)
    total_ms = round((time.perf_counter() - started) * 1000.0, 2)
    record = filing.ReportRecord.made(upload, options.filename, predictor.precision, when, options.timezone)
    return replace(prediction, timing=replace(prediction.timing, total_ms=total_ms),
                   thumbnail=thumbnail_jpeg(image) if options.thumbnail else None,
                   patient=patient, created_at=record.created_at, record=record)
