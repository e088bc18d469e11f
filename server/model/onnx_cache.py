"""The on-disk cache of what a worker needs to serve a model without TensorFlow.

Converting the ``.h5`` (tf2onnx) and even loading it with Keras take most of a worker's
start, so the process that does have TensorFlow leaves three kinds of file here, all
found by the ``.h5``'s sha256 (a retrained or swapped model can never meet an old file):

- ``…-classifier-….onnx`` / ``…-branch-….onnx``: the converted graphs;
- ``….onnx.expect.npz`` beside each graph: fixed probe inputs and the outputs TensorFlow
  gave for them, so a TF-free worker can check its ONNX session reproduces them within
  ``PARITY_TOLERANCE`` (a corrupt or mismatched graph fails that check);
- ``…-model-….npz``: the facts the Predictor reads off the Keras model (output units,
  patient input width, feature layer, whether the ImageNet branch is there) and the head
  weights Grad-CAM's gradient needs (``server/model/head.py``). Written last, only once
  every graph it describes has passed parity, so its presence means the rest was complete.

Every file is written to a temporary name, fsynced and renamed into place: two workers
starting together never read half a file (the last rename wins; both wrote the same).
Nothing here imports TensorFlow: versions come from package metadata.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

OPSET = 17
# Bumped whenever what the cache holds changes meaning, so old files are simply not found.
CACHE_FORMAT = 2
EXPECT_SUFFIX = ".expect.npz"
# The distributions TensorFlow ships as; the first one installed names its version.
TENSORFLOW_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-intel", "tensorflow-macos", "tf-nightly")


def _version(names) -> str:
    """The installed version of the first of ``names``, or "none": read from package metadata,
    so a worker that never imports TensorFlow or tf2onnx still computes the same cache key."""
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "none"


@lru_cache(maxsize=1)
def versions() -> dict:
    """tf2onnx, ONNX Runtime and TensorFlow versions: a graph converted by others is another graph."""
    return {"tf2onnx": _version(("tf2onnx",)), "onnxruntime": _version(("onnxruntime", "onnxruntime-gpu")),
            "tensorflow": _version(TENSORFLOW_DISTRIBUTIONS)}


def atomic_write(target: Path, data: bytes) -> bool:
    """Write ``data`` to ``target`` through a temporary file and a rename; False (logged) when it
    cannot: a cache that cannot be written only costs the next start a conversion."""
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; other users' workers may read the cache too
        os.replace(tmp, target)
        tmp = None
        return True
    except OSError as exc:
        log.warning("could not write %s (%s); the next start converts again", target, exc)
        return False
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def npz_bytes(arrays: dict) -> bytes:
    """Arrays as the bytes of an uncompressed ``.npz`` (read back without pickle)."""
    buf = io.BytesIO()
    np.savez(buf, **{name: np.asarray(value) for name, value in arrays.items()})
    return buf.getvalue()


def read_npz(path: Path) -> dict | None:
    """Every array of an ``.npz``, or None when it is missing or unreadable (truncated, not a zip...)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except FileNotFoundError:
        return None
    except Exception as exc:  # zipfile, numpy and OS errors all mean: not usable
        log.warning("cached file %s is unreadable (%s)", path, exc.__class__.__name__)
        return None


@dataclass(frozen=True)
class OnnxCache:
    """Cached graphs, their probe expectations and the model record, per (model sha256, kind,
    input size, opset, versions, format). The ``.h5`` stays the one source of truth: every file
    is only a cache of what TensorFlow made of it, found by the ``.h5``'s sha256."""

    directory: Path
    model_sha256: str

    def path(self, kind: str, size: int, suffix: str = ".onnx") -> Path:
        key = {"sha256": self.model_sha256, "kind": kind, "size": size, "opset": OPSET, "format": CACHE_FORMAT,
               **versions()}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return Path(self.directory) / f"{self.model_sha256[:16]}-{kind}-{size}-{digest}{suffix}"

    def expect_path(self, kind: str, size: int) -> Path:
        """The probe inputs and TensorFlow's outputs for a graph, beside it."""
        return self.path(kind, size, ".onnx" + EXPECT_SUFFIX)

    def record_path(self, size: int) -> Path:
        return self.path("model", size, ".npz")

    def read(self, kind: str, size: int) -> bytes | None:
        try:
            return self.path(kind, size).read_bytes()
        except OSError:
            return None

    def write(self, kind: str, size: int, graph: bytes) -> None:
        atomic_write(self.path(kind, size), graph)

    def read_expected(self, kind: str, size: int) -> tuple[list, list] | None:
        """(probe inputs, expected outputs) for a graph, or None."""
        arrays = read_npz(self.expect_path(kind, size))
        if arrays is None:
            return None
        inputs = [arrays[f"in_{i}"] for i in range(sum(name.startswith("in_") for name in arrays))]
        outputs = [arrays[f"out_{i}"] for i in range(sum(name.startswith("out_") for name in arrays))]
        return (inputs, outputs) if inputs and outputs else None

    def write_expected(self, kind: str, size: int, inputs, outputs) -> None:
        arrays = {**{f"in_{i}": a for i, a in enumerate(inputs)}, **{f"out_{i}": a for i, a in enumerate(outputs)}}
        atomic_write(self.expect_path(kind, size), npz_bytes(arrays))

    def read_record(self, size: int) -> dict | None:
        return read_npz(self.record_path(size))

    def write_record(self, size: int, arrays: dict) -> None:
        atomic_write(self.record_path(size), npz_bytes(arrays))

    def discard(self, kind: str, size: int) -> None:
        """Remove a graph and its expectation (a graph that failed its check)."""
        for path in (self.path(kind, size), self.expect_path(kind, size)):
            try:
                path.unlink()
            except OSError:
                pass
