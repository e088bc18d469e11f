"""The model card as a page: its metrics, limits, safeguards, quality bar and images, through Flask's test client."""

from __future__ import annotations

import re

import pytest

from tests.conftest import image_bytes
from tests.test_pages import html


def test_model_page_shows_card_metrics_and_limits(client):
    response = client.get("/model")
    body = html(response)
    assert response.status_code == 200
    assert "colour-fixture" in body
    assert "HAM10000" in body and "CC BY-NC 4.0" in body
    assert re.search(r"Balanced accuracy</th><td>50\.0%", body)
    for limit in ("dermoscopic", "lighter skin types are over-represented", "smartphone", "Not a diagnosis"):
        assert limit in body
    assert "Screening aid, not a diagnosis." in body
    assert "/model/confusion_matrix.png" not in body  # the fixture card's directory has no plot


def test_model_page_says_when_not_to_trust_it_right_after_the_quality_bar(client):
    body = html(client.get("/model"))
    sections = re.findall(r'<h2 id="([\w-]+)"', body)
    assert sections[:3] == ["quality-title", "limits-title", "what-title"]
    assert 'href="/docs"' in body[body.index('id="what-title"'):body.index('id="data-title"')]


def test_model_page_serves_the_confusion_matrix_when_present(app, client, model_path):
    plot = model_path.parent / "confusion_matrix.png"
    plot.write_bytes(image_bytes(fmt="PNG"))
    try:
        assert '<img src="/model/confusion_matrix.png"' in html(client.get("/model"))
        served = client.get("/model/confusion_matrix.png")
        assert served.status_code == 200 and served.mimetype == "image/png"
        assert served.data == plot.read_bytes()
    finally:
        plot.unlink()
    assert client.get("/model/confusion_matrix.png").status_code == 404


def test_model_page_images_load_with_a_relative_model_path(model_path, tmp_path, monkeypatch):
    """``make run`` passes MODEL_PATH relative to the working directory: every image the page shows must load."""
    import os
    import shutil

    from server import create_app

    for name in (model_path.name, "model_card.json"):
        shutil.copy(model_path.parent / name, tmp_path / name)
    (tmp_path / "confusion_matrix.png").write_bytes(image_bytes(fmt="PNG"))
    monkeypatch.setenv("MODEL_PATH", os.path.relpath(tmp_path / model_path.name))  # from the environment, as make run
    client = create_app({"SECRET_KEY": "k"}).test_client()
    sources = re.findall(r'<img[^>]* src="([^"]+)"', html(client.get("/model")))
    assert "/model/confusion_matrix.png" in sources
    for src in sources:
        served = client.get(src)
        assert (served.status_code, served.mimetype) == (200, "image/png"), src
        assert served.data.startswith(b"\x89PNG")


def test_model_page_without_metrics_renders(tmp_path):
    from server import create_app
    from tests.fixture_model import build_colour_model
    from training.export import base_card, export_model

    model_path, _ = export_model(build_colour_model(), tmp_path,
                                 base_card(name="bare", version="0", input_size=32, architecture="tiny"))
    client = create_app({"MODEL_PATH": str(model_path), "SECRET_KEY": "k"}).test_client()
    response = client.get("/model")
    assert response.status_code == 200
    assert "No test metrics were recorded" in html(response)


def test_model_page_states_the_cards_safeguards(client):
    body = html(client.get("/model"))
    assert "How it guards against its own mistakes" in body
    assert "reaches 50.0%" in body  # the fixture card's malignant operating point


def test_safeguards_leave_out_what_a_card_lacks():
    from server.web.presenters import safeguards

    assert safeguards({}) == []
    full = safeguards({"thresholds": {"malignant": 0.43, "uncertain": 0.72},
                       "metrics": {"test": {"malignant": {"sensitivity": 0.864, "specificity": 0.757}}},
                       "calibration": {"temperature": 1.027, "ece_test_before": 0.0616, "ece_test_after": 0.0594},
                       "ood": {"nonskin_true_flag_rate": 0.932, "test_false_flag_rate": 0.0063}})
    assert [label for label, _ in full] == ["Malignant flag", "Uncertain answers", "Calibration", "Non-skin images"]
    assert "86.4%" in full[0][1] and "72%" in full[1][1] and "1.027" in full[2][1] and "93.2%" in full[3][1]


def test_metric_rows_show_rates_as_percentages_and_losses_as_numbers():
    from server.web.presenters import metric_rows

    rows = dict(metric_rows({"n": 1431, "balanced_accuracy": 0.622, "log_loss": 0.741, "macro_auc_ovr": 0.922,
                             "per_class": {}}))
    assert rows == {"Test images": "1431", "Balanced accuracy": "62.2%", "Log loss (lower is better)": "0.741",
                    "Macro one-vs-rest AUC": "0.922"}


def test_model_page_states_the_quality_bar_and_per_class_figures(calibrated_card_client):
    body = html(calibrated_card_client.get("/model"))
    assert re.search(r'id="bar-verdict"><strong>No\.</strong> This model does not meet the product&#39;s quality bar', body)
    rows = re.findall(r'<tr><th scope="row">([^<]+)</th><td[^>]*>([\d.]+)%</td><td[^>]*>([\d.]+)%</td><td[^>]*>(\d+)</td></tr>', body)
    assert [r[0] for r in rows] == ["Melanoma", "Melanocytic nevus (mole)"]
    assert rows[0][1:] == ("35.3", "67.3", "159")


def test_model_page_without_the_figures_does_not_claim_the_bar(client):
    body = html(client.get("/model"))
    assert "<strong>No.</strong>" in body  # the fixture's 50% balanced accuracy is below the bar
    assert 'id="per-class"' not in body  # its card records no per-class figures


@pytest.fixture()
def calibrated_card_client(model_path, tmp_path):
    import json
    import shutil

    from server import create_app

    shutil.copy(model_path, tmp_path / model_path.name)
    card = json.loads(model_path.with_name("model_card.json").read_text())
    card["metrics"]["test"]["per_class"] = {"mel": {"precision": 0.3531, "recall": 0.6730, "support": 159},
                                            "nv": {"precision": 0.9694, "recall": 0.7276, "support": 958}}
    (tmp_path / "model_card.json").write_text(json.dumps(card))
    return create_app({"MODEL_PATH": str(tmp_path / model_path.name), "SECRET_KEY": "k"}).test_client()
