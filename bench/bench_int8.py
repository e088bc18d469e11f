"""Bare ONNX Runtime at batch 1: the float32 graphs against their int8 forms (``training.quantize``).

    python bench/bench_int8.py                          # shipped model, 1 and 2 threads
    python bench/bench_int8.py --run-dir runs/latest --rounds 15 --profile

Converts the ``.h5`` to the float32 graphs the service serves (tf2onnx, as a worker does),
loads the int8 graphs its card names, and times each graph on one real HAM10000 photo (or a
fixed random image). The two precisions are timed in alternating rounds, so a machine shared
with other work slows both alike and their ratio stays meaningful when the milliseconds do not.
Each round is the median of ``--n`` runs; the figure printed is the median over the rounds.
``--profile`` adds ONNX Runtime's own profiler: total time per operator type, each precision.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from bench_predict import SHARED_IMAGES  # noqa: E402


def session(graph: bytes, threads: int, profile_prefix: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    if profile_prefix:
        options.enable_profiling, options.profile_file_prefix = True, profile_prefix
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def feeds_for(sess, x: np.ndarray) -> dict:
    """The image, and any second input (the patient context) all "not given"."""
    inputs = sess.get_inputs()
    return {inputs[0].name: x, **{i.name: np.zeros((1, i.shape[-1]), np.float32) for i in inputs[1:]}}


def median_ms(sess, feeds: dict, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t) * 1000.0)
    return statistics.median(times)


def interleaved(sessions: dict, feeds: dict, rounds: int, n: int) -> dict:
    """Each session's median batch-1 time, over ``rounds`` alternating rounds of ``n`` runs."""
    for name, sess in sessions.items():
        median_ms(sess, feeds[name], 5)  # warm up
    per_round = defaultdict(list)
    for _ in range(rounds):
        for name, sess in sessions.items():
            per_round[name].append(median_ms(sess, feeds[name], n))
    return {name: statistics.median(times) for name, times in per_round.items()}


def operator_ms(graph: bytes, feeds_x: np.ndarray, threads: int, n: int) -> dict:
    """ONNX Runtime's profiler: milliseconds per run spent in each operator type."""
    with tempfile.TemporaryDirectory(prefix="ort-profile-") as tmp:
        sess = session(graph, threads, str(Path(tmp) / "p"))
        feeds = feeds_for(sess, feeds_x)
        for _ in range(n):
            sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    totals = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            totals[e["args"]["op_name"]] += e["dur"] / 1000.0 / n
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def image(size: int, colour: str) -> np.ndarray:
    from server.decoding import open_upload
    from server.imaging import model_input

    photo = next(iter(sorted(SHARED_IMAGES.glob("*.jpg"))), None) if SHARED_IMAGES.is_dir() else None
    if photo is None:
        return np.random.default_rng(0).uniform(-1, 1, (1, size, size, 3)).astype(np.float32)
    return model_input(open_upload(photo.read_bytes()), size, colour)[None]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", type=Path, default=ROOT / "saved_models")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--n", type=int, default=20, help="runs per round")
    p.add_argument("--profile", action="store_true", help="per-operator times from ONNX Runtime's profiler")
    args = p.parse_args(argv)

    from server.imaging import COLOUR_NONE, colour_of
    from server.model.card import CARD_FILENAME
    from server.model.files import check_model_files, load_card
    from training.export import MODEL_FILENAME
    from training.quantize import float_graphs

    card_path = args.run_dir / CARD_FILENAME
    model_path = args.run_dir / (load_card(card_path).model_file or MODEL_FILENAME)
    card, sha = check_model_files(model_path, card_path)
    if card.int8 is None or card.int8.source_sha256 != sha:
        raise SystemExit(f"no int8 graphs of this .h5 in {args.run_dir}: run python -m training.quantize first")
    x = image(card.input_size, colour_of(card.preprocessing) or COLOUR_NONE)
    graphs = {f"{kind} float32": g for kind, g in float_graphs(model_path, card.input_size).items()}
    for kind, spec in (("classifier", card.int8.classifier), ("branch", card.int8.branch)):
        if spec is not None:
            graphs[f"{kind} int8"] = (args.run_dir / spec.file).read_bytes()
    print(f"model {model_path} ({sha[:12]}), input {x.shape}, {os.cpu_count()} CPUs; "
          f"{args.rounds} alternating rounds of {args.n} runs, median")
    for threads in (int(t) for t in args.threads.split(",")):
        sessions = {name: session(g, threads) for name, g in graphs.items()}
        ms = interleaved(sessions, {name: feeds_for(s, x) for name, s in sessions.items()}, args.rounds, args.n)
        for kind in ("classifier", "branch"):
            if f"{kind} int8" in ms:
                f32, i8 = ms[f"{kind} float32"], ms[f"{kind} int8"]
                print(f"{threads} thread(s)  {kind:10s}  float32 {f32:6.2f} ms  int8 {i8:6.2f} ms  "
                      f"float32/int8 {f32 / i8:4.2f}x")
        if args.profile:
            for name, g in graphs.items():
                ops = operator_ms(g, x, threads, args.n * 3)
                top = ", ".join(f"{op} {v:.2f}" for op, v in list(ops.items())[:8])
                print(f"  profile {threads} thread(s), {name}: total {sum(ops.values()):.2f} ms/run; {top}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
