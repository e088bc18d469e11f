"""What a run needs besides its data, fetched or checked before the first image loads.

Keras downloads ImageNet's weights when the first model is built, and a run that exports the
non-skin check's ImageNet classifier reads it and its 1000 class names only at export, after
hours of training. On a machine without internet, or with a mistyped path, a run then ended
in a traceback, at worst with its training lost. Here every download happens first (Keras
keeps it in its cache, so the later build reads it from there) and every file is opened, so
such a run stops in seconds with one line that says what to pass instead.
"""

from __future__ import annotations

from pathlib import Path

from training.config import TrainConfig


class Unavailable(Exception):
    """A download or a file the run needs cannot be had."""


def check_run_inputs(cfg: TrainConfig) -> None:
    """Fetch or open the backbone's weights, the ImageNet classifier and its class names; raises
    ``Unavailable`` (or ``FileNotFoundError`` for a path that is not a file)."""
    import keras

    from training.export import imagenet_label_names
    from training.model import resolve_weights

    size = (cfg.input_size, cfg.input_size, 3)
    if resolve_weights(cfg.weights) == "imagenet":
        downloaded("Keras's ImageNet MobileNetV2 weights", "--weights PATH to a no-top MobileNetV2 .h5 (or 'none')",
                   lambda: keras.applications.MobileNetV2(include_top=False, weights="imagenet", alpha=cfg.alpha,
                                                          input_shape=size))
    if not cfg.imagenet_weights:
        return
    if cfg.imagenet_weights == "imagenet":
        downloaded("Keras's ImageNet MobileNetV2 classifier", "--imagenet-weights PATH to a with-top MobileNetV2 .h5 "
                   "(or '' for no ImageNet check)", lambda: keras.applications.MobileNetV2(include_top=True))
    elif not Path(cfg.imagenet_weights).expanduser().is_file():
        raise FileNotFoundError(f"ImageNet weights not found: {cfg.imagenet_weights} (--imagenet-weights: a with-top "
                                "MobileNetV2 .h5, or 'imagenet' to download Keras's own)")
    labels = cfg.imagenet_labels or "imagenet"
    if labels == "imagenet":
        downloaded("ImageNet's class index", "--imagenet-labels PATH to a file of the 1000 class names, one a line",
                   lambda: imagenet_label_names(labels))
        return
    try:
        imagenet_label_names(labels)
    except (OSError, ValueError) as exc:
        raise Unavailable(f"--imagenet-labels {labels}: {exc}") from exc


def downloaded(what: str, instead: str, fetch) -> None:
    """Run ``fetch``, which may download; a failed download becomes one ``Unavailable`` line."""
    try:
        fetch()
    except Exception as exc:  # Keras wraps every failed download in a bare Exception
        if "URL fetch failure" not in str(exc):
            raise
        raise Unavailable(f"could not download {what} ({str(exc).split(': ', 1)[-1]}); without internet, "
                          f"pass {instead}") from exc
