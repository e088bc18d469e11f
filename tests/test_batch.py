"""The folder CLI (``python -m server.batch``) on the real colour fixture model."""

from __future__ import annotations

import csv
import io
import sys

import pytest

from server.batch import COLUMNS, main
from server.lesions import CLASS_CODES
from tests.conftest import image_bytes
from tests.fixture_model import BLUE_CLASS, GREEN_CLASS, RED_CLASS
from tests.test_ood import ood_model  # noqa: F401  (fixture: the colour model with non-skin statistics)


@pytest.fixture()
def folder(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    (d / "a_red.png").write_bytes(image_bytes((220, 30, 30)))
    (d / "b_green.jpg").write_bytes(image_bytes((30, 200, 30), fmt="JPEG"))
    (d / "c_blue.png").write_bytes(image_bytes((30, 30, 220), mode="P"))
    (d / "d_notes.txt").write_bytes(b"not an image")
    (d / "e_cut.jpg").write_bytes(image_bytes(fmt="JPEG", size=(200, 200))[:300])
    (d / ".hidden.png").write_bytes(image_bytes())
    (d / "sub").mkdir()
    (d / "sub" / "skipped.png").write_bytes(image_bytes())
    return d


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == COLUMNS
        return list(reader)


def test_folder_is_screened_and_bad_files_do_not_stop_the_run(folder, tmp_path, model_path, capsys):
    out = tmp_path / "probs.csv"
    assert main([str(folder), "--out", str(out), "--model", str(model_path)]) == 0
    rows = {r["file"]: r for r in read_rows(out)}
    assert list(rows) == ["a_red.png", "b_green.jpg", "c_blue.png", "d_notes.txt", "e_cut.jpg"]
    for name, code in [("a_red.png", RED_CLASS), ("b_green.jpg", GREEN_CLASS), ("c_blue.png", BLUE_CLASS)]:
        row = rows[name]
        assert row["error"] == "" and row["top_code"] == code
        probs = [float(row[c]) for c in CLASS_CODES]
        assert abs(sum(probs) - 1) <= 1e-6
        assert float(row["top_probability"]) == max(probs)
        assert float(row["malignant_probability"]) == pytest.approx(
            float(row["mel"]) + float(row["bcc"]) + float(row["akiec"]), abs=1e-6)
    assert rows["d_notes.txt"]["error"].startswith("unsupported_media_type")
    assert rows["e_cut.jpg"]["error"].startswith("invalid_image")
    assert rows["d_notes.txt"]["top_code"] == ""
    assert "5 rows" in capsys.readouterr().out


def test_missing_folder_and_missing_model_fail_with_one_line(tmp_path, folder, capsys):
    assert main([str(tmp_path / "nope"), "--out", str(tmp_path / "x.csv")]) == 2
    missing = tmp_path / "no-model.h5"
    assert main([str(folder), "--out", str(tmp_path / "x.csv"), "--model", str(missing)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and str(missing) in err[1]
    assert not (tmp_path / "x.csv").exists()


def test_flags_are_columns_and_non_skin_images_get_no_diagnosis(tmp_path, ood_model):  # noqa: F811 (the imported fixture)
    import numpy as np
    from PIL import Image

    from tests.test_ood import skin_like

    d = tmp_path / "mixed"
    d.mkdir()
    Image.fromarray(skin_like(np.random.default_rng(5), 1)[0]).save(d / "a_skin.png")
    (d / "b_flat.png").write_bytes(image_bytes((255, 255, 255), size=(48, 48)))
    out = tmp_path / "mixed.csv"
    assert main([str(d), "--out", str(out), "--model", str(ood_model)]) == 0
    rows = {r["file"]: r for r in read_rows(out)}
    assert rows["a_skin.png"]["error"] == "" and rows["a_skin.png"]["uncertain"] in ("0", "1")
    listed = rows["a_skin.png"]["differential"].split()
    assert listed[0] == rows["a_skin.png"]["top_code"] and rows["a_skin.png"]["uncertain"] == str(int(len(listed) > 1))
    assert rows["a_skin.png"]["malignant_flag"] in ("0", "1")
    assert rows["b_flat.png"]["error"].startswith("not_a_skin_lesion")
    assert rows["b_flat.png"]["top_code"] == "" and rows["b_flat.png"]["mel"] == ""


# ---------------------------------------------------------------- --metadata: the patient context per file


def write_metadata(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_metadata_gives_each_image_its_context_and_a_bad_row_only_its_own_error(folder, tmp_path, model_path, capsys):
    meta = write_metadata(tmp_path / "patients.csv",
                          "filename,age,sex,site\n"
                          "a_red.png,70,male,back\n"
                          "b_green.jpg,abc,female,face\n"  # a bad age: this image is not screened
                          "d_notes.txt,40,,\n"             # a good row for a file that is not an image
                          "zz_missing.png,50,female,neck\n"  # names no image in the folder
                          "typo.JPG,,,\n")
    out = tmp_path / "probs.csv"
    assert main([str(folder), "--out", str(out), "--model", str(model_path), "--metadata", str(meta)]) == 0
    rows = {r["file"]: r for r in read_rows(out)}
    assert (rows["a_red.png"]["age"], rows["a_red.png"]["sex"], rows["a_red.png"]["site"]) == ("70", "male", "back")
    assert rows["a_red.png"]["error"] == "" and rows["a_red.png"]["top_code"] == RED_CLASS
    assert rows["b_green.jpg"]["error"].startswith("invalid_age: ") and "abc" in rows["b_green.jpg"]["error"]
    assert rows["b_green.jpg"]["top_code"] == "" and rows["b_green.jpg"]["age"] == ""
    assert rows["c_blue.png"]["error"] == "" and rows["c_blue.png"]["top_code"] == BLUE_CLASS, "the run went on"
    assert (rows["c_blue.png"]["age"], rows["c_blue.png"]["sex"], rows["c_blue.png"]["site"]) == ("", "", ""), \
        "an image the CSV does not list gets no context"
    assert rows["d_notes.txt"]["age"] == "40" and rows["d_notes.txt"]["error"].startswith("unsupported_media_type")
    streams = capsys.readouterr()
    warning = [line for line in streams.err.splitlines() if "match no image" in line]
    assert len(warning) == 1 and warning[0].startswith("warning: 2 filename(s)")
    assert "typo.JPG" in warning[0] and "zz_missing.png" in warning[0] and "a_red.png" not in warning[0]
    assert "5 rows" in streams.out


@pytest.mark.parametrize("text, words", [
    ("image,age,sex,site\na_red.png,70,male,back\n", "no 'filename' column (columns found: image, age, sex, site)"),
    ("", "no 'filename' column (columns found: none)"),
    (b"filename,age\n\xff\xfe70\n", "not a UTF-8 CSV file"),
])
def test_an_unusable_metadata_csv_stops_before_the_model_is_loaded(folder, tmp_path, capsys, text, words):
    meta = tmp_path / "patients.csv"
    meta.write_bytes(text if isinstance(text, bytes) else text.encode())
    out = tmp_path / "x.csv"
    missing_model = tmp_path / "no-model.h5"  # exit 2, not 3: the CSV is checked first
    assert main([str(folder), "--out", str(out), "--model", str(missing_model), "--metadata", str(meta)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {meta}: ") and words in err[0]
    assert not out.exists()
    assert main([str(folder), "--out", str(out), "--metadata", str(tmp_path / "absent.csv")]) == 2
    assert "cannot be read" in capsys.readouterr().err


def test_metadata_headers_are_forgiving_and_duplicates_are_refused_per_image(folder, tmp_path, model_path, capsys):
    meta = tmp_path / "patients.csv"
    meta.write_bytes("\ufeffFilename, Site ,Localization\n"  # a spreadsheet's BOM, odd case and spaces
                     "a_red.png,Upper_Extremity,upper extremity\n"
                     "c_blue.png,back,\nc_blue.png,chest,\n".encode("utf-8"))
    out = tmp_path / "probs.csv"
    assert main([str(folder), "--out", str(out), "--model", str(model_path), "--metadata", str(meta)]) == 0
    rows = {r["file"]: r for r in read_rows(out)}
    assert rows["a_red.png"]["site"] == "upper extremity" and rows["a_red.png"]["age"] == ""
    assert rows["a_red.png"]["top_code"] == RED_CLASS
    assert rows["c_blue.png"]["error"].startswith("duplicate_metadata: ") and rows["c_blue.png"]["top_code"] == ""
    assert "ignored columns: localization" in capsys.readouterr().err


class Terminal(io.StringIO):
    """stderr as a terminal: tqdm draws its bar only where ``isatty`` says a person is watching."""

    def isatty(self):
        return True


def test_a_terminal_sees_count_rate_and_eta_and_a_pipe_sees_no_bar(folder, tmp_path, model_path, monkeypatch, capsys):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main([str(folder), "--out", str(tmp_path / "a.csv"), "--model", str(model_path)]) == 0
    bar = terminal.getvalue().split("\r")[-1]
    assert "5/5" in bar and ("image/s" in bar or "s/image" in bar) and "<00:00" in bar, bar  # count, rate, ETA
    monkeypatch.undo()
    assert main([str(folder), "--out", str(tmp_path / "b.csv"), "--model", str(model_path)]) == 0
    captured = capsys.readouterr()
    assert "image" not in captured.err and "\r" not in captured.err + captured.out
