from tests.conftest import image_bytes
from tests.fixture_model import BLUE_CLASS, RED_CLASS


def test_red_and_blue_images_get_different_classes(client):
    red = client.post("/predict", data={"image": (__import__("io").BytesIO(image_bytes((220, 30, 30))), "r.png")})
    blue = client.post("/predict", data={"image": (__import__("io").BytesIO(image_bytes((30, 30, 220))), "b.png")})
    assert red.status_code == 200, red.json
    assert red.json["prediction"]["code"] == RED_CLASS
    assert blue.json["prediction"]["code"] == BLUE_CLASS


def test_onnx_runtime_matches_tensorflow_on_the_fixture_model(model_path):
    """The served runtime is derived from the .h5 and must give TensorFlow's answers."""
    import numpy as np

    from server.model.predictor import Predictor

    onnx = Predictor.from_path(model_path, runtime="onnxruntime")
    tf = Predictor.from_path(model_path, runtime="tensorflow")
    assert (onnx.runtime, tf.runtime) == ("onnxruntime", "tensorflow")
    batch = np.random.default_rng(1).uniform(-1, 1, (5, onnx.input_size, onnx.input_size, 3)).astype(np.float32)
    np.testing.assert_allclose(onnx.predict_arrays(batch), tf.predict_arrays(batch), atol=1e-5)


def test_unknown_runtime_is_a_clear_load_error(model_path):
    import pytest

    from server.model.files import ModelLoadError
    from server.model.predictor import Predictor

    with pytest.raises(ModelLoadError, match="INFERENCE_RUNTIME"):
        Predictor.from_path(model_path, runtime="tpu")


def test_api_reports_the_malignant_flag_from_the_card_threshold(client):
    import io

    blue = client.post("/predict", data={"image": (io.BytesIO(image_bytes((30, 30, 220))), "b.png")}).json
    green = client.post("/predict", data={"image": (io.BytesIO(image_bytes((30, 220, 30))), "g.png")}).json
    assert blue["malignant_threshold"] == green["malignant_threshold"] == 0.5
    assert blue["prediction"]["code"] == BLUE_CLASS and blue["malignant_probability"] >= 0.5
    assert blue["malignant_flag"] is True
    assert green["malignant_probability"] < 0.5 and green["malignant_flag"] is False
