"""The README's set-up steps themselves, run through make with stubs on PATH (#11).

``make browser`` once ran ``$SUDO DEBIAN_FRONTEND=noninteractive apt-get`` with an empty
``$SUDO``, so bash took the assignment for a command (error 127) on every fresh machine
without Chromium. These tests point Chromium's path at nothing and replace ``apt-get``,
``id`` and ``sudo`` with stubs that record their arguments and environment: nothing is
really installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed")

STUBS = {
    # Each stub appends one line to $STUB_LOG: what it was called with, and DEBIAN_FRONTEND as it saw it.
    "apt-get": 'echo "apt-get $* DEBIAN_FRONTEND=${DEBIAN_FRONTEND:-unset}" >> "$STUB_LOG"; exit "${APT_EXIT:-0}"',
    "id": 'echo "$STUB_UID"',
    "sudo": 'echo "sudo $*" >> "$STUB_LOG"; exec "$@"',
}
INSTALL = "install -y -qq chromium poppler-utils DEBIAN_FRONTEND=noninteractive"
MISSING = {"CHROMIUM": "/nonexistent/chromium", "PDFTOPPM": "/nonexistent/pdftoppm"}


def run_make(tmp_path: Path, target: str, *, uid: int, stubs=("apt-get", "id", "sudo"), system_path: bool = True,
             apt_exit: int = 0, **variables: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """``make -s TARGET VAR=value...`` with the named stubs first on PATH; returns the run and the stub log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in stubs:
        stub = bin_dir / name
        stub.write_text("#!/bin/sh\n" + STUBS[name] + "\n")
        stub.chmod(0o755)
    log = tmp_path / "calls.log"
    log.touch()
    path = f"{bin_dir}:{os.environ['PATH']}" if system_path else str(bin_dir)
    env = {"PATH": path, "HOME": str(tmp_path), "STUB_LOG": str(log), "STUB_UID": str(uid), "APT_EXIT": str(apt_exit)}
    args = [MAKE, "-s", "-C", str(ROOT), target] + [f"{k}={v}" for k, v in variables.items()]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    return result, log.read_text().splitlines()


def test_browser_as_root_runs_apt_get_non_interactively(tmp_path):
    result, calls = run_make(tmp_path, "browser", uid=0, **MISSING)
    assert result.returncode == 0, result.stderr
    assert calls == ["apt-get update -qq DEBIAN_FRONTEND=noninteractive", f"apt-get {INSTALL}"]


def test_browser_as_a_user_goes_through_sudo(tmp_path):
    result, calls = run_make(tmp_path, "browser", uid=1000, **MISSING)
    assert result.returncode == 0, result.stderr
    assert calls == [
        "sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq",
        "apt-get update -qq DEBIAN_FRONTEND=noninteractive",
        "sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium poppler-utils",
        f"apt-get {INSTALL}",
    ]


@pytest.mark.parametrize("missing", ["CHROMIUM", "PDFTOPPM"])
def test_browser_installs_when_either_tool_is_missing(tmp_path, missing):
    present = {"CHROMIUM": "/bin/sh", "PDFTOPPM": "/bin/sh", missing: MISSING[missing]}
    result, calls = run_make(tmp_path, "browser", uid=0, **present)
    assert result.returncode == 0, result.stderr
    assert calls[-1] == f"apt-get {INSTALL}"


def test_browser_does_nothing_when_both_are_there(tmp_path):
    result, calls = run_make(tmp_path, "browser", uid=1000, CHROMIUM="/bin/sh", PDFTOPPM="/bin/sh")
    assert result.returncode == 0 and calls == [] and result.stdout == result.stderr == ""


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one line a failed step prints for the person: what failed and what to run by hand."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode != 0 and len(errors) == 1, (result.returncode, result.stdout, result.stderr)
    return errors[0]


@pytest.mark.parametrize("uid, sudo", [(0, ""), (1000, "sudo ")])
def test_browser_failure_says_what_to_run_by_hand(tmp_path, uid, sudo):
    result, calls = run_make(tmp_path, "browser", uid=uid, apt_exit=100, **MISSING)
    line = error_line(result)
    assert "apt-get could not install chromium poppler-utils" in line
    assert line.endswith(f"by hand: {sudo}apt-get update && {sudo}apt-get install -y chromium poppler-utils"), line
    assert calls, "apt-get was never tried"


def test_browser_without_root_or_sudo_says_so(tmp_path):
    result, calls = run_make(tmp_path, "browser", uid=1000, stubs=("apt-get", "id"), system_path=False, **MISSING)
    line = error_line(result)
    assert "needs root or sudo" in line and "apt-get install -y chromium poppler-utils" in line
    assert calls == []


def test_too_old_python_is_refused_in_one_line(tmp_path):
    old = tmp_path / "python3.10"
    old.write_text('#!/bin/sh\ncase "$1" in -V) echo "Python 3.10.12";; *) exit 1;; esac\n')
    old.chmod(0o755)
    result, _ = run_make(tmp_path, "install", uid=1000, PYTHON=str(old), VENV=str(tmp_path / "venv"))
    line = error_line(result)
    assert "needs Python 3.11 or newer" in line and "Python 3.10.12" in line
    assert not (tmp_path / "venv").exists()


def test_corpus_installs_the_photo_packages_when_a_photo_is_missing(tmp_path):
    """One photo of the non-skin corpus missing: the three packages that ship them are installed."""
    photo = tmp_path / "fruits.jpg"
    photo.write_bytes(b"\xff\xd8")
    paths = {"OPENCV_PHOTOS": str(photo), "TUXPAINT_STAMPS": "/nonexistent/pizza.png", "KDE_WALLPAPERS": str(photo)}
    result, calls = run_make(tmp_path, "corpus", uid=0, **paths)
    assert result.returncode == 0, result.stderr
    assert calls[-1] == ("apt-get install -y -qq opencv-doc tuxpaint-stamps-default plasma-workspace-wallpapers "
                         "DEBIAN_FRONTEND=noninteractive")


def test_corpus_does_nothing_when_the_photos_are_there(tmp_path):
    """Photos are data files: there but not executable is enough."""
    photos = {name: tmp_path / f"{name}.jpg" for name in ("OPENCV_PHOTOS", "TUXPAINT_STAMPS", "KDE_WALLPAPERS")}
    for path in photos.values():
        path.write_bytes(b"\xff\xd8")
    result, calls = run_make(tmp_path, "corpus", uid=1000, **{k: str(v) for k, v in photos.items()})
    assert result.returncode == 0, result.stderr
    assert calls == []


def test_make_train_takes_another_data_folder_and_run_folder_and_downloads_weights_it_lacks():
    """``make train DATA_DIR=...`` is how an ML engineer retrains on their own photos (README "Your own photos");
    on a machine without ../shared's weights, Keras's own are downloaded."""
    args = [MAKE, "-n", "-C", str(ROOT), "train", "DATA_DIR=/data/clinic-photos", "TRAIN_DIR=/runs/clinic"]
    planned = subprocess.run(args, capture_output=True, text=True, timeout=60, env={**os.environ, "DATA_DIR": ""})
    train = [line for line in planned.stdout.splitlines() if "-m training.train" in line]
    assert len(train) == 1, planned.stdout[-2000:]
    assert "--data-dir /data/clinic-photos " in train[0] and train[0].rstrip().endswith("--out-dir /runs/clinic")
    weights = ROOT.parent / "shared" / "weights" / "mobilenet_v2_1.0_224_imagenet_no_top.h5"
    if weights.is_file():
        assert "/shared/weights/mobilenet_v2_1.0_224_imagenet_no_top.h5" in train[0]
    elsewhere = subprocess.run(args + ["WEIGHTS_DIR=/nonexistent"], capture_output=True, text=True, timeout=60)
    train = [line for line in elsewhere.stdout.splitlines() if "-m training.train" in line]
    assert "--weights imagenet --imagenet-weights imagenet --imagenet-labels imagenet" in train[0]  # Keras downloads


def test_make_train_resumes_a_run_cut_off_before_it_exported_and_starts_a_finished_one_again(tmp_path):
    def planned() -> str:
        run = subprocess.run([MAKE, "-n", "-C", str(ROOT), "train", f"TRAIN_DIR={tmp_path}"], capture_output=True,
                             text=True, timeout=60)
        return next(line for line in run.stdout.splitlines() if "-m training.train" in line)

    assert "--resume" not in planned()  # an empty folder: a new run
    (tmp_path / "head.weights.h5").write_bytes(b"")
    assert planned().rstrip().endswith("--resume")  # cut off after its head trained
    (tmp_path / "model_card.json").write_text("{}")
    assert "--resume" not in planned()  # finished: make train trains it again
