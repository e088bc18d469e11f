"""The whole model chain in one resumable command: folds, teacher, student, quantization.

    make chain                      # = python -m training.chain --data-dir ../shared/data/ham10000 ... --out-dir ../runs/chain

1. ``training.folds``: five lesion-grouped folds over the training split, each model the
   shipped recipe weight-averaged; every fold's logits copied to ``--publish-dir``
   (``saved_models/folds``) as soon as it finishes, to be committed: a move to another
   machine then loses at most the fold in progress.
2. ``training.teacher``: the members' averaged outputs on every training image (soft
   targets), and the folds' figures.
3. ``training.context_folds``: the patient context measured out of fold, in HAM10000's sites
   and in ISIC's general groups; ``context_choice`` decides whether and in which encoding the
   student reads it (``context_folds.json``).
4. The student: ``make train``'s recipe with ``--distill-teacher``, weight averaging and the
   patient-context phase as step 3 chose, on the whole training split; export, calibration and
   the card as for any shipped model. This is the one step that scores the test split.
5. ``training.quantize`` and ``training.int8_bar --record``: the int8 graphs and their bar.

A step whose output exists is skipped, and a step cut off resumes; rerun the same command.
``chain.json`` in the run folder records each step's minutes (the folds' and the student's
summed over every process that trained them, ``training.clock``) and the CPU kind, and
``train.log`` the progress with an ETA. The test split is scored by step 4 only; the
decision to ship the student is written down before (``saved_models/ablation.md``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

from training.cli import user_errors_in_one_line
from training.clock import cpu_kind
from training.config import parse_args
from training.distill import TEACHER_FILE
from training.folds import FIGURES, FOLD_RECIPE, N_FOLDS, given_settings, publish_fold, run_folds, with_recipe

log = logging.getLogger("training")

STUDENT_DIR = "student"
# The student trains as the folds did, and then learns to read the patient context as make train's model does.
STUDENT_RECIPE = {**FOLD_RECIPE, "patient_context": True}
RECORD = "chain.json"
# Minutes a step takes relative to one fold, for the ETA before a step has run here: the student
# trains on five fifths of the split, not four, and exports and calibrates once.
STEP_WEIGHT = {"teacher": 0.02, "context": 0.02, "student": 1.4, "quantize": 0.35}
CONTEXT_FILE = "context_folds.json"


def publish_records(chain_dir: Path, publish_dir: Path) -> None:
    """Copy the folds' pooled figures, the teacher's and the context verdict beside the folds: the
    few KB that say why the student is what it is, kept when the run folder is not."""
    for name in ("folds.json", "teacher_figures.json", CONTEXT_FILE):
        shutil.copy2(chain_dir / name, publish_dir / name)


def record_step(chain_dir: Path, step: str, minutes: float, whole: bool = False) -> dict:
    """Add a process's ``minutes`` to ``step`` in ``chain.json`` (``whole``: they are the step's whole time)."""
    path = chain_dir / RECORD
    record = json.loads(path.read_text()) if path.is_file() else {"cpu": cpu_kind(), "minutes": {}}
    record["minutes"][step] = round(minutes + (0.0 if whole else record["minutes"].get(step, 0.0)), 1)
    record["total_minutes"] = round(sum(record["minutes"].values()), 1)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def eta(chain_dir: Path, steps_left: list[str]) -> str:
    """Minutes left, from the folds' measured pace on this machine."""
    record = json.loads((chain_dir / RECORD).read_text()) if (chain_dir / RECORD).is_file() else {}
    folds = [json.loads(p.read_text())["minutes"] for p in chain_dir.glob(f"fold_*/{FIGURES}")]
    per_fold = sum(folds) / len(folds) if folds else 45.0
    left = sum(per_fold * STEP_WEIGHT[s] for s in steps_left)
    return f"about {left:.0f} min left ({', '.join(steps_left) or 'nothing'}; {record.get('cpu', cpu_kind())} CPU)"


def run_chain(argv: list[str], chain_dir: Path, publish_dir: Path | None, n_folds: int = N_FOLDS) -> int:
    """Every step in order, each skipped when done; returns a process exit status."""
    from training import context_folds, int8_bar, quantize, teacher
    from training.train import run as train_run

    cfg, _ = parse_args(argv)
    fold_cfg = with_recipe(replace(cfg, out_dir=str(chain_dir)), argv)
    result = run_folds(fold_cfg, chain_dir, n_folds, publish=(lambda k: publish_fold(chain_dir, publish_dir, k))
                       if publish_dir else None, published=publish_dir)
    # Each fold's clock sums the processes that trained it, a cut one's too; loading the images is left out.
    record_step(chain_dir, "folds", sum(fold["minutes"] for fold in result["folds"]), whole=True)
    if len(result["folds"]) < n_folds:
        return 1
    log.info("folds: %s; %s", {k: v for k, v in result.items() if k != "folds"},
             eta(chain_dir, ["teacher", "context", "student", "quantize"]))

    if not (chain_dir / TEACHER_FILE).is_file():
        t = time.perf_counter()
        teacher.main(["--folds-dir", str(chain_dir)])
        record_step(chain_dir, "teacher", (time.perf_counter() - t) / 60)
    if not (chain_dir / CONTEXT_FILE).is_file():
        t = time.perf_counter()
        measured = context_folds.measure(chain_dir, Path(cfg.data_dir))
        choice = context_folds.context_choice(measured)
        (chain_dir / CONTEXT_FILE).write_text(json.dumps({"choice": choice, "measured": measured}, indent=2) + "\n")
        log.info("context for the student: %s", choice)
        record_step(chain_dir, "context", (time.perf_counter() - t) / 60)
    if publish_dir:
        publish_records(chain_dir, publish_dir)
    choice = json.loads((chain_dir / CONTEXT_FILE).read_text())["choice"]
    student_dir = chain_dir / STUDENT_DIR
    if not (student_dir / "model_card.json").is_file():
        log.info("student: %s", eta(chain_dir, ["student", "quantize"]))
        student = with_recipe(replace(cfg, out_dir=str(student_dir), distill_teacher=str(chain_dir / TEACHER_FILE)),
                              argv, STUDENT_RECIPE)
        given = given_settings(argv)  # the folds' verdict on the context, unless the command line says otherwise
        student = replace(student, **{k: choice[k] for k in ("patient_context", "context_sites") if k not in given})
        train_run(student, resume=(student_dir / "history.csv").is_file())
    card = json.loads((student_dir / "model_card.json").read_text())
    if "student" not in json.loads((chain_dir / RECORD).read_text())["minutes"]:  # its card's total sums every process
        record_step(chain_dir, "student", card["training"]["durations_s"]["total"] / 60, whole=True)
    if (card.get("int8") or {}).get("meets_bar") is None:
        log.info("quantize: %s", eta(chain_dir, ["quantize"]))
        t = time.perf_counter()
        quantize.main(["--run-dir", str(student_dir), "--data-dir", cfg.data_dir])
        int8_bar.main(["--run-dir", str(student_dir), "--data-dir", cfg.data_dir, "--record"])
        record_step(chain_dir, "quantize", (time.perf_counter() - t) / 60)
    log.info("chain done: %s", json.loads((chain_dir / RECORD).read_text()))
    log.info("next, issue #33's decision rule: python -m training.decide --student %s --folds-dir %s", student_dir, chain_dir)
    return 0


@user_errors_in_one_line
def main(argv=None) -> int:
    import argparse

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    chain = argparse.ArgumentParser(add_help=False)
    chain.add_argument("--folds", type=int, default=N_FOLDS, help="how many lesion-grouped folds (default 5)")
    chain.add_argument("--publish-dir", type=Path, default=None,
                       help="where each finished fold's logits are copied for committing (make chain: saved_models/folds)")
    argv = sys.argv[1:] if argv is None else list(argv)
    flags, rest = chain.parse_known_args(argv)
    out = Path(parse_args(argv, parents=[chain], description="Folds, teacher, student, calibration, quantization.")[0].out_dir)
    return run_chain(rest, out, flags.publish_dir, flags.folds)


if __name__ == "__main__":
    raise SystemExit(main())
