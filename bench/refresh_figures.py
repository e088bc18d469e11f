"""Every benchmark whose figures the README quotes for the shipped model, in one run, each output kept.

    python bench/refresh_figures.py --out-dir ../runs/figures            # all of them (about an hour on 2 cores)
    python bench/refresh_figures.py --out-dir ../runs/figures --only flood,profile
    python bench/refresh_figures.py --list

A new shipped model changes what these print: the differential's coverage, the same answer at
4000x3000 as at 600x450, the non-skin rates, the cost of a request. Each benchmark runs alone
(two heavy jobs on 2 cores slow each other), its output goes to ``<name>.txt`` in the run folder
with the command, the CPU kind and the minutes it took at the top, and a failing one does not stop
the others. Figures measured on one CPU hold for that CPU only: ``cpu.txt`` names it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.clock import cpu_kind, cpu_name, cpu_summary  # noqa: E402

PY = sys.executable
# name -> (the command, where the README quotes it)
BENCHMARKS = {
    "differential": ([PY, "bench/differential_bar.py", "--shifted", "100"], "The differential"),
    "photo_size": ([PY, "bench/bench_photo_size.py", "--sides", "360", "--precision", "float32,auto"],
                   "Phone photos against 600x450 ones: the working side"),
    "profile": ([PY, "bench/profile_request.py", "--requests", "60", "--http"], "Tests and benchmarks: where the milliseconds go"),
    "photo_cost_c1": ([PY, "bench/bench_predict.py", "--start", "--photo-size", "600x450,4000x3000", "--levels", "1",
                       "--requests", "60", "--client", "lean"], "Phone photos: cost (run with WEB_CONCURRENCY=1)"),
    "photo_cost_c16": ([PY, "bench/bench_predict.py", "--start", "--photo-size", "600x450,4000x3000", "--levels", "16",
                        "--requests", "96", "--client", "lean"], "Phone photos: cost at c=16"),
    "gunicorn": ([PY, "bench/bench_predict.py", "--start"], "make bench: c = 1, 4, 16"),
    "flood": ([PY, "bench/flood.py", "--limits", "nginx"], "Phone photos: small files that ask for much"),
    "nonskin_corpus": ([PY, "bench/nonskin_corpus_rates.py"], "Trustworthy outputs: the non-skin check"),
    "cold_start": ([PY, "bench/cold_start.py"], "Tests and benchmarks: start-up"),
}
SINGLE_WORKER = {"photo_cost_c1"}


def run_one(name: str, out_dir: Path) -> tuple[int, float]:
    """Run benchmark ``name``; its output, headed by the command, CPU and minutes, in ``<name>.txt``."""
    import os

    command, quoted_in = BENCHMARKS[name]
    env = {**os.environ, **({"WEB_CONCURRENCY": "1"} if name in SINGLE_WORKER else {})}
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    minutes = (time.monotonic() - started) / 60
    head = (f"# {' '.join(Path(c).name if c == PY else c for c in command)}"
            f"{' (WEB_CONCURRENCY=1)' if name in SINGLE_WORKER else ''}\n# CPU {cpu_summary()}; {minutes:.1f} min; "
            f"exit {done.returncode}; quoted in README: {quoted_in}\n\n")
    (out_dir / f"{name}.txt").write_text(head + done.stdout + ("\n# stderr\n" + done.stderr[-4000:] if done.returncode else ""))
    return done.returncode, minutes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", type=Path, help="the run folder (outside the work tree)")
    p.add_argument("--only", help="comma-separated names (see --list)")
    p.add_argument("--list", action="store_true", help="name each benchmark and where the README quotes it")
    args = p.parse_args(argv)
    if args.list:
        for name, (command, quoted_in) in BENCHMARKS.items():
            print(f"{name:15} {quoted_in}")
        return 0
    if args.out_dir is None:
        p.error("--out-dir is required")
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; --list names them")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "cpu.txt").write_text(f"{cpu_kind()}\n{cpu_name()}\n")  # the kind, then the machine
    failed = 0
    for name in names:
        code, minutes = run_one(name, args.out_dir)
        failed += code != 0
        print(f"{name:15} {'ok' if code == 0 else f'exit {code}'} in {minutes:.1f} min -> {args.out_dir / (name + '.txt')}",
              flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
