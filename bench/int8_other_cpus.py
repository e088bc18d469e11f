"""The host check's accuracy figures for a run's int8 graphs on other x86 CPUs, emulated with qemu.

    python bench/int8_other_cpus.py                                  # shipped model: native, then Haswell
    python bench/int8_other_cpus.py --run-dir runs/x --cpus native,Haswell --images 16

ONNX Runtime picks its integer kernels by the CPU's instruction sets: VNNI, AVX-512 or AVX2 each
have their own, and U8S8 kernels without VNNI can saturate. A graph cannot be tried on hardware one
does not have, but ``qemu-x86_64 -cpu Haswell`` (Debian's qemu-user) runs the same Python and ONNX
Runtime on an emulated AVX2 CPU without AVX-512, so ONNX Runtime takes its AVX2 kernels there. For
each CPU this prints what the service's own check (``server/model/int8_check.py``) measures on the
card's reference batch: top-class and flag changes, mean probability change, the branch's feature gap,
and the verdict. Emulated timings mean nothing, so no speed is measured. About 1.5 s of CPU a photo
under emulation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def figures(run_dir: Path, images: int) -> dict:
    """The check's accuracy figures on this (possibly emulated) CPU, with the CPU flags ONNX Runtime sees."""
    from server.model import int8_check
    from server.model.card import CARD_FILENAME
    from server.model.files import load_card
    from server.model.runtime import onnx_session_runner
    from server.model.second_look import malignant_mask

    card = load_card(run_dir / CARD_FILENAME)
    ref = int8_check.read_reference(run_dir / card.int8.reference.file)
    ref = int8_check.Reference(ref.inputs[:images], ref.probabilities[:images],
                               None if ref.features is None else ref.features[:images])
    run = onnx_session_runner((run_dir / card.int8.classifier.file).read_bytes(), 1)
    width = run_width(run_dir / card.int8.classifier.file)
    features = None
    if card.int8.branch is not None and ref.features is not None:
        features = int8_check.branch_features(onnx_session_runner((run_dir / card.int8.branch.file).read_bytes(), 1), ref)
    malignant = malignant_mask(card.classes)
    out = int8_check.agreement(ref, int8_check.answers(run, ref, width), features, malignant,
                               card.thresholds.malignant, card.temperature_for("off") or 1.0)
    out["cpu"] = int8_check.cpu_flags()
    out["verdict"] = int8_check.disagreement(out) or "answers as float32 does"
    return out


def run_width(graph_path: Path) -> int:
    """The patient input's width (0 without one), read off the graph."""
    import onnx

    inputs = onnx.load(str(graph_path), load_external_data=False).graph.input
    return inputs[1].type.tensor_type.shape.dim[-1].dim_value if len(inputs) > 1 else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", type=Path, default=ROOT / "saved_models")
    p.add_argument("--cpus", default="native,Haswell", help="native and qemu CPU models, comma-separated")
    p.add_argument("--images", type=int, default=48, help="reference photos to use (all 48 by default)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(figures(args.run_dir, args.images)))
        return 0
    for cpu in args.cpus.split(","):
        command = [sys.executable, __file__, "--child", "--run-dir", str(args.run_dir), "--images", str(args.images)]
        if cpu != "native":
            command = ["qemu-x86_64", "-cpu", cpu] + command
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{cpu}: failed ({done.stderr.strip().splitlines()[-1:]})")
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{cpu:>8} [{result.pop('cpu')}]: " + ", ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
