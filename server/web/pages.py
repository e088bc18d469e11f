"""The web pages blueprint: upload page, result page, report downloads, model-card page.

Nothing a person uploads is stored. The result page is the POST response itself; it
carries the result and a small thumbnail in an encrypted token bound to the browser session
(``server/web/report_token.py``), so the report buttons can rebuild the report from the token
alone, without a second upload and without the server remembering anything.
"""

from __future__ import annotations

from flask import (
    Blueprint,
    Response,
    current_app,
    render_template,
    request,
    send_from_directory,
)
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import RequestEntityTooLarge

from server import reports, screening
from server.lesions import CATALOGUE, DISCLAIMER, LIMITATIONS, RISK_LEVELS, lesion_class
from server.filing import FILING_FIELDS, FILING_LABELS, FILING_RULE, FilingDetails
from server.patient import MAX_AGE, MIN_AGE, PATIENT_FIELDS
from server.prediction import Prediction
from server.problems import HEIF_PHOTO, HeifPhoto, ServiceError
from server.web.errors import error_response
from server.reports import quality
from server.reports.context import context_figures, context_sentence, context_use
from server.web.presenters import (data_uri, filing_form, heatmap_uri, metric_rows, other_heatmap_uris, patient_form,
                                   precision_in_words, safeguards)
from server.web.report_token import load_report, sign_report
from server.web.service import card_dir, current_card, current_predictor, loaded_predictor
from server.web.uploads import (FIELD, FormTooLarge, filing_details, max_upload_bytes, patient_context, too_large_message,
                                upload_bytes, upload_filename)

bp = Blueprint("pages", __name__)

CONFUSION_MATRIX = "confusion_matrix.png"
# What the upload form says for each failure code; the API keeps its own, more technical wording.
FORM_MESSAGES = {
    "missing_file": "Please choose a photo to upload.",
    "empty_file": "The chosen file is empty. Please choose a JPEG or PNG photo.",
    "too_many_files": "Please upload one photo at a time.",
    "unsupported_media_type": "That file is not a JPEG or PNG image. Please choose a JPEG or PNG photo.",
    # A browser never keeps a chosen file when the form comes back, hence "choose the photo again".
    "invalid_age": f"Please enter the age as a number of years from {MIN_AGE} to {MAX_AGE}, or leave it blank. "
                   "Then choose the photo again.",
    "invalid_sex": "Please choose the sex from the list, or leave it as “Not given”. Then choose the photo again.",
    "invalid_site": "Please choose the body site from the list, or leave it as “Not given”. "
                    "Then choose the photo again.",
    **{f"invalid_{name}": f"Please keep the {FILING_LABELS[name].lower()} to {FILING_RULE}, or leave it blank. "
                          "Then choose the photo again." for name in FILING_FIELDS},
}

# A HEIC photo's one fix is on the phone: said by the server and, before upload, by upload.js (the form's data).
HEIF_FORM_MESSAGE = f"{HEIF_PHOTO} Then choose the JPEG."

# GET /screen: a result page's address opened again (reload, bookmark, shared link).
RESULT_NOT_STORED = ("No result to show: for your privacy, results are never stored on the server, "
                     "so a reloaded or shared result cannot be shown again. Please upload the photo again.")


# ---------------------------------------------------------------- helpers

def form_message(exc: ServiceError) -> str:
    if exc.code == "payload_too_large":
        return f"The file is larger than {current_app.config['MAX_UPLOAD_MB']} MB. Please choose a smaller photo."
    if isinstance(exc, HeifPhoto):
        return HEIF_FORM_MESSAGE
    if exc.code == "invalid_image":
        return f"This image could not be used: {exc.message} Please try another JPEG or PNG photo."
    return FORM_MESSAGES.get(exc.code, exc.message)


def check_form_upload() -> None:
    """Form-only checks before the shared upload path: nothing picked, and the exact size limit.

    A browser submitting with no file picked sends an empty part with an empty filename;
    that is "choose a photo", not "empty file". MAX_CONTENT_LENGTH adds room for multipart
    framing, so the exact MAX_UPLOAD_MB limit is checked here.
    """
    upload = request.files.get(FIELD)
    if upload is None:
        return
    stream = upload.stream
    stream.seek(0, 2)
    size = stream.tell()
    stream.seek(0)
    if size == 0 and not upload.filename:
        raise ServiceError(400, "missing_file", "no file chosen")
    if size > max_upload_bytes():
        raise ServiceError(413, "payload_too_large", "upload too large")


def model_ready() -> bool:
    return loaded_predictor() is not None


def render_upload(error: str | None = None, status: int = 200, refusal: ServiceError | None = None,
                  error_field: str = FIELD, values: dict | None = None, notice: str | None = None):
    """The upload form; with ``error`` the message sits on the form, by the field it is about
    (``error_field``: the file input, or a patient field), which takes focus. ``values``: the
    patient fields as the person sent them, shown again so nothing they typed is lost.

    ``refusal``: an image the service would not screen (not a skin lesion): the page opens with
    that verdict, in the words the refusal carries, and ``looks_like`` (what the image seemed to
    show, when the refusal says) before the form, ready for another photo. ``notice``: a short
    message at the top of the page (why there is no result to show).
    """
    file_error = error if error_field == FIELD else None
    return render_template("upload.html", error=file_error, max_upload_mb=current_app.config["MAX_UPLOAD_MB"],
                           heic_message=HEIF_FORM_MESSAGE,
                           model_ready=model_ready(), refusal=refusal, error_field=error_field if error else None,
                           patient=patient_form(values, error_field, error),
                           filing=filing_form(values, error_field, error),
                           looks_like=getattr(refusal, "looks_like", None) if refusal else None, notice=notice,
                           misses_bar=quality.MISSES_BAR if quality.misses_bar(current_card()) else None), status


def report_response(prediction: Prediction, filing: FilingDetails, fmt: str, paper: str | None) -> Response:
    """A txt or pdf report download, rebuilt from a verified token."""
    try:
        body, content_type, filename = reports.render_report(prediction, fmt, paper, current_card(), filing)
    except ValueError as exc:
        raise ServiceError(400, "bad_report_request", str(exc)) from None
    response = Response(body, content_type=content_type)
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@bp.app_context_processor
def layout_globals() -> dict:
    """Every page shows the disclaimer; templates read it from the catalogue module."""
    return {"disclaimer": DISCLAIMER, "not_a_diagnosis": reports.NOT_A_DIAGNOSIS,
            "system_name": reports.SYSTEM_NAME}


# ---------------------------------------------------------------- views

@bp.get("/")
def index():
    return render_upload()


@bp.post("/screen")
def screen():
    """The form upload: validate, predict, and answer with the result page (nothing stored)."""
    values = None  # stays None when the body could not be read (too large, stalled): nothing to keep
    try:
        check_form_upload()  # reads the whole form
        values = {name: request.form.get(name) for name in PATIENT_FIELDS + FILING_FIELDS}
        predictor = current_predictor()
        # The page shows where the model looked, and the upload's thumbnail.
        options = screening.ScreeningOptions(explain=True, explain_all=True, thumbnail=True,
                                             filename=upload_filename(request),
                                             timezone=current_app.config["REPORT_TIMEZONE"])
        upload = upload_bytes(request)
        filing = filing_details(request)  # for the reports only: it rides in the encrypted token, not on the page
        prediction = screening.screen(upload, options, predictor, patient=patient_context(request))
    except ServiceError as exc:
        if exc.code == "model_unavailable":
            raise
        if exc.code == "not_a_skin_lesion":
            return render_upload(status=exc.status, refusal=exc, values=values)
        return render_upload(error=form_message(exc), status=exc.status, error_field=exc.details.get("field", FIELD),
                             values=values)
    return render_template(
        "result.html",
        prediction=prediction,
        verdict=reports.assess(prediction, current_card()),
        percent=reports.percent,
        timestamp=prediction.record.time_words() if prediction.record else reports.format_timestamp(prediction.created_at),
        balanced_accuracy=reports.balanced_accuracy_text(prediction),
        misses_bar=quality.MISSES_BAR if quality.misses_bar(quality.card_for(prediction, current_card())) else None,
        uncertain_below=prediction.uncertain_below,
        heatmap_uri=heatmap_uri(prediction),
        other_heatmaps=other_heatmap_uris(prediction),
        lesion_class=lesion_class,
        image_uri=data_uri(prediction.thumbnail),
        report_token=sign_report(prediction, filing),
        filing_given=filing.given,
        total_ms=prediction.timing.total_ms,
        context_use=context_use(quality.card_for(prediction, current_card()), prediction.patient.given),
    )


@bp.get("/screen")
def screen_again():
    """A result's address opened again: nothing was kept to show, so say why and offer the form (not a bare 405)."""
    return render_upload(notice=RESULT_NOT_STORED)


@bp.errorhandler(RequestEntityTooLarge)
def form_upload_too_large(exc: RequestEntityTooLarge):
    """A body over MAX_CONTENT_LENGTH is refused before the view runs (reading the form for CSRF):
    on the form, the person gets the same message on the same page as with JavaScript."""
    if request.endpoint != "pages.screen":
        return error_response(413, "payload_too_large", too_large_message(exc))
    if isinstance(exc, FormTooLarge):  # not the photo's size: say which limit the form broke
        return render_upload(error=too_large_message(exc), status=413)
    return render_upload(error=form_message(ServiceError(413, "payload_too_large", "upload too large")), status=413)


@bp.post("/report/<any(txt, pdf):fmt>")
def report(fmt: str):
    """Rebuild a report from the token the result page carries, in the session that made it (no upload, no storage)."""
    prediction, filing = load_report(request.form.get("token"))
    paper = request.args.get("paper") or request.form.get("paper")
    return report_response(prediction, filing, fmt, paper)


@bp.get("/model")
def model_page():
    predictor = current_predictor()
    card = predictor.card
    return render_template(
        "model.html",
        card=card,
        precision=precision_in_words(predictor.precision, card, predictor.precision_choice),
        test_scalars=metric_rows(card.test_metrics),
        class_figures=quality.class_figures(card),
        bar_checks=quality.bar_checks(card),
        meets_bar=quality.meets_bar(quality.bar_checks(card)),
        bar_sentence=quality.bar_sentence(card),
        lowest_class=quality.lowest_class(card),
        subgroup_columns=[heading for _, heading, _ in quality.SUBGROUP_COLUMNS],
        subgroup_lines=quality.subgroup_lines(card),
        subgroup_sentence=quality.subgroup_sentence(card),
        differential_sentence=quality.differential_in_words(card),
        differential_tables=quality.differential_tables(card),
        context_sentence=context_sentence(card),
        context_figures=context_figures(card),
        skin_type_note=quality.SKIN_TYPE_NOTE,
        percent=reports.percent,
        limitations=card.limitations or LIMITATIONS,
        safeguards=safeguards(card),
        has_confusion_matrix=(card_dir() / CONFUSION_MATRIX).is_file(),
        catalogue=CATALOGUE,
        risk_levels=RISK_LEVELS,
    )


@bp.get("/favicon.ico")
def favicon():
    """Browsers ask for /favicon.ico on pages that name no icon (a JSON answer, a PDF): the same SVG icon."""
    return send_from_directory(current_app.static_folder, "favicon.svg", mimetype="image/svg+xml", max_age=86400)


@bp.get("/model/confusion_matrix.png")
def confusion_matrix():
    """Serve the evaluation plot from the model's own directory (404 when the card has none)."""
    return send_from_directory(card_dir(), CONFUSION_MATRIX, mimetype="image/png", max_age=300)


@bp.app_errorhandler(CSRFError)
def csrf_failed(exc: CSRFError):
    return error_response(400, "csrf_failed",
                          "This form has expired or did not come from this site. "
                          "Please go back, reload the page and try again.")
