"""The real app's answers to a few uploads, as ``tests/test_fast_start.py`` compares them.

``python -m tests.fast_start_screen MODEL CASES_JSON`` screens them in a fresh interpreter and
prints the answers as JSON: that is how a worker starts, so whether TensorFlow got imported
means something there. It never imports ``tests.conftest``, which sets its own ONNX_CACHE_DIR.
"""

from __future__ import annotations

import io
import json
import sys

from PIL import Image

from server import create_app


def screen(model_path, cases, config: dict | None = None) -> dict:
    """Each case (name, colour, form fields) posted with ``?explain=1``: its probabilities, heatmap
    and patient echo by name, the runtime, and whether TensorFlow was imported after the start and at the end."""
    app = create_app({"MODEL_PATH": str(model_path), "TESTING": True, "SECRET_KEY": "s", **(config or {})})
    out = {"tensorflow_after_start": "tensorflow" in sys.modules, "runtime": app.extensions["predictor"].runtime}
    client = app.test_client()
    for name, colour, fields in cases:
        png = io.BytesIO()
        Image.new("RGB", (60, 44), tuple(colour)).save(png, format="PNG")
        data = {"image": (io.BytesIO(png.getvalue()), "x.png"), **fields}
        answer = client.post("/predict?explain=1", data=data, content_type="multipart/form-data").get_json()
        out[name] = {k: answer[k] for k in ("probabilities", "heatmap", "patient")}
    out["tensorflow_at_the_end"] = "tensorflow" in sys.modules
    return out


if __name__ == "__main__":
    print(json.dumps(screen(sys.argv[1], json.loads(sys.argv[2]))))
