"""Static int8 quantization of the served graphs, beside the ``.h5`` they come from.

    python -m training.quantize --run-dir saved_models --data-dir ../shared/data/ham10000

The service's float32 graphs are what tf2onnx makes of the ``.h5`` (``server/model/runtime.py``):
the classifier (feature map, probabilities) and, when the ``.h5`` carries it, the ImageNet
branch (pooled features, probabilities). Each is quantized here with ONNX Runtime's own tools,
as its quantization guide advises for CNNs: ``quant_pre_process`` first, then static QDQ with
int8 weights per output channel (per-tensor weights wreck MobileNets' depthwise convolutions),
ranges calibrated on training-split photos read through the service's own upload path.

The integer format is named as ONNX Runtime's guide names it, activations then weights (``FORMATS``).
U8S8 is the default. On CPUs with VNNI (or AMX) its kernels sum in 32 bits, exactly; on CPUs
without (AVX2, AVX-512 without VNNI) they multiply with ``vpmaddubsw``, whose 16-bit pair sums
saturate, so the same graph answers worse there: under ``qemu-x86_64 -cpu Haswell``
(``bench/int8_other_cpus.py``) the top class changed on 15% of the reference photos against 2%
natively with VNNI. U8U8 kernels cannot saturate, so U8U8 answers alike on every CPU, but measured
here it ran 1.5x *slower* than float32 (VNNI CPU, one thread), so it would never be served; S8S8
left the projection convolutions and residual Adds unfused and ran no faster than float32. So the
graphs are U8S8, and each host proves them before serving them (``server/model/int8_check.py``):
a CPU whose kernels saturate serves float32.

A deployed service has no calibration data, so this runs at export time, for whatever model ships.

Only the nodes the graph's first output depends on (the convolutional backbone up to the feature
map, or to the pooled features) are quantized, less the convolutions too sensitive to int8 weights.
Measured on the shipped model: rounding the weights alone to int8 per channel changed the class
probabilities by 0.048 on average and the top class of 17% of test photos, and one layer did most
of that: the first depthwise convolution, whose folded batch normalisation left one channel's
weights up to 56 against a median of 0.3, so its small weights rounded to zero (alone: 0.042).
So each convolution's weights are rounded alone first, on calibration photos, and those that move
the graph's probabilities (its last output) by more than ``WEIGHT_TOLERANCE`` on average stay float32.
Last, ``training.bias_correction`` puts half of each convolution's measured mean shift against
float32 back into its bias, so int8 is not systematically more confident than float32.
The head stays float32: it is a sliver of the cost, Grad-CAM's gradient is computed from its float32
weights (``server/model/head.py``), and the patient context joins there.

The graphs go into the run folder as ``<model>.int8-<graph>.onnx``; the card's ``int8`` section
records each file's sha256 and the sha256 of the ``.h5`` they were made from, so the service
serves them only with that exact ``.h5`` (``server/model/precision.py``). Whether they are good
enough to serve by default is measured by ``training.int8_bar``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from server.decoding import open_upload
from server.imaging import COLOUR_NONE, colour_of, model_input
from server.model.card import CARD_FILENAME, Int8Graph, Int8Spec, ModelCard
from server.model.files import check_model_files, file_sha256, load_card
from server.model.int8_check import cpu_flags
from server.model.onnx_cache import OPSET, versions
from server.model.serving import BRANCH, CLASSIFIER
from training.bias_correction import SHARE as BIAS_SHARE
from training.bias_correction import correct_biases
from training.cli import user_errors_in_one_line
from training.export import MODEL_FILENAME
from training.weight_sensitivity import backbone_nodes, probabilities, weight_sensitivity

log = logging.getLogger("training.quantize")

CALIBRATION_IMAGES = 300  # training-split photos; MinMax ranges settle well before this
CALIBRATION_SEED = 0
SENSITIVITY_IMAGES = 32  # calibration photos the per-convolution weight check runs on
REFERENCE_IMAGES = 48  # validation photos each host checks the int8 graphs on before serving them (4 MB)
REFERENCE = "reference"
WEIGHT_TOLERANCE = 0.005  # mean |change| of a probability when one convolution's weights alone are int8
# ONNX Runtime's integer formats: (activations, weights). U8S8 is fastest where it is exact (VNNI).
FORMATS = {"u8s8": ("u8", "s8"), "u8u8": ("u8", "u8"), "s8s8": ("s8", "s8")}
DEFAULT_FORMAT = "u8s8"
METHOD = ("ONNX Runtime static quantization: quant_pre_process, then QDQ, int8 weights per output channel, "
          "MinMax activation ranges on training-split photos; the nodes before the graph's first output only "
          "(the head stays float32), less the convolutions whose int8 weights alone move the probabilities "
          "by more than weight_tolerance on calibration photos; then bias_correction times each convolution's "
          "per-channel mean shift against float32 on the calibration photos put back into its bias")


def int8_filename(model_file: str, kind: str) -> str:
    """``ham10000_mobilenetv2.int8-classifier.onnx``: beside the ``.h5``, named after it."""
    return f"{Path(model_file).stem}.int8-{kind}.onnx"


def calibration_inputs(paths, size: int, colour: str = COLOUR_NONE) -> np.ndarray:
    """Photos -> (n, size, size, 3) model inputs, read as an upload is (decode, upright, centre square, scale)."""
    return np.stack([model_input(open_upload(Path(p).read_bytes()), size, colour) for p in paths])


class Batches:
    """One image at a time (batch 1, as the service runs) for ONNX Runtime's calibrator; any
    second input (the patient context) all "not given": it joins only in the float32 head."""

    def __init__(self, graph, images: np.ndarray):
        self.names = [i.name for i in graph.graph.input]
        self.widths = [i.type.tensor_type.shape.dim[-1].dim_value for i in graph.graph.input]
        self.images, self.at = images, 0

    def get_next(self):
        if self.at >= len(self.images):
            return None
        x = self.images[self.at:self.at + 1]
        self.at += 1
        feeds = {self.names[0]: x}
        feeds.update({n: np.zeros((1, w), np.float32) for n, w in zip(self.names[1:], self.widths[1:])})
        return feeds

    def rewind(self):
        self.at = 0


def quant_type(code: str):
    """``u8`` or ``s8`` -> ONNX Runtime's QuantType."""
    from onnxruntime.quantization import QuantType

    return {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}[code]


def quantize_graph(graph: bytes, images: np.ndarray, fmt: str = DEFAULT_FORMAT,
                   reduce_range: bool = False, bias_share: float = BIAS_SHARE) -> tuple[bytes, list[str]]:
    """A float32 ONNX graph -> (its static int8 QDQ form (see the module docstring), calibrated on ``images``,
    the convolutions left in float32)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        source, prepared, target = Path(tmp) / "float.onnx", Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(graph)
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)  # ONNX shape inference suffices: no sympy
        model = onnx.load(str(prepared))
        sensitivity = weight_sensitivity(model, images[:SENSITIVITY_IMAGES])
        kept = {name for name, change in sensitivity.items() if change > WEIGHT_TOLERANCE}
        for name in sorted(sensitivity, key=sensitivity.get, reverse=True)[:5]:
            log.info("  int8 weights of %s alone: %.4f%s", name, sensitivity[name], " (stays float32)" * (name in kept))
        quantize_static(
            str(prepared), str(target), Batches(model, images),
            quant_format=QuantFormat.QDQ, weight_type=quant_type(FORMATS[fmt][1]),
            activation_type=quant_type(FORMATS[fmt][0]),
            per_channel=True, reduce_range=reduce_range, calibrate_method=CalibrationMethod.MinMax,
            nodes_to_quantize=[name for name in backbone_nodes(model) if name not in kept],
            extra_options={"WeightSymmetric": True},
        )
        corrected = onnx.load(str(target))
        if bias_share:
            corrected, shifts = correct_biases(model, corrected, images, bias_share)
            if shifts:
                log.info("  bias correction: %d convolutions, measured mean |shift| %.4f (largest %.4f), %.2f of it put back",
                         len(shifts), np.mean(list(shifts.values())), max(shifts.values()), bias_share)
        return corrected.SerializeToString(), sorted(kept)


def float_graphs(model_path: Path, size: int) -> dict[str, bytes]:
    """The float32 graphs the service converts from the ``.h5`` (the branch only when it carries one)."""
    import keras

    from server.model.runtime import onnx_graph, served_branch, served_model, split_branch

    classifier, branch = split_branch(keras.models.load_model(model_path, compile=False))
    graphs = {CLASSIFIER: onnx_graph(served_model(classifier)[0], size)}
    if branch is not None:
        graphs[BRANCH] = onnx_graph(served_branch(classifier, branch), size)
    return graphs


def calibration_paths(run_dir: Path, data_dir: Path, n: int, seed: int = CALIBRATION_SEED,
                      split: str = "train") -> list[str]:
    """``n`` photos of the run's ``split`` (its ``split.csv``), drawn at random with ``seed``."""
    from training.data import split_frame

    frame = split_frame(data_dir, run_dir / "split.csv", split)
    return list(frame["path"].sample(min(n, len(frame)), random_state=seed))


def write_reference_batch(model_path: Path, graphs: dict[str, bytes], inputs: np.ndarray) -> Int8Graph:
    """The batch each host checks the int8 graphs on (``server/model/int8_check.py``): ``inputs`` with the
    float32 classifier's probabilities and the float32 branch's pooled features, beside the ``.h5``."""
    from server.imaging import scale_pixels
    from server.model.int8_check import pixels_of, write_reference

    inputs = scale_pixels(pixels_of(inputs))  # exactly what the stored uint8 pixels give back
    features = probabilities(graphs[BRANCH], inputs, output=0) if BRANCH in graphs else None
    target = model_path.with_name(int8_filename(model_path.name, REFERENCE).replace(".onnx", ".npz"))
    write_reference(target, inputs, probabilities(graphs[CLASSIFIER], inputs), features)
    return Int8Graph(file=target.name, sha256=file_sha256(target))


def quantize_run(model_path: Path, card: ModelCard, sha256: str, images: np.ndarray, fmt: str = DEFAULT_FORMAT,
                 reduce_range: bool = False, bias_share: float = BIAS_SHARE,
                 reference_inputs: np.ndarray | None = None) -> Int8Spec:
    """Write the int8 graphs beside ``model_path``, and the reference batch of ``reference_inputs``
    (default: the first calibration images); the card's ``int8`` section describing them
    (tied to ``sha256``, the ``.h5``'s; no bar measured yet)."""
    written, kept = {}, {}
    graphs = float_graphs(model_path, card.input_size)
    reference = write_reference_batch(model_path, graphs, images[:REFERENCE_IMAGES]
                                      if reference_inputs is None else reference_inputs)
    for kind, graph in graphs.items():
        target = model_path.with_name(int8_filename(model_path.name, kind))
        quantized, kept[kind] = quantize_graph(graph, images, fmt, reduce_range, bias_share)
        target.write_bytes(quantized)
        written[kind] = Int8Graph(file=target.name, sha256=file_sha256(target))
        log.info("%s: %s (%.1f MB, float32 %.1f MB)", kind, target, target.stat().st_size / 1e6, len(graph) / 1e6)
    return Int8Spec(source_sha256=sha256, classifier=written[CLASSIFIER], branch=written.get(BRANCH), reference=reference,
                    extra={"method": METHOD, "format": fmt, "activations": FORMATS[fmt][0],
                           "weights": f"{FORMATS[fmt][1]}, per channel",
                           "reduce_range": reduce_range, "calibration_images": int(len(images)),
                           "calibration_split": "train", "weight_tolerance": WEIGHT_TOLERANCE,
                           "float32_convolutions": kept,
                           "bias_correction": bias_share, "opset": OPSET, "quantized_on": cpu_flags(),
                           "reference_images": int(len(images[:REFERENCE_IMAGES] if reference_inputs is None
                                                       else reference_inputs)),
                           "reference_split": "val" if reference_inputs is not None else "train", **versions()})


@user_errors_in_one_line
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", required=True, help="a training run (or saved_models/): .h5, model_card.json, split.csv")
    p.add_argument("--data-dir", required=True, help="HAM10000 folder (../shared/data/ham10000)")
    p.add_argument("--images", type=int, default=CALIBRATION_IMAGES, help="training-split photos to calibrate on")
    p.add_argument("--seed", type=int, default=CALIBRATION_SEED)
    p.add_argument("--format", choices=sorted(FORMATS), default=DEFAULT_FORMAT,
                   help="activations and weights: u8s8 (fastest; exact with VNNI, saturates without), u8u8 "
                        "(exact everywhere, slower than float32 here), s8s8")
    p.add_argument("--reduce-range", action="store_true",
                   help="7-bit weights: another way to keep u8s8 kernels from saturating")
    p.add_argument("--bias-correction", type=float, default=BIAS_SHARE, metavar="SHARE",
                   help="share of each convolution's measured mean shift put back into its bias (0: none)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    run_dir = Path(args.run_dir)
    card_path = run_dir / CARD_FILENAME
    model_path = run_dir / (load_card(card_path).model_file or MODEL_FILENAME)
    card, sha = check_model_files(model_path, card_path)
    colour = colour_of(card.preprocessing) or COLOUR_NONE
    images = calibration_inputs(calibration_paths(run_dir, Path(args.data_dir), args.images, args.seed),
                                card.input_size, colour)
    reference = calibration_inputs(calibration_paths(run_dir, Path(args.data_dir), REFERENCE_IMAGES, args.seed, "val"),
                                   card.input_size, colour)
    spec = quantize_run(model_path, card, sha, images, args.format, args.reduce_range, args.bias_correction, reference)
    replace(card, int8=spec).write(card_path)
    print(f"int8 graphs for {model_path.name} (sha256 {sha[:12]}...) written beside it; card updated. "
          f"Measure them: python -m training.int8_bar --run-dir {run_dir} --data-dir {args.data_dir} --record")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
