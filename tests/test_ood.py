"""The non-skin check (issue #6): fixture statistics built here, through the real Predictor and API."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from server.imaging import scale_pixels
from server.model.files import ModelLoadError
from server.model.nonskin_pictures import image_statistics
from server.model.predictor import Predictor
from tests.conftest import image_bytes
from tests.test_pages import html, upload
from server.model.nonskin import compact_ood, ood_distances
from training.nonskin import fit_ood, save_ood

SKIN_TONES = np.array([(225, 185, 160), (200, 150, 115), (170, 120, 90), (140, 95, 70), (120, 80, 60)], np.float32)


def skin_like(rng, n: int, size: int = 32) -> np.ndarray:
    """Skin-toned images with a darker blotch and noise: the fixture's 'lesion' distribution."""
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        base = SKIN_TONES[rng.integers(len(SKIN_TONES))] + rng.normal(0, 8, 3)
        img = np.clip(base + rng.normal(0, 6, (size, size, 3)), 0, 255)
        c = rng.integers(8, 24, 2)
        img[c[0] - 5:c[0] + 5, c[1] - 5:c[1] + 5] *= rng.uniform(0.5, 0.8)
        out[i] = img.astype(np.uint8)
    return out


@pytest.fixture(scope="module")
def ood_model(model_path, tmp_path_factory):
    """A copy of the fixture model whose card carries non-skin statistics fitted on skin-like images."""
    d = tmp_path_factory.mktemp("ood")
    shutil.copy(model_path, d / model_path.name)
    plain = Predictor.from_path(model_path, runtime="tensorflow")
    rng = np.random.default_rng(0)

    def pooled(x):
        return plain.forward(scale_pixels(x))[0].mean(axis=(1, 2))

    train, val = skin_like(rng, 300), skin_like(rng, 100)
    stats = compact_ood(fit_ood(pooled(train)))  # stored as the service ships it
    threshold = float(np.percentile(ood_distances(stats, pooled(val)), 99))
    pix = fit_ood(image_statistics(scale_pixels(train)))
    pix_threshold = float(np.percentile(ood_distances(pix, image_statistics(scale_pixels(val))), 99))
    stats.update(image_mean=pix["mean"], image_precision=pix["precision"])
    card = json.loads(model_path.with_name("model_card.json").read_text())
    card["ood"] = {"file": "ood_stats.npz", "sha256": save_ood(stats, d / "ood_stats.npz"), "threshold": threshold,
                   "image_threshold": pix_threshold}
    (d / "model_card.json").write_text(json.dumps(card))
    return d / model_path.name


@pytest.fixture(scope="module")
def ood_predictor(ood_model):
    return Predictor.from_path(ood_model, runtime="tensorflow")


def test_non_skin_images_are_flagged_and_skin_like_ones_pass(ood_predictor):
    rng = np.random.default_rng(42)  # new draws, not the fitting ones
    for arr in skin_like(rng, 20):
        p = ood_predictor.predict_image(Image.fromarray(arr))
        assert p.out_of_distribution is False and 0 < p.nonskin.score <= 1, p.nonskin.score
    for colour in [(30, 200, 40), (20, 40, 230), (255, 255, 255), (0, 0, 0), (128, 128, 128)]:
        p = ood_predictor.predict_image(Image.new("RGB", (48, 48), colour))
        assert p.out_of_distribution is True and p.nonskin.score > 1
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 48, 3), dtype=np.uint8))
    assert ood_predictor.predict_image(noise).out_of_distribution is True


def test_flagged_image_gets_no_heatmap(ood_predictor):
    p = ood_predictor.predict_image(Image.new("RGB", (48, 48), (30, 200, 40)), explain=True)
    assert p.out_of_distribution and p.heatmap is None


def test_api_refuses_a_non_skin_image_with_422_and_passes_skin(ood_model):
    from server import create_app

    client = create_app({"MODEL_PATH": str(ood_model), "TESTING": True, "SECRET_KEY": "s",
                         "INFERENCE_RUNTIME": "tensorflow"}).test_client()
    refused = client.post("/predict", data=image_bytes((30, 200, 40)), content_type="image/png")
    assert refused.status_code == 422
    assert refused.json["error"]["code"] == "not_a_skin_lesion"
    assert "does not look like a photo of a skin lesion" in refused.json["error"]["message"]
    assert "prediction" not in refused.json
    pdf = client.post("/predict?format=pdf", data=image_bytes((30, 200, 40)), content_type="image/png")
    assert pdf.status_code == 422
    skin = Image.fromarray(skin_like(np.random.default_rng(7), 1)[0])
    import io

    buf = io.BytesIO()
    skin.save(buf, format="PNG")
    ok = client.post("/predict", data=buf.getvalue(), content_type="image/png")
    assert ok.status_code == 200 and ok.json["out_of_distribution"] is False
    assert 0 < ok.json["ood_score"] <= 1
    # the form: the upload page again, with the reason, and no result
    page = upload(client, image_bytes((30, 200, 40)))
    assert page.status_code == 422
    body = html(page)
    assert "does not look like a photo of a skin lesion" in body and 'id="predicted-class"' not in body


def test_tampered_statistics_stop_the_model_loading(ood_model, tmp_path):
    for f in ood_model.parent.iterdir():
        shutil.copy(f, tmp_path / f.name)
    with np.load(tmp_path / "ood_stats.npz") as data:
        stats = {k: data[k] for k in data.files}
    stats["mean"] = stats["mean"] + 1
    np.savez_compressed(tmp_path / "ood_stats.npz", **stats)
    with pytest.raises(ModelLoadError, match="sha256"):
        Predictor.from_path(tmp_path / ood_model.name, runtime="tensorflow")
    assert Predictor.from_path(tmp_path / ood_model.name, runtime="tensorflow", ood=False).ood is None


def test_compact_statistics_keep_distances_and_pca_works():
    rng = np.random.default_rng(3)
    mix = rng.normal(size=(40, 40))
    train = rng.normal(size=(2000, 40)) @ mix * rng.uniform(0.01, 5, 40)
    probe = np.vstack([rng.normal(size=(50, 40)) @ mix, rng.normal(5, 1, (5, 40))])
    exact = fit_ood(train)
    ratio = ood_distances(compact_ood(exact), probe) / ood_distances(exact, probe)
    np.testing.assert_allclose(ratio, 1.0, atol=0.01)
    reduced = fit_ood(train, dims=10)
    assert reduced["projection"].shape == (40, 10) and reduced["precision"].shape == (10, 10)
    assert ood_distances(reduced, probe).shape == (55,)


def test_picture_statistics_alone_separate_flat_and_text_pictures_from_skin(ood_predictor):
    """The second test on its own: a flat skin-coloured square and a page of text are far from skin photos."""
    from PIL import ImageDraw

    stats = ood_predictor.ood.check("picture")
    assert stats is not None
    rng = np.random.default_rng(5)
    skin = stats.distances(image_statistics(scale_pixels(skin_like(rng, 10))))
    page = Image.new("RGB", (32, 32), (255, 255, 255))
    ImageDraw.Draw(page).text((1, 10), "error 404", fill=(0, 0, 0))
    odd = [Image.new("RGB", (32, 32), (200, 150, 115)), page]
    far = stats.distances(image_statistics(scale_pixels(np.stack([np.asarray(i) for i in odd]))))
    assert far.min() > stats.threshold >= skin.max()
