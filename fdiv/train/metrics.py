"""What a user sees during a run: progress lines, ``metrics.jsonl``, TensorBoard, ``summary.json``.

`MetricWriter(workdir, num_steps)` writes, on process 0 only:

- one progress line per `write` call (flushed), e.g.
  ``step   200/1000 | loss 0.3121 acc 0.912 | 48.3 steps/s | ETA 0:00:17``;
- one JSON object per call appended to ``<workdir>/metrics.jsonl``
  (``{"step": 200, "loss": 0.3121, ..., "steps_per_sec": 48.3, "wall_time": 4.1}``);
- TensorBoard scalars under ``<workdir>/tensorboard`` when `tensorboard` (through
  ``torch.utils.tensorboard`` or ``tensorboardX``) is importable; silently nothing otherwise.

`write_summary(workdir, summary)` writes ``<workdir>/summary.json``; `read_metrics(workdir)`
reads ``metrics.jsonl`` back as a list of dicts. `MeanAccumulator` averages per-step device
metrics over a log interval without forcing a device sync every step.
"""

from __future__ import annotations

import datetime
import json
import math
import os
from typing import Any, Iterable, Mapping

import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
# Keys written by the writer itself; excluded when comparing metrics between runs.
TIMING_KEYS = ("steps_per_sec", "wall_time", "eta_sec")


def _tensorboard_writer(logdir: str) -> Any:
    """A SummaryWriter-like object with add_scalar/flush/close, or None when unavailable."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # type: ignore
    except Exception:
        try:
            from tensorboardX import SummaryWriter  # type: ignore
        except Exception:
            return None
    return SummaryWriter(logdir)


def _to_float(v: Any) -> float:
    return float(np.asarray(v, dtype=np.float64))


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return str(v)
    a = abs(v)
    return f"{v:.4g}" if (a == 0 or 1e-3 <= a < 1e5) else f"{v:.3e}"


def format_eta(seconds: float) -> str:
    """``H:MM:SS`` for a finite non-negative number of seconds, ``?`` otherwise."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    return str(datetime.timedelta(seconds=int(round(seconds))))


class MeanAccumulator:
    """Averages dicts of scalar metrics (device arrays are fetched only in `result`)."""

    def __init__(self):
        self._items: list[Mapping[str, Any]] = []

    def add(self, metrics: Mapping[str, Any]) -> None:
        if metrics:
            self._items.append(metrics)

    def __len__(self) -> int:
        return len(self._items)

    def result(self) -> dict[str, float]:
        """Per-key means over the added dicts (keys missing in some dicts average over the rest); resets."""
        host = jax.device_get(self._items)
        self._items = []
        sums: dict[str, list[float]] = {}
        for m in host:
            for k, v in m.items():
                sums.setdefault(k, []).append(_to_float(v))
        return {k: float(np.mean(v)) for k, v in sums.items()}


class MetricWriter:
    """Progress lines, ``metrics.jsonl`` and optional TensorBoard for one run.

    Args:
      workdir: run directory (created if missing).
      num_steps: total steps of the run, for the ETA.
      print_fn: where progress lines go (default `print` with flush).
      tensorboard: try TensorBoard (only used when importable).
    """

    def __init__(self, workdir: str, num_steps: int, *, print_fn=None, tensorboard: bool = True):
        self.workdir = workdir
        self.num_steps = int(num_steps)
        self.is_main = jax.process_index() == 0
        self._print = print_fn or (lambda s: print(s, flush=True))
        self._tb = None
        if self.is_main:
            os.makedirs(workdir, exist_ok=True)
            if tensorboard:
                self._tb = _tensorboard_writer(os.path.join(workdir, "tensorboard"))

    @property
    def path(self) -> str:
        return os.path.join(self.workdir, METRICS_FILE)

    def truncate_after(self, step: int) -> None:
        """Drops lines with ``step > step`` (left by a run that died after its last checkpoint),
        so a resumed run's curves have no duplicates."""
        if not self.is_main or not os.path.exists(self.path):
            return
        kept = [r for r in read_metrics(self.workdir) if r.get("step", 0) <= step]
        with open(self.path, "w") as f:
            for r in kept:
                f.write(json.dumps(r) + "\n")

    def write(self, step: int, metrics: Mapping[str, Any], *, steps_per_sec: float | None = None,
              wall_time: float | None = None, prefix: str = "") -> dict:
        """Logs scalars at `step` (prints a progress line, appends to ``metrics.jsonl``).

        Args:
          step: completed steps.
          metrics: name -> scalar (float, numpy or JAX scalar).
          steps_per_sec: training speed over the last interval, for the line and the ETA.
          wall_time: seconds since the run (or resume) started.
          prefix: prepended to every metric name (e.g. ``"eval/"``).

        Returns:
          The record written (floats).
        """
        record: dict[str, Any] = {"step": int(step)}
        record.update({prefix + k: _to_float(v) for k, v in jax.device_get(dict(metrics)).items()})
        eta = None
        if steps_per_sec is not None and steps_per_sec > 0:
            eta = (self.num_steps - step) / steps_per_sec
            record["steps_per_sec"] = float(steps_per_sec)
            record["eta_sec"] = float(eta)
        if wall_time is not None:
            record["wall_time"] = float(wall_time)
        if not self.is_main:
            return record
        width = len(str(self.num_steps))
        parts = [f"step {step:>{width}}/{self.num_steps}"]
        shown = " ".join(f"{k} {_fmt(v)}" for k, v in record.items()
                         if k != "step" and k not in TIMING_KEYS)
        if shown:
            parts.append(shown)
        if steps_per_sec is not None:
            parts.append(f"{steps_per_sec:.1f} steps/s")
            parts.append(f"ETA {format_eta(eta if eta is not None else float('nan'))}")
        self._print(" | ".join(parts))
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k != "step":
                    self._tb.add_scalar(k, v, global_step=int(step))
            self._tb.flush()
        return record

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(workdir: str) -> list[dict]:
    """Records of ``<workdir>/metrics.jsonl`` in file order (empty list if absent)."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def strip_timing(records: Iterable[Mapping[str, Any]]) -> list[dict]:
    """Records without the wall-clock fields, for comparing two runs."""
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.ndarray, jax.Array)) or np.isscalar(x) and not isinstance(x, (str, bytes)):
        a = np.asarray(x)
        return a.item() if a.ndim == 0 else a.tolist()
    return x


def write_summary(workdir: str, summary: Mapping[str, Any]) -> str:
    """Writes ``<workdir>/summary.json`` (process 0) and returns its path."""
    path = os.path.join(workdir, SUMMARY_FILE)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(path, "w") as f:
            json.dump(_jsonable(summary), f, indent=2, sort_keys=True)
            f.write("\n")
    return path
