"""Shared fixtures: a real exported tiny model, an app built on it, and image makers."""

from __future__ import annotations

import atexit
import io
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Converted ONNX graphs of the fixture models go to a folder of this run's own (gunicorn
# started by a test inherits it), not into the user's cache.
os.environ["ONNX_CACHE_DIR"] = tempfile.mkdtemp(prefix="onnx-cache-tests-")
atexit.register(shutil.rmtree, os.environ["ONNX_CACHE_DIR"], True)
# The service limits each client address by default (60 screenings, 120 reports a minute); the
# suite's clients send hundreds a minute from one address. Tests of the limits set their own
# (tests/test_rate_limit.py), the defaults included.
os.environ["RATE_LIMIT"] = os.environ["REPORT_RATE_LIMIT"] = "off"

import pytest
from PIL import Image

from tests.fixture_model import export_colour_context_model, export_colour_model


@pytest.fixture(scope="session")
def model_path(tmp_path_factory):
    return export_colour_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="session")
def context_model_path(tmp_path_factory):
    """The colour fixture that also reads the patient context (a lesion on the face -> ``CONTEXT_CLASS``)."""
    return export_colour_context_model(tmp_path_factory.mktemp("context-model"))


@pytest.fixture(scope="session")
def app(model_path):
    from server import create_app

    return create_app({"MODEL_PATH": str(model_path), "TESTING": True, "SECRET_KEY": "test-secret"})


@pytest.fixture()
def client(app):
    return app.test_client()


def image_bytes(colour=(200, 40, 40), size=(64, 48), fmt="PNG", mode="RGB", **save_kwargs) -> bytes:
    """Make a small in-memory image; tests never need files on disk."""
    img = Image.new("RGB", size, colour)
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save_kwargs)
    return buf.getvalue()


SHARED = __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_data_dir():
    """../shared/data/ham10000, or a clean skip where this checkout has no ../shared."""
    path = SHARED / "data" / "ham10000"
    if not (path / "images.csv").is_file():
        pytest.skip(f"../shared HAM10000 data not found at {path}")
    return path


# ---------------------------------------------------------------- the browser tests' fixtures (helpers: tests/browser_support.py)

@pytest.fixture(scope="module")
def base_url(app):
    """Serve the session app on a free loopback port for the browser."""
    from tests.browser_support import serving

    with serving(app) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium through Playwright, or a clean skip where either is missing."""
    from pathlib import Path

    from tests.browser_support import CHROMIUM, CHROMIUM_ARGS

    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} is missing (make browser installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as pw:
        # Playwright gives every launch a fresh temporary profile (it refuses --user-data-dir here).
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def shot_dir():
    """Where browser tests leave screenshots for a person to look at."""
    from tests.browser_support import ARTIFACTS

    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
