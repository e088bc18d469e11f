"""Where the milliseconds of one ``POST /predict`` go: a stage table, in process, with the real app.

    python bench/profile_request.py                       # shipped model, a HAM10000 photo from ../shared
    python bench/profile_request.py --photo PATH.jpg --requests 50 --http

Builds the real Flask app (``server.create_app``, the shipped model, ONNX Runtime with one
intra-op thread as each gunicorn worker runs) and posts one photo, upscaled to a typical
600x450 JPEG and to a 4000x3000 phone photo, through Flask's test client as a multipart
upload (the body is encoded once, before timing). The service's own functions are wrapped
with ``time.perf_counter`` (nothing is reimplemented): each stage's time is its own time,
without the wrapped stages it calls.

    read        the body and multipart parsing (``upload_bytes``)
    decode      JPEG/PNG -> upright RGB (``open_upload``)
    preprocess  centre square, resize, scale (``model_input``)
    model       the classifier's forward pass (``Predictor.forward``)
    non-skin    statistics (``floor_statistics``), distances (``NonSkinCheck``), the ImageNet
                branch when its gate opens (``forward_imagenet``), and the glue between them
    result      the rest of ``predict_image`` and ``screen`` (TTA views, calibration, the Prediction)
    serialise   ``Prediction.to_dict`` and ``jsonify``
    framework   everything else between the test client's call and its answer (Werkzeug's
                environ and response, Flask's dispatch, the request hooks)

Medians over ``--requests`` requests after warm-up; ``framework`` is the median of each
request's total minus its stages. ``--http`` also starts gunicorn (shipped config) and
posts the same uploads at concurrency 1: the gap to the in-process total is gunicorn,
its gthread hop and the loopback HTTP client.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as gunicorn.conf.py sets for the workers


from bench_predict import SHARED_IMAGES, multipart, upscaled_jpeg  # noqa: E402
from server.config import DEFAULT_MODEL_PATH  # noqa: E402

SIZES = ((600, 450), (4000, 3000))
ROWS = (  # (stage, label) in print order; indented rows are parts of the one above
    ("read", "read (body, multipart)"),
    ("decode", "decode (JPEG -> RGB)"),
    ("preprocess", "preprocess (crop, resize, scale)"),
    ("model", "model (classifier forward)"),
    ("non-skin", "non-skin check"),
    ("statistics", "  statistics"),
    ("distances", "  distances"),
    ("branch", "  ImageNet branch"),
    ("non-skin glue", "  the rest"),
    ("result", "result (TTA views, calibration)"),
    ("serialise", "serialise (to_dict, JSON)"),
    ("framework", "framework (Flask, Werkzeug)"),
)
NON_SKIN_PARTS = ("statistics", "distances", "branch", "non-skin glue")


class StageClock:
    """Own time per stage for one request: a wrapped call's time minus the wrapped calls inside it."""

    def __init__(self):
        self.spent: dict[str, float] = {}
        self._stack: list[float] = []  # time taken by children of each open call

    def reset(self):
        self.spent = {}

    def wrap(self, stage: str, fn):
        def timed(*args, **kwargs):
            self._stack.append(0.0)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                children = self._stack.pop()
                self.spent[stage] = self.spent.get(stage, 0.0) + elapsed - children
                if self._stack:
                    self._stack[-1] += elapsed
        return timed


def instrument(app, clock: StageClock) -> None:
    """Wrap the service's own functions where the request path looks them up."""
    from server import prediction, screening
    from server.model import nonskin_screen, predictor as predictor_module
    from server.web import api
    from server.web.service import EXTENSION_KEY

    api.upload_bytes = clock.wrap("read", api.upload_bytes)
    api.screen = clock.wrap("result", api.screen)
    api.jsonify = clock.wrap("serialise", api.jsonify)
    prediction.Prediction.to_dict = clock.wrap("serialise", prediction.Prediction.to_dict)
    screening.open_upload = clock.wrap("decode", screening.open_upload)
    predictor_module.model_input = clock.wrap("preprocess", predictor_module.model_input)
    nonskin_screen.floor_statistics = clock.wrap("statistics", nonskin_screen.floor_statistics)
    nonskin_screen.image_statistics = clock.wrap("statistics", nonskin_screen.image_statistics)
    p = app.extensions[EXTENSION_KEY]
    p.predict_image = clock.wrap("result", p.predict_image)
    p.forward = clock.wrap("model", p.forward)
    p.nonskin = clock.wrap("non-skin glue", p.nonskin)
    p.forward_imagenet = clock.wrap("branch", p.forward_imagenet)
    if p.ood is not None:
        p.ood.ratios = clock.wrap("distances", p.ood.ratios)
        p.ood.imagenet_runs = clock.wrap("distances", p.ood.imagenet_runs)


def profile(client, clock: StageClock, jpeg: bytes, n: int, warm: int = 5) -> tuple[dict, int, float]:
    """(median ms per stage, HTTP status, share of requests the ImageNet branch ran for)."""
    body, content_type = multipart(jpeg)
    per_stage: dict[str, list[float]] = {stage: [] for stage, _ in ROWS}
    totals, status, branch_runs = [], None, 0
    for i in range(warm + n):
        clock.reset()
        start = time.perf_counter()
        response = client.post("/predict", data=body, content_type=content_type)
        total = time.perf_counter() - start
        status = response.status_code
        if i < warm:
            continue
        spent = {k: v * 1000.0 for k, v in clock.spent.items()}
        branch_runs += "branch" in spent and spent["branch"] > 0.05  # forward_imagenet returns at once when off
        spent["non-skin"] = sum(spent.get(k, 0.0) for k in NON_SKIN_PARTS)
        spent["framework"] = total * 1000.0 - sum(v for k, v in spent.items() if k != "non-skin")
        for stage, _ in ROWS:
            per_stage[stage].append(spent.get(stage, 0.0))
        totals.append(total * 1000.0)
    medians = {stage: statistics.median(v) for stage, v in per_stage.items()}
    medians["total"] = statistics.median(totals)
    return medians, status, branch_runs / n


def http_p50(uploads: dict, model: Path, n: int) -> dict:
    """p50 of POST /predict through a real gunicorn (shipped config), concurrency 1, per upload."""
    import requests

    from bench_predict import start_gunicorn, stop

    proc, url = start_gunicorn(model)
    try:
        out = {}
        with requests.Session() as session:
            for label, jpeg in uploads.items():
                times = []
                for i in range(5 + n):
                    start = time.perf_counter()
                    session.post(f"{url}/predict", files={"image": ("lesion.jpg", jpeg, "image/jpeg")}).raise_for_status()
                    if i >= 5:
                        times.append((time.perf_counter() - start) * 1000.0)
                out[label] = statistics.median(times)
        return out
    finally:
        stop(proc)


def branch_photo(app, size, look_at: int = 60) -> bytes | None:
    """A 600x450 upload of the first HAM10000 photo whose features open the ImageNet branch's gate
    (a quarter of lesions do), so the table shows that path too."""
    from server.decoding import open_upload
    from server.imaging import model_input
    from server.model.nonskin import FEATURES

    p = app.extensions["predictor"]
    if p.ood is None:
        return None
    for path in sorted(SHARED_IMAGES.glob("*.jpg"))[:look_at]:
        jpeg = upscaled_jpeg(path, size)
        fmap, _ = p.forward(model_input(open_upload(jpeg), p.input_size)[None])
        if fmap is not None and p.ood.imagenet_runs(p.ood.ratios({FEATURES: fmap.mean(axis=(1, 2))}))[0]:
            return jpeg
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--photo", type=Path, default=None, help="a lesion photo (default: the first HAM10000 one)")
    parser.add_argument("--requests", type=int, default=30, help="timed requests per size, after 5 warm-up ones")
    parser.add_argument("--http", action="store_true", help="also time the same uploads through gunicorn")
    args = parser.parse_args(argv)
    photo = args.photo or next(iter(sorted(SHARED_IMAGES.glob("*.jpg"))), None)
    if photo is None:
        raise SystemExit(f"no lesion photo: pass --photo (none at {SHARED_IMAGES}); the check refuses synthetic pictures")

    os.environ.setdefault("TF_INTRA_OP_THREADS", "1")  # as gunicorn.conf.py sets for each worker
    os.environ.setdefault("TF_INTER_OP_THREADS", "1")
    os.environ.setdefault("RATE_LIMIT", "off")  # 3 x (5 + requests) posts in a minute would meet the 60/minute limit
    from server import create_app

    app = create_app({"MODEL_PATH": str(args.model), "SECRET_KEY": "profile", "TESTING": True})
    clock = StageClock()
    uploads = {f"{w}x{h}": upscaled_jpeg(photo, (w, h)) for w, h in SIZES}
    gated = args.photo is None and branch_photo(app, SIZES[0])
    if gated:
        uploads[f"{SIZES[0][0]}x{SIZES[0][1]}, branch runs"] = gated
    instrument(app, clock)
    client = app.test_client()
    results = {label: profile(client, clock, jpeg, args.requests) for label, jpeg in uploads.items()}

    print(f"POST /predict, Flask test client in one process, {photo.name} upscaled; "
          f"median ms of {args.requests} requests; runtime {app.extensions['predictor'].runtime}, 1 thread, "
          f"TTA {app.extensions['predictor'].tta}")
    labels = list(results)
    print(f"| stage | {' | '.join(f'{lab} ({len(uploads[lab]) // 1024} KB)' for lab in labels)} |")
    print("|---|" + "---:|" * len(labels))
    for stage, name in ROWS:
        cells = [f"{results[lab][0][stage]:.2f} ({100 * results[lab][0][stage] / results[lab][0]['total']:.0f}%)"
                 for lab in labels]
        print(f"| {name} | {' | '.join(cells)} |")
    totals = " | ".join(f"**{results[lab][0]['total']:.2f}**" for lab in labels)
    print(f"| **total, in process** | {totals} |")
    print(f"| status; ImageNet branch ran | {' | '.join(f'{results[lab][1]}; {results[lab][2]:.0%}' for lab in labels)} |")
    if args.http:
        p50 = http_p50(uploads, args.model, args.requests)
        print(f"| through gunicorn + HTTP, p50 | {' | '.join(f'{p50[lab]:.2f}' for lab in labels)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
