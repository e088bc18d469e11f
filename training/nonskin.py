"""Fitting the non-skin check for a run: the statistics, each check's threshold, and the flag rates.

The checks themselves (distance, stored format, the one rule) are the service's, in
``server/model/nonskin.py``. Here: Mahalanobis statistics of training images, a threshold
per check at a high percentile of the validation distances, and the rates at which the
checks flag test lesions and pictures that are not skin lesions (made or found offline:
flat colours, gradients, noise, text screenshots, charts, logos, photos that ship with
matplotlib and scikit-learn).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np

from server.imaging import centre_square
from server.model.files import file_sha256
from server.model.nonskin import (
    FEATURES,
    PICTURE,
    DistanceCheck,
    Mahalanobis,
    NonSkinCheck,
    compact_ood,
    ood_distances,
)
from server.thresholds import refuses_as_non_skin

log = logging.getLogger("training.calibrate")

OOD_FILENAME = "ood_stats.npz"
OOD_PERCENTILE = 99.5  # each of the two tests: together they flag <= 1% of validation lesions


def fit_ood(train_features, dims: int = 0, seed: int = 0) -> dict:
    """Mean, Ledoit-Wolf precision (and PCA projection when ``dims``) of pooled training features."""
    from sklearn.covariance import LedoitWolf

    x = np.asarray(train_features, np.float64)
    mean = x.mean(axis=0)
    z = x - mean
    stats = {"mean": mean.astype(np.float32)}
    if dims and dims < x.shape[1]:
        _, _, vt = np.linalg.svd(z, full_matrices=False)
        projection = vt[:dims].T
        z = z @ projection
        stats["projection"] = projection.astype(np.float32)
    lw = LedoitWolf(assume_centered=True).fit(z)
    stats["precision"] = lw.precision_
    stats["shrinkage"] = np.float32(lw.shrinkage_)
    return stats


def save_ood(stats: dict, path: Path) -> str:
    np.savez_compressed(path, **stats)
    return file_sha256(path)


def fit_nonskin(predictor, feats: dict, pix: dict, run_dir: Path, run_views, ood_dims: int = 0,
                ood_percentile: float = OOD_PERCENTILE, seed: int = 0) -> dict:
    """Fit both checks on ``feats``/``pix`` (pooled features and picture statistics by split), write
    ``ood_stats.npz`` into ``run_dir`` and return the card's ``ood`` section with its figures."""
    size = predictor.input_size
    full_stats = fit_ood(feats["train"], ood_dims, seed)
    stats = compact_ood(full_stats)
    d_val, d_test = ood_distances(stats, feats["val"]), ood_distances(stats, feats["test"])
    d_val_exact = ood_distances(full_stats, feats["val"])
    storage_error = float(np.max(np.abs(d_val - d_val_exact) / np.maximum(d_val_exact, 1e-9)))
    if storage_error > 0.005:  # float16 not faithful enough for this model: keep float32
        log.warning("float16 precision moves distances by up to %.2f%%; storing float32", 100 * storage_error)
        stats = compact_ood(full_stats, np.float32)
        d_val, d_test = ood_distances(stats, feats["val"]), ood_distances(stats, feats["test"])
        storage_error = float(np.max(np.abs(d_val - d_val_exact) / np.maximum(d_val_exact, 1e-9)))
    threshold = float(np.percentile(d_val, ood_percentile))
    # The second test: picture statistics (12 numbers), full covariance, same percentile rule.
    pix_stats = fit_ood(pix["train"])
    pv, pt = ood_distances(pix_stats, pix["val"]), ood_distances(pix_stats, pix["test"])
    pix_threshold = float(np.percentile(pv, ood_percentile))
    stats.update({"image_mean": pix_stats["mean"], "image_precision": pix_stats["precision"].astype(np.float32)})
    nonskin = nonskin_images(size)
    ns_x = np.stack([np.asarray(centre_square(img.convert("RGB"), size), np.uint8) for _, img in nonskin])
    feats["nonskin"], _, pix["nonskin"] = run_views(predictor, ns_x)
    d_ns, p_ns = ood_distances(stats, feats["nonskin"]), ood_distances(pix_stats, pix["nonskin"])

    check = NonSkinCheck((DistanceCheck(FEATURES, FEATURES, Mahalanobis.from_arrays(stats), threshold),
                          DistanceCheck(PICTURE, PICTURE, Mahalanobis.from_arrays(pix_stats), pix_threshold)))
    s_val, s_test, s_ns = (check.score({FEATURES: feats[s], PICTURE: pix[s]}) for s in ("val", "test", "nonskin"))
    flagged = refuses_as_non_skin(s_ns)
    by_kind: dict[str, list] = {}
    for (kind, _), f, fd, fp in zip(nonskin, flagged, d_ns > threshold, p_ns > pix_threshold):
        by_kind.setdefault(kind, []).append((bool(f), bool(fd), bool(fp)))
    sha = save_ood(stats, run_dir / OOD_FILENAME)
    return {
        "method": ("Mahalanobis distance of the pooled GAP features from the training split's mean, Ledoit-Wolf "
                   "shrinkage precision" + (f", in a {ood_dims}-d PCA subspace" if ood_dims else "")),
        "file": OOD_FILENAME, "sha256": sha, "feature_layer": predictor.feature_layer,
        "dims": int(stats["dim"]), "train_images": int(len(feats["train"])),
        "shrinkage": float(stats["shrinkage"]),
        "storage": f"mean float32, precision upper triangle {stats['precision_triu'].dtype} scaled by its maximum",
        "storage_max_relative_distance_error_val": storage_error,
        "threshold": threshold, "threshold_rule": f"{ood_percentile:g}th percentile of validation distances",
        "image_statistics": "server.model.nonskin.image_statistics: mean colour, colour spread, gradient, sharp-edge, "
                            "white, black and saturation shares, fine texture (12 numbers); Ledoit-Wolf precision",
        "image_threshold": pix_threshold,
        "rule": "refused when either distance exceeds its threshold (score = max of distance / threshold > 1)",
        "val_false_flag_rate": float(refuses_as_non_skin(s_val).mean()),
        "test_false_flag_rate": float(refuses_as_non_skin(s_test).mean()),
        "test_false_flag_rate_features_only": float((d_test > threshold).mean()),
        "test_false_flag_rate_image_only": float((pt > pix_threshold).mean()),
        "nonskin_true_flag_rate": float(flagged.mean()), "nonskin_images": int(len(flagged)),
        "nonskin_true_flag_rate_features_only": float((d_ns > threshold).mean()),
        "nonskin_true_flag_rate_image_only": float((p_ns > pix_threshold).mean()),
        "nonskin_by_kind": {k: {"n": len(v), "flagged": sum(a for a, _, _ in v),
                                "by_features": sum(b for _, b, _ in v), "by_image": sum(c for _, _, c in v)}
                            for k, v in by_kind.items()},
        "distance_percentiles": {"val_50": float(np.percentile(d_val, 50)), "test_99": float(np.percentile(d_test, 99)),
                                 "nonskin_min": float(d_ns.min()), "nonskin_median": float(np.median(d_ns))},
        "api": "422 not_a_skin_lesion: no diagnosis is given for a flagged image",
    }


def nonskin_images(size: int = 224, seed: int = 0) -> list[tuple[str, object]]:
    """Images that are not skin lesions, made or found offline: (kind, PIL image) pairs."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    out = []
    flat = {"white": (255, 255, 255), "black": (0, 0, 0), "grey": (128, 128, 128), "red": (220, 20, 20),
            "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (240, 220, 30), "purple": (120, 40, 160),
            "skin_light": (235, 200, 175), "skin_medium": (200, 150, 115), "skin_dark": (120, 80, 55),
            "brown": (120, 70, 40)}
    out += [("flat colour", Image.new("RGB", (size, size), c)) for c in flat.values()]
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    for a, b in (((0, 0, 0), (255, 255, 255)), ((255, 0, 0), (0, 0, 255)), ((240, 200, 170), (90, 50, 30)),
                 ((0, 120, 255), (255, 255, 0))):
        g = np.asarray(a, np.float32) + (np.asarray(b, np.float32) - a) * ramp[:, None]
        out.append(("gradient", Image.fromarray(np.repeat(g[None], size, 0).astype(np.uint8))))
        out.append(("gradient", Image.fromarray(np.repeat(g[:, None], size, 1).astype(np.uint8))))
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    radial = np.clip(1 - np.hypot(xx, yy) * 2, 0, 1)
    out.append(("gradient", Image.fromarray((np.stack([radial * 255, radial * 100, 60 + 0 * radial], -1)).astype(np.uint8))))
    for _ in range(3):
        out.append(("noise", Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))))
        grey = np.clip(rng.normal(128, 50, (size, size)), 0, 255).astype(np.uint8)
        out.append(("noise", Image.fromarray(grey).convert("RGB")))
    font = ImageFont.load_default()
    words = "the quick brown fox jumps over the lazy dog settings account login error 404 submit cancel".split()
    for i in range(6):
        bg, fg = ((255, 255, 255), (20, 20, 20)) if i % 2 == 0 else ((30, 30, 36), (220, 220, 220))
        img = Image.new("RGB", (size, size), bg)
        draw = ImageDraw.Draw(img)
        draw.rectangle([0, 0, size, 18], fill=(60, 110, 200) if i % 3 else (200, 200, 200))
        for line in range(14):
            text = " ".join(rng.choice(words, 5))
            draw.text((6, 24 + line * 14), text, fill=fg, font=font)
        if i >= 3:
            draw.rectangle([size - 80, size - 36, size - 10, size - 12], outline=fg, fill=(0, 120, 215))
        out.append(("text screenshot", img))
    out += [("chart", c) for c in _charts(size, rng)]
    out += [(kind, img) for kind, img in _photos(size)]
    return out


def _charts(size: int, rng) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    charts = []
    for kind in ("line", "bar", "scatter", "pie", "hist", "imshow"):
        fig, ax = plt.subplots(figsize=(3, 3), dpi=size / 3)
        x = np.arange(20)
        if kind == "line":
            ax.plot(x, np.cumsum(rng.normal(size=20))), ax.plot(x, np.cumsum(rng.normal(size=20)))
        elif kind == "bar":
            ax.bar(list("abcdefg"), rng.uniform(1, 10, 7))
        elif kind == "scatter":
            ax.scatter(rng.normal(size=80), rng.normal(size=80), c=rng.uniform(size=80))
        elif kind == "pie":
            ax.pie(rng.uniform(1, 5, 5))
        elif kind == "hist":
            ax.hist(rng.normal(size=500), bins=25)
        else:
            ax.imshow(rng.normal(size=(12, 12)), cmap="viridis")
        ax.set_title(kind)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        buf.seek(0)
        charts.append(Image.open(buf).convert("RGB"))
    return charts


def _photos(size: int) -> list:
    """Real photos available offline, whole and as five crops each (portrait, buildings, flower, logos)."""
    from matplotlib import cbook
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [("photo", Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))]
    photos += [("photo", Image.fromarray(img)) for img in load_sample_images().images]
    out = []
    for kind, img in photos:
        out.append((kind, img))
        w, h = img.size
        s = min(w, h) // 2
        for left, top in ((0, 0), (w - s, 0), (0, h - s), (w - s, h - s), ((w - s) // 2, (h - s) // 2)):
            out.append((kind + " crop", img.crop((left, top, left + s, top + s))))
    sample_dir = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).parent
    for name in ("logo2.png", "Minduka_Present_Blue_Pack.png"):
        if (sample_dir / name).is_file():
            with Image.open(sample_dir / name) as im:
                from server.imaging import to_rgb8

                out.append(("logo/graphic", to_rgb8(im)))
    return out
