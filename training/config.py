"""The trainer's settings: ``TrainConfig``, the CLI that fills it (every field an option), and a run folder's record of them."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

from server.imaging import COLOUR_NONE, COLOURS

IMBALANCE_CHOICES = ("class_weight", "sqrt", "sampling", "none")
LOSS_CHOICES = ("crossentropy", "focal")


@dataclass
class TrainConfig:
    data_dir: str
    out_dir: str = "runs/latest"
    weights: str = "imagenet"
    # The ImageNet classifier exported beside the model for the non-skin check ('' for none):
    # 'imagenet' (Keras downloads it and its class names) or a with-top .h5 and a labels file.
    imagenet_weights: str = ""
    imagenet_labels: str = ""
    seed: int = 42
    input_size: int = 192  # 74 img/s training here, as fast as 160 and twice 224's rate
    store_size: int = 224  # training images are held at this size; random crops are resized to input_size
    alpha: float = 1.0
    backbone_blocks: int = 0  # 0: all of MobileNetV2's 17 blocks; fewer only for smoke runs and tests
    dense_units: int = 256
    dropout: float = 0.3
    batch_size: int = 32
    head_epochs: int = 10
    head_lr: float = 1e-3
    epochs: int = 20  # about 140 s each here: the whole run stays inside 60 minutes
    swa_epochs: int = 8  # with keep="swa": the last 8 epochs, held at swa_lr, are averaged
    swa_lr: float = 2e-5
    warmup_epochs: float = 1.0
    lr: float = 1e-4
    weight_decay: float = 1e-4
    min_crop_area: float = 0.45
    down_up_prob: float = 0.4
    colour_cast: float = 0.0  # per-channel gain in [1 - c, 1 + c]: other dermatoscopes' white balance
    vignette_prob: float = 0.0  # share of views with the dark round corners of a dermatoscope's field
    imbalance: str = "sqrt"
    loss: str = "crossentropy"
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0
    ema_momentum: float = 0.0
    logit_adjustment: bool = True
    colour: str = COLOUR_NONE  # training.ablate_colour: Shades of Gray did not win on validation
    patient_context: bool = True  # phase 3 (training.patient_context)
    context_sites: str = "ham10000"  # phase 3's site encoding: HAM10000's 14 sites, or ISIC's general groups
    distill_teacher: str = ""  # a teacher.npz (training.teacher): train as the fold ensemble's student
    distill_alpha: float = 0.5
    distill_temperature: float = 2.0
    keep: str = "last"  # the end of the schedule; "swa": the mean of the last swa_epochs' weights; "best"
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    limit_per_class: int = 0
    smoke: bool = False
    name: str = "ham10000-mobilenetv2"
    version: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y.%m.%d"))


# The range each number must lie in. Outside it a run crashes, or trains for hours to no purpose
# (a negative epoch count, a dropout of 1), so the command line refuses it before any data loads.
RANGES = {
    **dict.fromkeys(("epochs", "head_epochs", "swa_epochs", "limit_per_class", "backbone_blocks", "warmup_epochs",
                     "weight_decay", "swa_lr", "focal_gamma"), (lambda v: v >= 0, "at least 0")),
    **dict.fromkeys(("batch_size", "dense_units"), (lambda v: v >= 1, "at least 1")),
    **dict.fromkeys(("lr", "head_lr", "alpha", "distill_temperature"), (lambda v: v > 0, "above 0")),
    **dict.fromkeys(("dropout", "label_smoothing", "ema_momentum"), (lambda v: 0 <= v < 1, "in [0, 1)")),
    **dict.fromkeys(("down_up_prob", "vignette_prob", "colour_cast", "distill_alpha"),
                    (lambda v: 0 <= v <= 1, "in [0, 1]")),
    **dict.fromkeys(("val_fraction", "test_fraction"), (lambda v: 0 < v < 0.5, "in (0, 0.5)")),
    "min_crop_area": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "input_size": (lambda v: v >= 32, "at least 32"),
}


def out_of_range(cfg: TrainConfig) -> list[str]:
    """``--option must be ...`` for each setting outside its range (``RANGES``)."""
    return [f"--{name.replace('_', '-')} must be {text} (got {getattr(cfg, name)})"
            for name, (ok, text) in RANGES.items() if not ok(getattr(cfg, name))]


SMOKE_OVERRIDES = dict(input_size=64, store_size=72, alpha=0.35, dense_units=32, head_epochs=2, epochs=1,
                       batch_size=16, limit_per_class=40)
KEEP_CHOICES = ("last", "best", "swa")
CONTEXT_SITES = ("ham10000", "general")
CHOICES = {"imbalance": IMBALANCE_CHOICES, "loss": LOSS_CHOICES, "keep": KEEP_CHOICES, "colour": COLOURS,
           "context_sites": CONTEXT_SITES}
HELP = {
    "imbalance": "class_weight: balanced weights n/(k n_c); sqrt: their square root; sampling: every class drawn "
                 "equally often; none",
    "logit_adjustment": "subtract tau*log(prior) from the logits, tau chosen on validation (0 or 1)",
    "store_size": "side at which training images are held in memory (>= input size)",
    "min_crop_area": "smallest random crop, as a share of the stored image",
    "backbone_blocks": "keep only MobileNetV2's first N inverted-residual blocks (of 17; 0: all): the whole "
                       "pipeline in seconds for a smoke run or a test, never a model to ship",
    "colour": "colour constancy applied to every image, in training and in the service (recorded in the card)",
    "patient_context": "phase 3: train a head that also reads age, sex and site, and ship it if validation says it helps",
    "context_sites": "phase 3 learns the site as HAM10000's 14 sites, or as ISIC's general groups (each site read "
                     "as its group's mix: fewer of one clinic's recording habits); the served input is the same",
    "keep": "which fine-tuned weights to export: the average of the last --swa-epochs epochs' (swa), the last "
            "epoch's, or the best raw validation epoch's",
    "distill_teacher": "a teacher.npz of soft targets (python -m training.teacher): the loss blends the label's "
                       "cross-entropy with the KL divergence to the fold ensemble at a temperature",
    "distill_alpha": "the soft targets' share of the distillation loss (0: labels only, 1: teacher only)",
    "distill_temperature": "the temperature both the teacher's and the student's outputs are softened at",
    "swa_epochs": "with --keep swa: how many final epochs, held at --swa-lr, are averaged",
    "colour_cast": "random per-channel gain, as other cameras' white balance gives (0 for none)",
    "vignette_prob": "share of training views given the dark round corners of a dermatoscope's field",
    "imagenet_weights": "ImageNet MobileNetV2 with its classifier, exported in the same .h5 for the non-skin check: "
                        "'imagenet' (download) or a with-top .h5; empty for none",
    "imagenet_labels": "the 1000 ImageNet class names, one a line ('imagenet': Keras's class index, downloaded)",
}


DESCRIPTION = "Train the HAM10000 MobileNetV2 screening model."


def build_parser(parents=(), description: str = DESCRIPTION) -> argparse.ArgumentParser:
    """Every ``TrainConfig`` field as an option; choices are checked before any data loads.

    ``parents`` are a command's own options (the fold chain's ``--fold``...), so that its ``--help`` lists them too."""
    d = TrainConfig(data_dir="")
    p = argparse.ArgumentParser(description=description, parents=list(parents))
    p.add_argument("--data-dir", required=True,
                   help="HAM10000 layout: HAM10000_metadata.csv (or images.csv) + images/; columns image_id, lesion_id, "
                        "dx, and optionally file, age, sex, localization (README 'Your own photos')")
    p.add_argument("--out-dir", default=d.out_dir)
    p.add_argument("--weights", default=d.weights,
                   help="'imagenet' (Keras download), a path to a no-top MobileNetV2 .h5, or 'none'")
    p.add_argument("--smoke", action="store_true",
                   help="a quick end-to-end run: 64 px, 1-2 epochs, at most 40 images a class "
                        "(alpha 0.35 with --weights none, else the weights' alpha 1.0)")
    p.add_argument("--resume", action="store_true", help="continue a cut-off run in --out-dir from its last epoch")
    p.add_argument("--no-test", action="store_true",
                   help="ablation run: export and score validation only; never touch the test split")
    for f in fields(TrainConfig):
        if f.name in ("data_dir", "out_dir", "weights", "smoke"):
            continue
        default = getattr(d, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            p.add_argument(flag, type=_parse_bool, default=None, metavar="0|1", help=HELP.get(f.name, f"default {int(default)}"))
            continue
        p.add_argument(flag, type=type(default), default=None, choices=CHOICES.get(f.name),
                       help=f"{HELP.get(f.name, '')} (default {default})".strip())
    return p


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected 0 or 1, got {text!r}")


def parse_args(argv=None, parents=(), description: str | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    """The recipe, and the run's flags: ``--resume``, ``--no-test`` and every option of ``parents``."""
    p = build_parser(parents, description or DESCRIPTION)
    args = vars(p.parse_args(argv))
    own = [k for parent in parents for k in vars(parent.parse_known_args([])[0])]
    flags = argparse.Namespace(resume=args.pop("resume"), no_test=args.pop("no_test"), **{k: args.pop(k) for k in own})
    cfg = TrainConfig(data_dir=args.pop("data_dir"), out_dir=args.pop("out_dir"), weights=args.pop("weights"),
                      smoke=args.pop("smoke"))
    if cfg.smoke:
        for k, v in SMOKE_OVERRIDES.items():
            setattr(cfg, k, v)
        if cfg.weights not in (None, "", "none", "None"):
            cfg.alpha = 1.0  # pretrained no-top weights exist per alpha; the ones people have are alpha 1.0
    for k, v in args.items():
        if v is not None:
            setattr(cfg, k, v)
    cfg.store_size = max(cfg.store_size, cfg.input_size)
    if problems := out_of_range(cfg):
        p.error("; ".join(problems))
    if cfg.keep == "swa" and not 0 < cfg.swa_epochs <= cfg.epochs:
        cfg.swa_epochs = min(max(cfg.swa_epochs, 1), cfg.epochs)
    return cfg, flags


RECIPE_FILE = "recipe.json"
# Paths and labels: the same recipe names them differently on another machine or another day.
NOT_RECIPE = ("data_dir", "out_dir", "weights", "imagenet_weights", "imagenet_labels", "distill_teacher", "name",
              "version")


class RecipeChanged(ValueError):
    """A resumed run's command names other settings than the ones its folder was started with."""


def recipe_of(cfg: TrainConfig) -> dict:
    """The settings that decide what a run trains (every ``TrainConfig`` field but paths and labels)."""
    return {k: v for k, v in asdict(cfg).items() if k not in NOT_RECIPE}


def settle_recipe(cfg: TrainConfig, run_dir: Path, resume: bool) -> None:
    """Record the recipe a run folder trains, or hold a resumed run's command to it (RecipeChanged).

    A cut-off run resumed with a setting left out (a lever's ``--input-size 224``) would finish its
    epochs under another recipe, and its figures would be taken for the recipe it started with.
    A setting the folder's record lacks (a field added since) is not held against it.
    """
    path = Path(run_dir) / RECIPE_FILE
    recipe = recipe_of(cfg)
    if resume and path.is_file():
        started = json.loads(path.read_text())
        changed = {k: (started[k], v) for k, v in recipe.items() if k in started and started[k] != v}
        if changed:
            words = ", ".join(f"--{k.replace('_', '-')} {old} (this command: {new})" for k, (old, new) in changed.items())
            raise RecipeChanged(f"{run_dir} was started with {words}; resume it with the same settings, "
                                f"or train in a new --out-dir")
        return
    path.write_text(json.dumps(recipe, indent=2) + "\n")
