"""Start-up refuses a model it cannot trust, naming why; an upload never touches the disk."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from server import create_app
from server.lesions import CLASS_CODES
from server.model.files import ModelLoadError
from tests.corpus import save
from tests.api_checks import post_file, post_raw

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def model_copy(model_path, tmp_path):
    """A private copy of the fixture model and card that a test may break."""
    for name in (model_path.name, "model_card.json"):
        shutil.copy(model_path.with_name(name), tmp_path / name)
    return tmp_path / model_path.name


def _edit_card(model_file: Path, **changes) -> None:
    card_path = model_file.with_name("model_card.json")
    card = json.loads(card_path.read_text())
    card.update(changes)
    card_path.write_text(json.dumps(card))


def _make_app(model_file):
    return create_app({"MODEL_PATH": str(model_file), "TESTING": True, "SECRET_KEY": "x"})


def test_missing_model_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "model.h5"
    with pytest.raises(ModelLoadError, match=str(missing).replace(".", r"\.")):
        _make_app(missing)


def test_corrupt_h5_names_the_path(model_copy):
    from server.model.files import file_sha256

    model_copy.write_bytes(os.urandom(4096))
    _edit_card(model_copy, sha256=file_sha256(model_copy))  # so the load itself is what fails
    with pytest.raises(ModelLoadError, match="could not load model") as info:
        _make_app(model_copy)
    assert str(model_copy) in str(info.value)


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"classes": list(reversed(CLASS_CODES))}, "lists classes"),
        ({"classes": list(CLASS_CODES[:6])}, "lists classes"),
        ({"preprocessing": "squash/nearest/[0,1]"}, "preprocessing"),
        ({"sha256": "0" * 64}, "do not belong together"),
    ],
    ids=["class-order", "class-count", "preprocessing", "sha256"],
)
def test_card_mismatches_refuse_to_start(model_copy, changes, words):
    _edit_card(model_copy, **changes)
    with pytest.raises(ModelLoadError, match=words) as info:
        _make_app(model_copy)
    assert str(model_copy.parent) in str(info.value)


# ---------------------------------------------------------------- privacy


def _snapshot(roots: list[Path], skip: tuple[Path, ...]) -> set[str]:
    """Every file path under ``roots``, except under ``skip`` and bytecode caches."""
    found = set()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            dirnames[:] = [
                d for d in dirnames
                if d not in {"__pycache__", ".git", ".venv", ".pytest_cache", "runs"}
                and not d.startswith(("pytest-of-", "bash_jobs"))
                and not any((here / d).resolve() == s for s in skip)
            ]
            found.update(str(here / f) for f in filenames)
    return found


def test_uploads_are_never_written_to_disk(client, tmp_path_factory):
    """Snapshot the repo and temp dirs around a batch of uploads, large enough that
    Werkzeug would normally spool them to a temporary file (> 500 KB)."""
    roots = sorted({ROOT, Path(tempfile.gettempdir()).resolve(), Path("/tmp").resolve(), Path("/var/tmp").resolve()})
    skip = (tmp_path_factory.getbasetemp().resolve(),)
    noise = np.random.default_rng(1).integers(0, 255, (600, 600, 3), dtype=np.uint8)
    big_png = save(Image.fromarray(noise), "PNG")
    assert len(big_png) > 600_000
    marker = "upload-marker-7f3a"
    before = _snapshot(roots, skip)
    for i in range(3):
        assert post_file(client, big_png, f"{marker}-{i}.png").status_code == 200
        assert post_raw(client, big_png, "image/png").status_code == 200
        assert post_file(client, b"not an image", f"{marker}-bad.jpg").status_code == 415
    after = _snapshot(roots, skip)
    assert after - before == set()
    assert not any(marker in p for p in after)


def test_multipart_files_are_buffered_in_memory(app):
    """Werkzeug spools file parts over 500 KB to an (unlinked) temp file; ours must not."""
    big = b"\x00" * 700_000
    with app.test_request_context("/predict", method="POST", content_type="multipart/form-data",
                                  data={"image": (io.BytesIO(big), "x.png")}):
        from flask import request

        stream = request.files["image"].stream
        assert isinstance(stream, io.BytesIO)
