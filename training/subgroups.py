"""Per-subgroup figures on the test split: where the model may do worse than its average.

    python -m training.subgroups --run-dir saved_models --data-dir ../shared/data/ham10000

For each sex, each age band (``server.patient.age_band``) and each body site with at least
``SUBGROUP_MIN_SITE_IMAGES`` test images: balanced accuracy, melanoma recall, and the malignant
flag's sensitivity and specificity at the card's operating point, computed by
``training.evaluate.screening_figures`` (the whole split's own function), each with a 95%
percentile bootstrap interval. The bootstrap resamples **lesions**, not images: HAM10000 holds
several photographs of many lesions, they share a label and look alike, and resampling them one
by one would count one lesion's photographs as independent evidence and give intervals that
are too narrow. A subgroup whose melanoma recall is more than ``MELANOMA_RECALL_FLAG_DROP``
below the whole split's is flagged. A figure a group cannot give (no melanoma in it) is None.

``subgroup_table`` is pure (rows, labels, probabilities, threshold -> the card's ``Subgroups``).
The trainer adds the section at export time with the probabilities it already has::

    card = card_with_subgroups(card, split_metadata(cfg.data_dir, out_dir / "split.csv"),
                               y["test"], probs["test"], inputs="image only")

The CLI does the same for an existing run from its ``predictions.npz``, checking first that
its labels follow ``split.csv``'s test rows and that it reproduces the card's test figures.
"""

from __future__ import annotations

import argparse
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from server.lesions import CLASS_CODES, MALIGNANT_CODES, SKIN_TYPE_NOT_RECORDED, SKIN_TYPES_OVER_REPRESENTED
from server.model.card import SUBGROUP_METRICS, ModelCard, SubgroupFigure, SubgroupRow, Subgroups
from server.patient import AGE_BANDS, SEXES, age_band, parse_sex, parse_site
from server.reports.quality import SKIN_TYPE_NOTE
from server.thresholds import MELANOMA_RECALL_FLAG_DROP, SUBGROUP_MIN_CASES_FOR_INTERVAL, SUBGROUP_MIN_SITE_IMAGES
from training.evaluate import normalised_rows, screening_figures
from training.report import splice_subgroup_section, subgroup_section

RESAMPLES = 1000
SEED = 42
CONFIDENCE = 0.95
UNKNOWN = "unknown"
RAW_PROBABILITIES = "the exported model's softmax with TTA off and before temperature scaling, as in the card's test metrics"


def group_of(row) -> dict[str, str]:
    """A metadata row's group in each grouping ('unknown' where HAM10000 does not record it)."""
    return {"sex": parse_sex(row.get("sex")) or UNKNOWN, "age": age_band(row.get("age")),
            "site": parse_site(row.get("localization")) or UNKNOWN}


def chosen_groups(groups: list[dict], min_site_images: int) -> tuple[list[tuple[str, str]], dict]:
    """(grouping, group) rows in table order, and the sites left out with their image counts.

    Every sex and age band gets a row, even an empty one, so tables of two models line up; a
    body site only with enough images to say something (most images first).
    """
    sites: dict[str, int] = {}
    for g in groups:
        sites[g["site"]] = sites.get(g["site"], 0) + 1
    kept = sorted((s for s, n in sites.items() if n >= min_site_images), key=lambda s: (-sites[s], s))
    order = [("all", "all")] + [("sex", s) for s in (*SEXES, UNKNOWN)] \
        + [("age", band[0]) for band in AGE_BANDS] + [("age", UNKNOWN)] + [("site", s) for s in kept]
    return order, {s: n for s, n in sorted(sites.items()) if n < min_site_images}


def resample_rows(units: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row indices of one bootstrap resample: as many units as there are, drawn with replacement,
    each bringing all its rows (a lesion's photographs stay together)."""
    _, inverse, counts = np.unique(units, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    draw = rng.integers(0, len(counts), len(counts))
    lengths = counts[draw]
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return order[np.repeat(starts[draw], lengths) + offsets]


def denominator_units(labels: np.ndarray, units: np.ndarray, threshold) -> dict[str, int]:
    """How many resampled units each figure divides by: few of them make an interval meaningless."""
    mal = np.isin(labels, [CLASS_CODES.index(c) for c in MALIGNANT_CODES])
    count = {"balanced_accuracy": len(np.unique(units)), "melanoma_recall": len(np.unique(units[labels == CLASS_CODES.index("mel")]))}
    has_threshold = threshold is not None
    count["malignant_sensitivity"] = len(np.unique(units[mal])) if has_threshold else 0
    count["malignant_specificity"] = len(np.unique(units[~mal])) if has_threshold else 0
    return count


def group_figures(labels, probs, units, threshold, rng, resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                  min_cases: int = SUBGROUP_MIN_CASES_FOR_INTERVAL) -> dict[str, SubgroupFigure]:
    """Each figure of one group with its percentile bootstrap interval (``probs``: normalised rows).

    Resamples where a figure is undefined (no melanoma drawn) are left out of its interval. A
    figure gets no interval when its denominator holds fewer than ``min_cases`` units, nor when
    every resample gives the same value: with all 11 malignant lesions of a group flagged, every
    resample flags all of its own too, and "100 to 100%" would claim a certainty the sample lacks.
    """
    point = screening_figures(labels, probs, threshold)
    cases = denominator_units(labels, units, threshold)
    wanted = [m for m in SUBGROUP_METRICS if point[m] is not None and cases[m] >= min_cases]
    draws: dict[str, list[float]] = {m: [] for m in wanted}
    for _ in range(resamples if wanted else 0):
        idx = resample_rows(units, rng)
        figures = screening_figures(labels[idx], probs[idx], threshold)
        for m in wanted:
            if figures[m] is not None:
                draws[m].append(figures[m])
    tail = (1 - confidence) / 2 * 100
    out = {}
    for m in SUBGROUP_METRICS:
        low = high = None
        if draws.get(m) and min(draws[m]) < max(draws[m]):
            low, high = (float(v) for v in np.percentile(draws[m], [tail, 100 - tail]))
        out[m] = SubgroupFigure(point[m], low, high, cases[m])
    return out


def is_flagged(recall: float | None, reference: float | None, drop: float = MELANOMA_RECALL_FLAG_DROP) -> bool:
    """True when a group's melanoma recall is more than ``drop`` below the whole split's (never for an undefined one).

    Rounded first, so 0.70 against 0.80 is exactly 0.10 below and not flagged by float error.
    """
    return recall is not None and reference is not None and round(reference - recall, 9) > drop


def subgroup_table(rows, labels, probs, malignant_threshold, *, inputs: str, unit: str = "lesion",
                   resamples: int = RESAMPLES, seed: int = SEED, probabilities: str = RAW_PROBABILITIES) -> Subgroups:
    """The card's ``subgroups`` section from the test split's metadata rows (mappings with ``lesion_id``, ``age``,
    ``sex``, ``localization``), its labels (class indices) and probabilities, in the same order.

    ``inputs`` says what the probabilities came from ("image only", "image + patient context");
    ``unit`` what the bootstrap resamples ("lesion", or "image" where lesions are not known).
    """
    labels, probs = np.asarray(labels), normalised_rows(probs)
    if not len(rows) == len(labels) == len(probs):
        raise ValueError(f"{len(rows)} metadata rows, {len(labels)} labels, {len(probs)} probability rows")
    groups = [group_of(r) | {"all": "all"} for r in rows]
    units = np.array([str(r["lesion_id"]) for r in rows] if unit == "lesion" else [str(i) for i in range(len(rows))])
    order, left_out = chosen_groups(groups, SUBGROUP_MIN_SITE_IMAGES)
    out = []
    for grouping, group in order:
        mask = np.array([g[grouping] == group for g in groups], bool)
        rng = np.random.default_rng([seed, zlib.crc32(f"{grouping}:{group}".encode())])  # same draws whatever else is listed
        figures = group_figures(labels[mask], probs[mask], units[mask], malignant_threshold, rng, resamples)
        out.append(SubgroupRow(grouping, group, images=int(mask.sum()), lesions=len(np.unique(units[mask])),
                               melanomas=int((labels[mask] == CLASS_CODES.index("mel")).sum()),
                               malignant=int(np.isin(labels[mask], [CLASS_CODES.index(c) for c in MALIGNANT_CODES]).sum()),
                               figures=figures))
    reference = out[0].figure("melanoma_recall").value
    out = [r if r.grouping == "all" else _with_flag(r, reference) for r in out]
    return Subgroups(inputs=inputs, rows=tuple(out), flag_drop=MELANOMA_RECALL_FLAG_DROP, unit=unit, confidence=CONFIDENCE,
                     extra={"split": "test", "probabilities": probabilities, "malignant_threshold": malignant_threshold,
                            "reference_melanoma_recall": reference, "resamples": resamples, "seed": seed,
                            "interval": f"percentile bootstrap over {unit}s; none with fewer than "
                                        f"{SUBGROUP_MIN_CASES_FOR_INTERVAL} {unit}s in the figure's denominator, "
                                        "nor where every resample gives the same value",
                            "min_cases_for_interval": SUBGROUP_MIN_CASES_FOR_INTERVAL,
                            "min_site_images": SUBGROUP_MIN_SITE_IMAGES, "sites_left_out": left_out,
                            "skin_type": SKIN_TYPE_NOTE})


def _with_flag(row: SubgroupRow, reference: float | None) -> SubgroupRow:
    return replace(row, flagged=is_flagged(row.figure("melanoma_recall").value, reference))


def with_subgroups(card: ModelCard, section: Subgroups) -> ModelCard:
    """The card with its ``subgroups`` section, and with its limitations (written at export) saying that HAM10000
    records no skin type: the older skin-type line becomes today's, else the sentence is added."""
    limitations = list(card.limitations)
    if not any(SKIN_TYPE_NOT_RECORDED in str(item) for item in limitations):
        if SKIN_TYPES_OVER_REPRESENTED in limitations:  # a card exported before: its line becomes LIMITATIONS' own
            limitations[limitations.index(SKIN_TYPES_OVER_REPRESENTED)] += f" {SKIN_TYPE_NOT_RECORDED}"
        else:
            limitations.append(SKIN_TYPE_NOT_RECORDED)
    return card.replace(subgroups=section, limitations=tuple(limitations))


def card_with_subgroups(card: ModelCard, rows, labels, probs, inputs: str = "image only", **options) -> ModelCard:
    """What the trainer calls at export time: the table at the card's own operating point, folded into the card."""
    return with_subgroups(card, subgroup_table(rows, labels, probs, card.thresholds.malignant, inputs=inputs, **options))


# ---------------------------------------------------------------- an existing run folder

def metadata_rows(df) -> list[dict]:
    """Metadata rows (``training.data.load_metadata``'s columns) as the table reads them, in ``df``'s order."""
    return df[["image_id", "lesion_id", "dx", "age", "sex", "localization"]].to_dict("records")


def split_metadata(data_dir, split_csv, split: str = "test") -> list[dict]:
    """``split_csv``'s rows of one split, in file order (the trainer's order, so ``predictions.npz``'s),
    each with HAM10000's ``age``, ``sex`` and ``localization`` from the data folder's metadata."""
    from training import data as D

    try:
        return metadata_rows(D.split_frame(Path(data_dir), Path(split_csv), split))
    except D.DatasetError as exc:
        raise SystemExit(f"error: {exc}") from None


def check_order(rows, labels) -> None:
    """``predictions.npz`` stores each test image's label beside its probabilities: they must equal
    ``split.csv``'s ``dx`` row by row, or the probabilities belong to other images."""
    expected = np.array([CLASS_CODES.index(r["dx"]) for r in rows])
    labels = np.asarray(labels)
    if len(expected) != len(labels):
        raise SystemExit(f"error: split.csv has {len(expected)} test rows, predictions.npz {len(labels)} test labels")
    wrong = np.flatnonzero(expected != labels)
    if len(wrong):
        raise SystemExit(f"error: predictions.npz's test labels differ from split.csv's at {len(wrong)} rows "
                         f"(first: {rows[wrong[0]]['image_id']}): its rows are not split.csv's order")


def check_matches_card(labels, probs, card: ModelCard) -> None:
    """The predictions must reproduce the card's own whole-split test figures, or they are another model's."""
    test = card.test_metrics
    mal = test.get("malignant") or {}
    recorded = {"balanced_accuracy": test.get("balanced_accuracy"),
                "melanoma_recall": (test.get("per_class") or {}).get("mel", {}).get("recall"),
                "malignant_sensitivity": mal.get("sensitivity"), "malignant_specificity": mal.get("specificity")}
    figures = screening_figures(np.asarray(labels), normalised_rows(probs), card.thresholds.malignant)
    for metric, value in recorded.items():
        mine = figures[metric]
        if value is not None and (mine is None or abs(mine - value) > 1e-9):
            raise SystemExit(f"error: predictions.npz gives {metric} {mine} on the whole test split, the card "
                             f"{value}: they are not this model's predictions")


def add_to_run(run_dir, data_dir, inputs: str | None = None, **options) -> ModelCard:
    """Fold the table into a run folder's card and ``report.md`` without retraining; return the card."""
    from server.model.files import CARD_FILENAME, load_card

    run_dir = Path(run_dir)
    card = load_card(run_dir / CARD_FILENAME)
    rows = split_metadata(data_dir, run_dir / "split.csv")
    with np.load(run_dir / "predictions.npz") as saved:  # the served probabilities, which the card's flag figures are of
        labels = saved["test_labels"]
        probs = saved["test_probs_served"] if "test_probs_served" in saved else saved["test_probs"]
    check_order(rows, labels)
    check_matches_card(labels, probs, card)
    card = card_with_subgroups(card, rows, labels, probs, inputs=inputs or "image only",
                               probabilities=(card.test_metrics.get("malignant") or {}).get("probabilities", RAW_PROBABILITIES),
                               **options)
    card.write(run_dir / CARD_FILENAME)
    report = run_dir / "report.md"
    if report.is_file():
        report.write_text(splice_subgroup_section(report.read_text(), card))
    return card


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", required=True, help="a training run (or saved_models/): model_card.json, split.csv, predictions.npz")
    p.add_argument("--data-dir", required=True, help="the HAM10000 folder the run was trained on (for age, sex, site)")
    p.add_argument("--inputs", default=None, help="what the probabilities came from (default: from the card)")
    p.add_argument("--resamples", type=int, default=RESAMPLES)
    p.add_argument("--seed", type=int, default=SEED)
    args = p.parse_args(argv)
    card = add_to_run(args.run_dir, args.data_dir, args.inputs, resamples=args.resamples, seed=args.seed)
    print("\n".join(subgroup_section(card)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
