from tests.conftest import image_bytes
from tests.fixture_model import BLUE_CLASS, RED_CLASS


def test_red_and_blue_images_get_different_classes(client):
    red = client.post("/predict", data={"image": (__import__("io").BytesIO(image_bytes((220, 30, 30))), "r.png")})
    blue = client.post("/predict", data={"image": (__import__("io").BytesIO(image_bytes((30, 30, 220))), "b.png")})
    assert red.status_code == 200, red.json
    assert red.json["prediction"]["code"] == RED_CLASS
    assert blue.json["prediction"]["code"] == BLUE_CLASS
