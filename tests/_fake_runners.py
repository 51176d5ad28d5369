"""Runners that need no runtime, for the harness's structure tests (no timing is asserted)."""

from __future__ import annotations

import numpy as np

from gdws_export.runtimes.base import Runner, TensorSpec


class RecordingRunner(Runner):
    """A 'classifier' returning zero logits, recording what the benchmark asks of it.

    Args:
        name: written into `log` entries.
        log: a list shared between runners: (name, method, batch, iterations) per timing call.
        input_shape: the input's shape, None or a string for a dynamic axis.
    """

    name = "fake"

    def __init__(self, label: str, log: list, input_shape=("batch", 1, 28, 28)) -> None:
        self.label, self.log, self.input_shape = label, log, tuple(input_shape)
        self.active = False

    def activate(self) -> None:
        self.active = True

    def deactivate(self) -> None:
        self.active = False

    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec("input", self.input_shape, np.dtype(np.float32))]

    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec("logits", (self.input_shape[0], 10), np.dtype(np.float32))]

    def infer(self, feed):
        assert self.active, "infer before activate"
        return {"logits": np.zeros((len(feed["input"]), 10), dtype=np.float32)}

    def time_latency(self, feed, *, iterations=100, warmup=10):
        self.log.append((self.label, "latency", len(feed["input"]), iterations))
        return super().time_latency(feed, iterations=iterations, warmup=warmup)


class DeviceRunner(RecordingRunner):
    """Like a TensorRT runner: compute time measured apart from host latency."""

    name = "device"
    times_device_separately = True

    def time_compute(self, feed, *, iterations=100, warmup=10):
        self.log.append((self.label, "compute", len(feed["input"]), iterations))
        return [0.5] * iterations
