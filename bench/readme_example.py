"""The README's example answer, made from a real answer of the shipped model (issue #35, part 5).

    python bench/readme_example.py           # print the example block from a real answer
    python bench/readme_example.py --write   # and put it in README.md, between its markers

It posts one held-out HAM10000 photo (``EXAMPLE_IMAGE``, from ../shared) to ``POST /predict`` of an
app serving the shipped model in float32, and prints the JSON it answered: every key, floats
rounded for reading. ``tests/test_readme_example.py`` screens the same photo and fails when the
README's block no longer matches the answer's keys or values, so the README cannot drift again
(it said ``"input_size": 224`` while the service answered 192, and had no ``summary``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

README = ROOT / "README.md"
SHARED_IMAGES = ROOT.parent / "shared" / "data" / "ham10000"
EXAMPLE_IMAGE = "ISIC_0032285"  # the first melanocytic nevus of the test split (saved_models/split.csv)
BEGIN, END = "<!-- example answer: bench/readme_example.py -->", "<!-- end of example answer -->"
# The only values a second answer to the same photo changes: the time, the timings, and the report
# record (its random id and its time; its shape is still compared).
VOLATILE = ("created_at", "timing", "report")


def example_photo(shared: Path = SHARED_IMAGES) -> bytes | None:
    """The example photo's bytes, or None where this checkout has no ../shared."""
    index = shared / "images.csv"
    if not index.is_file():
        return None
    for line in index.read_text().splitlines():
        if line.startswith(EXAMPLE_IMAGE + ","):
            return (shared / line.split(",")[7]).read_bytes()
    raise LookupError(f"{EXAMPLE_IMAGE} is not in {index}")


def real_answer(photo: bytes) -> dict:
    """The shipped model's JSON answer to ``photo``, through the service's own ``POST /predict``, in float32
    (what ``auto`` serves on a host whose int8 check fails, and the precision every host can serve)."""
    from server import create_app

    app = create_app({"TESTING": True, "SECRET_KEY": "readme-example", "INFERENCE_PRECISION": "float32"})
    upload = {"image": (io.BytesIO(photo), f"{EXAMPLE_IMAGE}.jpg")}  # as curl -F sends it: the report names the file
    response = app.test_client().post("/predict", data=upload, content_type="multipart/form-data")
    if response.status_code != 200:
        raise RuntimeError(f"the example photo got {response.status_code}: {response.get_data(as_text=True)[:300]}")
    return response.get_json()


def rounded(value, digits: int = 3):
    """Floats rounded for a reader, everywhere in a JSON value."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, 1 if k.endswith("_ms") else digits) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    return value


def block(answer: dict) -> str:
    """The answer as the README shows it: one line per key, and per item of a list of objects."""
    lines = []
    for i, (key, value) in enumerate(answer.items()):
        comma = "," if i < len(answer) - 1 else ""
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            items = ",\n".join(f"    {json.dumps(v)}" for v in value)
            lines.append(f'  "{key}": [\n{items}\n  ]{comma}')
        else:
            lines.append(f'  "{key}": {json.dumps(value)}{comma}')
    return "```json\n{\n" + "\n".join(lines) + "\n}\n```"


def readme_answer(text: str) -> dict:
    """The JSON of the README's example block (between its markers)."""
    found = re.search(re.escape(BEGIN) + r"\s*```json\n(.*?)\n```\s*" + re.escape(END), text, re.S)
    if not found:
        raise LookupError(f"README.md has no example block between {BEGIN!r} and {END!r}")
    return json.loads(found.group(1))


def with_block(text: str, answer: dict) -> str:
    """README text with its example block replaced by ``answer``'s."""
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[:start] + "\n" + block(answer) + "\n" + text[end:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="replace README.md's example block")
    args = parser.parse_args()
    photo = example_photo()
    if photo is None:
        sys.exit(f"error: {SHARED_IMAGES} not found: the example is made from a HAM10000 test photo in ../shared")
    answer = rounded(real_answer(photo))
    print(f"{EXAMPLE_IMAGE} through POST /predict, shipped model, float32:")
    print(block(answer))
    if args.write:
        README.write_text(with_block(README.read_text(), answer))
        print(f"written to {README}")


if __name__ == "__main__":
    main()
