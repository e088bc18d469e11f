"""Prediction -> what a person reads: the shared assessment, the text report and the PDF report.

Everything here is a pure function of a ``Prediction`` (plus, for the PDF, a thumbnail and
optionally the model card), so the result page, the report downloads and ``/predict?format=``
all say the same thing. Class names, risks, descriptions and advice come from
``server.lesions`` only; this module adds wording *about* a result, never about a class.
"""

from __future__ import annotations

import io
import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime

from PIL import Image

from server.lesions import MALIGNANT_CODES, lesion_class
from server.prediction import Prediction

SYSTEM_NAME = "Skin-lesion screening aid"
REPORT_TITLE = "Skin-lesion screening report"
NOT_A_DIAGNOSIS = "Screening aid, not a diagnosis."
# "Uncertain" is decided by the Prediction (``Prediction.uncertain``): its calibrated top
# probability is below the model card's ``thresholds.uncertain``, chosen on validation
# (0.5 only for a card without one). Nothing here re-derives it.
THUMBNAIL_PX = 384
REPORT_FORMATS = ("json", "txt", "pdf")
PAPER_SIZES = ("a4", "letter")
_MIME = {"json": "application/json", "txt": "text/plain", "pdf": "application/pdf"}


@dataclass(frozen=True)
class Assessment:
    """What a result means for the person: the one place the advice rules live."""

    risk: str
    uncertain: bool
    see_dermatologist: bool
    headline: str
    advice: tuple[str, ...]


def assess(prediction: Prediction) -> Assessment:
    """Turn a prediction into risk and advice.

    High-risk classes and uncertain answers both end in "see a dermatologist": a screening
    aid should err towards a clinician, never towards reassurance it cannot back.
    """
    top = prediction.top
    risk = top.risk
    uncertain = prediction.uncertain
    flagged = bool(prediction.malignant_flag)
    see_dermatologist = uncertain or risk == "high" or flagged
    advice: list[str] = []
    if flagged and risk != "high":
        advice.append(
            f"Although the most likely class is benign, the combined probability of a malignant lesion "
            f"({percent(prediction.malignant_probability)}) reaches this model's screening threshold "
            f"({percent(prediction.malignant_threshold)}). Please have the lesion examined by a dermatologist."
        )
    if uncertain:
        advice.append(
            f"The result is uncertain: the model's best guess has only {percent(top.probability)} probability "
            f"(below the {percent(prediction.uncertain_below, 0)} this model needs to be reliable), so it cannot "
            "tell these conditions apart reliably for this image. "
            "Please have the lesion examined by a dermatologist."
        )
    # When unsure, the class advice is about a guess, so say whose advice it is.
    advice.append(f"About {top.name}: {prediction.advice}" if uncertain else prediction.advice)
    if not see_dermatologist:
        advice.append("If the lesion changes, bleeds, itches or worries you, see a doctor whatever this result says.")
    if see_dermatologist:
        reason = " (uncertain result)" if uncertain and risk != "high" else ""
        reason = " (possible malignancy)" if flagged and risk != "high" and not uncertain else reason
        headline = "See a dermatologist" + reason
    elif risk == "moderate":
        headline = "Probably benign, but have it checked if you are unsure"
    else:
        headline = "Low concern from this image; keep an eye on it"
    return Assessment(risk=risk, uncertain=uncertain, see_dermatologist=see_dermatologist,
                      headline=headline, advice=tuple(advice))


def percent(p: float, digits: int = 1) -> str:
    """0.4567 -> '45.7%': one formatting rule for every page and report."""
    return f"{p * 100:.{digits}f}%"


def format_timestamp(iso: str) -> str:
    """'2024-05-01T12:34:56+00:00' -> '2024-05-01 12:34:56 UTC' (time zone always shown)."""
    try:
        when = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    offset = when.utcoffset()
    zone = "UTC" if not offset else when.strftime("UTC%z")
    return when.strftime("%Y-%m-%d %H:%M:%S ") + zone


def malignant_flag_text(prediction: Prediction) -> str:
    """How P(malignant) compares with the model's screening threshold, in words, or ''."""
    if prediction.malignant_flag is None:
        return ""
    verdict = "at or above" if prediction.malignant_flag else "below"
    return (f"{verdict} this model's screening threshold of {percent(prediction.malignant_threshold)}"
            + (": flagged for a dermatologist" if prediction.malignant_flag else ""))


def malignant_codes() -> str:
    """'akiec + bcc + mel': which classes the malignant probability adds up, from the catalogue."""
    return " + ".join(sorted(MALIGNANT_CODES))


def balanced_accuracy_text(prediction: Prediction) -> str:
    value = prediction.model.test_balanced_accuracy
    return "not recorded" if value is None else percent(float(value))


def thumbnail_jpeg(image: Image.Image, size: int = THUMBNAIL_PX, quality: int = 80) -> bytes:
    """A small JPEG of the upload for the result page, the report token and the PDF.

    Made in memory only: the service never writes an upload to disk.
    """
    thumb = image.convert("RGB")
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def heatmap_jpeg(prediction: Prediction, thumbnail: bytes | None, size: int = 224) -> bytes | None:
    """The Grad-CAM overlay as a JPEG for the PDF: drawn from the Prediction's heatmap grid over
    the thumbnail's centre square (the token carries the grid, not a second picture)."""
    if prediction.heatmap is None:
        return None
    from server import explain

    if thumbnail:
        with Image.open(io.BytesIO(thumbnail)) as im:
            base = im.convert("RGB")
    elif prediction.heatmap.png:
        with Image.open(io.BytesIO(prediction.heatmap.png)) as im:
            return explain.jpeg_bytes(im.convert("RGB"))
    else:
        base = Image.new("RGB", (size, size), (128, 128, 128))
    cam = explain.from_grid(prediction.heatmap.grid)
    return explain.jpeg_bytes(explain.overlay(base, cam, size))


def report_filename(prediction: Prediction, ext: str) -> str:
    """A download name that sorts by time and says what it is."""
    stamp = "".join(ch for ch in prediction.created_at[:19] if ch.isdigit())
    return f"lesion-screening-report-{stamp or 'result'}.{ext}"


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


# ---------------------------------------------------------------- text report

def _wrap(text: str, indent: str = "") -> str:
    return textwrap.fill(text, width=78, initial_indent=indent, subsequent_indent=indent)


def text_report(prediction: Prediction) -> str:
    """A plain-text report that reads well in an email, a terminal or on paper."""
    top = prediction.top
    verdict = assess(prediction)
    rule = "=" * len(REPORT_TITLE)
    lines = [
        REPORT_TITLE,
        rule,
        NOT_A_DIAGNOSIS,
        "",
        f"Date and time:        {format_timestamp(prediction.created_at)}",
        f"System:               {SYSTEM_NAME}",
        f"Model:                {prediction.model.name}, version {prediction.model.version}",
        f"Model file sha256:    {prediction.model.sha256[:16]}",
        f"Test balanced accuracy of the model: {balanced_accuracy_text(prediction)}",
        "",
        "RESULT",
        "------",
        f"Predicted condition:  {top.name} ({top.code})",
        f"Confidence:           {percent(top.probability)}" + ("  (uncertain)" if verdict.uncertain else ""),
        f"Risk level:           {verdict.risk.upper()}",
        f"Malignant probability ({malignant_codes()}): {percent(prediction.malignant_probability)}"
        + (f", {malignant_flag_text(prediction)}" if malignant_flag_text(prediction) else ""),
        "",
        "PROBABILITY BREAKDOWN (highest first)",
        "-------------------------------------",
    ]
    if prediction.temperature:
        lines.insert(-2, f"Probabilities are calibrated (temperature scaling, T = {prediction.temperature:.2f}).")
        lines.insert(-2, "")
    for c in prediction.classes:
        bar = "#" * round(c.probability * 20)
        lines.append(f"{percent(c.probability):>7}  {bar:<20}  {c.name} [{c.code}, {c.risk} risk]")
    lines += ["", "ADVICE", "------", _wrap(verdict.headline + ".")]
    lines += [_wrap(a, "  ") for a in verdict.advice]
    lines += ["", "ABOUT THE PREDICTED CONDITION", "-----------------------------",
              _wrap(lesion_class(top.code).description)]
    lines += ["", "DISCLAIMER", "----------", _wrap(prediction.disclaimer), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- PDF report

FRAME_PADDING = 6  # points: reportlab Frame default padding
RISK_COLOURS = {"high": "#b3261e", "moderate": "#8a5300", "low": "#1d6b35"}


def _card_summary(prediction: Prediction, card: dict | None) -> list[tuple[str, str]]:
    """Model-card rows for the PDF; card details only when the card is the predicting model's."""
    model = prediction.model
    rows = [
        ("Model", f"{model.name}, version {model.version}"),
        ("Model file sha256", model.sha256[:16] + "..."),
        ("Input size", f"{model.input_size} x {model.input_size} px"),
        ("Test balanced accuracy", balanced_accuracy_text(prediction)),
    ]
    if card and str(card.get("version")) == model.version and card.get("name") == model.name:
        if card.get("architecture"):
            rows.append(("Architecture", str(card["architecture"])))
        if card.get("intended_use"):
            rows.append(("Intended use", str(card["intended_use"])))
        source = (card.get("data") or {}).get("source")
        if source:
            rows.append(("Training data", source.get("name", str(source)) if isinstance(source, dict) else str(source)))
        licence = card.get("licence")
        if licence:
            rows.append(("Licence", licence.get("name", str(licence)) if isinstance(licence, dict) else str(licence)))
        limitations = card.get("limitations")
        if limitations:
            items = limitations if isinstance(limitations, list) else [limitations]
            rows.append(("Limitations", "\n".join(f"- {item}" for item in items)))
    return rows


def _probability_bar(probability: float, colour, width: float, height: float):
    """One horizontal bar (reportlab Drawing) on a light track, for the breakdown table."""
    from reportlab.graphics.shapes import Drawing, Rect
    from reportlab.lib import colors

    drawing = Drawing(width, height)
    drawing.add(Rect(0, 1, width, height - 2, fillColor=colors.HexColor("#e7ebef"), strokeColor=None))
    if probability > 0:
        drawing.add(Rect(0, 1, max(width * probability, 0.8), height - 2, fillColor=colour, strokeColor=None))
    return drawing


def pdf_report(prediction: Prediction, thumbnail_jpeg: bytes | None, paper: str = "a4",
               card: dict | None = None) -> bytes:
    """The text report's content as a printable PDF, plus thumbnail, bar chart and model card.

    A content width of 174 mm (18 mm sides on A4) and 15 mm top/bottom margins fit both A4
    (210 x 297 mm) and US Letter (216 x 279 mm), so the layout is the same on either paper
    and a typical report fits one page of each.
    """
    from xml.sax.saxutils import escape

    from reportlab.lib import colors
    from reportlab.lib.enums import TA_LEFT
    from reportlab.lib.pagesizes import A4, LETTER
    from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import Image as RLImage
    from reportlab.platypus import (
        KeepTogether,
        Paragraph,
        SimpleDocTemplate,
        Spacer,
        Table,
    )

    pagesize = {"a4": A4, "letter": LETTER}[paper_size(paper)]
    margin = 15 * mm  # top and bottom; the sides are wider (see width)
    width = min(pagesize[0] - 2 * margin, 174 * mm)
    top = prediction.top
    verdict = assess(prediction)
    risk_colour = colors.HexColor(RISK_COLOURS.get(verdict.risk, "#333333"))

    styles = getSampleStyleSheet()
    body = ParagraphStyle("body", parent=styles["BodyText"], fontSize=9, leading=11.5, alignment=TA_LEFT,
                          spaceBefore=0, spaceAfter=0)
    small = ParagraphStyle("small", parent=body, fontSize=8, leading=10)
    h1 = ParagraphStyle("h1", parent=styles["Title"], fontSize=18, leading=22, alignment=TA_LEFT, spaceAfter=2)
    h2 = ParagraphStyle("h2", parent=styles["Heading2"], fontSize=11.5, leading=14, spaceBefore=7, spaceAfter=3)
    banner = ParagraphStyle("banner", parent=body, textColor=colors.white, fontName="Helvetica-Bold")

    def p(text: str, style=body) -> Paragraph:
        return Paragraph(escape(text).replace("\n", "<br/>"), style)

    story = [
        p(REPORT_TITLE, h1),
        Table([[p(NOT_A_DIAGNOSIS + " Please read the disclaimer below.", banner)]],
              colWidths=[width], style=[("BACKGROUND", (0, 0), (-1, -1), colors.HexColor("#24476b")),
                                        ("LEFTPADDING", (0, 0), (-1, -1), 6), ("TOPPADDING", (0, 0), (-1, -1), 4),
                                        ("BOTTOMPADDING", (0, 0), (-1, -1), 5)]),
        Spacer(1, 6),
    ]
    meta = [
        ("Date and time", format_timestamp(prediction.created_at)),
        ("System", SYSTEM_NAME),
        ("Model", f"{prediction.model.name}, version {prediction.model.version}"),
        ("Test balanced accuracy", balanced_accuracy_text(prediction)),
    ]
    result_rows = [
        [p("Predicted condition", small), Paragraph(f"<b>{escape(top.name)}</b> ({escape(top.code)})", body)],
        [p("Confidence", small), p(percent(top.probability) + ("  (uncertain)" if verdict.uncertain else ""))],
        [p("Risk level", small), Paragraph(f'<font color="{RISK_COLOURS.get(verdict.risk, "#333333")}">'
                                           f"<b>{escape(verdict.risk.upper())}</b></font>", body)],
        [p("Malignant probability", small),
         p(percent(prediction.malignant_probability)
           + (f" ({malignant_flag_text(prediction)})" if malignant_flag_text(prediction) else ""))],
    ] + [[p(k, small), p(v)] for k, v in meta]
    heat = heatmap_jpeg(prediction, thumbnail_jpeg)
    # With a heatmap the photo and the heatmap sit side by side, smaller, so the report keeps to one page.
    image_w = 31 * mm if heat else 46 * mm
    left_w = 2 * image_w + 3 * mm if heat else image_w
    result_table = Table(result_rows, colWidths=[38 * mm, width - left_w - 38 * mm - 6 * mm],
                         style=[("VALIGN", (0, 0), (-1, -1), "TOP"), ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
                                ("TOPPADDING", (0, 0), (-1, -1), 2), ("LEFTPADDING", (0, 0), (-1, -1), 0)])
    if thumbnail_jpeg:
        with Image.open(io.BytesIO(thumbnail_jpeg)) as im:
            ratio = im.height / im.width
        thumb = RLImage(io.BytesIO(thumbnail_jpeg), width=image_w, height=image_w * ratio)
    else:
        thumb = p("(no image)", small)
    if heat:
        code = prediction.heatmap.class_code
        thumb = Table([[thumb, RLImage(io.BytesIO(heat), width=image_w, height=image_w)],
                       [p(f"Right: where the model looked for {lesion_class(code).name} ({code}), a Grad-CAM heatmap "
                          "over the centre square it analysed; red = strongest evidence.", small), ""]],
                      colWidths=[image_w + 3 * mm, image_w],
                      style=[("LEFTPADDING", (0, 0), (-1, -1), 0), ("TOPPADDING", (0, 0), (-1, -1), 1),
                             ("VALIGN", (0, 0), (-1, -1), "TOP"), ("SPAN", (0, 1), (1, 1))])
    story.append(Table([[thumb, result_table]], colWidths=[left_w + 6 * mm, width - left_w - 6 * mm],
                       style=[("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0)]))

    story.append(p("Advice", h2))
    advice_rows = [[Paragraph(f"<b>{escape(verdict.headline)}.</b>", body)]] + [[p(a)] for a in verdict.advice]
    story.append(Table(advice_rows, colWidths=[width], style=[
        ("LINEBEFORE", (0, 0), (0, -1), 3, risk_colour), ("LEFTPADDING", (0, 0), (-1, -1), 8),
        ("BACKGROUND", (0, 0), (-1, -1), colors.HexColor("#f4f6f8"))]))

    bar_w = 52 * mm
    breakdown = [[p("Condition", small), p("Risk", small), p("Probability", small), ""]]
    for c in prediction.classes:
        breakdown.append([p(f"{c.name} ({c.code})"), p(c.risk, small),
                          _probability_bar(c.probability, colors.HexColor(RISK_COLOURS.get(c.risk, "#555555")),
                                           bar_w, 9),
                          p(percent(c.probability))])
    story.append(KeepTogether([
        p("Probability breakdown (highest first)", h2),
        Table(breakdown, colWidths=[width - bar_w - 18 * mm - 18 * mm, 18 * mm, bar_w + 2 * mm, 16 * mm],
              style=[("VALIGN", (0, 0), (-1, -1), "MIDDLE"), ("LINEBELOW", (0, 0), (-1, 0), 0.5, colors.grey),
                     ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.HexColor("#f7f8fa")]),
                     ("ALIGN", (3, 0), (3, -1), "RIGHT"), ("TOPPADDING", (0, 0), (-1, -1), 2),
                     ("BOTTOMPADDING", (0, 0), (-1, -1), 2)]),
    ]))

    story.append(KeepTogether([p("About the predicted condition", h2), p(lesion_class(top.code).description)]))
    story.append(KeepTogether([p("Disclaimer", h2), p(prediction.disclaimer)]))
    card_rows = [[p(k, small), p(v, small)] for k, v in _card_summary(prediction, card)]
    story.append(KeepTogether([
        p("Model card summary", h2),
        Table(card_rows, colWidths=[38 * mm, width - 38 * mm],
              style=[("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0),
                     ("TOPPADDING", (0, 0), (-1, -1), 1), ("BOTTOMPADDING", (0, 0), (-1, -1), 1)]),
    ]))

    def footer(canvas, doc):
        canvas.saveState()
        canvas.setFont("Helvetica", 7.5)
        canvas.setFillColor(colors.HexColor("#555555"))
        canvas.drawString(side + FRAME_PADDING, 9 * mm, f"{SYSTEM_NAME} - {NOT_A_DIAGNOSIS}")
        canvas.drawRightString(pagesize[0] - side - FRAME_PADDING, 9 * mm, f"Page {doc.page}")
        canvas.restoreState()

    buf = io.BytesIO()
    side = (pagesize[0] - width) / 2 - FRAME_PADDING  # the frame's own padding brings content to ``width``
    doc = SimpleDocTemplate(buf, pagesize=pagesize, leftMargin=side, rightMargin=side,
                            topMargin=margin, bottomMargin=margin + 3 * mm,
                            title=REPORT_TITLE, author=SYSTEM_NAME, subject=f"{top.name} ({top.code})")
    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return buf.getvalue()


def render_report(prediction: Prediction, thumbnail: bytes | None, fmt: str, paper: str | None = None,
                  card: dict | None = None) -> tuple[str | bytes, str, str]:
    """(body, mimetype, filename) of a txt or pdf report: what the API and the pages both send.

    Raises ValueError for an unknown format or paper size.
    """
    if fmt == "txt":
        return text_report(prediction), "text/plain; charset=utf-8", report_filename(prediction, "txt")
    if fmt == "pdf":
        body = pdf_report(prediction, thumbnail, paper=paper_size(paper), card=card)
        return body, "application/pdf", report_filename(prediction, "pdf")
    raise ValueError(f"no report format {fmt!r}; use txt or pdf")
