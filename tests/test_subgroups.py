"""Per-subgroup figures: the bootstrap, the flag, undefined figures, the card section, the page and the CLI."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from server.lesions import CLASS_CODES, LIMITATIONS, SKIN_TYPE_NOT_RECORDED
from server.reports.quality import SKIN_TYPE_NOTE
from server.model.card import CardFieldError, ModelCard
from training import subgroups as S
from training.evaluate import evaluate_predictions, normalised_rows, screening_figures
from training.report import SUBGROUP_HEADING

MEL, NV, BCC = (CLASS_CODES.index(c) for c in ("mel", "nv", "bcc"))
SAVED = Path(__file__).resolve().parents[1] / "saved_models"


def confident(label: int, right: bool, k: int = len(CLASS_CODES)) -> np.ndarray:
    """A probability row that calls ``label`` when ``right``; when wrong, a melanoma a mole and anything else a melanoma."""
    row = np.full(k, 0.02)
    row[label if right else NV if label == MEL else MEL] = 1 - 0.02 * (k - 1)
    return row


def lesions(n: int, mel_share: float, mel_recall: float, rng, photos: int = 1, prefix: str = "L", **meta) -> list[dict]:
    """``n`` lesions (``photos`` each): ``mel_share`` melanomas, found with probability ``mel_recall``; the rest moles."""
    out = []
    for i in range(n):
        label = MEL if rng.random() < mel_share else NV
        right = rng.random() < (mel_recall if label == MEL else 0.9)
        out += [{"lesion_id": f"{prefix}{i}", "label": label, "probs": confident(label, right),
                 "sex": "female", "age": 50, "localization": "back"} | meta for _ in range(photos)]
    return out


def arrays(rows):
    return np.array([r["label"] for r in rows]), np.stack([r["probs"] for r in rows])


def figures_of(rows, seed=0, resamples=300, **kwargs):
    labels, probs = arrays(rows)
    units = np.array([r["lesion_id"] for r in rows])
    return S.group_figures(labels, normalised_rows(probs), units, 0.5, np.random.default_rng(seed), resamples, **kwargs)


def width(figure):
    return figure.high - figure.low


# ---------------------------------------------------------------- the bootstrap

def test_the_interval_contains_the_estimate_and_narrows_as_the_group_grows():
    rng = np.random.default_rng(1)
    small, large = figures_of(lesions(120, 0.3, 0.7, rng)), figures_of(lesions(2400, 0.3, 0.7, rng))
    for metric in ("balanced_accuracy", "melanoma_recall", "malignant_sensitivity", "malignant_specificity"):
        for f in (small[metric], large[metric]):
            assert f.low <= f.value <= f.high, (metric, f)
        assert width(large[metric]) < width(small[metric]) / 2, metric  # ~1/sqrt(20) as wide, with room for noise


def test_resampling_lesions_keeps_each_lesions_photographs_together():
    units = np.array(["a", "a", "a", "b", "c", "c"])
    for seed in range(20):
        rows = S.resample_rows(units, np.random.default_rng(seed))
        drawn = units[rows]
        for lesion, size in (("a", 3), ("b", 1), ("c", 2)):
            assert (drawn == lesion).sum() % size == 0  # whole lesions only
        assert sorted(set(rows[drawn == "a"])) in ([], [0, 1, 2])


def test_repeat_photographs_do_not_narrow_a_lesion_interval_but_would_an_image_one():
    """Five photographs of each lesion are one lesion's evidence: resampling images would count them five times."""
    once = lesions(300, 0.3, 0.7, np.random.default_rng(2))
    five = lesions(300, 0.3, 0.7, np.random.default_rng(2), photos=5)
    by_lesion = figures_of(five)["melanoma_recall"]
    by_image = figures_of([r | {"lesion_id": f"{r['lesion_id']}-{i}"} for i, r in enumerate(five)])["melanoma_recall"]
    assert by_lesion.value == figures_of(once)["melanoma_recall"].value
    assert width(by_lesion) == pytest.approx(width(figures_of(once)["melanoma_recall"]), rel=0.35)
    assert width(by_image) < width(by_lesion) * 0.6


def test_a_figure_with_too_few_cases_or_no_spread_gets_no_interval():
    rng = np.random.default_rng(3)
    rows = lesions(200, 0.0, 0.0, rng) + [lesions(1, 1.0, 1.0, rng, prefix=f"M{i}")[0] for i in range(4)]  # 4 melanomas, all found
    mel = figures_of(rows)["melanoma_recall"]
    assert (mel.value, mel.low, mel.high, mel.cases) == (1.0, None, None, 4)
    many = lesions(200, 0.0, 0.0, rng) + [lesions(1, 1.0, 1.0, rng, prefix=f"M{i}")[0] for i in range(30)]
    assert figures_of(many)["melanoma_recall"].low is None  # all 30 found: every resample says 100%
    assert figures_of(lesions(200, 0.3, 0.7, rng))["melanoma_recall"].low is not None


def test_undefined_figures_stay_undefined_never_zero():
    rows = lesions(100, 0.0, 0.0, np.random.default_rng(4))  # moles only: no melanoma, nothing malignant
    labels, probs = arrays(rows)
    point = screening_figures(labels, normalised_rows(probs), 0.5)
    assert point["melanoma_recall"] is None and point["malignant_sensitivity"] is None
    assert point["malignant_specificity"] is not None
    fig = figures_of(rows)
    assert (fig["melanoma_recall"].value, fig["melanoma_recall"].low, fig["melanoma_recall"].high) == (None, None, None)
    only_malignant = screening_figures(np.array([BCC, MEL]), normalised_rows(np.stack([confident(BCC, True), confident(MEL, True)])), 0.5)
    assert only_malignant["malignant_specificity"] is None and only_malignant["malignant_sensitivity"] == 1.0
    assert screening_figures(np.array([], int), np.zeros((0, len(CLASS_CODES))), 0.5)["balanced_accuracy"] is None


def test_screening_figures_are_the_whole_split_figures():
    labels, probs = arrays(lesions(400, 0.3, 0.6, np.random.default_rng(5)))
    labels[:5] = BCC
    whole = evaluate_predictions(labels, probs, malignant_threshold=0.5)
    mine = screening_figures(labels, normalised_rows(probs), 0.5)
    assert mine == {"balanced_accuracy": whole["balanced_accuracy"], "melanoma_recall": whole["per_class"]["mel"]["recall"],
                    "malignant_sensitivity": whole["malignant"]["sensitivity"],
                    "malignant_specificity": whole["malignant"]["specificity"]}


def test_balanced_accuracy_is_scikit_learns_to_the_bit_with_classes_missing_on_either_side():
    from sklearn.metrics import balanced_accuracy_score

    from training.evaluate import balanced_accuracy

    rng = np.random.default_rng(8)
    for n, true_classes, predicted_classes in ((50, 7, 7), (40, 3, 7), (30, 7, 2), (9, 1, 4), (1, 1, 1)):
        labels, pred = rng.integers(0, true_classes, n), rng.integers(0, predicted_classes, n)
        with warnings.catch_warnings():  # sklearn warns of classes missing from y_true; its score stands
            warnings.simplefilter("ignore", UserWarning)
            expected = balanced_accuracy_score(labels, pred)
        assert balanced_accuracy(labels, pred) == expected, (n, true_classes, predicted_classes)


# ---------------------------------------------------------------- the table and its flag

def test_is_flagged_only_more_than_the_drop_below():
    assert S.is_flagged(0.69, 0.80) and not S.is_flagged(0.70, 0.80)  # exactly 0.10 below is not "more than"
    assert not S.is_flagged(0.90, 0.80) and not S.is_flagged(None, 0.80) and not S.is_flagged(0.1, None)


def table(seed=42, resamples=200):
    """Women's melanomas mostly missed, men's mostly found; ages in every band; three sites, one too small."""
    rng = np.random.default_rng(6)
    rows = (lesions(300, 0.3, 0.35, rng, prefix="F", sex="female", age=25, localization="back")
            + lesions(300, 0.3, 0.95, rng, prefix="M", sex="male", age=80, localization="face")
            + lesions(10, 0.0, 0.0, rng, prefix="U", sex="unknown", age=None, localization="ear"))
    labels, probs = arrays(rows)
    return S.subgroup_table(rows, labels, probs, 0.5, inputs="image only", resamples=resamples, seed=seed)


def test_the_table_has_every_sex_and_age_band_and_sites_with_enough_images():
    section = table()
    keys = [(r.grouping, r.group) for r in section.rows]
    assert keys == [("all", "all"), ("sex", "female"), ("sex", "male"), ("sex", "unknown"), ("age", "<30"), ("age", "30-44"),
                    ("age", "45-59"), ("age", "60-74"), ("age", ">=75"), ("age", "unknown"), ("site", "back"), ("site", "face")]
    assert section.extra["sites_left_out"] == {"ear": 10}
    empty = next(r for r in section.rows if r.group == "30-44")
    assert empty.images == 0 and empty.figure("balanced_accuracy").value is None
    assert section.rows[0].images == 610 and section.inputs == "image only" and section.unit == "lesion"


def test_the_flag_fires_on_the_constructed_gap_and_nowhere_else():
    rows = {(r.grouping, r.group): r for r in table().rows}
    assert rows[("sex", "female")].flagged and rows[("age", "<30")].flagged and rows[("site", "back")].flagged
    flagged = {k for k, r in rows.items() if r.flagged}
    assert flagged == {("sex", "female"), ("age", "<30"), ("site", "back")}
    assert rows[("sex", "unknown")].figure("melanoma_recall").value is None and not rows[("sex", "unknown")].flagged


def test_a_fixed_seed_gives_the_same_table_and_another_seed_other_intervals():
    assert table().to_dict() == table().to_dict()
    a, b = table().rows[1].figure("melanoma_recall"), table(seed=7).rows[1].figure("melanoma_recall")
    assert a.value == b.value and (a.low, a.high) != (b.low, b.high)


# ---------------------------------------------------------------- the card

def fixture_card(model_path) -> dict:
    return json.loads(model_path.with_name("model_card.json").read_text())


def test_an_old_card_without_subgroups_loads_and_a_new_one_round_trips(model_path):
    old = fixture_card(model_path)
    assert "subgroups" not in old and ModelCard.from_dict(old).subgroups is None
    card = S.with_subgroups(ModelCard.from_dict(old), table(resamples=50))
    document = json.loads(json.dumps(card.to_dict()))
    assert ModelCard.from_dict(document) == card
    assert document["subgroups"]["rows"][3]["figures"]["melanoma_recall"] == {"value": None, "low": None, "high": None, "cases": 0}
    assert card.limitations == LIMITATIONS  # the fixture's export-time list, which already says it
    older = ModelCard.from_dict(old | {"limitations": ["Seven classes only.", "HAM10000 comes from Austrian and Australian "
                                                       "clinics: lighter skin types are over-represented, and results on "
                                                       "darker skin are less reliable."]})
    updated = S.with_subgroups(older, card.subgroups).limitations
    assert updated == ("Seven classes only.", LIMITATIONS[1])  # an older card's skin line says it too, once
    assert S.with_subgroups(older.replace(limitations=("Other.",)), card.subgroups).limitations == ("Other.", SKIN_TYPE_NOT_RECORDED)
    assert S.with_subgroups(card, card.subgroups).limitations == card.limitations


def test_a_bad_subgroup_field_is_named(model_path):
    document = S.with_subgroups(ModelCard.from_dict(fixture_card(model_path)), table(resamples=20)).to_dict()
    document["subgroups"]["rows"][1]["figures"]["melanoma_recall"]["value"] = 1.5
    with pytest.raises(CardFieldError) as err:
        ModelCard.from_dict(document)
    assert err.value.field == "subgroups.rows[1].figures.melanoma_recall.value"
    del document["subgroups"]["inputs"]
    with pytest.raises(CardFieldError, match="subgroups.inputs"):
        ModelCard.from_dict(document)


# ---------------------------------------------------------------- the model page and report.md

@pytest.fixture()
def subgroup_client(model_path, tmp_path):
    from server import create_app

    shutil.copy(model_path, tmp_path / model_path.name)
    card = S.with_subgroups(ModelCard.from_dict(fixture_card(model_path)), table(resamples=50))
    card.write(tmp_path / "model_card.json")
    return create_app({"MODEL_PATH": str(tmp_path / model_path.name), "TESTING": True, "SECRET_KEY": "k"}).test_client()


def test_the_model_page_shows_the_table_with_flags_in_words(subgroup_client):
    body = subgroup_client.get("/model").get_data(as_text=True)
    assert 'id="subgroup-table"' in body and SKIN_TYPE_NOTE in body
    rows = re.findall(r'<tr class="subgroup( subgroup-flagged)?"><th scope="row" data-label="Group">([^<]+)</th>(.*?)</tr>', body, re.S)
    assert len(rows) == 12
    by_label = {label: (flag, cells) for flag, label, cells in rows}
    flag, cells = by_label["Sex: female"]
    assert flag and re.search(r'data-label="Flag"><strong class="flagged">Flagged: melanoma recall [\d.]+ points below', cells)
    assert re.search(r'data-label="Melanoma recall">[\d.]+% \([\d.]+ to [\d.]+%\)</td>', cells)
    assert "Not flagged" in by_label["Sex: male"][1] and not by_label["Sex: male"][0]
    unknown = by_label["Sex: unknown"][1]
    assert 'data-label="Melanoma recall">not defined: no melanoma</td>' in unknown and not re.search(r">0\.0%", unknown)
    assert "Body site: ear" not in body and "ear (10)" in body  # too few images: left out, and said so


def test_the_model_page_says_when_the_card_has_no_subgroup_figures(client):
    body = client.get("/model").get_data(as_text=True)
    assert "records no per-subgroup figures" in body and 'id="subgroup-table"' not in body
    assert SKIN_TYPE_NOTE in body


def test_the_report_section_is_replaced_not_repeated(model_path):
    from training.report import SUBGROUP_HEADING, splice_subgroup_section

    card = S.with_subgroups(ModelCard.from_dict(fixture_card(model_path)), table(resamples=20))
    report = "# run\n\n## Ablation\n\ntext\n"
    once = splice_subgroup_section(report, card)
    assert once.startswith(report) and once.count(SUBGROUP_HEADING) == 1
    assert "| Sex: unknown |" in once and "not defined: no melanoma" in once and "Flagged: melanoma recall" in once
    assert splice_subgroup_section(once, card) == once
    later = splice_subgroup_section(once + "\n## Later section\n\nkept\n", card)
    assert later.count(SUBGROUP_HEADING) == 1 and later.endswith("## Later section\n\nkept\n")


# ---------------------------------------------------------------- the CLI on the shipped run

@pytest.fixture()
def shipped_copy(tmp_path, shared_data_dir):
    for name in ("model_card.json", "split.csv", "predictions.npz", "report.md"):
        shutil.copy(SAVED / name, tmp_path / name)
    return tmp_path


def test_the_cli_adds_the_section_to_a_run_and_reproduces_the_cards_figures(shipped_copy, shared_data_dir, capsys):
    before = json.loads((shipped_copy / "model_card.json").read_text())
    assert S.main(["--run-dir", str(shipped_copy), "--data-dir", str(shared_data_dir), "--resamples", "30"]) == 0
    card = json.loads((shipped_copy / "model_card.json").read_text())
    assert {k: v for k, v in card.items() if k not in ("subgroups", "limitations")} == \
        {k: v for k, v in before.items() if k not in ("subgroups", "limitations")}
    assert card["limitations"] == list(LIMITATIONS) and SKIN_TYPE_NOT_RECORDED in str(card["limitations"])
    whole = card["subgroups"]["rows"][0]["figures"]
    test = before["metrics"]["test"]
    assert whole["balanced_accuracy"]["value"] == test["balanced_accuracy"]
    assert whole["melanoma_recall"]["value"] == test["per_class"]["mel"]["recall"]
    assert whole["malignant_sensitivity"]["value"] == test["malignant"]["sensitivity"]
    assert card["subgroups"]["rows"][0]["images"] == test["n"] and card["subgroups"]["inputs"] == "image only"
    report = (shipped_copy / "report.md").read_text()
    shipped = (SAVED / "report.md").read_text()
    assert report.startswith(shipped.split(SUBGROUP_HEADING)[0].rstrip("\n")) and "| Body site: back |" in report
    assert "| Body site: back |" in capsys.readouterr().out


def test_the_cli_refuses_predictions_out_of_split_order_or_of_another_model(shipped_copy, shared_data_dir):
    with np.load(shipped_copy / "predictions.npz") as saved:
        data = dict(saved)
    order = np.random.default_rng(0).permutation(len(data["test_labels"]))
    probs = [k for k in ("test_probs", "test_probs_served") if k in data]  # the CLI reads the served ones when saved
    shuffled = {"test_labels": data["test_labels"][order], **{k: data[k][order] for k in probs}}
    np.savez(shipped_copy / "predictions.npz", **data | shuffled)
    with pytest.raises(SystemExit, match="not split.csv's order"):
        S.add_to_run(shipped_copy, shared_data_dir, resamples=5)
    np.savez(shipped_copy / "predictions.npz", **data | {k: data[k][:, ::-1] for k in probs})
    with pytest.raises(SystemExit, match="not this model's predictions"):
        S.add_to_run(shipped_copy, shared_data_dir, resamples=5)
