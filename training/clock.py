"""What a run's timings hold for: the minutes a run folder cost, and the CPU that spent them.

A fold cut at the end of a session is finished by a later process, so that process's own
timer covers only its part of the fold. Each process adds the time it spends to the
folder's ``clock.json`` at every epoch's end; the epoch a cut interrupts is trained again by
the next process and counted there, so the sum is the time the kept work took. It is wall
time: a pause (SIGSTOP) while the process holds the fold counts as well.

A minute on an AVX2 CPU is not one on an AVX-512 VNNI CPU (about 2.4 times slower to train
here), so every timing is recorded beside ``cpu_kind()``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

CLOCK = "clock.json"


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_kind(cpuinfo: str | None = None) -> str:
    """'avx512_vnni', 'avx2' or 'unknown': fold timings and int8 figures hold for one kind of CPU."""
    flags = _cpuinfo() if cpuinfo is None else cpuinfo
    return next((kind for kind in ("avx512_vnni", "avx2") if kind in flags), "unknown")


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU's model name ('AMD EPYC', 'Intel(R) Xeon(R) ...'): machines of one kind still differ in
    speed, so a timing compared across sessions needs the machine as well as its kind."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    for line in text.splitlines():
        if line.startswith("model name") and ":" in line:
            return line.split(":", 1)[1].strip() or "unknown CPU"
    return platform.processor() or "unknown CPU"


def cpu_summary(cpuinfo: str | None = None) -> str:
    """What a printed figure was measured on: '2-core AMD EPYC (avx512_vnni)'."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    return f"{os.cpu_count()}-core {cpu_name(text)} ({cpu_kind(text)})"


class RunClock:
    """The seconds earlier processes recorded in ``out_dir``, plus this one's since it began."""

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / CLOCK
        recorded = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.before = float(recorded.get("seconds", 0.0))
        self.processes = int(recorded.get("processes", 0)) + 1
        self.started = time.perf_counter()

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.started

    def origin(self) -> float:
        """The ``time.perf_counter()`` reading from which elapsed time is the whole run's."""
        return self.started - self.before

    def minutes(self) -> float:
        return round(self.seconds() / 60, 1)

    def save(self) -> None:
        """Record the sum so far; called at each epoch's end, so a cut loses one epoch at most."""
        self.path.write_text(json.dumps({"seconds": round(self.seconds(), 1), "processes": self.processes}) + "\n")


def clock_callback(clock: RunClock):
    """A Keras callback that saves ``clock`` at each epoch's end."""
    import keras

    class SaveClock(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            clock.save()

    return SaveClock()
