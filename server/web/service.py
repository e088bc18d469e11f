"""The one accessor between the web layer and the loaded model.

``init_predictor`` loads the model named by MODEL_PATH once per process, when the app is
created (after gunicorn forks its workers); blueprints ask for it here and never reach
into ``app.extensions`` themselves.
"""

from __future__ import annotations

from pathlib import Path

from flask import current_app

from server.config import predictor_options
from server.model.card import ModelCard
from server.model.files import card_path_for
from server.model.predictor import Predictor
from server.model.runtime import configure_tf_threads
from server.problems import ServiceError

EXTENSION_KEY = "predictor"


def init_predictor(app) -> None:
    """Load the model named by MODEL_PATH into the app (raises ModelLoadError)."""
    configure_tf_threads(app.config["TF_INTRA_OP_THREADS"], app.config["TF_INTER_OP_THREADS"])
    app.extensions[EXTENSION_KEY] = Predictor.from_path(
        app.config["MODEL_PATH"], app.config.get("MODEL_CARD_PATH"), **predictor_options(app.config))


def loaded_predictor() -> Predictor | None:
    """This app's model, or None when none is loaded (readiness, the upload page)."""
    return current_app.extensions.get(EXTENSION_KEY)


def current_predictor() -> Predictor:
    """This app's model, or a 503 ``model_unavailable``."""
    predictor = loaded_predictor()
    if predictor is None:
        raise ServiceError(503, "model_unavailable", "No model is loaded; the service is not ready.")
    return predictor


def current_card() -> ModelCard | None:
    predictor = loaded_predictor()
    return predictor.card if predictor is not None else None


def card_dir() -> Path:
    """The folder the card (and its evaluation plots) sit in; absolute, as ``create_app`` made the paths."""
    configured = current_app.config.get("MODEL_CARD_PATH")
    return (Path(configured) if configured else card_path_for(Path(current_app.config["MODEL_PATH"]))).parent
