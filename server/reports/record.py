"""The rows that let a clinic file a report: its header (who, whom, which report, when) and its trace
(the image's name and SHA-256, the model's full SHA-256, the precision served).

The text and the PDF report print the same rows in the same words; a ``Prediction`` made
outside the screening use case (no ``record``) still gets its date and its model.
"""

from __future__ import annotations

from server.filing import FilingDetails
from server.prediction import Prediction
from server.reports.assessment import format_timestamp

REPORT_ID = "Report ID"
DATE_AND_TIME = "Date and time"
MODEL = "Model"
NO_FILE_NAME = "(none: sent as the request body)"


def header_rows(prediction: Prediction, filing: FilingDetails) -> list[tuple[str, str]]:
    """Whom the report is about and who asked (when given), its id, and when, in UTC and locally."""
    record = prediction.record
    rows = list(filing.rows())
    if record is not None:
        rows.append((REPORT_ID, record.report_id))
    rows.append((DATE_AND_TIME, time_words(prediction)))
    return rows


def time_words(prediction: Prediction) -> str:
    """When it was screened: in UTC, and in REPORT_TIMEZONE beside it (``ReportRecord.time_words``)."""
    return prediction.record.time_words() if prediction.record else format_timestamp(prediction.created_at)


def trace_rows(prediction: Prediction) -> list[tuple[str, str]]:
    """What the answer was made from, in full, so a filed report can be matched to its image and model file."""
    record, model = prediction.record, prediction.model
    rows = []
    if record is not None:
        rows += [("Image file", record.image_filename or NO_FILE_NAME), ("Image SHA-256", record.image_sha256)]
    rows += [(MODEL, f"{model.name}, version {model.version}"), ("Model file SHA-256", model.sha256)]
    if record is not None:
        rows.append(("Precision served", record.precision))
    return rows
