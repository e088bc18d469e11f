"""Prediction -> the PDF report: the text report's content, plus thumbnail, heatmap, bar chart and model card.

Under the title, a compact header says what a clinic files it by (``server.reports.record``); the
verdict band follows at once, and the image's and the model's full SHA-256 close the report.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from functools import lru_cache

from PIL import Image

from server.filing import FilingDetails, in_standard_fonts, unicode_font_file
from server.lesions import lesion_class
from server.model import explain
from server.model.card import ModelCard
from server.prediction import Prediction
from server.reports import quality
from server.reports.assessment import (
    NOT_A_DIAGNOSIS,
    REPORT_TITLE,
    SYSTEM_NAME,
    assess,
    balanced_accuracy_text,
    percent,
)
from server.reports.formats import paper_size
from server.reports.record import DATE_AND_TIME, MODEL, REPORT_ID, time_words, trace_rows


FRAME_PADDING = 6  # points: reportlab Frame default padding
UNICODE_FONT = "DejaVuSans"
RISK_COLOURS = {"high": "#b3261e", "moderate": "#8a5300", "low": "#1d6b35"}
NEUTRAL = "#6b7785"
TONE_COLOURS = RISK_COLOURS | {"uncertain": "#8a5300"}  # the verdict's colour: an uncertain answer is never green


def _card_summary(prediction: Prediction, card: ModelCard | None) -> list[tuple[str, str]]:
    """Model-card rows for the PDF; card details only when the card is the predicting model's."""
    model = prediction.model
    size = f"; input {model.input_size} x {model.input_size} px"  # on the model's line: the page keeps its room
    rows = [(DATE_AND_TIME, time_words(prediction))]  # the system's name is in every page's footer
    rows += [(label, value + size if label == MODEL else value) for label, value in trace_rows(prediction)]
    rows.append(("Test balanced accuracy", balanced_accuracy_text(prediction)))
    if card and card.version == model.version and card.name == model.name:
        if card.architecture:
            rows.append(("Architecture", card.architecture))
        if card.intended_use:
            rows.append(("Intended use", card.intended_use))
        source = card.data.get("source")
        if source:
            rows.append(("Training data", _named(source)))
        if card.licence:
            rows.append(("Licence", _named(card.licence)))
        if card.limitations:
            rows.append(("Limitations", "\n".join(f"- {item}" for item in card.limitations)))
    return rows


@lru_cache(maxsize=1)
def unicode_font() -> str:
    """DejaVu Sans registered with reportlab (once); embedded as a subset of the glyphs a report uses."""
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    pdfmetrics.registerFont(TTFont(UNICODE_FONT, str(unicode_font_file())))
    return UNICODE_FONT


def header_font(text: str) -> str:
    """Helvetica, as the rest of the report, unless the header names someone in another alphabet."""
    return "Helvetica" if in_standard_fonts(text) else unicode_font()


def running_header(prediction: Prediction, filing: FilingDetails) -> tuple[str, str]:
    """(left, right) of the line in every page's top margin: whom the report is about and who asked, and
    the report id. In the margin, every page names its patient and report, and the page keeps its room."""
    left = "   ".join(f"{label}: {value}" for label, value in filing.rows())
    right = f"{REPORT_ID}: {prediction.record.report_id}" if prediction.record else ""
    return left, right


def _named(value) -> str:
    """A card entry that is either text or an object with a name (data source, licence)."""
    return value.get("name", str(value)) if isinstance(value, Mapping) else str(value)


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
               card: ModelCard | None = None, filing: FilingDetails = FilingDetails()) -> bytes:
    """The text report's content as a printable PDF, plus thumbnail, bar chart and model card; ``filing``
    (the patient identifier and requesting clinician) is printed in the header.

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
    verdict = assess(prediction, card)

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
    # The verdict first, in the order the result page uses: what it is, what to do, what the numbers mean.
    tone_colour = colors.HexColor(TONE_COLOURS.get(verdict.tone, "#333333"))
    story.append(Table([[p(verdict.title + ".", banner)]], colWidths=[width],
                       style=[("BACKGROUND", (0, 0), (-1, -1), tone_colour), ("LEFTPADDING", (0, 0), (-1, -1), 8),
                              ("TOPPADDING", (0, 0), (-1, -1), 5), ("BOTTOMPADDING", (0, 0), (-1, -1), 6)]))
    summary = [[p("Next step", small), Paragraph(f"<b>{escape(verdict.headline)}.</b>", body)],
               [p(verdict.key_label, small), p(verdict.key_sentence)]]
    if verdict.subgroup_warning:
        summary += [[p("This patient's group", small), Paragraph(f"<b>{escape(verdict.subgroup_warning.message)}</b>", body)]]
    model_card = quality.card_for(prediction, card)
    misses = quality.misses_bar(model_card)
    if misses:  # the short sentence and the shortfall in one row, near the top: the report stays one page
        summary.append([p("Model quality", small), Paragraph(
            f"<b>{escape(quality.MISSES_BAR)}</b>: {escape(quality.shortfall(quality.bar_checks(model_card)))}. "
            "Its test figures: /model.", body)])
    if verdict.uncertain:
        summary += [[p("Possible types", small),
                     p("; ".join(f"{c.name} ({c.code}) {percent(c.probability)}" for c in verdict.differential) + ".")]]
    else:
        risk = escape(verdict.risk.upper())
        if verdict.flagged and verdict.risk != "high":
            risk += " for this class alone; the lesion is flagged"
        summary += [[p("Predicted condition", small), Paragraph(f"<b>{escape(top.name)}</b> ({escape(top.code)})", body)],
                    [p("Risk level", small), Paragraph(f'<font color="{RISK_COLOURS.get(verdict.risk, "#333333")}">'
                                                       f"<b>{risk}</b></font>", body)]]
    summary += [[p("What to do", small) if i == 0 else "", p(a)] for i, a in enumerate(verdict.advice)]
    other = (("Possible types", " ".join(verdict.confidence)) if verdict.flagged
             else ("Malignant probability", verdict.malignant))
    summary += [[p(other[0], small), p(other[1])]]
    if verdict.quality and not misses:
        summary.append([p("The model", small), p(verdict.quality)])
    story.append(Table(summary, colWidths=[38 * mm, width - 38 * mm], style=[
        ("VALIGN", (0, 0), (-1, -1), "TOP"), ("LINEBEFORE", (0, 0), (0, -1), 3, tone_colour),
        ("LEFTPADDING", (0, 0), (-1, -1), 6), ("TOPPADDING", (0, 0), (-1, -1), 2), ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
        ("BACKGROUND", (0, 0), (-1, -1), colors.HexColor("#f4f6f8"))]))
    story.append(Spacer(1, 6))

    heat = explain.heatmap_jpeg(prediction.heatmap, thumbnail_jpeg)
    # The photo and the heatmap sit small, side by side, beside the breakdown, so a report keeps to one page.
    image_w = 28 * mm if heat else 40 * mm
    left_w = 2 * image_w + 3 * mm if heat else image_w
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

    right_w = width - left_w - 6 * mm
    bar_w = 30 * mm
    breakdown = [[p("Condition", small), p("Risk", small), p("Probability", small), ""]]
    for c in prediction.classes:
        # as on the page: when the answer sends the person to a dermatologist, no bar is green
        colour = NEUTRAL if verdict.see_dermatologist and c.risk == "low" else RISK_COLOURS.get(c.risk, NEUTRAL)
        breakdown.append([p(f"{c.name} ({c.code})", small), p(c.risk, small),
                          _probability_bar(c.probability, colors.HexColor(colour), bar_w, 9),
                          p(percent(c.probability), small)])
    breakdown_table = Table(
        breakdown, colWidths=[right_w - bar_w - 2 * mm - 15 * mm - 14 * mm, 15 * mm, bar_w + 2 * mm, 14 * mm],
        style=[("VALIGN", (0, 0), (-1, -1), "MIDDLE"), ("LINEBELOW", (0, 0), (-1, 0), 0.5, colors.grey),
               ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.HexColor("#f7f8fa")]),
               ("ALIGN", (3, 0), (3, -1), "RIGHT"), ("TOPPADDING", (0, 0), (-1, -1), 1),
               ("BOTTOMPADDING", (0, 0), (-1, -1), 1), ("LEFTPADDING", (0, 0), (-1, -1), 2)])
    story.append(KeepTogether([
        p("Your photo and the probability breakdown (highest first)", h2),
        # The patient context sits under the breakdown, in the height the photos take anyway: the page stays one.
        Table([[thumb, [breakdown_table, Spacer(1, 4), p(prediction.patient.sentence(), small)]]],
              colWidths=[left_w + 6 * mm, right_w],
              style=[("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0)]),
    ]))

    if verdict.uncertain:
        story.append(KeepTogether([p("About the possible types", h2)]
                                  + [p(f"{c.name}: {lesion_class(c.code).description}") for c in verdict.differential]))
    else:
        story.append(KeepTogether([p("About the predicted condition", h2), p(lesion_class(top.code).description)]))
    story.append(KeepTogether([p("Disclaimer", h2), p(prediction.disclaimer)]))
    card_rows = [[p(k, small), p(v, small)] for k, v in _card_summary(prediction, card)]
    story.append(KeepTogether([
        p("Model card summary", h2),
        Table(card_rows, colWidths=[38 * mm, width - 38 * mm],
              style=[("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0),
                     ("TOPPADDING", (0, 0), (-1, -1), 0), ("BOTTOMPADDING", (0, 0), (-1, -1), 0.5)]),
    ]))

    header_left, header_right = running_header(prediction, filing)

    def footer(canvas, doc):
        canvas.saveState()
        font = header_font(header_left)
        canvas.setFont(font, 7.5)
        canvas.setFillColor(colors.HexColor("#555555"))
        canvas.drawString(side + FRAME_PADDING, pagesize[1] - 10 * mm, header_left)
        if font != "Helvetica":
            canvas.setFont("Helvetica", 7.5)
        canvas.drawRightString(pagesize[0] - side - FRAME_PADDING, pagesize[1] - 10 * mm, header_right)
        canvas.drawString(side + FRAME_PADDING, 9 * mm, f"{SYSTEM_NAME} - {NOT_A_DIAGNOSIS}")
        canvas.drawRightString(pagesize[0] - side - FRAME_PADDING, 9 * mm, f"Page {doc.page}")
        canvas.restoreState()

    buf = io.BytesIO()
    side = (pagesize[0] - width) / 2 - FRAME_PADDING  # the frame's own padding brings content to ``width``
    doc = SimpleDocTemplate(buf, pagesize=pagesize, leftMargin=side, rightMargin=side,
                            topMargin=margin, bottomMargin=margin + 3 * mm,
                            title=REPORT_TITLE, author=SYSTEM_NAME, subject=verdict.title)
    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return buf.getvalue()
