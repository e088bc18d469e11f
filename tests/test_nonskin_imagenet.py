"""The non-skin check's ImageNet branch and floors, through the real export, Predictor and API.

A tiny stand-in for ImageNet's network rides in the fixture model's graph exactly as the
real one does (a nested ``imagenet`` model, float16 weights, two outputs), so the wiring
is tested without ../shared: export, float32 widening, ONNX conversion with its parity
check, the fitted statistics, the floors, and the 422 that says what the image looked like.
"""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from server.imaging import scale_pixels
from server.model.files import ModelLoadError
from server.model.nonskin import FloorCheck
from server.model.nonskin_imagenet import ImagenetLabels, readable_label
from server.model.predictor import Predictor
from server.thresholds import LOOKS_LIKE_MIN_PROBABILITY
from tests.fixture_model import FIXTURE_SIZE, build_colour_model
from tests.test_ood import skin_like
from training.export import attach_branch, base_card, export_model
from training.nonskin import fit_ood, lesion_like_classes, save_ood
from server.model.nonskin import compact_ood, ood_distances

CAT, GREEN_THING = 281, 7  # the class the stand-in gives green pictures, and one lesion-like class


def labels() -> list[str]:
    names = [f"thing {i}" for i in range(1000)]
    names[CAT] = "tabby, tabby cat"
    return names


def stand_in_branch(size: int = FIXTURE_SIZE):
    """ImageNet's shape in miniature: pooled colour features and 1000 probabilities; green -> 'tabby cat'."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float16")
    try:
        inputs = keras.Input((size, size, 3))
        pooled = keras.layers.GlobalAveragePooling2D(name="pool")(inputs)
        # The classifier as a model nested in the branch, so widening must reach inside it.
        head_in = keras.Input((3,))
        head = keras.Model(head_in, keras.layers.Dense(1000, activation="softmax", name="predictions")(head_in),
                           name="classifier")
        branch = keras.Model(inputs, [pooled, head(pooled)], name="imagenet")
    finally:
        keras.config.set_dtype_policy(previous)
    kernel = np.zeros((3, 1000), np.float32)
    kernel[1, CAT], kernel[0, CAT] = 12.0, -12.0  # greener than red: never a skin tone
    kernel[0, GREEN_THING] = 6.0  # red: a class skin-toned pictures land on
    branch.get_layer("classifier").get_layer("predictions").set_weights([kernel, np.zeros(1000, np.float32)])
    return branch


@pytest.fixture(scope="module")
def branch_model(tmp_path_factory):
    """The colour fixture exported with the stand-in branch, its card carrying every check."""
    d = tmp_path_factory.mktemp("imagenet-branch")
    card = base_card(name="colour-fixture-branch", version="test", input_size=FIXTURE_SIZE,
                     architecture="colour fixture + stand-in ImageNet branch",
                     thresholds={"malignant": 0.5, "malignant_target_sensitivity": 0.9})
    model_path, _ = export_model(attach_branch(build_colour_model(), stand_in_branch()), d, card)
    raw = Predictor.from_path(model_path, runtime="tensorflow", ood=False, imagenet=True)
    rng = np.random.default_rng(0)

    def signals(images):
        fmap, _, in_features, in_probs = raw.forward_all(scale_pixels(images))
        return fmap.mean(axis=(1, 2)), in_features, in_probs

    train, val = skin_like(rng, 300), skin_like(rng, 100)
    (f_train, i_train, p_train), (f_val, i_val, _) = signals(train), signals(val)
    features, imagenet = compact_ood(fit_ood(f_train)), compact_ood(fit_ood(i_train))
    from server.model.nonskin_pictures import floor_statistics

    pix = floor_statistics(scale_pixels(val))
    arrays = {**features, **{f"imagenet_{k}": v for k, v in imagenet.items()},
              "imagenet_labels": np.asarray(labels()), "imagenet_lesion_like": lesion_like_classes(p_train)}
    document = json.loads(model_path.with_name("model_card.json").read_text())
    document["ood"] = {"file": "ood_stats.npz", "sha256": save_ood(arrays, d / "ood_stats.npz"),
                       # a margin beyond the validation extremes: few fitting images, fresh draws must pass
                       "threshold": 1.25 * float(ood_distances(features, f_val).max()),
                       "imagenet_threshold": 1.25 * float(ood_distances(imagenet, i_val).max()),
                       "texture_floor": float(pix[:, 0].min()) - 0.3, "colour_floor": float(pix[:, 1].min()) - 0.3}
    model_path.with_name("model_card.json").write_text(json.dumps(document))
    return model_path


@pytest.fixture(scope="module")
def branch_predictor(branch_model):
    return Predictor.from_path(branch_model)  # the default runtime: ONNX Runtime when it matches TensorFlow


def green_picture(seed: int = 9) -> Image.Image:
    """A textured green picture: what the stand-in branch calls a tabby cat."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(np.clip(np.array([40, 220, 60]) + rng.normal(0, 8, (40, 40, 3)), 0, 255).astype(np.uint8))


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_the_branch_is_stored_in_float16_and_served_in_float32(branch_model, branch_predictor):
    import h5py
    import keras

    with h5py.File(branch_model) as f:
        stored = []
        f.visititems(lambda name, obj: stored.append(obj.dtype) if isinstance(obj, h5py.Dataset) and "predictions" in name else None)
    assert stored and all(dtype == np.float16 for dtype in stored)
    from server.model.runtime import float32_copy, split_branch

    _, branch = split_branch(keras.models.load_model(branch_model, compile=False))
    assert branch.get_layer("classifier").get_layer("predictions").dtype_policy.name == "float16"

    def policies(model):
        for layer in model.layers:
            yield from policies(layer) if isinstance(layer, keras.Model) else [layer.dtype_policy.name]

    assert set(policies(float32_copy(branch))) == {"float32"}  # nested layers widened too: no float16 kernel runs
    fmap, probs, in_features, in_probs = branch_predictor.forward_all(np.zeros((2, FIXTURE_SIZE, FIXTURE_SIZE, 3), np.float32))
    assert probs.shape == (2, 7) and in_features.shape == (2, 3) and in_probs.shape == (2, 1000)
    assert in_probs.dtype == np.float32 and np.allclose(in_probs.sum(axis=1), 1.0, atol=1e-4)


def test_the_branch_leaves_the_class_probabilities_alone(model_path, branch_model):
    plain = Predictor.from_path(model_path, runtime="tensorflow")
    with_branch = Predictor.from_path(branch_model, runtime="tensorflow")
    x = scale_pixels(skin_like(np.random.default_rng(3), 4))
    np.testing.assert_allclose(plain.predict_arrays(x), with_branch.predict_arrays(x), atol=1e-6)


def test_a_green_picture_is_refused_as_what_it_looks_like_and_skin_passes(branch_predictor):
    green = branch_predictor.predict_image(green_picture())
    assert green.out_of_distribution is True and green.nonskin.looks_like == "tabby cat"
    for arr in skin_like(np.random.default_rng(42), 10):
        p = branch_predictor.predict_image(Image.fromarray(arr))
        assert p.out_of_distribution is False and p.nonskin.looks_like is None, p.nonskin.score


def test_the_floors_refuse_flat_and_grey_pictures(branch_predictor):
    texture, colour = (branch_predictor.ood.check(n) for n in ("texture", "colour"))
    assert isinstance(texture, FloorCheck) and isinstance(colour, FloorCheck)
    from server.model.nonskin_pictures import floor_statistics

    skin_tone = Image.new("RGB", (48, 48), (200, 150, 115))  # a skin tone, no texture
    assert texture.ratios(floor_statistics(scale_pixels(np.asarray(skin_tone)[None])))[0] > 1
    assert branch_predictor.predict_image(skin_tone).out_of_distribution is True
    grey = np.repeat(skin_like(np.random.default_rng(4), 1)[0].mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)
    pixels = scale_pixels(grey[None])
    assert colour.ratios(floor_statistics(pixels))[0] > 1  # no colour at all
    assert branch_predictor.predict_image(Image.fromarray(grey)).out_of_distribution is True


def test_the_api_says_what_a_refused_image_looked_like(branch_model):
    from server import create_app

    client = create_app({"MODEL_PATH": str(branch_model), "TESTING": True, "SECRET_KEY": "s"}).test_client()
    refused = client.post("/predict", data=png(green_picture()), content_type="image/png")
    assert refused.status_code == 422
    error = refused.json["error"]
    assert error["code"] == "not_a_skin_lesion" and error["looks_like"] == "tabby cat"
    assert error["message"].startswith("To the model it looks like: tabby cat.")
    flat = client.post("/predict", data=png(Image.new("RGB", (48, 48), (30, 60, 220))), content_type="image/png")
    assert flat.status_code == 422 and flat.json["error"]["looks_like"] is None


def test_a_card_that_reads_the_branch_needs_a_model_that_has_it(branch_model, model_path, tmp_path):
    for f in branch_model.parent.iterdir():
        shutil.copy(f, tmp_path / f.name)
    shutil.copy(model_path, tmp_path / branch_model.name)  # the same card, a model without the branch
    document = json.loads((tmp_path / "model_card.json").read_text())
    from server.model.files import file_sha256

    document["sha256"] = file_sha256(tmp_path / branch_model.name)
    (tmp_path / "model_card.json").write_text(json.dumps(document))
    with pytest.raises(ModelLoadError, match="ImageNet branch"):
        Predictor.from_path(tmp_path / branch_model.name, runtime="tensorflow")


def test_looks_like_names_only_a_confident_class_that_lesions_do_not_get():
    names = tuple(labels())
    table = ImagenetLabels(names, frozenset({GREEN_THING}))
    probs = np.full(1000, 0.0)
    probs[CAT] = LOOKS_LIKE_MIN_PROBABILITY
    probs[0] = LOOKS_LIKE_MIN_PROBABILITY - 0.05  # the rest spread thinly
    assert table.looks_like(probs, LOOKS_LIKE_MIN_PROBABILITY) == "tabby cat"
    probs[CAT] = LOOKS_LIKE_MIN_PROBABILITY - 0.01
    assert table.looks_like(probs, LOOKS_LIKE_MIN_PROBABILITY) is None
    lesion_like = np.zeros(1000)
    lesion_like[GREEN_THING] = 0.9
    assert table.looks_like(lesion_like, LOOKS_LIKE_MIN_PROBABILITY) is None
    assert readable_label("hotdog, hot dog, red hot") == "hotdog"
    assert readable_label("Egyptian cat") == "Egyptian cat"
    assert readable_label("tabby, tabby cat") == "tabby cat"


def test_floor_statistics_are_the_picture_statistics_the_floors_read():
    from server.model.nonskin_pictures import GRADIENT_COLUMN, SATURATION_COLUMN, floor_statistics, image_statistics

    x = scale_pixels(skin_like(np.random.default_rng(6), 5))
    np.testing.assert_array_equal(floor_statistics(x)[:, :2], image_statistics(x)[:, [GRADIENT_COLUMN, SATURATION_COLUMN]])


def test_the_flat_share_tells_made_pictures_from_photos():
    """A fill or a smooth gradient is flat along an axis; a photo's noise is not; a black surround does not count."""
    from server.model.nonskin import FLAT_SHARE
    from server.model.nonskin_pictures import floor_statistics

    ramp = np.repeat(np.linspace(60, 250, 32)[None, :, None], 32, axis=0).repeat(3, axis=2).astype(np.uint8)
    skin = skin_like(np.random.default_rng(6), 1)[0]
    black = np.zeros_like(skin)
    black[4:28, 4:28] = skin[4:28, 4:28]  # a round field's dark surround around a photo
    flat = floor_statistics(scale_pixels(np.stack([ramp, skin, black])))[:, FLAT_SHARE]
    assert flat[0] > 2 and flat[1] < -1 and flat[2] < -1  # logits: nearly all, few, few


def test_lesion_like_classes_are_the_frequent_top_classes():
    probs = np.zeros((1000, 1000))
    probs[:990, 5] = 1.0  # 99% of lesions: class 5
    probs[990:, 9] = 1.0  # 1%: class 9 (above the 0.5% share)
    probs[999, 9], probs[999, 11] = 0.0, 1.0  # 0.1%: class 11 (below)
    assert lesion_like_classes(probs).tolist() == [5, 9]


def test_the_form_says_in_plain_words_what_a_refused_image_looked_like(branch_model):
    from server import create_app
    from tests.test_pages import html, upload

    client = create_app({"MODEL_PATH": str(branch_model), "TESTING": True, "SECRET_KEY": "s"}).test_client()
    page = upload(client, png(green_picture()))
    assert page.status_code == 422
    body = html(page)
    assert "To the model this looks like <strong>tabby cat</strong>, not a skin lesion." in body
    assert "does not look like a photo of a skin lesion" in body and "Try another photo" in body
    assert body.count("tabby cat") == 1  # said once, not again inside the reason


def test_the_imagenet_check_runs_only_beyond_its_gate():
    """Images whose own features are typical skip the ImageNet check: it neither runs nor refuses them."""
    from server.model.nonskin import FEATURES, IMAGENET, DistanceCheck, Mahalanobis, NonSkinCheck

    identity = Mahalanobis(np.zeros(2), np.eye(2))
    checks = (DistanceCheck(FEATURES, FEATURES, identity, 10.0), DistanceCheck(IMAGENET, IMAGENET, identity, 1.0))
    check = NonSkinCheck(checks, imagenet_gate=3.0)
    features = np.array([[1.0, 0.0], [5.0, 0.0]])  # distances 1 (typical) and 5 (beyond the gate)
    assert check.imagenet_runs(check.ratios({FEATURES: features})).tolist() == [False, True]
    far = np.array([[4.0, 0.0], [4.0, 0.0]])  # the ImageNet check alone would refuse both
    np.testing.assert_allclose(check.score({FEATURES: features, IMAGENET: far}), [0.1, 4.0])
    assert check.ratios({FEATURES: features, IMAGENET: far})[IMAGENET].tolist() == [0.0, 4.0]
    floored = NonSkinCheck((*checks, FloorCheck("texture", 0, 1.0)), imagenet_gate=3.0)
    assert set(floored.ratios({FEATURES: features})) == {FEATURES}  # only the checks whose signal is given
    ungated = NonSkinCheck(checks)  # no gate: always
    assert ungated.imagenet_runs(ungated.ratios({FEATURES: features})).tolist() == [True, True]


def test_a_typical_lesion_never_reaches_the_branch(branch_model, tmp_path):
    """With the gate above every skin-like picture's distance, the served branch is not run for them."""
    for f in branch_model.parent.iterdir():
        shutil.copy(f, tmp_path / f.name)
    document = json.loads((tmp_path / "model_card.json").read_text())
    document["ood"]["imagenet_gate"] = document["ood"]["threshold"]
    (tmp_path / "model_card.json").write_text(json.dumps(document))
    predictor = Predictor.from_path(tmp_path / branch_model.name, runtime="tensorflow")
    calls = []
    run = predictor._run_branch
    predictor._run_branch = lambda batch: calls.append(len(batch)) or run(batch)
    for arr in skin_like(np.random.default_rng(42), 5):
        assert predictor.predict_image(Image.fromarray(arr)).out_of_distribution is False
    assert calls == []
    refused = predictor.predict_image(Image.new("RGB", (48, 48), (30, 60, 220)))
    assert refused.out_of_distribution is True and calls == [1]  # far on its own features: the branch ran
