"""Cold start: seconds from launching gunicorn (shipped config, 2 workers) to the first 200 on POST /predict.

    python bench/cold_start.py                 # two starts in a row, the ONNX cache as it is
    python bench/cold_start.py --fresh-cache   # empty the ONNX cache first: the first start converts

What ``make run`` does once its virtualenv exists. Each start polls ``POST /predict`` with a
HAM10000 photo every 100 ms until one answers 200, prints the time, and stops the server.
The second start finds the graphs the first one cached (``ONNX_CACHE_DIR``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import requests  # noqa: E402

from bench_predict import free_port, stop, upload_for  # noqa: E402
from server.config import DEFAULT_MODEL_PATH  # noqa: E402


def time_to_first_200(model: Path, env_extra: dict, limit: float = 300.0) -> float:
    port = free_port()
    env = {**os.environ, **env_extra, "MODEL_PATH": str(model), "SECRET_KEY": "cold-start", "PORT": str(port),
           "HOST": "127.0.0.1", "ACCESS_LOG": "/dev/null"}
    jpeg, _ = upload_for(None)
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    start = time.perf_counter()
    proc = subprocess.Popen([gunicorn, "-c", "gunicorn.conf.py", "wsgi:app"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - start < limit:
            if proc.poll() is not None:
                raise SystemExit(f"gunicorn exited with {proc.returncode}")
            try:
                r = requests.post(f"http://127.0.0.1:{port}/predict", files={"image": ("l.jpg", jpeg, "image/jpeg")},
                                  timeout=30)
                if r.status_code == 200:
                    return time.perf_counter() - start
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise SystemExit(f"no 200 within {limit:g} s")
    finally:
        stop(proc)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--starts", type=int, default=2)
    parser.add_argument("--fresh-cache", action="store_true", help="empty the ONNX cache before the first start")
    args = parser.parse_args(argv)
    env = {}
    if args.fresh_cache:
        from server.config import onnx_cache_dir

        cache = Path(onnx_cache_dir())
        shutil.rmtree(cache, ignore_errors=True)
        print(f"emptied {cache}")
    for i in range(args.starts):
        print(f"start {i + 1}: first 200 on POST /predict after {time_to_first_200(args.model, env):.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
