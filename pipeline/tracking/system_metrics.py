"""What the machine did during the run: MLflow's system metrics, logged through the run's own tracker.

MLflow's `SystemMetricsMonitor` samples CPU, memory, disk, network and, where present,
NVIDIA or AMD GPUs, but logs through a client of its own and only after each full
interval, so a run shorter than the interval gets nothing. Here its monitors are sampled
every `interval` seconds on a thread of their own, once more when the run ends, and each
sample goes through the tracker as `system/*` metrics, journaled like every other metric.
"""

import threading
from typing import Optional

from pipeline.tracking.journal import read_metrics
from pipeline.tracking.tracker import Tracker

PREFIX = "system/"


def monitors() -> list:
    """MLflow's monitors as its `SystemMetricsMonitor` picks them (CPU, disk, network, and an NVIDIA
    or else an AMD GPU if one answers), without the tracking client that it would open."""
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
    from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
    from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor
    from mlflow.system_metrics.metrics.rocm_monitor import ROCMMonitor

    found = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
    for gpu in (GPUMonitor, ROCMMonitor):
        try:
            return [*found, gpu()]
        except Exception:  # no such GPU, or no driver for it
            continue
    return found


class SystemMetrics:
    """A context manager: sample while inside it."""

    def __init__(self, tracker: Tracker, interval: float):
        self.tracker, self.interval = tracker, interval
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._monitors = []
        # A resumed run continues the steps of the sessions before.
        steps = [max(values) for name, values in read_metrics(tracker.journal.path).items() if name.startswith(PREFIX)]
        self._step = max(steps) + 1 if steps else 0

    def __enter__(self) -> "SystemMetrics":
        self._monitors = monitors()
        self._sample()  # CPU utilisation is measured since the previous call: this one starts the clock
        self._clear()
        self._thread = threading.Thread(target=self._loop, name="system-metrics", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self._publish()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()
            self._publish()

    def _sample(self) -> None:
        for monitor in self._monitors:
            monitor.collect_metrics()

    def _clear(self) -> None:
        for monitor in self._monitors:
            monitor.clear_metrics()

    def _publish(self) -> None:
        metrics = {}
        for monitor in self._monitors:
            metrics.update(monitor.aggregate_metrics())
        self._clear()
        if metrics:
            self.tracker.log_metrics({PREFIX + name: value for name, value in metrics.items()}, step=self._step)
            self._step += 1
