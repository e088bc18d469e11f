"""Put a finished run in service: its model files into ``saved_models/``, and no earlier model's beside them.

    python -m training.ship ../runs/chain/student              # into saved_models/
    python -m training.ship runs/latest --to DIR --dry-run      # say what would change

A run folder holds what the service reads (the .h5, ``model_card.json``, the int8 graphs, the
non-skin statistics) and what the README and the model page quote (metrics, report, figures),
beside checkpoints the service never reads. Copying by hand leaves the last model's files behind:
a patient-context head or int8 graphs of another model next to the new one. So every top-level
file of the run but its checkpoints is copied, and every other file of the target is removed,
except what is not one model's: ``KEPT`` and any folder (``folds/``).

A run is refused before anything is touched when its card does not name its own .h5 by sha256,
or names int8 graphs whose bytes differ: the service would refuse them at start-up anyway.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

CARD = "model_card.json"
KEPT = frozenset({"ablation.md"})  # the record of every model's trials, not one model's file
# Head, best, kept and per-epoch weights: training state only (the backup/ and swa/ folders are not copied either).
CHECKPOINT_SUFFIX = ".weights.h5"


class ShipError(Exception):
    """The run cannot be shipped as it is; the message says why."""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_files(run_dir: Path) -> list[Path]:
    """The run's top-level files that make up the model and its record, checkpoints left out."""
    return sorted(p for p in run_dir.iterdir()
                  if p.is_file() and not p.name.endswith(CHECKPOINT_SUFFIX) and p.name not in KEPT)


def check_run(run_dir: Path) -> dict:
    """The run's card, once its .h5 and any int8 graphs are the bytes it names; else ShipError."""
    card_path = run_dir / CARD
    if not card_path.is_file():
        raise ShipError(f"{run_dir} has no {CARD}: the run did not finish")
    card = json.loads(card_path.read_text())
    model = run_dir / card["model_file"]
    if not model.is_file() or sha256(model) != card["sha256"]:
        raise ShipError(f"{model.name} is missing or is not the model {CARD} describes")
    int8 = card.get("int8") or {}
    for part in ("classifier", "branch", "reference"):
        named = int8.get(part)
        if named and (not (run_dir / named["file"]).is_file() or sha256(run_dir / named["file"]) != named["sha256"]):
            raise ShipError(f"{named['file']} is missing or is not the int8 graph {CARD} names")
    return card


def plan(run_dir: Path, target: Path) -> tuple[list[Path], list[Path]]:
    """(files to copy from the run, files of the target to remove)."""
    copied = model_files(run_dir)
    names = {p.name for p in copied}
    stale = sorted(p for p in target.iterdir() if p.is_file() and p.name not in names and p.name not in KEPT) \
        if target.is_dir() else []
    return copied, stale


def ship(run_dir: Path, target: Path, dry_run: bool = False) -> tuple[list[Path], list[Path]]:
    """Check the run, then copy its model files into ``target`` and remove the earlier model's others."""
    check_run(run_dir)
    copied, stale = plan(run_dir, target)
    if not dry_run:
        target.mkdir(parents=True, exist_ok=True)
        for path in stale:
            path.unlink()
        for path in copied:
            shutil.copy2(path, target / path.name)
    return copied, stale


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished run: its model_card.json and .h5")
    parser.add_argument("--to", type=Path, default=Path("saved_models"), help="the service's model folder")
    parser.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    args = parser.parse_args(argv)
    try:
        copied, stale = ship(args.run_dir, args.to, args.dry_run)
    except ShipError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    verb = "would" if args.dry_run else "did"
    print(f"{verb} copy {len(copied)} files into {args.to}: {', '.join(p.name for p in copied)}")
    print(f"{verb} remove {len(stale)} earlier model files: {', '.join(p.name for p in stale) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
