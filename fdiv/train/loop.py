"""`fit`: the training loop shared by experiments (resume, log, evaluate, checkpoint, plot).

The loop knows nothing about networks or losses: the experiment gives it a state (a
`fdiv.train.TrainState`, or any pytree dataclass with a ``step`` field and ``replace``) and a
host-side ``step_fn(state, step) -> (state, metrics)`` that performs loop step `step` (it calls
one or more jitted update functions; see `fdiv.train.state` for networks updated at different
rates). `fit`:

1. with ``options.resume == "restart"``, moves a previous run in the workdir (checkpoints,
   ``metrics.jsonl``, summaries, ``curves.png``, TensorBoard logs) to
   ``<workdir>/archive/<UTC time>/`` (nothing is deleted);
2. restores the newest intact checkpoint in ``<workdir>/checkpoints`` (falling back past
   damaged ones; a checkpoint of a different config raises
   `fdiv.train.checkpoint.ConfigMismatchError` before anything is touched) and drops
   ``metrics.jsonl`` records newer than it;
3. for ``step = state.step .. num_steps - 1``: calls `step_fn`, sets ``state.step = step + 1``,
   averages the returned metrics over each log interval and writes them (with the number of
   steps averaged, steps/s and ETA); calls ``eval_fn(state) -> metrics`` every `eval_every`
   steps (logged with an ``eval/`` prefix); saves checkpoints by step count and wall time;
4. at the end saves a final checkpoint and waits for it, writes ``curves.png`` and
   ``summary.json``. On Ctrl-C it saves the checkpoint of the last completed step and raises
   `TrainingInterrupted`.

A rerun of a finished run (the newest checkpoint is at ``num_steps``) trains nothing: it
evaluates once more and writes ``summary_reeval.json`` (the original training record with the
new evaluation and a ``"reevaluation"`` entry), leaving ``summary.json`` as it was.

Because data and randomness are pure functions of (seed, step), a run interrupted and resumed
gives bit-identical parameters to an uninterrupted one (`tests/test_train.py`).

Usage::

    options = train.LoopOptions.from_config(config)
    state, summary = train.fit(state, step_fn, workdir=workdir, options=options,
                               eval_fn=eval_fn, meta={"config": config.to_dict()},
                               banner="f-distill js on ring8 | 8 cpu devices | /tmp/run")
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import shutil
import time
from typing import Any, Callable, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils

from fdiv.train import plotting
from fdiv.train.checkpoint import Checkpointer
from fdiv.train.config import LoopOptions
from fdiv.train.writers import (
    METRICS_FILE,
    REEVAL_SUMMARY_FILE,
    SUMMARY_FILE,
    TIMING_KEYS,
    MeanAccumulator,
    MetricWriter,
    read_summary,
    write_summary,
)

log = logging.getLogger(__name__)

StepFn = Callable[[Any, int], tuple[Any, Mapping[str, Any]]]
EvalFn = Callable[[Any], Mapping[str, Any]]

RESUME_MODES = ("auto", "restart")
# What `resume="restart"` moves into ``<workdir>/archive/<UTC time>/``.
ARCHIVED_NAMES = (
    "checkpoints",
    "checkpoints_corrupt",
    METRICS_FILE,
    SUMMARY_FILE,
    REEVAL_SUMMARY_FILE,
    "curves.png",
    "tensorboard",
)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during `fit`, after the checkpoint of the last completed step was saved.

    Attributes:
      step: the step of the saved checkpoint (completed loop steps).
      workdir: the run directory; rerunning the same command resumes from `step`.
    """

    def __init__(self, step: int, workdir: str):
        super().__init__(
            f"interrupted at step {step}; checkpoint saved in "
            f"{os.path.join(workdir, 'checkpoints')}; run the same command again "
            "to resume."
        )
        self.step = step
        self.workdir = workdir


def _block(tree: Any) -> None:
    jax.tree.map(lambda x: x.block_until_ready() if isinstance(x, jax.Array) else x, tree)


def _agree(flag: bool) -> bool:
    """Process 0's decision, so that all processes save together (clocks differ across hosts)."""
    if jax.process_count() == 1:
        return flag
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _utc_stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def archive_run(workdir: str) -> str | None:
    """Moves a previous run's files (`ARCHIVED_NAMES` and top-level ``*.png``) from `workdir`
    to ``<workdir>/archive/<UTC time>/`` (process 0; all processes wait for it).

    Returns:
      The archive directory, or None when there was nothing to move.
    """
    dest = None
    if jax.process_index() == 0 and os.path.isdir(workdir):
        names = [
            n
            for n in os.listdir(workdir)
            if n in ARCHIVED_NAMES
            or (n.endswith(".png") and os.path.isfile(os.path.join(workdir, n)))
        ]
        if names:
            base = os.path.join(workdir, "archive", _utc_stamp())
            dest, i = base, 1
            while os.path.exists(dest):
                dest, i = f"{base}-{i}", i + 1
            os.makedirs(dest)
            for n in sorted(names):
                shutil.move(os.path.join(workdir, n), os.path.join(dest, n))
    _sync("fdiv_archive_run")
    return dest


@dataclasses.dataclass
class _Clock:
    """Wall-time bookkeeping of one `fit` call (first step, steady speed, evaluation time)."""

    t_start: float
    first_step_sec: float | None = None
    t_interval: float = 0.0
    timed_in_interval: int = 0  # steps after the first one since the last record (speed)
    t_steady: float | None = None
    steady_steps: int = 0
    eval_time: float = 0.0

    def after_step(self, t0: float, state: Any, metrics: Any) -> None:
        if self.first_step_sec is None:
            _block((state, metrics))  # the first step includes compilation
            self.first_step_sec = time.perf_counter() - t0
            self.t_interval = self.t_steady = time.perf_counter()
            self.timed_in_interval = 0
        else:
            self.timed_in_interval += 1
            self.steady_steps += 1

    def interval_speed(self) -> float | None:
        now = time.perf_counter()
        sps = self.timed_in_interval / (now - self.t_interval) if self.timed_in_interval else None
        self.t_interval, self.timed_in_interval = now, 0
        return sps

    def add_eval_time(self, sec: float) -> None:
        self.eval_time += sec
        self.t_interval, self.timed_in_interval = time.perf_counter(), 0

    def steady_speed(self) -> float | None:
        if self.t_steady is None or not self.steady_steps:
            return None
        sec = time.perf_counter() - self.t_steady - self.eval_time
        return self.steady_steps / sec if sec > 0 else None

    def wall(self) -> float:
        return time.perf_counter() - self.t_start


def _strip(record: Mapping[str, Any] | None) -> dict | None:
    if record is None:
        return None
    return {k: v for k, v in record.items() if k != "step" and k not in TIMING_KEYS}


class _Loop:
    """The hooks of one `fit` call; `fit` reads as the sequence of them."""

    def __init__(self, workdir, options, eval_fn, meta, print_fn, phase):
        self.workdir = workdir
        self.options = options
        self.eval_fn = eval_fn
        self.meta = dict(meta or {})
        self.phase = phase
        self.print_fn = print_fn or (lambda s: print(s, flush=True))
        self.clock = _Clock(time.perf_counter())
        self.acc = MeanAccumulator()
        self.steps_since_log = 0
        self.last_train: dict = {}
        self.last_eval: dict | None = None
        self.ckpt: Checkpointer | None = None
        self.writer: MetricWriter | None = None

    def say(self, line: str) -> None:
        if jax.process_index() == 0:
            self.print_fn(line)

    def prepare(self) -> None:
        """Archives a previous run (``resume="restart"``) and opens the checkpointer."""
        if self.options.resume == "restart":
            dest = archive_run(self.workdir)
            if dest is not None:
                self.say(f"resume=restart: moved the previous run to {dest}")
        o = self.options
        self.ckpt = Checkpointer(
            self.workdir,
            every_steps=o.checkpoint_every_steps,
            every_secs=o.checkpoint_every_secs or None,
            keep=o.keep_checkpoints,
            async_save=o.async_checkpoints,
        )

    def restore(self, state: Any) -> tuple[Any, int, int | None]:
        """(state, first step to run, resumed-from step or None); opens the metric writer
        only once the workdir is known to belong to this run."""
        state, restored_meta = self.ckpt.restore_latest(state, config=self.meta.get("config"))
        start = int(state.step)
        # The step is fed as a host scalar on every call, so every call of a jitted update
        # sees the same input type and sharding (a device array here would recompile once).
        state = state.replace(step=np.asarray(start, np.int32))
        resumed_from = start if restored_meta is not None else None
        self.writer = MetricWriter(
            self.workdir, self.options.num_steps, print_fn=self.print_fn, phase=self.phase
        )
        if resumed_from is not None:
            self.say(f"resumed from checkpoint at step {start} in {self.ckpt.directory}")
        self.writer.truncate_after(start)
        return state, start, resumed_from

    def after_step(self, state: Any, done: int, metrics: Mapping[str, Any], t0: float) -> None:
        self.acc.add(metrics)
        self.steps_since_log += 1
        self.clock.after_step(t0, state, metrics)

    def log(self, done: int) -> None:
        self.last_train = self.writer.write(
            done,
            self.acc.result(),
            steps_per_sec=self.clock.interval_speed(),
            wall_time=self.clock.wall(),
            num_steps_averaged=self.steps_since_log,
        )
        self.steps_since_log = 0

    def evaluate(self, state: Any, done: int) -> None:
        t = time.perf_counter()
        self.last_eval = self.writer.write(
            done, self.eval_fn(state), prefix="eval/", wall_time=self.clock.wall()
        )
        self.clock.add_eval_time(time.perf_counter() - t)

    def maybe_save(self, state: Any, done: int, last: bool) -> None:
        ckpt = self.ckpt
        time_check = done % self.options.log_every == 0 and _agree(ckpt.should_save(done))
        by_steps = ckpt.every_steps and done % ckpt.every_steps == 0
        if by_steps or time_check or last:
            ckpt.save(done, state, meta=self.meta)

    def interrupted(self, state: Any) -> TrainingInterrupted:
        done = int(state.step)
        self.say(f"interrupted: saving checkpoint at step {done}")
        self.ckpt.save(done, state, meta=self.meta)
        self.ckpt.wait()
        return TrainingInterrupted(done, self.workdir)

    def summary(self, resumed_from: int | None) -> dict:
        return {
            "num_steps": self.options.num_steps,
            "resumed_from": resumed_from,
            "train": _strip(self.last_train),
            "eval": _strip(self.last_eval),
            "first_step_sec": self.clock.first_step_sec,
            "steps_per_sec": self.clock.steady_speed(),
            "wall_time_sec": self.clock.wall(),
            **self.meta,
        }

    def reevaluation(self, state: Any, resumed_from: int, record: dict) -> dict:
        """A finished run run again: the training record with a fresh evaluation."""
        new_eval = None
        if self.eval_fn is not None:
            values = jax.device_get(dict(self.eval_fn(state)))
            new_eval = {"eval/" + k: float(np.asarray(v)) for k, v in values.items()}
        return {
            **record,
            **self.meta,
            "eval": new_eval if new_eval is not None else record.get("eval"),
            "reevaluation": {
                "time_utc": _utc_stamp(),
                "resumed_from": resumed_from,
                "wall_time_sec": self.clock.wall(),
            },
        }

    def close(self) -> None:
        if self.ckpt is not None:
            self.ckpt.close()
        if self.writer is not None:
            self.writer.close()


def fit(
    state: Any,
    step_fn: StepFn,
    *,
    workdir: str,
    options: LoopOptions,
    eval_fn: EvalFn | None = None,
    meta: Mapping[str, Any] | None = None,
    print_fn: Callable[[str], None] | None = None,
    plot: bool = True,
    banner: str | None = None,
    phase: str | None = None,
) -> tuple[Any, dict]:
    """Runs (or resumes) a training loop to ``options.num_steps``.

    Args:
      state: initial state; also the template (structure, shardings) for restoring.
      step_fn: ``step_fn(state, step) -> (state, metrics)``, metrics a dict of scalars
        (device arrays are fine: they are fetched once per log interval).
      workdir: run directory (checkpoints, ``metrics.jsonl``, ``curves.png``, ``summary.json``).
      options: loop options (``options.resume``: ``"auto"`` resumes, ``"restart"`` archives a
        previous run first).
      eval_fn: ``eval_fn(state) -> metrics`` run every ``options.eval_every`` steps and at the end.
      meta: JSON-serialisable data stored in every checkpoint and in ``summary.json``
        (e.g. ``{"config": config.to_dict()}``; ``meta["config"]`` is compared with the
        config stored in the checkpoints before resuming).
      print_fn: progress-line sink (default: print with flush); used on process 0 only.
      plot: write ``curves.png`` at the end.
      banner: a line printed once at the start (e.g. divergence, data, devices, workdir).
      phase: tag at the start of every progress line (e.g. ``"teacher"``).

    Returns:
      ``(state, summary)``: the final state and the dict written to ``summary.json`` with keys
      ``num_steps``, ``resumed_from`` (step or None), ``train`` (last logged training
      metrics), ``eval`` (last evaluation metrics or None), ``first_step_sec`` (first step of
      this process, compile included), ``steps_per_sec`` (after the first step, evaluations
      excluded), ``wall_time_sec``, and the entries of `meta`. For a rerun of a finished run,
      the stored training record with a new ``eval`` and a ``reevaluation`` entry (time,
      wall time), written to ``summary_reeval.json``.

    Raises:
      ConfigMismatchError: the workdir holds checkpoints of another config (nothing touched).
      TrainingInterrupted: on Ctrl-C, after saving the checkpoint of the last completed step.
    """
    if options.resume not in RESUME_MODES:
        raise ValueError(f"LoopOptions.resume must be 'auto' or 'restart', got {options.resume!r}.")
    loop = _Loop(workdir, options, eval_fn, meta, print_fn, phase)
    if banner:
        loop.say(banner)
    try:
        loop.prepare()
        state, start, resumed_from = loop.restore(state)
        if resumed_from is not None and start >= options.num_steps:
            loop.say(
                f"the run finished at step {start}: evaluating again; {SUMMARY_FILE} (the "
                f"training record) is kept, the result goes to {REEVAL_SUMMARY_FILE}"
            )
        try:
            for step in range(start, options.num_steps):
                t0 = time.perf_counter()
                state, metrics = step_fn(state, step)
                done = step + 1
                state = state.replace(step=np.asarray(done, np.int32))
                loop.after_step(state, done, metrics, t0)
                last = done == options.num_steps
                if done % options.log_every == 0 or last:
                    loop.log(done)
                if eval_fn is not None and (
                    last or options.eval_every and done % options.eval_every == 0
                ):
                    loop.evaluate(state, done)
                loop.maybe_save(state, done, last)
        except KeyboardInterrupt:
            raise loop.interrupted(state) from None
        loop.ckpt.wait()
        record = read_summary(workdir) if start >= options.num_steps else None
        if record is not None and resumed_from is not None:
            summary = loop.reevaluation(state, resumed_from, record)
        else:
            if start >= options.num_steps and eval_fn is not None:
                loop.last_eval = {
                    "eval/" + k: float(np.asarray(v))
                    for k, v in jax.device_get(dict(eval_fn(state))).items()
                }
            summary = loop.summary(resumed_from)
    finally:
        loop.close()
    if plot:
        plotting.plot_curves(workdir)
    write_summary(workdir, summary)
    return state, summary
