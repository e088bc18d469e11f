"""The model's views of the non-skin sets, cached per model: what the object check is fitted on and the bench measures.

Sets by name: ``everyday`` and ``made`` (the named corpus), and from a run's split the lesions
of ``val`` and ``test`` plain, made harder (``hard_val``...) or shifted (``shifted_test``...),
drawn and changed with the seeds the card's figures were measured with
(``training.split_views.load_split_images``, ``training.nonskin.fit_nonskin``). A pass over
every set costs minutes on two cores; the cache (an .npz per set) makes the second one free. It
is keyed by the model's sha256 and by ``fingerprint``: the corpus code and the package photos it
reads, so a changed corpus or another package release is computed afresh, never read stale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SEED = 42  # the seed the card's lesion sets were drawn and changed with (``training.nonskin_refit``)
CORPUS_SETS = ("everyday", "made")
CORPUS_CODE = ("nonskin_everyday.py", "nonskin_corpus.py", "nonskin_shifted.py", "nonskin_views.py")


def fingerprint() -> str:
    """What the sets are made from: the corpus modules' source and every package photo's path and size."""
    import hashlib

    from training import nonskin_everyday as E

    h = hashlib.sha256()
    for name in CORPUS_CODE:
        h.update((Path(__file__).parent / name).read_bytes())
    for folder in (E.OPENCV_DATA, E.STAMPS, E.WALLPAPERS):
        for path in sorted(folder.rglob("*")) if folder.is_dir() else ():
            if path.is_file():
                h.update(f"{path}:{path.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


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
    root = None if cache == "off" else Path(cache) / predictor.card.sha256[:16] / fingerprint()
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
