"""``report.md`` for a run, written once from its card, its metrics and the trust figures."""

from __future__ import annotations

from pathlib import Path

from server.model.card import ModelCard
from server.model.trust import TTA_MODES
from server.reports.context import context_markdown
from server.reports.quality import (SKIN_TYPE_NOTE, SUBGROUP_COLUMNS, differential_in_words, subgroup_lines,
                                    subgroup_sentence)
from training.evaluate import metrics_markdown

SUBGROUP_HEADING = "## Per-subgroup figures (test split)"
DIFFERENTIAL_HEADING = "## The differential (conformal lists of possible types)"
PLOTS = ("confusion_matrix.png", "confusion_matrix_normalised.png", "roc.png", "training_curves.png")


def existing_plots(out_dir: Path) -> list[str]:
    """The run's plots that exist, in report order."""
    return [p for p in PLOTS if (Path(out_dir) / p).is_file()]


def write_report(out_dir: Path, card: ModelCard, metrics: dict, plots: list[str], trust: dict | None = None) -> None:
    """``report.md``, written once: the run's figures, what it was trained on, the plots, the trust figures."""
    training = card.training
    cfg = training["config"]
    durations = training["durations_s"]
    text = [
        f"# {card.name} {card.version}: evaluation", "",
        "A screening aid, not a diagnosis. Figures are on a split grouped by `lesion_id`: no lesion's "
        "photographs appear in two splits. The test split was used once, after every choice was made on validation.", "",
        f"- Architecture: {card.architecture}",
        f"- Data: {card.data['source']['name']} ({(card.licence or {}).get('name', 'no licence stated')}); "
        f"split sizes {dict(card.data['split_sizes'])}",
        f"- Imbalance: {cfg['imbalance']}, loss {cfg['loss']}, label smoothing {cfg['label_smoothing']}, "
        f"weight EMA momentum {cfg.get('ema_momentum', 0)}",
        f"- Recipe: {cfg['input_size']} px, head warm-up {cfg['head_epochs']} epochs, then {cfg['epochs']} whole-network "
        f"epochs on fresh augmentations, AdamW peak learning rate {cfg['lr']:g} (warm-up {cfg['warmup_epochs']:g} epoch, "
        f"cosine decay), {cfg.get('keep', 'best')} epoch kept; post-hoc logit adjustment tau "
        f"{training['logit_adjustment']['tau']:g} (chosen on validation)",
        f"- Seed {cfg['seed']}; hardware {training['hardware']}; total {durations['total'] / 60:.1f} min "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in durations.items() if k != 'total')})"
        + (f"; resumed after epoch {resumed}: the total sums every process that trained it, the parts are the last "
           "one's" if (resumed := training.get("resumed_after_epoch")) else ""),
        f"- Malignant threshold {card.thresholds.malignant:.3f}, chosen on validation for sensitivity >= "
        f"{card.thresholds.malignant_target:.2f}", "",
        metrics_markdown(metrics["test"], "Test split"),
        metrics_markdown(metrics["val"], "Validation split"),
        *[f"![{p}]({p})" for p in plots], "",
    ]
    ablation = out_dir / "ablation.md"
    if ablation.is_file():
        text += ["## Ablation (validation balanced accuracy)", "", ablation.read_text()]
    if trust is not None:
        text += ["", *trust_section(trust)]
    if card.patient_context is not None:
        text += ["", *context_markdown(card)]
    if card.differential is not None:
        text += ["", *differential_section(card)]
    if card.subgroups is not None:
        text += ["", *subgroup_section(card)]
    (out_dir / "report.md").write_text("\n".join(text) + "\n")


def differential_section(card: ModelCard) -> list[str]:
    """The differential's thresholds and their validation and test figures, by class, as a report section."""
    from training.differential import figures_table

    return [DIFFERENTIAL_HEADING, "", differential_in_words(card), "",
            *figures_table(card.to_dict()["differential"]), ""]


def subgroup_section(card: ModelCard) -> list[str]:
    """The card's per-subgroup table as a report section (lines), worded as the model page words it."""
    head = "| group | images | " + " | ".join(h for _, h, _ in SUBGROUP_COLUMNS) + " | flag |"
    rows = [f"| {line.label} | {line.counts} | " + " | ".join(line.figures) + f" | {line.flag} |"
            for line in subgroup_lines(card)]
    return [SUBGROUP_HEADING, "", subgroup_sentence(card), "", f"**Skin type.** {SKIN_TYPE_NOTE}", "",
            head, "|" + "---|" * (len(SUBGROUP_COLUMNS) + 3), *rows, ""]


def splice_subgroup_section(report: str, card: ModelCard) -> str:
    """``report`` with its per-subgroup section replaced (or added at the end): the CLI adds it to an existing run's
    report without rewriting what the trainer and earlier tools wrote."""
    return splice_section(report, subgroup_section(card))


def splice_section(report: str, section: list[str]) -> str:
    """``report`` with the section headed ``section[0]`` replaced by ``section``, or added at the end."""
    lines = report.rstrip("\n").split("\n")
    if section[0] in lines:
        start = lines.index(section[0])
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = section
    else:
        lines += ["", *section]
    return "\n".join(lines).rstrip("\n") + "\n"


def summary_table(trust: dict) -> dict:
    cal, ood, tta = trust["calibration"], trust["ood"], trust["tta"]
    mal = trust.get("malignant_test") or {}
    return {
        "ece_test_before": round(cal["ece_test_before"], 4), "ece_test_after": round(cal["ece_test_after"], 4),
        "temperature": round(cal["temperature"], 3),
        "malignant_test_sensitivity": mal.get("sensitivity"), "malignant_test_specificity": mal.get("specificity"),
        "nonskin_true_flag_rate": round(ood["nonskin_true_flag_rate"], 3),
        "test_false_flag_rate": round(ood["test_false_flag_rate"], 4),
        "hard_test_false_flag_rate": ood.get("hard_test_false_flag_rate"),
        "everyday_true_flag_rate": ood.get("everyday_true_flag_rate"),
        "made_true_flag_rate": ood.get("made_true_flag_rate"),
        "uncertain_threshold": trust["uncertain"]["threshold"],
        "tta_default": tta["default"], "tta_val_gain": {k: round(v, 4) for k, v in tta["val_gain"].items()},
        "tta_cost_ratio": {k: round(v, 2) for k, v in tta["cost_ratio"].items()},
    }


def trust_section(trust: dict) -> list[str]:
    """The trust figures of ``training.calibrate`` as a report section (lines)."""
    cal, unc, ood, tta = trust["calibration"], trust["uncertain"], trust["ood"], trust["tta"]
    mal = trust.get("malignant_test") or {}

    def f(v, d=3):
        return "n/a" if v is None else f"{v:.{d}f}"

    return [
        "## Trustworthy outputs (training.calibrate)", "",
        "| figure | value |", "|---|---|",
        f"| temperature (TTA {cal['tta']}) | {f(cal['temperature'])} |",
        f"| ECE test, {cal['ece_bins']} bins, before -> after | {f(cal['ece_test_before'], 4)} -> {f(cal['ece_test_after'], 4)} |",
        f"| NLL test before -> after | {f(cal['nll_test_before'], 4)} -> {f(cal['nll_test_after'], 4)} |",
        f"| malignant sensitivity / specificity (test) | {f(mal.get('sensitivity'))} / {f(mal.get('specificity'))} |",
        f"| uncertain threshold (calibrated top p) | {f(unc['threshold'], 2)} |",
        f"| answered (not uncertain) val / test | {f(unc['val']['coverage'])} / {f(unc['test']['coverage'])} |",
        f"| accuracy of answered val / test | {f(unc['val']['accuracy_answered'])} / {f(unc['test']['accuracy_answered'])} |",
        f"| everyday photographs refused | {f(ood['everyday_true_flag_rate'])} of {ood['everyday_images']} |",
        f"| made non-skin pictures refused | {f(ood['made_true_flag_rate'])} of {ood['made_images']} |",
        f"| lesion test images wrongly refused | {f(ood['test_false_flag_rate'], 4)} |",
        f"| test lesions made harder, wrongly refused | {f(ood['hard_test_false_flag_rate'], 4)} of {ood['hard_test_images']} |",
        *([f"| test lesions shifted as other clinics photograph them, wrongly refused | "
           f"{f(ood['shifted_test_false_flag_rate'], 4)} of {ood['shifted_test_images']} |"]
          if "shifted_test_false_flag_rate" in ood else []),
        f"| TTA default | {tta['default']} |",
        *[f"| TTA {m}: val BA gain / cost ratio | {tta['val_gain'][m]:+.4f} / {tta['cost_ratio'][m]:.2f}x |"
          for m in TTA_MODES],
        "",
        f"- Uncertain rule: {unc['rule']}.",
        f"- TTA rule: {tta['rule']}.",
        f"- Non-skin check: {ood['method']}; {ood['threshold_rule']}; {ood['rule']}.",
        f"- A refusal says what the image looked like: {ood['looks_like_rule']}.",
        "- Made pictures by kind (refused/n): "
        + ", ".join(f"{k} {v['refused']}/{v['n']}" for k, v in ood["made_by_kind"].items()) + ".",
        "- Harder test lesions by kind (wrongly refused/n): "
        + ", ".join(f"{k} {v['refused']}/{v['n']}" for k, v in ood["hard_test_by_kind"].items()) + ".",
        f"- Not refused: everyday {ood['everyday_passed'] or 'none'}; made {ood['made_passed'] or 'none'}.",
        f"- Corpus: {ood['corpus']}.", "",
        *(nonskin_table(ood) + [""] if "shifted_test_by_kind" in ood else []),
    ]


def _share(counts: dict | None, key: str) -> str:
    return f"{counts[key] / counts['n']:.1%} ({counts[key]}/{counts['n']})" if counts and counts.get("n") else "n/a"


NONSKIN_ROWS = (("everyday", "everyday photographs (must be refused)"), ("made", "made pictures (must be refused)"),
                ("test", "test lesions"), ("hard_test", "test lesions made harder"),
                ("shifted_test", "test lesions shifted as other clinics photograph them"))


def nonskin_table(ood: dict) -> list[str]:
    """The non-skin check's answers by set and by shift, as markdown lines: refused and unusual shares, and
    the previous check's refusals on the same pictures when the card was refitted (``previous_check``)."""
    before = ood.get("previous_check")
    lines = ["### Non-skin check: refused and unusual, by set and by shift", "",
             "| pictures | refused | unusual (screened with the warning) |" + (" refused before the refit |" if before else ""),
             "|---|---|---|" + ("---|" if before else "")]

    def row(label, now, old):
        lines.append(f"| {label} | {_share(now, 'refused')} | {_share(now, 'unusual')} |"
                     + (f" {_share(old, 'refused')} |" if before else ""))

    counts = ood.get("counts", {})
    for key, label in NONSKIN_ROWS:
        row(label, counts.get(key), (before or {}).get("counts", {}).get(key))
    for kind, now in ood.get("shifted_test_by_kind", {}).items():
        row(f"shifted: {kind}", now, (before or {}).get("shifted_test_by_kind", {}).get(kind))
    return lines
