"""How fast does ``lesion-predict-folder`` screen a clinic's folder of 600x450 photos, and of 12 MP ones?

    python bench/folder_rate.py                      # 150 test-split photos, two runs of each folder
    python bench/folder_rate.py --photos 300 --runs 3

Writes the same test-split photos (``saved_models/split.csv``, seeded sample), upscaled bicubic as
every benchmark's upload is (``bench_predict.upscaled_jpeg``), into two temporary folders: 600x450
and 4000x3000 quality-90 JPEGs. Runs the real CLI on each, alternating, as a user would (a fresh
process: model load included), and prints images a second from the wall time, the folders' sizes,
and how many of the two folders' rows agree on the top class and the malignant flag.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_predict import upscaled_jpeg  # noqa: E402

SIZES = ((600, 450), (4000, 3000))
SEED = 42


def write_folder(paths: list[Path], size: tuple[int, int], folder: Path) -> int:
    """Each photo upscaled to ``size`` under its own name; the folder's bytes."""
    folder.mkdir(parents=True)
    for path in paths:
        (folder / path.name).write_bytes(upscaled_jpeg(path, size))
    return sum(f.stat().st_size for f in folder.iterdir())


def screen(folder: Path, out: Path) -> float:
    """Seconds the CLI takes over the folder, start-up included, as a user waits for it."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "server.batch", str(folder), "--out", str(out)], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    return time.perf_counter() - started


def answers(out: Path) -> dict[str, tuple[str, str]]:
    """filename -> (top class, malignant flag) from the CLI's CSV."""
    with out.open(newline="") as fh:
        return {row["file"]: (row["top_code"], row["malignant_flag"]) for row in csv.DictReader(fh)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "ham10000")
    parser.add_argument("--photos", type=int, default=150)
    parser.add_argument("--runs", type=int, default=2, help="runs of each folder, alternating")
    args = parser.parse_args(argv)
    from training.data import split_frame

    frame = split_frame(args.data_dir, ROOT / "saved_models" / "split.csv", "test")
    frame = frame.sample(min(args.photos, len(frame)), random_state=SEED)
    paths = [Path(p) for p in frame["path"]]
    with tempfile.TemporaryDirectory() as tmp:
        folders = {size: Path(tmp) / f"{size[0]}x{size[1]}" for size in SIZES}
        megabytes = {size: write_folder(paths, size, folder) / 1e6 for size, folder in folders.items()}
        rates = {size: [] for size in SIZES}
        for _ in range(args.runs):
            for size, folder in folders.items():
                rates[size].append(len(paths) / screen(folder, Path(tmp) / f"{size[0]}.csv"))
        small, large = (answers(Path(tmp) / f"{size[0]}.csv") for size in SIZES)
    print(f"lesion-predict-folder over {len(paths)} test-split photos, {args.runs} runs each, alternating "
          f"(wall time, model load included)")
    for size in SIZES:
        figures = ", ".join(f"{r:.1f}" for r in rates[size])
        print(f"  {size[0]}x{size[1]} ({megabytes[size]:.1f} MB): {figures} images/s")
    same_top = sum(small[name][0] == large[name][0] for name in small)
    same_flag = sum(small[name][1] == large[name][1] for name in small)
    print(f"  the two folders' rows agree on {same_top} of {len(small)} top classes and {same_flag} malignant flags")
    return 0


if __name__ == "__main__":
    sys.exit(main())
