"""Training under MultiWorkerMirroredStrategy: two CPU workers on loopback ports, each its own process (#17).

Each worker runs the same ``python -m training.train`` command with its own ``TF_CONFIG``
(TensorFlow's multi-worker recipe). The test shows that both take part (each logs two
replicas in sync, every epoch, and the same weights fingerprint after training: gradients
were summed over both), that only the chief writes the run folder, and that the exported
model has the same shape and card fields as a single-worker run of the same command. That
run goes on meanwhile in the test's own process, which has imported TensorFlow already; all
three train MobileNetV2 cut to 3 blocks, like the trainer's other tests. ``-s`` prints both
workers' logs.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_training import TINY_CLI, make_dataset

ROOT = Path(__file__).resolve().parent.parent
# No learning-rate warm-up and a brisk head rate, so the weights really move in so short a run.
SMOKE = [*TINY_CLI, "--head-epochs", "2", "--epochs", "1", "--no-test", "--warmup-epochs", "0", "--head-lr", "0.01"]
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d INFO ")
RUN_SECONDS = 400


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def train_args(data_dir: Path, out_dir: Path) -> list[str]:
    return ["--data-dir", str(data_dir), "--out-dir", str(out_dir), *SMOKE]


def train_command(data_dir: Path, out_dir: Path) -> list[str]:
    return [sys.executable, "-m", "training.train", *train_args(data_dir, out_dir)]


def worker_env(tf_config: dict) -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "",
            "TF_CONFIG": json.dumps(tf_config)}


def log_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if LOG_LINE.match(line)]


def card_shape(out_dir: Path) -> tuple[dict, list]:
    """The card's field names (two levels deep) and the exported model's weight shapes."""
    import keras

    card = json.loads((out_dir / "model_card.json").read_text())
    fields = {k: sorted(v) if isinstance(v, dict) else type(v).__name__ for k, v in card.items()}
    model = keras.models.load_model(out_dir / "ham10000_mobilenetv2.h5", compile=False)
    return fields | {"input_size": card["input_size"], "classes": card["classes"]}, [
        tuple(model.input.shape), tuple(model.output.shape), [w.shape for w in model.get_weights()]]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ham"))


@pytest.mark.slow
def test_two_workers_train_as_one_and_export_what_one_worker_does(dataset, tmp_path, monkeypatch):
    from training.train import main

    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    out = tmp_path / "two_workers"
    procs = []
    for index in range(2):
        log = open(tmp_path / f"worker{index}.log", "w")
        procs.append((subprocess.Popen(train_command(dataset, out), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                       env=worker_env({"cluster": cluster, "task": {"type": "worker", "index": index}})),
                      log))
    # The same command on one worker, for comparison: in this process, which has imported
    # TensorFlow already, while the two workers import theirs and train.
    single = tmp_path / "one_worker"
    monkeypatch.delenv("TF_CONFIG", raising=False)
    try:
        single_code = main(train_args(dataset, single))
        codes = [proc.wait(timeout=RUN_SECONDS) for proc, _ in procs]
    finally:  # one failed worker leaves the other waiting on its peer forever: never leave it running
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], "\n\n".join(text[-3000:] for text in logs)
    lines = [log_lines(text) for text in logs]
    print("\n== two-worker training: worker 0 (chief) ==\n" + "\n".join(line[:200] for line in lines[0]))
    print("== worker 1 ==\n" + "\n".join(line[:200] for line in lines[1]))

    # Both take part: two replicas in sync, every epoch on both, the same weights at the end.
    assert "worker 0 of 2 workers (chief, writes the run folder), 2 replicas in sync" in logs[0]
    assert "worker 1 of 2 workers (writes to a temporary folder), 2 replicas in sync" in logs[1]
    epochs = [[line.split(" INFO ")[1].split(":")[0] for line in worker if " INFO epoch " in line] for worker in lines]
    assert epochs[0] == epochs[1] == ["epoch 1", "epoch 2", "epoch 1"]  # two head epochs, one fine-tuning epoch
    losses = [re.findall(r"INFO epoch \d: .*?loss=([\d.]+)", text) for text in logs]
    assert losses[0] == losses[1] and len(set(losses[0])) > 1, losses  # the same (all-reduced) losses, and they moved
    prints = [re.search(r"weights fingerprint (\w+)", text).group(1) for text in logs]
    assert prints[0] == prints[1], prints  # trained on different shards, yet the same weights: gradients were summed

    # Only the chief wrote the run folder; the other worker's temporary folder is gone.
    worker_dir = Path(re.search(r'"out_dir": "([^"]+)"', logs[1]).group(1))
    assert worker_dir != out and not worker_dir.exists()
    assert (out / "ham10000_mobilenetv2.h5").is_file() and (out / "model_card.json").is_file()

    # The same command on one worker exports a model of the same shape with the same card fields.
    assert single_code == 0
    assert "one worker" in (single / "train.log").read_text()
    two_card, two_shapes = card_shape(out)
    one_card, one_shapes = card_shape(single)
    assert two_card == one_card
    assert two_shapes == one_shapes
    print(f"== one worker for comparison: same card fields ({len(one_card)}) and weight shapes "
          f"({len(one_shapes[2])} arrays, input {one_shapes[0]}, output {one_shapes[1]})")


def test_tf_config_of_one_task_is_one_machine_and_a_bad_one_is_refused():
    from training.strategy import ClusterConfigError, cluster_config

    assert cluster_config({}) is None
    assert cluster_config({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}})}) is None
    two = {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}
    assert cluster_config({"TF_CONFIG": json.dumps(two)}) == two
    with pytest.raises(ClusterConfigError):
        cluster_config({"TF_CONFIG": json.dumps({**two, "task": {"type": "worker", "index": 2}})})
    with pytest.raises(ClusterConfigError):
        cluster_config({"TF_CONFIG": "{not json"})
