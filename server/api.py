"""The JSON API: ``POST /predict``, health and readiness probes, the model card, OpenAPI.

The blueprint owns the model: ``init_predictor`` loads it once per process when the app
is created (after gunicorn forks its workers) and every request reuses it.
"""

from __future__ import annotations

import time

from flask import Blueprint, current_app, jsonify, request

from server.errors import ServiceError
from server.imaging import open_upload
from server.openapi import QUERY_PARAMETERS, openapi_document
from server.predictor import Predictor, configure_tf_threads
from server.uploads import upload_bytes

bp = Blueprint("api", __name__)
EXTENSION_KEY = "predictor"


def init_predictor(app) -> None:
    """Load the model named by MODEL_PATH into the app (raises ModelLoadError)."""
    configure_tf_threads(app.config["TF_INTRA_OP_THREADS"], app.config["TF_INTER_OP_THREADS"])
    app.extensions[EXTENSION_KEY] = Predictor.from_path(
        app.config["MODEL_PATH"], app.config.get("MODEL_CARD_PATH"),
        runtime=app.config["INFERENCE_RUNTIME"], threads=app.config["TF_INTRA_OP_THREADS"],
        tta=app.config.get("TTA"), ood=app.config.get("OOD_CHECK", True),
    )


def get_predictor() -> Predictor:
    predictor = current_app.extensions.get(EXTENSION_KEY)
    if predictor is None:
        raise ServiceError(503, "model_unavailable", "No model is loaded; the service is not ready.")
    return predictor


NOT_A_SKIN_LESION = (
    "This image does not look like a photo of a skin lesion, so it was not screened. Please upload a close-up, "
    "well-lit photo of the lesion alone (a dermoscopic photo if you have one). If this is a photo of a skin "
    "lesion, the model cannot judge it: please show the lesion to a dermatologist."
)


def predict_upload(explain: bool = False, explain_class: str | None = None):
    """Read, validate and screen the request's image: shared by the API and the pages.

    An image the non-skin check flags gets no diagnosis: 422 ``not_a_skin_lesion``.
    """
    started = time.perf_counter()
    predictor = get_predictor()
    image = open_upload(upload_bytes(request))
    try:
        prediction = predictor.predict_image(image, explain=explain, explain_class=explain_class)
    except ValueError as exc:  # an unknown explain_class
        raise ServiceError(400, "bad_request", str(exc)) from None
    if prediction.out_of_distribution:
        raise ServiceError(422, "not_a_skin_lesion", NOT_A_SKIN_LESION)
    return prediction, image, (time.perf_counter() - started) * 1000.0


def query_arg(name: str) -> str | None:
    """This request's ``?name=``, for a parameter ``server/openapi.py`` declares on this route.

    The one place the API reads the query string: reading a parameter the document does not
    name is a bug, refused here (a 500 the tests catch) and by a test that reads this module.
    """
    declared = {p["name"] for p in QUERY_PARAMETERS.get((request.method.lower(), request.url_rule.rule), [])}
    if name not in declared:
        raise LookupError(f"{request.method} {request.url_rule.rule} reads ?{name}, which server/openapi.py does not declare")
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
    """
    from server import reports

    try:
        fmt = reports.requested_format(query_arg("format"), request.accept_mimetypes)
        paper = reports.paper_size(query_arg("paper"))
    except ValueError as exc:
        raise ServiceError(400, "bad_request", str(exc)) from None
    explain_class = query_arg("explain_class") or None
    explain = flag_arg("explain") or explain_class is not None or fmt == "pdf"  # the PDF shows the heatmap
    prediction, image, total_ms = predict_upload(explain=explain, explain_class=explain_class)
    if fmt != "json":
        thumbnail = reports.thumbnail_jpeg(image) if fmt == "pdf" else None
        body, mimetype, filename = reports.render_report(prediction, thumbnail, fmt, paper, get_predictor().card)
        response = current_app.response_class(body, mimetype=mimetype)
        response.headers["Content-Disposition"] = f'inline; filename="{filename}"'
        response.headers["X-Total-Ms"] = f"{total_ms:.2f}"
        return response
    body = prediction.to_dict()
    body["timing"]["total_ms"] = round(total_ms, 2)
    return jsonify(body)


@bp.get("/healthz")
def healthz():
    """Liveness: the process answers HTTP."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """Readiness: a model is loaded and can answer."""
    predictor = current_app.extensions.get(EXTENSION_KEY)
    if predictor is None:
        return jsonify(status="not_ready", model_loaded=False), 503
    return jsonify(status="ready", model_loaded=True, model=predictor.info.version, runtime=predictor.runtime)


@bp.get("/api/model")
def model_card():
    return jsonify(get_predictor().card)


@bp.get("/openapi.json")
def openapi():
    return jsonify(openapi_document(current_app.config["MAX_UPLOAD_MB"]))


@bp.get("/docs")
def docs():
    """Human-readable API reference, rendered from the same OpenAPI document as /openapi.json."""
    from flask import render_template

    document = openapi_document(current_app.config["MAX_UPLOAD_MB"])
    return render_template("api_docs.html", doc=document, operations=docs_operations(document),
                           base_url=request.host_url.rstrip("/"))


def docs_operations(document: dict) -> list[dict]:
    """Flatten the document's paths into (method, path, operation) rows for the docs page."""
    rows = []
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            rows.append({"method": method.upper(), "path": path, "op": operation})
    return rows
