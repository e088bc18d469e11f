"""Evaluate a model honestly: scikit-learn metrics, plots, ``metrics.json`` and ``report.md``.

``python -m training.evaluate --model saved_models/ham10000_mobilenetv2.h5 --data-dir DIR
[--split-csv split.csv --split test]`` scores any exported model on any labelled folder
(HAM10000 layout) or CSV (``path``/``file`` + ``dx`` columns). It predicts through the
service's own Predictor, so the figures are those of the model the service serves.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn import metrics as skm

from server.lesions import CLASS_CODES, MALIGNANT_CODES
from server.thresholds import MALIGNANT_TARGET_SENSITIVITY


def malignant_scores(probs: np.ndarray, classes=CLASS_CODES) -> np.ndarray:
    """P(mel) + P(bcc) + P(akiec) per row: the screening question a clinician asks first."""
    idx = [i for i, c in enumerate(classes) if c in MALIGNANT_CODES]
    return probs[:, idx].sum(axis=1)


def is_malignant(labels: np.ndarray, classes=CLASS_CODES) -> np.ndarray:
    return np.isin(np.asarray(labels), [i for i, c in enumerate(classes) if c in MALIGNANT_CODES])


def choose_malignant_threshold(labels, probs, target_sensitivity: float = MALIGNANT_TARGET_SENSITIVITY) -> float:
    """The highest threshold on P(malignant) whose sensitivity reaches the target (pick on validation)."""
    fpr, tpr, thresholds = skm.roc_curve(is_malignant(labels), malignant_scores(probs))
    ok = np.flatnonzero(tpr >= target_sensitivity)
    return float(min(1.0, thresholds[ok[0]])) if len(ok) else 0.0


def normalised_rows(probs) -> np.ndarray:
    """Probability rows as float64 summing to 1 (float32 softmax rows sum to 1 only within rounding)."""
    probs = np.asarray(probs, dtype=np.float64)
    return probs / probs.sum(axis=1, keepdims=True)


def balanced_accuracy(labels: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over the classes ``labels`` holds: scikit-learn's ``balanced_accuracy_score``, to the bit.

    Its input checks and confusion matrix cost about 3 ms a call, 20 times this sum, and the
    subgroup bootstrap calls it for every resample of every group (a thousand each).
    """
    return float(np.mean([np.mean(pred[labels == c] == c) for c in np.unique(labels)]))


def screening_figures(labels, probs, malignant_threshold: float | None = None, classes=CLASS_CODES) -> dict:
    """Balanced accuracy, melanoma recall and the malignant flag's sensitivity and specificity.

    The figures a screening aid is judged by, computed in this one place for the whole split
    (``evaluate_predictions``) and for each subgroup (``training.subgroups``), so both mean the
    same thing. ``probs`` must be ``normalised_rows``. A figure the images cannot give is None,
    never 0: no melanoma, no melanoma recall; no benign lesion, no specificity. In a set that
    lacks some classes, balanced accuracy is the mean recall over the classes it holds.
    """
    labels = np.asarray(labels)
    pred = probs.argmax(axis=1)
    mel = labels == classes.index("mel")
    out = {"balanced_accuracy": None, "melanoma_recall": float((pred[mel] == classes.index("mel")).mean()) if mel.any() else None,
           "malignant_sensitivity": None, "malignant_specificity": None}
    if len(labels):
        out["balanced_accuracy"] = balanced_accuracy(labels, pred)
    if malignant_threshold is not None:
        mal_true, flagged = is_malignant(labels, classes), malignant_scores(probs, classes) >= malignant_threshold
        out["malignant_sensitivity"] = float(flagged[mal_true].mean()) if mal_true.any() else None
        out["malignant_specificity"] = float((~flagged[~mal_true]).mean()) if (~mal_true).any() else None
    return out


def evaluate_predictions(labels, probs, classes=CLASS_CODES, malignant_threshold: float | None = None) -> dict:
    """Every figure the model card and report quote, from labels and softmax rows."""
    labels = np.asarray(labels)
    probs = normalised_rows(probs)
    pred = probs.argmax(axis=1)
    figures = screening_figures(labels, probs, malignant_threshold, classes)
    k = len(classes)
    report = skm.classification_report(labels, pred, labels=list(range(k)), target_names=list(classes),
                                       output_dict=True, zero_division=0)
    present = np.unique(labels)
    out = {
        "n": int(len(labels)),
        "accuracy": float(skm.accuracy_score(labels, pred)),
        "balanced_accuracy": figures["balanced_accuracy"],
        "per_class": {c: {m: float(report[c][m]) for m in ("precision", "recall", "f1-score")} | {"support": int(report[c]["support"])}
                      for c in classes},
        "confusion_matrix": skm.confusion_matrix(labels, pred, labels=list(range(k))).tolist(),
        "log_loss": float(skm.log_loss(labels, np.clip(probs, 1e-7, 1), labels=list(range(k)))),
    }
    if len(present) == k:
        out["macro_auc_ovr"] = float(skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=list(range(k))))
    mal_true, mal_score = is_malignant(labels, classes), malignant_scores(probs, classes)
    if 0 < mal_true.sum() < len(mal_true):
        out["malignant"] = {"auc": float(skm.roc_auc_score(mal_true, mal_score)), "positives": int(mal_true.sum())}
        if malignant_threshold is not None:
            out["malignant"].update(threshold=float(malignant_threshold), sensitivity=figures["malignant_sensitivity"],
                                    specificity=figures["malignant_specificity"])
    return out


def plot_confusion(labels, probs, path: Path, classes=CLASS_CODES, normalize: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5.5), dpi=110)
    skm.ConfusionMatrixDisplay.from_predictions(
        labels, np.asarray(probs).argmax(1), labels=list(range(len(classes))), display_labels=list(classes),
        normalize=normalize, values_format=".2f" if normalize else "d", cmap="Blues", ax=ax, colorbar=False,
    )
    ax.set_title("Confusion matrix" + (" (row-normalised: recall on the diagonal)" if normalize else " (counts)"))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_roc(labels, probs, path: Path, classes=CLASS_CODES) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, probs = np.asarray(labels), np.asarray(probs)
    fig, ax = plt.subplots(figsize=(6.5, 5.5), dpi=110)
    for i, code in enumerate(classes):
        if 0 < (labels == i).sum() < len(labels):
            skm.RocCurveDisplay.from_predictions(labels == i, probs[:, i], name=code, ax=ax)
    mal = is_malignant(labels, classes)
    if 0 < mal.sum() < len(mal):
        skm.RocCurveDisplay.from_predictions(mal, malignant_scores(probs, classes), name="malignant (mel+bcc+akiec)",
                                             ax=ax, curve_kwargs={"linestyle": "--", "color": "black"})
    ax.set_title("ROC, one class vs rest")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_history(history_csv: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    hist = pd.read_csv(history_csv)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    x = np.arange(1, len(hist) + 1)
    for col in ("loss", "val_loss"):
        if col in hist:
            ax1.plot(x, hist[col], label=col)
    for col in ("val_balanced_accuracy", "val_accuracy"):
        if col in hist:
            ax2.plot(x, hist[col], label=col)
    ax1.set_xlabel("epoch"), ax2.set_xlabel("epoch"), ax1.legend(), ax2.legend()
    ax1.set_title("loss"), ax2.set_title("validation")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_plots(labels, probs, out_dir: Path, prefix: str = "") -> list[str]:
    out_dir = Path(out_dir)
    names = [f"{prefix}confusion_matrix.png", f"{prefix}confusion_matrix_normalised.png", f"{prefix}roc.png"]
    plot_confusion(labels, probs, out_dir / names[0])
    plot_confusion(labels, probs, out_dir / names[1], normalize="true")
    plot_roc(labels, probs, out_dir / names[2])
    return names


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def metrics_markdown(m: dict, title: str) -> str:
    """A readable table of one split's figures."""
    mal = m.get("malignant", {})
    lines = [
        f"### {title} (n = {m['n']})", "",
        "| metric | value |", "|---|---|",
        f"| balanced accuracy (mean recall) | {_fmt(m['balanced_accuracy'])} |",
        f"| accuracy | {_fmt(m['accuracy'])} |",
        f"| macro one-vs-rest AUC | {_fmt(m.get('macro_auc_ovr'))} |",
        f"| malignant (mel+bcc+akiec) AUC | {_fmt(mal.get('auc'))} |",
    ]
    if "threshold" in mal:
        lines += [
            f"| malignant threshold (chosen on validation) | {_fmt(mal['threshold'])} |",
            f"| malignant sensitivity | {_fmt(mal['sensitivity'])} |",
            f"| malignant specificity | {_fmt(mal['specificity'])} |",
        ]
    lines += ["", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for code, row in m["per_class"].items():
        lines.append(f"| {code} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1-score']:.3f} | {row['support']} |")
    return "\n".join(lines) + "\n"


def predict_folder_items(predictor, paths, batch_size: int = 32) -> np.ndarray:
    """Softmax rows for image files, read through the service's own preprocessing."""
    from server.imaging import load_square_uint8, scale_pixels

    rows = []
    for start in range(0, len(paths), batch_size):
        batch = np.stack([scale_pixels(load_square_uint8(p, predictor.input_size, predictor.colour))
                          for p in paths[start:start + batch_size]])
        rows.append(predictor.predict_arrays(batch))
    return np.concatenate(rows) if rows else np.zeros((0, len(CLASS_CODES)))


def _labelled_items(args) -> tuple[list[str], np.ndarray]:
    import pandas as pd

    from training.data import load_metadata

    if args.csv:
        df = pd.read_csv(args.csv)
        base = Path(args.csv).parent
        col = "path" if "path" in df.columns else "file"
        paths = [str(p if Path(p).is_absolute() else base / p) for p in df[col]]
        return paths, df["dx"].map(CLASS_CODES.index).to_numpy()
    df = load_metadata(Path(args.data_dir))
    if args.split_csv:
        split = pd.read_csv(args.split_csv).set_index("image_id")["split"]
        df = df[df["image_id"].map(split) == args.split]
    return list(df["path"]), df["label"].to_numpy()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="exported .h5 (its model_card.json beside it)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--data-dir", help="HAM10000-layout folder")
    src.add_argument("--csv", help="CSV with path (or file) and dx columns")
    parser.add_argument("--split-csv", help="split.csv from a training run, to score one split")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--out-dir", default="evaluation")
    args = parser.parse_args(argv)

    from server.model.predictor import Predictor

    predictor = Predictor.from_path(args.model)
    paths, labels = _labelled_items(args)
    if not len(paths):
        parser.error("no labelled images found")
    probs = predict_folder_items(predictor, paths)
    threshold = predictor.card.get("thresholds", {}).get("malignant")
    m = evaluate_predictions(labels, probs, malignant_threshold=threshold)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(m, indent=2) + "\n")
    plots = write_plots(labels, probs, out)
    (out / "report.md").write_text(f"# Evaluation of {predictor.info.name} {predictor.info.version}\n\n"
                                   + metrics_markdown(m, f"{len(paths)} images") + "\n"
                                   + "\n".join(f"![{p}]({p})" for p in plots) + "\n")
    print(json.dumps({k: m[k] for k in ("n", "accuracy", "balanced_accuracy")} | {"malignant": m.get("malignant")}, indent=2))
    print(f"wrote {out}/metrics.json, report.md and plots")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
