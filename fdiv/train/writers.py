"""What a user sees during a run: progress lines, ``metrics.jsonl``, TensorBoard, ``summary.json``.

`MetricWriter(workdir, num_steps)` writes, on process 0 only:

- one progress line per training record, at most 80 columns (`LINE_WIDTH`): an optional
  phase tag, step/total, percent done, the main loss (the first metric whose name contains
  ``loss``, else the first metric) and as many further metrics as fit, steps/s and ETA::

      [distill] step   200/1000  20% | gen_loss 0.3121 disc_loss 1.38 | 48.3 steps/s | ETA 0:00:17

  evaluation records print ``eval step 200/1000 | name value ...`` wrapped onto as many
  80-column lines as their metrics need;
- one JSON object per record appended to ``<workdir>/metrics.jsonl``
  (``{"step": 200, "loss": 0.3121, ..., "num_steps_averaged": 100, "steps_per_sec": 48.3,
  "wall_time": 4.1}``); a training record says over how many loop steps its values are
  averaged (fewer than ``log_every`` for the first record after a resume from a step that
  was not a logging step);
- TensorBoard scalars under ``<workdir>/tensorboard`` when ``tensorboardX`` is installed
  (``pip install -e ".[tensorboard]"``); nothing otherwise. torch is never imported: its
  ``torch.utils.tensorboard`` would pull a second framework into a JAX process.

`write_summary(workdir, summary)` writes ``<workdir>/summary.json``, the training record; a
summary marked as a re-evaluation (``summary["reevaluation"]`` set, as `fdiv.train.fit`
returns for a rerun of a finished run) goes to ``<workdir>/summary_reeval.json`` instead, so
the training record keeps its original timings. `read_metrics(workdir)` reads
``metrics.jsonl`` back as a list of dicts. `MeanAccumulator` averages per-step device metrics
over a log interval without forcing a device sync every step.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Mapping

import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
REEVAL_SUMMARY_FILE = "summary_reeval.json"
# Keys written by the writer itself (timing and averaging bookkeeping): not plotted, not
# shown as metrics, excluded when comparing the metrics of two runs.
TIMING_KEYS = ("steps_per_sec", "wall_time", "eta_sec", "num_steps_averaged")
LINE_WIDTH = 80


def _tensorboard_writer(logdir: str) -> Any:
    """A SummaryWriter-like object with add_scalar/flush/close, or None when unavailable."""
    try:
        from tensorboardX import SummaryWriter  # type: ignore
    except ImportError:
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
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}"


def _main_first(names: list[str]) -> list[str]:
    for i, k in enumerate(names):
        if "loss" in k:
            return [k] + names[:i] + names[i + 1 :]
    return names


def _fit_items(items: list[tuple[str, str]], budget: int) -> str:
    """``name value`` pairs, space-joined in order while they fit in `budget` columns; the
    first one's name is shortened (``~`` marks the cut) rather than dropped."""
    out = ""
    for i, (name, value) in enumerate(items):
        item = f"{name} {value}"
        candidate = f"{out} {item}" if out else item
        if len(candidate) <= budget:
            out = candidate
        elif i == 0:
            keep = budget - len(value) - 2
            out = f"{name[:keep]}~ {value}" if keep > 0 else value[: max(budget, 0)]
        else:
            break
    return out


def progress_line(
    step: int,
    num_steps: int,
    metrics: Mapping[str, float],
    *,
    steps_per_sec: float | None = None,
    eta: float | None = None,
    phase: str | None = None,
    width: int = LINE_WIDTH,
) -> str:
    """One training progress line of at most `width` columns (see the module docstring)."""
    digits = len(str(num_steps))
    pct = f"{100.0 * step / num_steps:3.0f}%" if num_steps else "100%"
    head = (f"[{phase}] " if phase else "") + f"step {step:>{digits}}/{num_steps} {pct}"
    tail = []
    if steps_per_sec is not None:
        sps = f"{steps_per_sec:.1f}" if steps_per_sec < 1000 else f"{steps_per_sec:.0f}"
        tail = [f"{sps} steps/s", f"ETA {format_eta(eta if eta is not None else float('nan'))}"]
    fixed = " | ".join([head] + tail)
    names = _main_first([k for k in metrics if k != "step" and k not in TIMING_KEYS])
    items = [(k, _fmt(metrics[k])) for k in names]
    shown = _fit_items(items, width - len(fixed) - 3) if items else ""
    parts = [head] + ([shown] if shown else []) + tail
    return " | ".join(parts)[:width]


def eval_lines(
    step: int,
    num_steps: int,
    metrics: Mapping[str, float],
    *,
    phase: str | None = None,
    width: int = LINE_WIDTH,
) -> list[str]:
    """Evaluation metrics as lines of at most `width` columns (continuations indented)."""
    digits = len(str(num_steps))
    head = (f"[{phase}] " if phase else "") + f"eval step {step:>{digits}}/{num_steps} |"
    items = [f"{k} {_fmt(v)}" for k, v in metrics.items() if k != "step" and k not in TIMING_KEYS]
    lines, current = [], head
    for item in items:
        if len(current) + 1 + len(item) <= width or current in (head, "    "):
            current = f"{current} {item}"[:width]
        else:
            lines.append(current)
            current = "    " + item
    lines.append(current[:width])
    return lines


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
      phase: tag at the start of every progress line (e.g. ``"teacher"``); None: none.
      width: maximal length of a progress line.
    """

    def __init__(
        self,
        workdir: str,
        num_steps: int,
        *,
        print_fn=None,
        tensorboard: bool = True,
        phase: str | None = None,
        width: int = LINE_WIDTH,
    ):
        self.workdir = workdir
        self.num_steps = int(num_steps)
        self.phase = phase
        self.width = width
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

    def print(self, line: str) -> None:
        """Prints a line through `print_fn` on process 0."""
        if self.is_main:
            self._print(line)

    def write(
        self,
        step: int,
        metrics: Mapping[str, Any],
        *,
        steps_per_sec: float | None = None,
        wall_time: float | None = None,
        prefix: str = "",
        num_steps_averaged: int | None = None,
    ) -> dict:
        """Logs scalars at `step` (prints a progress line, appends to ``metrics.jsonl``).

        Args:
          step: completed steps.
          metrics: name -> scalar (float, numpy or JAX scalar).
          steps_per_sec: training speed over the last interval, for the line and the ETA.
          wall_time: seconds since the run (or resume) started.
          prefix: prepended to every metric name (e.g. ``"eval/"``); an ``"eval/"`` record
            prints as evaluation lines.
          num_steps_averaged: number of loop steps the values average (training records).

        Returns:
          The record written (floats).
        """
        record: dict[str, Any] = {"step": int(step)}
        host = jax.device_get(dict(metrics))  # a dict in sorted key order: keep the caller's
        record.update({prefix + k: _to_float(host[k]) for k in metrics})
        if num_steps_averaged is not None:
            record["num_steps_averaged"] = int(num_steps_averaged)
        eta = None
        if steps_per_sec is not None and steps_per_sec > 0:
            eta = (self.num_steps - step) / steps_per_sec
            record["steps_per_sec"] = float(steps_per_sec)
            record["eta_sec"] = float(eta)
        if wall_time is not None:
            record["wall_time"] = float(wall_time)
        if not self.is_main:
            return record
        if prefix == "eval/":
            shown = {k[len(prefix) :]: v for k, v in record.items() if k.startswith(prefix)}
            for line in eval_lines(step, self.num_steps, shown, phase=self.phase, width=self.width):
                self._print(line)
        else:
            self._print(
                progress_line(
                    step,
                    self.num_steps,
                    record,
                    steps_per_sec=steps_per_sec,
                    eta=eta,
                    phase=self.phase,
                    width=self.width,
                )
            )
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


def read_summary(workdir: str, name: str = SUMMARY_FILE) -> dict | None:
    """``<workdir>/summary.json`` (or another summary file) as a dict, None if absent/unreadable."""
    path = os.path.join(workdir, name)
    try:
        with open(path) as f:
            out = json.load(f)
    except (OSError, ValueError):
        return None
    return out if isinstance(out, dict) else None


def write_summary(workdir: str, summary: Mapping[str, Any]) -> str:
    """Writes the run summary (process 0) and returns its path.

    ``<workdir>/summary.json`` is the training record. A summary with a true
    ``"reevaluation"`` entry (a rerun of a finished run, see `fdiv.train.fit`) is written to
    ``<workdir>/summary_reeval.json`` instead and never replaces the training record.
    """
    name = REEVAL_SUMMARY_FILE if summary.get("reevaluation") else SUMMARY_FILE
    path = os.path.join(workdir, name)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(path, "w") as f:
            json.dump(_jsonable(summary), f, indent=2, sort_keys=True)
            f.write("\n")
    return path
