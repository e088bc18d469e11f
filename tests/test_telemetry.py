"""ONNX Runtime's local telemetry is off (#38): no event database under the user's cache.

onnxruntime 1.29+ on Linux queues telemetry events (a device id, the Python path, the
graph's name, performance figures) in ``$XDG_CACHE_HOME/Microsoft/DeveloperTools/.onnxruntime/``
as soon as it starts. A medical service must not keep such a file, so importing ``server``
sets ONNX Runtime's documented switch, ``ORT_DISABLE_TELEMETRY=1``, unless the operator set it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TELEMETRY_DIR = Path("Microsoft") / "DeveloperTools" / ".onnxruntime"

# What a worker does: import the service, then serve a graph with ONNX Runtime (server.model.runtime).
SERVE_A_GRAPH = """
import numpy as np
from onnx import TensorProto, helper
import server
from server.model.runtime import onnx_session_runner

graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
run = onnx_session_runner(model.SerializeToString())
print(float(run(np.ones(1, np.float32))[0]))
"""


# ONNX Runtime writes no telemetry where CI is set, so the workers' environment is made without it: with it,
# the first test would pass whatever the service did, and the second could not.
NOT_IN_A_WORKER = ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME", "CI")


def serve_a_graph(home: Path, **extra) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in NOT_IN_A_WORKER}
    env.update({"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), **extra})
    return subprocess.run([sys.executable, "-c", SERVE_A_GRAPH], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_serving_a_graph_writes_no_telemetry_database(tmp_path):
    result = serve_a_graph(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "1.0"  # the graph really ran
    assert not (tmp_path / ".cache" / TELEMETRY_DIR).exists(), sorted(p.name for p in tmp_path.rglob("*"))


def test_an_operator_can_still_turn_it_on(tmp_path):
    """The switch is ONNX Runtime's own: an explicit ORT_DISABLE_TELEMETRY=0 wins (and shows the check can fail)."""
    result = serve_a_graph(tmp_path, ORT_DISABLE_TELEMETRY="0")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / ".cache" / TELEMETRY_DIR / "onnxruntime.db").is_file()
