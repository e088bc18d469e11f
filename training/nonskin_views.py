"""The model's views of the non-skin sets, cached per model: what the object check is fitted on and the bench measures.

Sets by name: ``everyday`` and ``made`` (the named corpus), and from a run's split the lesions
of ``val`` and ``test`` plain, made harder (``hard_val``...) or shifted (``shifted_test``...),
drawn and changed with the seeds the card's figures were measured with
(``training.split_views.load_split_images``, ``training.nonskin.fit_nonskin``). A pass over
every set costs minutes on two cores; the cache (an .npz per set, under the model's sha256)
makes the second one free.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SEED = 42  # the seed the card's lesion sets were drawn and changed with (``training.nonskin_refit``)
CORPUS_SETS = ("everyday", "made")


def lesion_paths(data_dir: Path, split_csv: Path, lesions: int = 0) -> dict[str, list]:
    """Photo paths by lesion set, drawn as ``load_split_images`` draws them, cut to ``lesions`` when given."""
    import pandas as pd

    from training import data as D
    from training.nonskin import LESION_SETS

    df = pd.read_csv(split_csv)[["image_id", "split"]].merge(D.load_metadata(data_dir), on="image_id")
    out = {}
    for s in ("val", "test"):
        part = df[df["split"] == s]
        out[s] = list(part["path"])
        for i, (name, (n, _)) in enumerate(LESION_SETS.items()):
            out[f"{name}_{s}"] = list(part["path"].sample(min(n, len(part)), random_state=SEED + i))
    return {k: v[:lesions] if lesions else v for k, v in out.items()}


def lesion_items(paths: list, name: str) -> list:
    """A lesion set's items: the photos plain (``val``), made harder or shifted (``shifted_test``) with the card's seeds."""
    from PIL import Image

    from training.nonskin import LESION_SETS, TEST_SEED_OFFSET

    photos = [Image.open(p).convert("RGB") for p in paths]
    kind, _, split = name.rpartition("_")
    if not kind:
        return [(Path(p).stem, "plain", img) for p, img in zip(paths, photos)]
    return LESION_SETS[kind][1](photos, seed=SEED + (0 if split == "val" else TEST_SEED_OFFSET))


def corpus_items(name: str, size: int) -> list:
    from training import nonskin_corpus, nonskin_everyday

    return nonskin_everyday.everyday_photos() if name == "everyday" else nonskin_corpus.made_pictures(size, SEED)


def views(predictor, make, path: Path | None) -> tuple[dict, list]:
    """(signals, [(item name, kind)]) of one set: from ``path`` when it holds them, else computed (and stored)."""
    from training.nonskin import squares
    from training.split_views import run_views

    if path is not None and path.is_file():
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files if k not in ("names", "kinds")}, list(zip(f["names"], f["kinds"]))
    items = make()
    signals = run_views(predictor, squares([img for _, _, img in items], predictor.input_size, predictor.colour))[1]
    signals = {k: v for k, v in signals.items() if v is not None}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, names=[n for n, _, _ in items], kinds=[k for _, k, _ in items], **signals)
    return signals, [(str(n), str(k)) for n, k, _ in items]


def all_views(predictor, data_dir: Path, split_csv: Path, wanted, cache: str = "off", lesions: int = 0) -> dict:
    """{set name: (signals, [(item name, kind)])} for the ``wanted`` sets; ``lesions`` > 0 cuts each lesion set."""
    root = None if cache == "off" else Path(cache) / predictor.card.sha256[:16]
    paths = None
    out = {}
    for name in wanted:
        if name in CORPUS_SETS:
            where = None if root is None else root / f"{name}.npz"
            out[name] = views(predictor, lambda n=name: corpus_items(n, predictor.input_size), where)
            continue
        if paths is None:
            paths = lesion_paths(Path(data_dir), Path(split_csv), lesions)
        where = None if root is None else root / (f"n{lesions}" if lesions else "all") / f"{name}.npz"
        out[name] = views(predictor, lambda n=name: lesion_items(paths[n], n), where)
    return out
