"""Which report a request gets, on which paper, under which file name: the dispatch for API and pages."""

from __future__ import annotations

from server.prediction import Prediction

REPORT_FORMATS = ("json", "txt", "pdf")
PAPER_SIZES = ("a4", "letter")
_MIME = {"json": "application/json", "txt": "text/plain", "pdf": "application/pdf"}


def report_filename(prediction: Prediction, ext: str) -> str:
    """A download name that sorts by time, says what it is, and names the report id a clinic files it under."""
    stamp = "".join(ch for ch in prediction.created_at[:19] if ch.isdigit())
    report_id = f"-{prediction.record.report_id}" if prediction.record else ""
    return f"lesion-screening-report-{stamp or 'result'}{report_id}.{ext}"


def requested_format(format_arg: str | None, accept) -> str:
    """Pick json/txt/pdf from ``?format=`` first, then the Accept header; JSON by default.

    ``accept`` is a werkzeug MIMEAccept. Clients sending ``*/*`` (curl) or nothing get JSON,
    because ``best_match`` prefers the first listed type when qualities tie. Raises
    ValueError for an unknown ``format`` so the API can answer 400.
    """
    if format_arg:
        fmt = format_arg.strip().lower()
        fmt = {"text": "txt", "plain": "txt"}.get(fmt, fmt)
        if fmt not in REPORT_FORMATS:
            raise ValueError(f"format must be one of {', '.join(REPORT_FORMATS)}; got {format_arg!r}")
        return fmt
    best = accept.best_match([_MIME["json"], _MIME["pdf"], _MIME["txt"]]) if accept else None
    return {v: k for k, v in _MIME.items()}.get(best or "", "json")


def paper_size(paper: str | None) -> str:
    """Validate ``?paper=``; A4 unless the caller asks for US Letter."""
    paper = (paper or "a4").strip().lower()
    if paper not in PAPER_SIZES:
        raise ValueError(f"paper must be a4 or letter; got {paper!r}")
    return paper
