"""An ML engineer's own photos: the layout the trainer reads, and every mistake in it named before training starts."""

from __future__ import annotations

import pandas as pd
import pytest

from training import data as D
from training.train import main
from tests.test_training import make_dataset


def rewrite_metadata(root, **columns) -> None:
    """Replace columns of the folder's metadata (a value per row, or one for all)."""
    path = root / "HAM10000_metadata.csv"
    df = pd.read_csv(path)
    for name, value in columns.items():
        df[name] = value
    df.to_csv(path, index=False)


def test_an_images_csv_with_file_paths_and_no_patient_columns_loads_as_no_context(tmp_path):
    root = make_dataset(tmp_path / "d", lesions_per_class=1)
    df = pd.read_csv(root / "HAM10000_metadata.csv")
    (root / "HAM10000_metadata.csv").rename(root / "images.csv")
    (root / "photos").mkdir()
    for image_id in df["image_id"]:
        (root / "images" / f"{image_id}.jpg").rename(root / "photos" / f"{image_id}.jpeg")
    df.assign(file=[f"photos/{i}.jpeg" for i in df["image_id"]])[["image_id", "lesion_id", "dx", "file"]].to_csv(
        root / "images.csv", index=False)
    loaded = D.load_metadata(root)
    assert len(loaded) == len(df) and all(p.endswith(".jpeg") for p in loaded["path"])
    assert (loaded["sex"] == "unknown").all() and loaded["age"].isna().all()


def test_general_isic_sites_and_unknowns_are_read(tmp_path):
    root = make_dataset(tmp_path / "d", lesions_per_class=1)
    n = len(pd.read_csv(root / "HAM10000_metadata.csv"))
    sites = (["posterior torso", "head/neck", "unknown", "upper extremity"] * n)[:n]
    rewrite_metadata(root, localization=sites, sex=(["female", "", "male"] * n)[:n], age=([40, None, 85.0] * n)[:n])
    assert set(D.load_metadata(root)["localization"].dropna()) <= set(sites)


@pytest.mark.parametrize("column, values, named", [
    ("localization", ["arm", "back", "left shin"], "localization ['arm', 'left shin']"),
    ("sex", ["F", "male", "intersex"], "sex ['intersex']"),  # F and M are read
    ("age", [45, 230], "age ['230']"),
])
def test_patient_values_the_service_cannot_read_stop_the_run_before_training(tmp_path, capsys, column, values, named):
    root = make_dataset(tmp_path / "d", lesions_per_class=1)
    n = len(pd.read_csv(root / "HAM10000_metadata.csv"))
    rewrite_metadata(root, **{column: (values * n)[:n]})
    with pytest.raises(D.DatasetError, match="patient values the service cannot read"):
        D.load_metadata(root)
    out = tmp_path / "run"
    assert main(["--data-dir", str(root), "--out-dir", str(out), "--smoke", "--weights", "none"]) == 2
    err = capsys.readouterr().err
    assert named in err and "head/neck" in err  # names the bad values and what is accepted
    assert not (out / "backup").exists()  # nothing trained


def test_an_unknown_diagnosis_or_a_missing_column_is_named(tmp_path):
    root = make_dataset(tmp_path / "d", lesions_per_class=1)
    codes = pd.read_csv(root / "HAM10000_metadata.csv")["dx"]
    rewrite_metadata(root, dx=codes.str.upper() + " ")
    assert list(D.load_metadata(root)["dx"]) == list(codes)  # a code's case and spaces do not matter
    rewrite_metadata(root, dx="melanoma")
    with pytest.raises(D.DatasetError, match=r"unknown dx values \['melanoma'\]"):
        D.load_metadata(root)
    pd.read_csv(root / "HAM10000_metadata.csv").drop(columns="lesion_id").to_csv(root / "HAM10000_metadata.csv", index=False)
    with pytest.raises(D.DatasetError, match=r"lacks columns \['lesion_id'\]"):
        D.load_metadata(root)


def test_a_blank_lesion_id_or_an_image_listed_twice_is_named(tmp_path):
    root = make_dataset(tmp_path / "d", lesions_per_class=1)
    df = pd.read_csv(root / "HAM10000_metadata.csv")
    df.assign(lesion_id=[None] + list(df["lesion_id"][1:])).to_csv(root / "HAM10000_metadata.csv", index=False)
    with pytest.raises(D.DatasetError, match="empty lesion_id cells"):
        D.load_metadata(root)
    pd.concat([df, df.iloc[:1]]).to_csv(root / "HAM10000_metadata.csv", index=False)
    with pytest.raises(D.DatasetError, match=f"1 image ids twice, e.g. {df['image_id'][0]}"):
        D.load_metadata(root)


def test_a_class_with_too_few_lesions_for_three_splits_is_named_in_one_line(tmp_path, capsys):
    root = make_dataset(tmp_path / "d", lesions_per_class=8)
    df = pd.read_csv(root / "HAM10000_metadata.csv")
    rare = df.loc[df["dx"] == "vasc", "lesion_id"].unique()[1:]  # one vascular lesion left
    df[~df["lesion_id"].isin(rare)].to_csv(root / "HAM10000_metadata.csv", index=False)
    assert main(["--data-dir", str(root), "--out-dir", str(tmp_path / "run"), "--smoke", "--weights", "none"]) == 2
    err = capsys.readouterr().err
    assert "gets no vasc photos" in err and "'vasc': 1" in err and "Traceback" not in err


def test_a_photo_the_service_would_refuse_is_named_before_training(tmp_path, capsys):
    root = make_dataset(tmp_path / "d", lesions_per_class=8)
    broken = sorted((root / "images").iterdir())[4]
    broken.write_bytes(broken.read_bytes()[:40])  # a copy cut short
    assert main(["--data-dir", str(root), "--out-dir", str(tmp_path / "run"), "--smoke", "--weights", "none"]) == 2
    err = capsys.readouterr().err
    assert broken.name in err and "corrupt" in err and "Traceback" not in err


def test_a_folder_too_small_to_split_is_named_in_one_line(tmp_path, capsys):
    root = make_dataset(tmp_path / "d", lesions_per_class=3)  # 5 photos of 3 lesions a class, fewer than 7 parts
    assert main(["--data-dir", str(root), "--out-dir", str(tmp_path / "run"), "--smoke", "--weights", "none"]) == 2
    err = capsys.readouterr().err
    assert "too few photos to hold out 1/7 by lesion" in err and "'mel': 3" in err


def test_the_card_names_the_data_it_learned_from_and_claims_no_licence_it_was_not_given(tmp_path):
    from training.provenance import HAM10000, provenance_of

    root = make_dataset(tmp_path / "clinic", lesions_per_class=1)
    df = D.load_metadata(root)
    assert provenance_of(root, df["lesion_id"]) == HAM10000  # HAM10000's lesion ids: its record and terms
    clinic_ids = "CLINIC_" + df["lesion_id"].str.slice(4)
    own = provenance_of(root, clinic_ids)
    assert own.licence is None and own.source["name"] == f"the {len(df)} photos in clinic/"
    assert "dataset.json" in own.source["note"]
    (root / "dataset.json").write_text('{"name": "Clinic X dermoscopy 2026", "licence": {"name": "internal use"}}')
    stated = provenance_of(root, clinic_ids)
    assert stated.source == {"name": "Clinic X dermoscopy 2026"} and stated.licence == {"name": "internal use"}
    for broken in ('{"name": "Clinic X",', '["Clinic X"]', '{"citation": "no name"}'):
        (root / "dataset.json").write_text(broken)
        with pytest.raises(D.DatasetError, match="dataset.json"):
            provenance_of(root, clinic_ids)


@pytest.mark.slow
def test_a_model_trained_on_a_clinics_folder_does_not_claim_ham10000_on_its_model_page(tmp_path):
    from server import create_app
    from tests.test_training import TINY_CLI

    root = make_dataset(tmp_path / "clinic", lesions_per_class=8)
    rewrite_metadata(root, lesion_id=pd.read_csv(root / "HAM10000_metadata.csv")["lesion_id"].str.replace("HAM_", "CL_"))
    out = tmp_path / "run"
    assert main(["--data-dir", str(root), "--out-dir", str(out), *TINY_CLI, "--head-epochs", "1", "--epochs", "1"]) == 0
    assert "photos in clinic/ (no licence stated)" in (out / "report.md").read_text()
    app = create_app({"MODEL_PATH": str(out / "ham10000_mobilenetv2.h5"), "SECRET_KEY": "x", "TESTING": True})
    page = app.test_client().get("/model").get_data(as_text=True)
    assert "photos in clinic/" in page and "does not state a licence" in page and "no dataset.json" in page
    assert "HAM10000 (Human Against Machine" not in page and "CC BY-NC" not in page


@pytest.mark.slow
def test_a_run_that_cannot_download_imagenet_weights_stops_before_loading_any_image(tmp_path):
    """No internet (a proxy that refuses, an empty Keras cache): one line naming what to pass instead, in seconds."""
    import os
    import subprocess
    import sys

    root = make_dataset(tmp_path / "d", lesions_per_class=3)
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "keras"), "https_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": "", "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([sys.executable, "-m", "training.train", "--data-dir", str(root), "--smoke", "--weights",
                          "imagenet", "--out-dir", str(tmp_path / "run")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    error = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "could not download Keras's ImageNet MobileNetV2 weights" in error[0]
    assert "--weights PATH to a no-top MobileNetV2 .h5" in error[0] and "Traceback" not in run.stderr
    assert "split by lesion_id" not in (tmp_path / "run" / "train.log").read_text()  # no image was loaded


def test_a_missing_imagenet_classifier_or_a_short_class_list_stops_the_run_before_it_trains(tmp_path, capsys):
    root = make_dataset(tmp_path / "d", lesions_per_class=3)
    common = ["--data-dir", str(root), "--smoke", "--weights", "none"]
    assert main(common + ["--out-dir", str(tmp_path / "a"), "--imagenet-weights", str(tmp_path / "absent.h5")]) == 2
    assert "ImageNet weights not found" in capsys.readouterr().err
    (tmp_path / "with_top.h5").write_bytes(b"stands for the file")
    (tmp_path / "labels.txt").write_text("\n".join(f"class {i}" for i in range(999)))
    assert main(common + ["--out-dir", str(tmp_path / "b"), "--imagenet-weights", str(tmp_path / "with_top.h5"),
                          "--imagenet-labels", str(tmp_path / "labels.txt")]) == 2
    assert "names 999 classes; ImageNet's classifier has 1000" in capsys.readouterr().err
    assert not (tmp_path / "b" / "split.csv").exists()  # stopped before the split, let alone training


def test_a_new_run_over_a_cut_off_one_is_refused_and_deletes_nothing(tmp_path, capsys):
    root = make_dataset(tmp_path / "d", lesions_per_class=3)
    run = tmp_path / "run"
    run.mkdir()
    (run / "head.weights.h5").write_bytes(b"phase 1's weights")
    (run / "history.csv").write_text("epoch,loss\n0,1.0\n1,0.9\n")
    assert main(["--data-dir", str(root), "--out-dir", str(run), "--smoke", "--weights", "none"]) == 2
    assert "holds a run cut off after 2 fine-tuning epochs: continue it with --resume" in capsys.readouterr().err
    assert (run / "history.csv").read_text().count("\n") == 3 and (run / "head.weights.h5").is_file()
