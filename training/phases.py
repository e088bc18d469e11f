"""The two training phases, each resumable, and the per-epoch validation they share.

1. ``warm_up_head``: the new head is fitted on pooled features of the frozen ImageNet
   network, so that its random initial gradients never reach the pretrained layers.
   Features are computed once (no augmentation), which makes this phase cost one
   forward pass over the training split instead of full augmented epochs.
2. ``fine_tune``: the whole network trains (BatchNorm frozen) on fresh augmented views
   every epoch, AdamW with a linear warm-up then cosine decay. Each epoch writes a
   backup (``keras.callbacks.BackupAndRestore``: weights, optimizer, epoch) so a cut-off
   run continues with ``--resume``, and the weights with the best validation balanced
   accuracy so far (``best.weights.h5``). The run keeps the last epoch's weights, with
   ``--keep best`` the best epoch's, or with ``--keep swa`` the average of the last
   ``--swa-epochs`` epochs' weights (stochastic weight averaging), which a resumed run
   rebuilds from the per-epoch snapshots in ``swa/``.
"""

from __future__ import annotations

import logging
import math
import weakref
from pathlib import Path

import numpy as np

log = logging.getLogger("training")

BEST_WEIGHTS = "best.weights.h5"
HEAD_WEIGHTS = "head.weights.h5"
BACKUP_DIR = "backup"
HISTORY = "history.csv"
SWA_DIR = "swa"
_INFERENCE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> {scale: tf.function}


def inference_function(model, scale: bool):
    """``model``'s inference as a ``tf.function`` made once per model and input kind.

    A new one at every call traced the whole graph again each time: nine times a run (every
    epoch's validation, logit adjustment, phase 3), each as long as a forward pass over the
    validation split in a smoke run. It holds the model weakly, so a dropped model is freed.
    """
    import tensorflow as tf

    from training.augment import to_model_range

    functions = _INFERENCE.setdefault(model, {})
    if scale not in functions:
        held = weakref.ref(model)

        def call(t):
            return held()(to_model_range(t) if scale else t, training=False)

        functions[scale] = tf.function(call, reduce_retracing=True)
    return functions[scale]


def batched_predict(model, x: np.ndarray, batch_size: int = 64, scale: bool = False) -> np.ndarray:
    """``model(x)`` in inference mode, batch by batch.

    With ``scale`` the input is uint8 RGB and each batch is scaled to [-1, 1] on the way
    in, so a whole split never has to exist as float32 (7,152 images at 192 px: 3 GB).
    """
    import tensorflow as tf

    fn = inference_function(model, scale)
    return np.concatenate([fn(tf.convert_to_tensor(x[i:i + batch_size], tf.uint8 if scale else tf.float32)).numpy()
                           for i in range(0, len(x), batch_size)])


def validation_callback(predict_fn, x_val, y_val, optimizer=None, prior=None):
    """Adds ``val_balanced_accuracy`` (and the learning rate) to each epoch's logs.

    With ``prior`` it also logs what post-hoc logit adjustment would make of the epoch
    (``val_balanced_accuracy_adjusted`` at the best ``val_tau``), so that the curve shows
    the figure the exported model is judged by. It must come before any callback that
    reads those keys (checkpoint, CSV logger).
    """
    import keras
    from sklearn.metrics import balanced_accuracy_score

    from training.posthoc import choose_tau

    import time

    class ValBalancedAccuracy(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = getattr(self, "started", None) or time.perf_counter()
            self.first_epoch = getattr(self, "first_epoch", epoch)

        def on_epoch_end(self, epoch, logs=None):
            logs = logs if logs is not None else {}
            probs = predict_fn(x_val)
            logs["val_balanced_accuracy"] = float(balanced_accuracy_score(y_val, probs.argmax(1)))
            if prior is not None:
                tau, scores = choose_tau(probs, y_val, prior)
                logs["val_tau"], logs["val_balanced_accuracy_adjusted"] = tau, scores[tau]
            if optimizer is not None:
                logs["learning_rate"] = float(optimizer.learning_rate)
            log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k}={v:.4g}" for k, v in sorted(logs.items())))
            log.info("progress: epoch %d of %d, %s", epoch + 1, self.params["epochs"],
                     eta_text(time.perf_counter() - self.started, epoch + 1 - self.first_epoch,
                              self.params["epochs"] - epoch - 1))

    return ValBalancedAccuracy()


def eta_text(elapsed_s: float, epochs_run: int, epochs_left: int) -> str:
    """'142 s an epoch, about 38 min left in this phase': the pace of this session's epochs."""
    per_epoch = elapsed_s / max(1, epochs_run)
    return f"{per_epoch:.0f} s an epoch, about {per_epoch * epochs_left / 60:.0f} min left in this phase"


def warm_up_head(model, pooled_train, y_train, class_weight_per_class, pooled_val, y_val, *, epochs: int, lr: float,
                 loss, num_classes: int, out_dir: Path, resume: bool) -> None:
    """Phase 1: fit the head on pooled features; the best epoch on validation is kept."""
    import keras

    from training.model import head_model

    path = Path(out_dir) / HEAD_WEIGHTS
    head = head_model(model)
    if resume and path.is_file():
        head.load_weights(path)
        log.info("phase 1: reusing %s", path)
        return
    head.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, metrics=["accuracy"])
    eye = np.eye(num_classes, dtype=np.float32)
    head.fit(pooled_train, eye[y_train], sample_weight=class_weight_per_class[y_train], batch_size=64,
             epochs=epochs, verbose=2,
             callbacks=[validation_callback(lambda v: batched_predict(head, v, 256), pooled_val, y_val),
                        keras.callbacks.EarlyStopping("val_balanced_accuracy", mode="max", patience=max(2, epochs // 3),
                                                      restore_best_weights=True),
                        keras.callbacks.CSVLogger(Path(out_dir) / "history_phase1.csv")])
    head.save_weights(path)


def best_so_far(history_csv: Path) -> float | None:
    """The best validation balanced accuracy a cut-off run already reached, to resume from."""
    import pandas as pd

    if not history_csv.is_file() or history_csv.stat().st_size == 0:
        return None
    hist = pd.read_csv(history_csv)
    return float(hist["val_balanced_accuracy"].max()) if "val_balanced_accuracy" in hist and len(hist) else None


def cosine_with_warmup(peak_lr: float, steps_per_epoch: int, epochs: int, warmup_epochs: float,
                       flat_epochs: int = 0, floor_lr: float = 0.0):
    """Linear warm-up from 0 to ``peak_lr``, cosine decay to ``floor_lr``, then ``flat_epochs`` at ``floor_lr``.

    Weight averaging needs the last epochs to keep moving: on a schedule that decays to 0
    their weights would be nearly one point, and their average no better than the last.
    """
    import keras

    total = max(1, steps_per_epoch * (epochs - flat_epochs))
    warmup = min(total - 1, int(steps_per_epoch * warmup_epochs))
    return keras.optimizers.schedules.CosineDecay(0.0, max(1, total - warmup), alpha=floor_lr / peak_lr if peak_lr else 0.0,
                                                  warmup_target=peak_lr, warmup_steps=warmup)


def swa_snapshot_callback(model, out_dir: Path, first_epoch: int):
    """Saves the weights at the end of every epoch from ``first_epoch`` (1-based) into ``swa/``.

    One file per epoch rather than a running sum, so that an epoch re-run after a cut
    overwrites its own snapshot instead of being counted twice.
    """
    import keras

    folder = Path(out_dir) / SWA_DIR

    class SwaSnapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 >= first_epoch:
                folder.mkdir(exist_ok=True)
                model.save_weights(folder / f"epoch_{epoch + 1:03d}.weights.h5")

    return SwaSnapshot()


def swa_snapshots(out_dir: Path, first_epoch: int, last_epoch: int) -> list[Path]:
    """The snapshot files of epochs ``first_epoch``..``last_epoch`` that exist, in order."""
    folder = Path(out_dir) / SWA_DIR
    return [p for e in range(first_epoch, last_epoch + 1) if (p := folder / f"epoch_{e:03d}.weights.h5").is_file()]


def load_weight_average(model, paths: list[Path]) -> None:
    """Sets ``model``'s weights to the mean of the weight files ``paths`` (all of one architecture)."""
    total = None
    for path in paths:
        model.load_weights(path)
        weights = model.get_weights()
        total = [w.astype(np.float64) for w in weights] if total is None else [t + w for t, w in zip(total, weights)]
    model.set_weights([(t / len(paths)).astype(w.dtype) for t, w in zip(total, model.get_weights())])


def fine_tune(model, make_dataset, n_train: int, x_val, y_val, *, batch_size: int, epochs: int, lr: float,
              warmup_epochs: float, weight_decay: float, ema_momentum: float, loss, out_dir: Path,
              resume: bool, keep: str = "last", prior=None, swa_epochs: int = 0, swa_lr: float = 0.0,
              metrics=("accuracy",), extra_callbacks=()) -> dict:
    """Phase 2: the whole network (BatchNorm frozen); ends holding the weights ``keep`` names.

    ``keep="last"``: the weights at the end of the cosine schedule. ``keep="best"``: the
    epoch with the best raw validation balanced accuracy (``best.weights.h5``, written
    either way). On a validation split this small the best epoch is often a spike while
    the learning rate is still high, and it then leaves less for logit adjustment to gain
    than the settled last epoch: in the 2026.11.23 run, 0.729 against 0.782 after adjustment.
    ``keep="swa"``: the mean of the weights after each of the last ``swa_epochs`` epochs,
    which the schedule holds at ``swa_lr`` so that they differ.

    Returns what the kept weights were chosen from: raw validation balanced accuracy of
    the last epoch and, with weight averaging, of the average (a paired comparison on the
    same run, for the ablation table).

    ``make_dataset(first_draw)`` returns the endless training stream whose augmentation
    seeds start at ``first_draw``, so a resumed run draws new views rather than replaying
    the first epochs' ones.
    """
    import keras
    from sklearn.metrics import balanced_accuracy_score

    from training.model import set_trainable_from

    out_dir = Path(out_dir)
    backup, best_path, history = out_dir / BACKUP_DIR, out_dir / BEST_WEIGHTS, out_dir / HISTORY
    if not resume:
        for stale in (best_path, history):
            stale.unlink(missing_ok=True)
        import shutil

        for folder in (backup, out_dir / SWA_DIR):
            if folder.exists():
                shutil.rmtree(folder)
    set_trainable_from(model, model.layers[1].name)
    steps = math.ceil(n_train / batch_size)
    use_ema = ema_momentum > 0
    swa_epochs = swa_epochs if keep == "swa" else 0
    schedule = cosine_with_warmup(lr, steps, epochs, warmup_epochs, flat_epochs=swa_epochs, floor_lr=swa_lr)
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=weight_decay,
                                       use_ema=use_ema, ema_momentum=ema_momentum if use_ema else 0.99)
    model.compile(optimizer=optimizer, loss=loss, metrics=list(metrics), jit_compile=False)
    done = epochs_done(out_dir) if resume else 0
    best = best_so_far(history) if resume else None
    # SwapEMAWeights goes first, so that scoring and the best-epoch snapshot see the average.
    ema = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if use_ema else []
    first_swa = epochs - swa_epochs + 1
    swa = [swa_snapshot_callback(model, out_dir, first_swa)] if swa_epochs else []
    # The snapshot is written before the backup: a cut between the two re-runs the epoch and overwrites it.
    callbacks = [
        *swa,
        keras.callbacks.BackupAndRestore(str(backup), save_freq="epoch", delete_checkpoint=False),
        *ema,
        validation_callback(lambda v: batched_predict(model, v), x_val, y_val, optimizer, prior),
        keras.callbacks.ModelCheckpoint(str(best_path), monitor="val_balanced_accuracy", mode="max",
                                        save_best_only=True, save_weights_only=True, initial_value_threshold=best),
        keras.callbacks.CSVLogger(str(history), append=resume),
        *extra_callbacks,
    ]
    if done:
        log.info("phase 2: resuming after epoch %d (best validation balanced accuracy so far %.4f)", done, best or 0)
    model.fit(make_dataset(done * steps * batch_size), steps_per_epoch=steps, epochs=epochs, verbose=2,
              callbacks=callbacks)

    def score() -> float:
        return round(float(balanced_accuracy_score(y_val, batched_predict(model, x_val).argmax(1))), 4)

    record = {"kept": keep, "val_balanced_accuracy_last_epoch": score()}
    if keep == "best" and best_path.is_file():
        model.load_weights(best_path)
    if swa_epochs:
        snapshots = swa_snapshots(out_dir, first_swa, epochs)
        load_weight_average(model, snapshots)
        record |= {"swa_epochs": [int(p.name[6:9]) for p in snapshots], "swa_lr": swa_lr,
                   "val_balanced_accuracy_swa": score()}
        log.info("phase 2: kept the average of epochs %s (raw validation balanced accuracy %.4f; last epoch %.4f)",
                 record["swa_epochs"], record["val_balanced_accuracy_swa"], record["val_balanced_accuracy_last_epoch"])
    return record


class CutRunInTheWay(ValueError):
    """A new run would delete the epochs of a cut-off one in the same folder."""


def refuse_to_restart(out_dir: Path, resume: bool) -> None:
    """A command run again without ``--resume`` after a cut would start over and delete hours of epochs."""
    from server.model.card import CARD_FILENAME

    out_dir = Path(out_dir)
    if not resume and (out_dir / HEAD_WEIGHTS).is_file() and not (out_dir / CARD_FILENAME).is_file():
        raise CutRunInTheWay(f"{out_dir} holds a run cut off after {epochs_done(out_dir)} fine-tuning epochs: continue "
                             "it with --resume (make train does), or train in another --out-dir to start again")


def epochs_done(out_dir: Path) -> int:
    """How many fine-tuning epochs a run folder's ``history.csv`` records."""
    history_csv = Path(out_dir) / HISTORY
    if not history_csv.is_file():
        return 0
    return sum(1 for line in history_csv.read_text().splitlines()[1:] if line.strip())
