"""Measure POST /predict latency and throughput against bare model inference (loopback only).

    python bench/bench_predict.py --start                      # gunicorn on a free port, shipped model
    python bench/bench_predict.py --start --model PATH.h5      # another exported model
    python bench/bench_predict.py --start --synthetic          # untrained MobileNetV2 224 (same cost as the real one)
    python bench/bench_predict.py --url http://127.0.0.1:8000  # a server already running
    python bench/bench_predict.py --start --photo-size 600x450,4000x3000 --levels 1,16   # phone photos against small ones
    python bench/bench_predict.py --start --photos 64          # 64 validation photos in turn: int8's close calls at their real rate

Prints p50/p95 latency and req/s at concurrency 1, 4 and 16 (a bounded number of requests
each), the bare ``Predictor.predict_arrays`` time (batch 1, median of N, one TF thread as
each gunicorn worker uses), their ratio, and whether ONNX Runtime is available. The gap
between the two is what HTTP, decoding and preprocessing cost: it says where to optimise.
With several ``--photo-size`` values, every level posts each size in turn against the same
server, and the last lines compare each size with the first, as ratios measured in one run
(timings on a shared machine drift between runs). With ``--photos N`` the clients post N validation
photos in turn instead of one, so the share of photos int8 hands to float32 as close calls
(``server/model/second_look.py``) is paid as often as real uploads pay it.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import requests  # noqa: E402

from server.config import DEFAULT_MODEL_PATH  # noqa: E402
from uploads import SHARED_IMAGES, multipart, sample_jpeg, upload_for, upscaled_jpeg, validation_photos  # noqa: E402,F401


def percentile(values, q) -> float:
    return float(np.percentile(np.asarray(values), q))


def lean_poster(url: str, body, query: str = ""):
    """A keep-alive ``http.client`` connection posting a pre-encoded upload (or each of a list in turn): the
    load generator shares this machine's CPUs with the server, and ``requests`` spends about a millisecond
    of them per call."""
    import http.client
    import itertools
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    encoded = itertools.cycle([multipart(b) for b in (body if isinstance(body, list) else [body])])
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)

    def post() -> None:
        data, content_type = next(encoded)
        conn.request("POST", f"/predict{query}", body=data, headers={"Content-Type": content_type})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"POST /predict answered {resp.status}")

    return post


def load_level(url: str, body: bytes, concurrency: int, total: int, client: str = "requests", query: str = "") -> dict:
    """``total`` requests from ``concurrency`` threads, each with its own keep-alive connection
    (``client``: ``requests``, as the first figures were measured, or ``lean``: ``lean_poster``)."""
    local = threading.local()  # one connection per client thread: http.client connections are not shared

    def poster():
        if not hasattr(local, "post"):
            if client == "lean":
                local.post = lean_poster(url, body, query)
            else:
                session = requests.Session()
                local.post = lambda: session.post(f"{url}/predict{query}", files={"image": ("b.jpg", body, "image/jpeg")},
                                                  timeout=60).raise_for_status()
        return local.post

    def one(i):
        post = poster()
        started = time.perf_counter()
        post()
        return (time.perf_counter() - started) * 1000.0

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(concurrency)))  # warm-up, one per thread
        started = time.perf_counter()
        latencies = list(pool.map(one, range(total)))
        wall = time.perf_counter() - started
    return {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95), "rps": total / wall}


def bare_inference_ms(model_path: Path, n: int, runtime: str) -> float:
    """Median batch-1 time of one runtime, single-threaded as each gunicorn worker runs."""
    from server.model.predictor import Predictor
    from server.model.runtime import configure_tf_threads

    configure_tf_threads(1, 1)
    predictor = Predictor.from_path(model_path, runtime=runtime, threads=1)
    x = np.zeros((1, predictor.input_size, predictor.input_size, 3), np.float32)
    for _ in range(3):
        predictor.predict_arrays(x)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        predictor.predict_arrays(x)
        times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


def synthetic_model(out_dir: Path) -> Path:
    """An untrained MobileNetV2 at 224 px exported like the real one: same inference cost."""
    import keras

    from training.export import base_card, export_model

    base = keras.applications.MobileNetV2(input_shape=(224, 224, 3), include_top=False, weights=None, pooling="avg")
    outputs = keras.layers.Dense(7, activation="softmax")(base.output)
    card = base_card(name="synthetic-mobilenetv2", version="bench", input_size=224, architecture="MobileNetV2 (untrained)")
    return export_model(keras.Model(base.input, outputs), out_dir, card)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gunicorn(model_path: Path, boot_seconds: float = 120):
    port = free_port()
    env = {**os.environ, "MODEL_PATH": str(model_path), "SECRET_KEY": os.environ.get("SECRET_KEY", "bench-secret"),
           "PORT": str(port), "HOST": "127.0.0.1", "ACCESS_LOG": "/dev/null",
           "RATE_LIMIT": "off"}  # every request comes from this one address: measure, not limit
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    proc = subprocess.Popen([gunicorn, "-c", "gunicorn.conf.py", "wsgi:app"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + boot_seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gunicorn exited: {proc.stderr.read().decode(errors='replace')[-2000:]}")
        try:
            if requests.get(f"{url}/readyz", timeout=5).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        time.sleep(0.5)
    stop(proc)
    raise SystemExit("gunicorn did not become ready in time")


def stop(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def onnxruntime_status() -> str:
    try:
        import onnxruntime

        return f"available (onnxruntime {onnxruntime.__version__}, providers {onnxruntime.get_available_providers()})"
    except ImportError:
        return "not installed"


def print_ratios(by_size: dict) -> None:
    """Each later upload size against the first, per level: p50 ratio and req/s as a share."""
    sizes = list(by_size)
    for size in sizes[1:]:
        for level, r in by_size[size].items():
            base = by_size[sizes[0]][level]
            print(f"{'x'.join(map(str, size))} against {'x'.join(map(str, sizes[0]))} at concurrency {level}: "
                  f"p50 {r['p50'] / base['p50']:.2f}x, req/s {r['rps'] / base['rps']:.0%}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running server (loopback)")
    target.add_argument("--start", action="store_true", help="start gunicorn on a free loopback port")
    parser.add_argument("--model", type=Path, default=None, help="exported .h5 (default: shipped model)")
    parser.add_argument("--synthetic", action="store_true", help="build an untrained MobileNetV2 224 to measure with")
    parser.add_argument("--requests", type=int, default=48, help="requests per concurrency level (bounded)")
    parser.add_argument("--levels", default="1,4,16")
    parser.add_argument("--bare-n", type=int, default=30)
    parser.add_argument("--query", default="", help="appended to /predict, e.g. '?explain=1'")
    parser.add_argument("--photo-size", default="",
                        help="WxH: post the photo upscaled to this size (e.g. 4000x3000), or several, comma-separated")
    parser.add_argument("--photos", type=int, default=0,
                        help="post N validation photos in turn (lean client only) instead of one photo")
    parser.add_argument("--client", choices=("requests", "lean"), default="requests",
                        help="the load generator: python-requests, or a lean http.client poster (less client CPU)")
    args = parser.parse_args(argv)
    if args.url and not args.url.startswith(("http://127.0.0.1", "http://localhost")):
        parser.error("loopback only: --url must be http://127.0.0.1:PORT or http://localhost:PORT")

    tmp = tempfile.TemporaryDirectory(prefix="bench-model-")
    model_path = args.model or Path(os.environ.get("MODEL_PATH") or DEFAULT_MODEL_PATH)
    if args.synthetic:
        model_path = synthetic_model(Path(tmp.name))
    print(f"model: {model_path}")
    print(f"ONNX Runtime: {onnxruntime_status()}")
    proc, url = start_gunicorn(model_path) if args.start else (None, args.url.rstrip("/"))
    try:
        sizes = [tuple(int(v) for v in size.lower().split("x")) for size in args.photo_size.split(",")] \
            if args.photo_size else [None]
        uploads = {size: upload_for(None, size) for size in sizes}
        if args.photos:
            if args.client != "lean" or args.photo_size:
                parser.error("--photos goes with --client lean and no --photo-size")
            photos = validation_photos(args.photos)
            uploads = {None: (photos, f"{len(photos)} validation photos in turn")}
        for body, what in uploads.values():
            size = sum(map(len, body)) // len(body) if isinstance(body, list) else len(body)
            print(f"upload: {what}, {size} bytes; {args.requests} requests per level; client {args.client}; {url}")
        print(f"{'upload':>12} {'concurrency':>11} {'p50 ms':>9} {'p95 ms':>9} {'req/s':>8}")
        by_size = {size: {} for size in sizes}
        for level in (int(v) for v in args.levels.split(",")):
            for size, (body, _) in uploads.items():
                by_size[size][level] = r = load_level(url, body, level, args.requests, args.client, args.query)
                label = "x".join(map(str, size)) if size else "default"
                print(f"{label:>12} {level:>11} {r['p50']:>9.1f} {r['p95']:>9.1f} {r['rps']:>8.2f}")
    finally:
        if proc:
            stop(proc)
    print_ratios(by_size)
    results = by_size[sizes[0]]
    first = results[min(results)]
    for runtime in ("onnxruntime", "tensorflow"):
        try:
            bare = bare_inference_ms(model_path, args.bare_n, runtime)
        except Exception as exc:  # report, do not hide, a runtime that cannot load this model
            print(f"bare inference, {runtime}: unavailable ({exc})")
            continue
        print(f"bare inference, {runtime} (predict_arrays, batch 1, 1 thread, median of {args.bare_n}): {bare:.2f} ms; "
              f"p50 /predict at concurrency {min(results)} is {first['p50'] / bare:.2f}x that")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
