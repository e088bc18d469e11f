"""Start-up checks cheap enough to run in gunicorn's master, before any worker forks.

Gunicorn 27's arbiter prints a traceback when several workers fail to boot at once, so a
missing SECRET_KEY or model file is caught here first (``on_starting`` in
gunicorn.conf.py, and again in wsgi.py for other servers) and reported as ONE line.
Nothing here imports TensorFlow: the master must stay TF-free to fork safely. Deeper model
problems (corrupt file, card mismatch) are found by the workers' ModelLoadError.
"""

from __future__ import annotations

from pathlib import Path

from server.config import DEFAULT_MODEL_PATH

SECRET_KEY_MISSING = (
    "SECRET_KEY is not set; production needs a fixed secret (e.g. `export SECRET_KEY=$(openssl rand -hex 32)`)."
)


def boot_problem(environ) -> str | None:
    """The first reason this environment cannot serve, as one sentence, or None."""
    if not environ.get("SECRET_KEY"):
        return SECRET_KEY_MISSING
    model_path = Path(environ.get("MODEL_PATH") or DEFAULT_MODEL_PATH)
    if not model_path.is_file():
        return (
            f"model file not found at {model_path}: train one with `python -m training.train` "
            "or set MODEL_PATH to an exported .h5"
        )
    return None
