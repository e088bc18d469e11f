"""Prediction -> what a person reads: the assessment, the text report and the PDF report.

``render_report`` is what the API (``/predict?format=``) and the pages (report downloads)
both send. Everything here is a pure function of a ``Prediction`` (its thumbnail
included) and, for the PDF, the model card.
"""

from __future__ import annotations

from server.filing import FilingDetails
from server.imaging import thumbnail_jpeg
from server.model.card import ModelCard
from server.prediction import Prediction
from server.reports.assessment import (
    NOT_A_DIAGNOSIS,
    REPORT_TITLE,
    SYSTEM_NAME,
    Assessment,
    assess,
    balanced_accuracy_text,
    format_timestamp,
    summary,
    percent,
)
from server.reports.formats import PAPER_SIZES, REPORT_FORMATS, paper_size, report_filename, requested_format
from server.reports.pdf import pdf_report
from server.reports.text import text_report

__all__ = ["NOT_A_DIAGNOSIS", "PAPER_SIZES", "REPORT_FORMATS", "REPORT_TITLE", "SYSTEM_NAME", "Assessment", "assess",
           "balanced_accuracy_text", "format_timestamp", "paper_size",
           "pdf_report", "percent", "render_report", "requested_format", "summary", "text_report", "thumbnail_jpeg"]


def render_report(prediction: Prediction, fmt: str, paper: str | None = None, card: ModelCard | None = None,
                  filing: FilingDetails = FilingDetails()) -> tuple[str | bytes, str, str]:
    """(body, content type, filename) of a txt or pdf report; ``filing`` (the patient identifier and the
    requesting clinician) is printed in its header and goes nowhere else.

    The content type is the whole header value, charset included: send it as ``content_type``
    (Werkzeug's ``mimetype`` would append a second charset to a text type).
    Raises ValueError for an unknown format or paper size.
    """
    if fmt == "txt":
        return text_report(prediction, card, filing), "text/plain; charset=utf-8", report_filename(prediction, "txt")
    if fmt == "pdf":
        body = pdf_report(prediction, prediction.thumbnail, paper=paper_size(paper), card=card, filing=filing)
        return body, "application/pdf", report_filename(prediction, "pdf")
    raise ValueError(f"no report format {fmt!r}; use txt or pdf")
