"""The README's example answer is a real answer of the shipped model, and stays one (issue #35, part 5)."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("readme_example", ROOT / "bench" / "readme_example.py")
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)

TOLERANCE = 0.002  # the block's floats are rounded to 3 places; ONNX Runtime may differ in the last bits


def drift(shown, real, where: str = "") -> list[str]:
    """Every key or value in which the README's ``shown`` answer differs from a ``real`` one (rounded alike);
    ``created_at``, ``timing`` and ``report`` differ in every answer, so only their keys and types are compared."""
    if isinstance(real, dict):
        if not isinstance(shown, dict):
            return [f"{where or 'answer'}: README shows {shown!r}"]
        out = [f"{where}.{k}: missing from the README" for k in real.keys() - shown.keys()]
        out += [f"{where}.{k}: in the README, not in the answer" for k in shown.keys() - real.keys()]
        for key in real.keys() & shown.keys():
            if key in example.VOLATILE and not where:
                if type(shown[key]) is not type(real[key]) or (isinstance(real[key], dict) and shown[key].keys() != real[key].keys()):
                    out.append(f".{key}: README's {shown[key]!r} has not the answer's shape {real[key]!r}")
                continue
            out += drift(shown[key], real[key], f"{where}.{key}")
        return out
    if isinstance(real, list):
        if not isinstance(shown, list) or len(shown) != len(real):
            return [f"{where}: README shows {shown!r}, the answer {real!r}"]
        return [d for i, (s, r) in enumerate(zip(shown, real)) for d in drift(s, r, f"{where}[{i}]")]
    if isinstance(real, float) and isinstance(shown, (int, float)) and not isinstance(shown, bool):
        return [] if abs(shown - real) <= TOLERANCE else [f"{where}: README shows {shown}, the answer {real}"]
    return [] if shown == real else [f"{where}: README shows {shown!r}, the answer {real!r}"]


@pytest.fixture(scope="module")
def shown() -> dict:
    return example.readme_answer((ROOT / "README.md").read_text())


def test_the_readme_example_is_the_shipped_models_and_has_every_key_the_contract_requires(shown):
    from server.web.openapi_schemas import PREDICTION_SCHEMA

    card = json.loads((ROOT / "saved_models" / "model_card.json").read_text())
    assert shown["model"]["input_size"] == card["input_size"] == 192
    assert shown["model"]["sha256"] == card["sha256"] and shown["model"]["version"] == card["version"]
    assert set(PREDICTION_SCHEMA["required"]) <= set(shown)
    assert set(shown) <= set(PREDICTION_SCHEMA["properties"])
    assert {"kind", "title", "next_step", "key_figure"} <= set(shown["summary"])


def test_drift_is_caught_in_a_key_or_a_value_but_not_in_the_time(shown):
    assert drift(shown, shown) == []
    old = copy.deepcopy(shown)
    old["model"]["input_size"] = 224  # what the README said before
    del old["summary"]
    assert drift(old, shown) == [".summary: missing from the README", ".model.input_size: README shows 224, the answer 192"]
    moved = copy.deepcopy(shown)
    moved["probabilities"][0]["probability"] += 0.01
    moved["created_at"], moved["timing"]["total_ms"] = "2030-01-01T00:00:00+00:00", 999.0
    assert drift(moved, shown) == [f".probabilities[0].probability: README shows {moved['probabilities'][0]['probability']}, "
                                   f"the answer {shown['probabilities'][0]['probability']}"]


@pytest.mark.slow
@pytest.mark.shared_data
def test_the_readme_example_is_what_the_shipped_model_answers_now(shown, shared_data_dir):
    photo = example.example_photo(shared_data_dir)
    real = example.rounded(example.real_answer(photo))
    assert drift(shown, real) == [], "README.md's example answer drifted: run python bench/readme_example.py --write"
