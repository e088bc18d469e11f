"""The JSON API: ``POST /predict``, health and readiness probes, the model card, OpenAPI.

``POST /predict`` runs the screening use case (``server/screening.py``) on the model the
app loaded (``server/web/service.py``) and presents the Prediction as JSON or a report.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from server import reports
from server.problems import ServiceError
from server.screening import ScreeningOptions, screen
from server.web import docs as docs_rows
from server.web.openapi import QUERY_PARAMETERS, openapi_document
from server.web.service import current_predictor, loaded_predictor
from server.web.uploads import filing_details, patient_context, upload_bytes, upload_filename

bp = Blueprint("api", __name__)


def query_arg(name: str) -> str | None:
    """This request's ``?name=``, for a parameter ``server/web/openapi.py`` declares on this route.

    The one place the API reads the query string: reading a parameter the document does not
    name is a bug, refused here (a 500 the tests catch) and by a test that reads this module.
    """
    declared = {p["name"] for p in QUERY_PARAMETERS.get((request.method.lower(), request.url_rule.rule), [])}
    if name not in declared:
        raise LookupError(f"{request.method} {request.url_rule.rule} reads ?{name}, which server/web/openapi.py does not declare")
    return request.args.get(name)


def flag_arg(name: str) -> bool:
    """``?explain=1`` / true / yes / on -> True; absent, 0, false, no, off -> False; anything else 400."""
    raw = (query_arg(name) or "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ServiceError(400, "bad_request", f"{name} must be 1 or 0; got {raw!r}")


@bp.post("/predict")
def predict():
    """JSON by default; ``?format=txt|pdf`` (or Accept: text/plain / application/pdf) returns a report.

    ``?explain=1`` adds a Grad-CAM heatmap for the top class (``&explain_class=mel`` for another).
    Multipart fields ``age``, ``sex`` and ``site`` (optional) give the patient context; the
    answer echoes it as ``patient``. ``patient_id`` and ``clinician`` (optional) are printed on a
    txt or pdf report and nowhere else. All are checked before the model runs.
    """
    try:
        fmt = reports.requested_format(query_arg("format"), request.accept_mimetypes)
        paper = reports.paper_size(query_arg("paper"))
    except ValueError as exc:
        raise ServiceError(400, "bad_request", str(exc)) from None
    explain_class = query_arg("explain_class") or None
    explain = flag_arg("explain") or explain_class is not None or fmt == "pdf"  # the PDF shows the heatmap
    predictor = current_predictor()
    upload = upload_bytes(request)
    filing = filing_details(request)  # checked for every format, printed only on a report
    options = ScreeningOptions(explain=explain, explain_class=explain_class, thumbnail=fmt == "pdf",
                               filename=upload_filename(request), timezone=current_app.config["REPORT_TIMEZONE"])
    prediction = screen(upload, options, predictor, patient=patient_context(request))
    if fmt != "json":
        body, content_type, filename = reports.render_report(prediction, fmt, paper, predictor.card, filing)
        response = current_app.response_class(body, content_type=content_type)
        response.headers["Content-Disposition"] = f'inline; filename="{filename}"'
        response.headers["X-Total-Ms"] = f"{prediction.timing.total_ms:.2f}"
        return response
    # The verdict in words, by the same precedence rule as the result page and the reports.
    warning = reports.assess(prediction, predictor.card).subgroup_warning  # only when the context puts it in one
    return jsonify(prediction.to_dict() | {"summary": reports.summary(prediction, predictor.card)}
                   | ({"subgroup_warning": warning.to_dict()} if warning else {}))


@bp.get("/healthz")
def healthz():
    """Liveness: the process answers HTTP."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """Readiness: a model is loaded and can answer."""
    predictor = loaded_predictor()
    if predictor is None:
        return jsonify(status="not_ready", model_loaded=False), 503
    choice = predictor.precision_choice
    return jsonify(status="ready", model_loaded=True, model=predictor.info.version, runtime=predictor.runtime,
                   precision=predictor.precision, precision_reason=choice.reason if choice else "")


@bp.get("/api/model")
def model_card():
    return jsonify(current_predictor().card.to_dict())


@bp.get("/openapi.json")
def openapi():
    return jsonify(openapi_document(current_app.config["MAX_UPLOAD_MB"]))


@bp.get("/docs")
def docs():
    """Human-readable API reference, rendered from the same OpenAPI document as /openapi.json."""
    from flask import render_template

    document = openapi_document(current_app.config["MAX_UPLOAD_MB"])
    schemas = docs_rows.schemas(document)
    page = render_template("api_docs.html", doc=document, operations=docs_rows.operations(document), schemas=schemas,
                           schema_names={s["name"] for s in schemas}, inline_code=docs_rows.inline_code,
                           base_url=request.host_url.rstrip("/"))
    # The examples name the address this client used (its Host header): no shared cache may keep
    # the page, or one client's Host would be the address everyone else's photos are sent to.
    return page, {"Cache-Control": "private, max-age=300", "Vary": "Host"}
