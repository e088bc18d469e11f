"""What the non-skin check costs: screening lesion photos with it against without it.

    python bench/bench_nonskin.py                      # shipped model, 100 HAM10000 photos from ../shared
    python bench/bench_nonskin.py --model PATH.h5 --images 300 --http

Both predictors load the same ``.h5`` and run the service's own use case,
``server.screening.screen`` (decode, preprocess, model, check), on the same real lesion
photos: one with the check off (``ood=False``: no ImageNet branch, no distances, no
floors), one as the service runs it (distances, floors, and the ImageNet branch for the
photos whose own features are beyond its gate). The check's cost depends on the photo, so
it prints the mean and median over the photos, and the share of them the branch ran for.
The goal is at most 30% of a plain screening. One thread, as one gunicorn worker runs.
``--http`` then starts gunicorn twice (``OOD_CHECK=0``, then the default) and compares
``POST /predict`` over the same photos at concurrency 1: the latency a client sees.
Figures depend on the CPU: run it on the machine you deploy to, with nothing else busy.
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
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as gunicorn.conf.py sets for the workers

from bench_predict import SHARED_IMAGES, start_gunicorn, stop  # noqa: E402
from server.config import DEFAULT_MODEL_PATH  # noqa: E402

GOAL = 0.30


def lesion_photos(n: int) -> list[bytes]:
    photos = sorted(SHARED_IMAGES.glob("*.jpg"))[:n] if SHARED_IMAGES.is_dir() else []
    if not photos:
        raise SystemExit(f"no lesion photos at {SHARED_IMAGES}: the check refuses synthetic pictures, so it needs real ones")
    return [p.read_bytes() for p in photos]


def per_photo_ms(fn, uploads: list[bytes], rounds: int) -> list[float]:
    """Each photo's median time over ``rounds`` passes (after one warm pass)."""
    for body in uploads[:5]:
        fn(body)
    times = [[] for _ in uploads]
    for _ in range(rounds):
        for i, body in enumerate(uploads):
            t = time.perf_counter()
            fn(body)
            times[i].append((time.perf_counter() - t) * 1000.0)
    return [statistics.median(t) for t in times]


def line(label: str, ms: list[float]) -> str:
    return f"  {label:28s} mean {statistics.mean(ms):7.2f} ms   median {statistics.median(ms):7.2f} ms"


def verdict(extra: float, plain: float, what: str) -> str:
    share = extra / plain
    return (f"the check costs {extra:.2f} ms = {share:.0%} of a plain {what} (goal <= {GOAL:.0%}): "
            f"{'met' if share <= GOAL else 'NOT met'}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(ROOT / DEFAULT_MODEL_PATH))
    p.add_argument("--images", type=int, default=100, help="HAM10000 photos from ../shared, in file order")
    p.add_argument("--rounds", type=int, default=3, help="passes over the photos (each photo's median is kept)")
    p.add_argument("--threads", type=int, default=1, help="inference threads, as one gunicorn worker uses")
    p.add_argument("--http", action="store_true", help="also compare POST /predict through gunicorn")
    args = p.parse_args(argv)

    from server.decoding import open_upload
    from server.imaging import model_input
    from server.model.nonskin import FEATURES
    from server.model.predictor import Predictor
    from server.model.runtime import configure_tf_threads
    from server.screening import ScreeningOptions, screen

    configure_tf_threads(args.threads, 1)
    uploads = lesion_photos(args.images)
    plain = Predictor.from_path(args.model, threads=args.threads, ood=False)
    checked = Predictor.from_path(args.model, threads=args.threads)
    if checked.ood is None:
        print("this model's card has no non-skin check; nothing to measure")
        return 1
    options = ScreeningOptions()

    def screen_or_refusal(predictor):
        def run(body):
            try:
                screen(body, options, predictor)
            except Exception:  # a refused photo costs what it costs; count it all the same
                pass
        return run

    runs_branch = 0
    for body in uploads:
        x = model_input(open_upload(body), checked.input_size)[None]
        fmap, _ = checked.forward(x)
        ratios = checked.ood.ratios({FEATURES: fmap.mean(axis=(1, 2))})
        runs_branch += bool(checked.ood.imagenet_runs(ratios)[0])
    off = per_photo_ms(screen_or_refusal(plain), uploads, args.rounds)
    on = per_photo_ms(screen_or_refusal(checked), uploads, args.rounds)
    print(f"model {args.model} ({checked.runtime}, {args.threads} thread); {len(uploads)} HAM10000 photos, "
          f"{args.rounds} rounds; checks: {', '.join(c.name for c in checked.ood.checks)}")
    print(f"the ImageNet branch ran for {runs_branch} of {len(uploads)} photos (its gate: "
          f"{checked.ood.imagenet_gate if checked.ood.imagenet_gate is not None else 'none, always'})")
    print(line("screening, check off", off))
    print(line("screening, check on", on))
    print(verdict(statistics.mean(on) - statistics.mean(off), statistics.mean(off), "screening in process (means)"))
    if args.http:
        import requests

        mean_ms = {}
        for check in ("0", "1"):
            os.environ["OOD_CHECK"] = check
            proc, url = start_gunicorn(Path(args.model))
            try:
                with requests.Session() as session:
                    def post(body):
                        session.post(f"{url}/predict", files={"image": ("lesion.jpg", body, "image/jpeg")}, timeout=60)
                    ms = per_photo_ms(post, uploads, args.rounds)
            finally:
                stop(proc)
            mean_ms[check] = statistics.mean(ms)
            print(line(f"POST /predict, OOD_CHECK={check}", ms))
        print(verdict(mean_ms["1"] - mean_ms["0"], mean_ms["0"], "POST /predict (means, concurrency 1)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
