"""Do the int8 graphs answer as float32 does? The accuracy bar, measured through the upload path.

    python -m training.int8_bar --run-dir saved_models --data-dir ../shared/data/ham10000 [--record]

Loads the run's model twice through the service's own ``Predictor.from_path``, once in float32
and once with the int8 graphs ``training.quantize`` made (``INFERENCE_PRECISION``), and screens
the same pictures with both as an upload is screened (``open_upload``, then ``predict_image``):

- every photo of the split, photo alone: the test split (the card's ``metrics.test`` are
  float32's reference), or validation with ``--split val`` to choose how to quantize:
  balanced accuracy, malignant AUC, the malignant flag's sensitivity, coverage (answers not
  marked uncertain), refusals as non-skin, Grad-CAM of float32's top class, class probabilities;
- the split's lesions made harder (``training/nonskin_corpus.py``), everyday photographs and made
  pictures: which of them each precision refuses as non-skin.

This measures the int8 graphs against the model they were made from, once per model; it chooses
nothing about the model itself. ``--record`` writes the figures and the verdict into the card's
``int8`` section, where ``INFERENCE_PRECISION=auto`` reads it. Nothing is recalibrated: the
temperature and thresholds stay those fitted on float32 outputs.
"""

from __future__ import annotations

import argparse
import io
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from server.decoding import open_upload
from server.model.card import CARD_FILENAME
from server.model.files import check_model_files, load_card
from server.model.int8_check import cpu_flags
from training.cli import user_errors_in_one_line
from training.evaluate import evaluate_predictions

# The bar (issue #25): int8 may differ from float32 by at most this much.
MAX_BALANCED_ACCURACY_DROP = 0.01
MAX_MALIGNANT_AUC_DROP = 0.005
MAX_COVERAGE_CHANGE = 0.01
MIN_HEATMAP_CORRELATION = 0.9
MIN_SAME_TOP_CLASS = 0.97  # share of photos whose top class int8 leaves as float32's
HARD_LESIONS = 150  # the split's lesions made harder in each way, as the card's non-skin figures use
SEED = 42


@dataclass(frozen=True)
class Screened:
    """One precision's answers on a list of pictures, in order."""

    probs: np.ndarray  # (n, classes) served (calibrated) probabilities
    uncertain: np.ndarray  # (n,) bool
    refused: np.ndarray  # (n,) bool: the non-skin check refused it
    grids: list  # Grad-CAM grids (None where refused or none)


def upload_of(img) -> bytes:
    """A made picture as the bytes of a lossless upload, so it goes through ``open_upload`` too."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def screen_all(predictor, uploads, explain: bool = False, explain_codes=None) -> Screened:
    """Each upload read as the service reads it, then ``predict_image``; with ``explain`` a Grad-CAM
    of the top class, or of ``explain_codes[i]`` (float32's top class, so both maps explain one class)."""
    probs, uncertain, refused, grids = [], [], [], []
    index = {code: i for i, code in enumerate(predictor.classes)}
    for i, data in enumerate(uploads):
        code = None if explain_codes is None else explain_codes[i]
        p = predictor.predict_image(open_upload(data), explain=explain, explain_class=code)
        row = np.zeros(len(index))
        for c in p.classes:
            row[index[c.code]] = c.probability
        probs.append(row)
        uncertain.append(p.uncertain)
        refused.append(bool(p.out_of_distribution))  # the one non-skin rule refused it
        grids.append(None if p.heatmap is None else np.asarray(p.heatmap.grid, np.float64))
    return Screened(np.asarray(probs), np.asarray(uncertain), np.asarray(refused), grids)


def top_codes(predictor, screened: Screened) -> list[str]:
    return [predictor.classes[i] for i in screened.probs.argmax(axis=1)]


def heatmap_correlations(a: Screened, b: Screened) -> np.ndarray:
    """Pearson correlation of the two Grad-CAM grids of each picture both explained (flat maps excluded)."""
    out = []
    for x, y in zip(a.grids, b.grids):
        if x is None or y is None or x.std() == 0 or y.std() == 0:
            continue
        out.append(float(np.corrcoef(x.ravel(), y.ravel())[0, 1]))
    return np.asarray(out)


def test_figures(labels, s: Screened, malignant_threshold: float) -> dict:
    m = evaluate_predictions(labels, s.probs, malignant_threshold=malignant_threshold)
    return {"balanced_accuracy": m["balanced_accuracy"], "accuracy": m["accuracy"],
            "malignant_auc": m["malignant"]["auc"], "malignant_sensitivity": m["malignant"]["sensitivity"],
            "malignant_specificity": m["malignant"]["specificity"], "coverage": float(1 - s.uncertain.mean()),
            "refused_lesions": int(s.refused.sum())}


def bar(f32: dict, i8: dict, refusals: dict, correlations: np.ndarray, largest_change: float, target: float,
        same_top_class: float | None = None) -> dict:
    """Each check of the bar: (float32, int8, met). Refusals compare the sets of refused pictures."""
    sensitivity_floor = min(target, f32["malignant_sensitivity"])  # where float32 itself is below target: no lower
    checks = {
        "balanced_accuracy": i8["balanced_accuracy"] >= f32["balanced_accuracy"] - MAX_BALANCED_ACCURACY_DROP,
        "malignant_auc": i8["malignant_auc"] >= f32["malignant_auc"] - MAX_MALIGNANT_AUC_DROP,
        "coverage": abs(i8["coverage"] - f32["coverage"]) <= MAX_COVERAGE_CHANGE,
        "malignant_sensitivity": i8["malignant_sensitivity"] >= sensitivity_floor,
        "heatmap_correlation": bool(len(correlations)) and float(correlations.mean()) >= MIN_HEATMAP_CORRELATION,
        **{f"refusals_{k}": v["changed"] == 0 for k, v in refusals.items()},
    }
    if same_top_class is not None:
        checks["same_top_class"] = same_top_class >= MIN_SAME_TOP_CLASS
    return {"checks": checks, "meets_bar": all(checks.values()), "sensitivity_floor": sensitivity_floor,
            "largest_probability_change": largest_change}


def refusal_figures(f32: Screened, i8: Screened) -> dict:
    return {"float32": int(f32.refused.sum()), "int8": int(i8.refused.sum()), "n": int(len(f32.refused)),
            "changed": int((f32.refused != i8.refused).sum())}


def corpus_uploads(test_paths: list[str], size: int, hard_lesions: int) -> dict:
    """The non-skin corpus as uploads: test lesions made harder, everyday photographs (the whole
    corpus the object check was fitted against, from the installed packages), made pictures."""
    from PIL import Image

    from training import nonskin_corpus as corpus
    from training.nonskin_everyday import everyday_photos

    rng = np.random.default_rng(SEED)
    picked = [test_paths[i] for i in sorted(rng.choice(len(test_paths), min(hard_lesions, len(test_paths)), replace=False))]
    lesions = [Image.open(p).convert("RGB") for p in picked]
    return {"hard_lesions": [upload_of(img) for _, _, img in corpus.hard_cases(lesions, seed=SEED)],
            "everyday": [upload_of(img) for _, _, img in everyday_photos()],
            "made": [upload_of(img) for _, _, img in corpus.made_pictures(size, SEED)]}


def measure(run_dir: Path, data_dir: Path, onnx_cache: str | None, hard_lesions: int = HARD_LESIONS,
            limit: int = 0, split: str = "test") -> dict:
    """Every figure of the bar for the run's int8 graphs against its float32 model."""
    from server.model.predictor import Predictor
    from training.data import split_frame
    from training.export import MODEL_FILENAME

    card_path = run_dir / CARD_FILENAME
    model_path = run_dir / (load_card(card_path).model_file or MODEL_FILENAME)
    card, _ = check_model_files(model_path, card_path)
    f32p = Predictor.from_path(model_path, card_path, onnx_cache=onnx_cache, precision="float32")
    i8p = Predictor.from_path(model_path, card_path, onnx_cache=onnx_cache, precision="int8")
    if i8p.precision != "int8":
        raise SystemExit(f"error: the int8 graphs of {model_path} could not be served (see the log); "
                         f"run python -m training.quantize --run-dir {run_dir} --data-dir {data_dir}")
    frame = split_frame(data_dir, run_dir / "split.csv", split)
    if limit:
        frame = frame.sample(min(limit, len(frame)), random_state=SEED)
    uploads = [Path(p).read_bytes() for p in frame["path"]]
    labels = frame["label"].to_numpy()
    f32 = screen_all(f32p, uploads, explain=True)
    i8 = screen_all(i8p, uploads, explain=True, explain_codes=top_codes(f32p, f32))
    refusals = {"lesions": refusal_figures(f32, i8)}
    for name, pictures in corpus_uploads(list(frame["path"]), card.input_size, hard_lesions).items():
        refusals[name] = refusal_figures(screen_all(f32p, pictures), screen_all(i8p, pictures))
    correlations = heatmap_correlations(f32, i8)
    threshold = card.thresholds.malignant
    figures = {"float32": test_figures(labels, f32, threshold), "int8": test_figures(labels, i8, threshold)}
    largest = float(np.abs(f32.probs - i8.probs).max())
    same = float((f32.probs.argmax(1) == i8.probs.argmax(1)).mean())
    verdict = bar(figures["float32"], figures["int8"], refusals, correlations, largest, card.thresholds.malignant_target,
                  same)
    return {"split": split, "images": int(len(labels)), "through": "open_upload + Predictor.predict_image, photo alone",
            "cpu": cpu_flags(), "format": card.int8.figure("format", "u8s8"),
            "test": figures, "refusals": refusals,
            "heatmap_correlation": {"mean": float(correlations.mean()), "p05": float(np.percentile(correlations, 5)),
                                    "min": float(correlations.min()), "n": int(len(correlations))},
            "mean_probability_change": float(np.abs(f32.probs - i8.probs).mean()),
            "top_class_changed": int((f32.probs.argmax(1) != i8.probs.argmax(1)).sum()),
            "card_test_balanced_accuracy": card.test_metrics.get("balanced_accuracy"),
            "recalibrated": "no: the temperature and thresholds are those fitted on float32 outputs", **verdict}


def table(result: dict) -> str:
    """The figures as a Markdown table, with each check's verdict."""
    f32, i8, checks = result["test"]["float32"], result["test"]["int8"], result["checks"]
    yes = {True: "yes", False: "**no**"}
    rows = [("balanced accuracy", "balanced_accuracy", f"int8 >= float32 - {MAX_BALANCED_ACCURACY_DROP}"),
            ("malignant AUC", "malignant_auc", f"int8 >= float32 - {MAX_MALIGNANT_AUC_DROP}"),
            ("coverage (not uncertain)", "coverage", f"within {MAX_COVERAGE_CHANGE}"),
            ("malignant flag sensitivity", "malignant_sensitivity", f">= {result['sensitivity_floor']:.3f}")]
    lines = [f"| figure ({result['split']} split, photo alone) | float32 | int8 | change | bar | met |", "|---|---:|---:|---:|---|---|"]
    for label, key, rule in rows:
        lines.append(f"| {label} | {f32[key]:.4f} | {i8[key]:.4f} | {i8[key] - f32[key]:+.4f} | {rule} | {yes[checks[key]]} |")
    lines.append(f"| malignant flag specificity | {f32['malignant_specificity']:.4f} | {i8['malignant_specificity']:.4f} | "
                 f"{i8['malignant_specificity'] - f32['malignant_specificity']:+.4f} | (shown) | |")
    for name, r in result["refusals"].items():
        lines.append(f"| refused as non-skin: {name.replace('_', ' ')} (of {r['n']}) | {r['float32']} | {r['int8']} | "
                     f"{r['changed']} changed | unchanged | {yes[checks[f'refusals_{name}']]} |")
    h = result["heatmap_correlation"]
    lines.append(f"| Grad-CAM correlation with float32 (mean; 5th pct; min; n={h['n']}) | | {h['mean']:.3f}; "
                 f"{h['p05']:.3f}; {h['min']:.3f} | | mean >= {MIN_HEATMAP_CORRELATION} | {yes[checks['heatmap_correlation']]} |")
    lines.append(f"| largest change of a class probability (mean) | | {result['largest_probability_change']:.4f} "
                 f"({result['mean_probability_change']:.4f}) | | (reported) | |")
    same = 1 - result["top_class_changed"] / result["images"]
    lines.append(f"| top class the same as float32's | | {same:.4f} ({result['top_class_changed']} of {result['images']} "
                 f"changed) | | >= {MIN_SAME_TOP_CLASS} | {yes[checks.get('same_top_class', True)]} |")
    return "\n".join(lines)


@user_errors_in_one_line
def main(argv=None) -> int:
    from server.config import onnx_cache_dir

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", required=True, type=Path, help="a run (or saved_models/) with int8 graphs")
    p.add_argument("--data-dir", required=True, type=Path, help="HAM10000 folder (../shared/data/ham10000)")
    p.add_argument("--hard-lesions", type=int, default=HARD_LESIONS, help="test lesions made harder in each way")
    p.add_argument("--limit", type=int, default=0, help="only N test photos at random (a quick look; never --record)")
    p.add_argument("--split", choices=("val", "test"), default="test",
                   help="val to choose how to quantize; the verdict (--record) is on test, once per model")
    p.add_argument("--record", action="store_true", help="write the figures and the verdict into the card's int8 section")
    args = p.parse_args(argv)
    if args.record and (args.limit or args.split != "test"):
        p.error("--record needs the whole test split (no --limit, no --split val)")
    result = measure(args.run_dir, args.data_dir, onnx_cache_dir() or None, args.hard_lesions, args.limit, args.split)
    print(f"CPU: {result['cpu']}; int8 format {result['format']} (a figure holds for CPUs with these kernels only)")
    print(table(result))
    print(f"\nfloat32 here: balanced accuracy {result['test']['float32']['balanced_accuracy']:.4f} "
          f"(card's metrics.test: {result['card_test_balanced_accuracy']}); meets the bar: {result['meets_bar']}")
    if args.record:
        card_path = args.run_dir / CARD_FILENAME
        card = load_card(card_path)
        figures = {k: v for k, v in result.items() if k != "meets_bar"}
        card.replace(int8=replace(card.int8, meets_bar=result["meets_bar"],
                                  extra={**card.int8.extra, "bar": figures})).write(card_path)
        print(f"recorded in {card_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
