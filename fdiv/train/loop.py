"""`fit`: the training loop shared by experiments (resume, log, evaluate, checkpoint, plot).

The loop knows nothing about networks or losses: the experiment gives it a state (a
`fdiv.train.TrainState`, or any pytree dataclass with a ``step`` field and ``replace``) and a
host-side ``step_fn(state, step) -> (state, metrics)`` that performs loop step `step` (it calls
one or more jitted update functions; see `fdiv.train.state` for networks updated at different
rates). `fit`:

1. restores the newest readable checkpoint in ``<workdir>/checkpoints`` (falling back past
   damaged ones) and drops ``metrics.jsonl`` records newer than it;
2. for ``step = state.step .. num_steps - 1``: calls `step_fn`, sets ``state.step = step + 1``,
   averages the returned metrics over each log interval and writes them with steps/s and ETA;
   calls ``eval_fn(state) -> metrics`` every `eval_every` steps (logged with an ``eval/``
   prefix); saves checkpoints by step count and wall time;
3. at the end (or on Ctrl-C) saves a final checkpoint and waits for it, writes
   ``curves.png`` and ``summary.json``.

Because data and randomness are pure functions of (seed, step), a run interrupted and resumed
gives bit-identical parameters to an uninterrupted one (`tests/test_train.py`).

Usage::

    options = train.LoopOptions.from_config(config)
    state, summary = train.fit(state, step_fn, workdir=workdir, options=options,
                               eval_fn=eval_fn, meta={"config": config.to_dict()})
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils

from fdiv.train.checkpoint import Checkpointer
from fdiv.train.config import LoopOptions
from fdiv.train.metrics import TIMING_KEYS, MeanAccumulator, MetricWriter, write_summary
from fdiv.train import plotting

log = logging.getLogger(__name__)

StepFn = Callable[[Any, int], tuple[Any, Mapping[str, Any]]]
EvalFn = Callable[[Any], Mapping[str, Any]]


def _block(tree: Any) -> None:
    jax.tree.map(lambda x: x.block_until_ready() if isinstance(x, jax.Array) else x, tree)


def _agree(flag: bool) -> bool:
    """Process 0's decision, so that all processes save together (clocks differ across hosts)."""
    if jax.process_count() == 1:
        return flag
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))


def fit(state: Any, step_fn: StepFn, *, workdir: str, options: LoopOptions,
        eval_fn: EvalFn | None = None, meta: Mapping[str, Any] | None = None,
        print_fn: Callable[[str], None] | None = None, plot: bool = True) -> tuple[Any, dict]:
    """Runs (or resumes) a training loop to ``options.num_steps``.

    Args:
      state: initial state; also the template (structure, shardings) for restoring.
      step_fn: ``step_fn(state, step) -> (state, metrics)``, metrics a dict of scalars
        (device arrays are fine: they are fetched once per log interval).
      workdir: run directory (checkpoints, ``metrics.jsonl``, ``curves.png``, ``summary.json``).
      options: loop options.
      eval_fn: ``eval_fn(state) -> metrics`` run every ``options.eval_every`` steps and at the end.
      meta: JSON-serialisable data stored in every checkpoint and in ``summary.json``
        (e.g. ``{"config": config.to_dict()}``).
      print_fn: progress-line sink (default: print with flush).
      plot: write ``curves.png`` at the end.

    Returns:
      ``(state, summary)``: the final state and the dict written to ``summary.json`` with keys
      ``num_steps``, ``resumed_from`` (step or None), ``train`` (last logged training
      metrics), ``eval`` (last evaluation metrics or None), ``first_step_sec`` (first step of
      this process, compile included), ``steps_per_sec`` (after the first step),
      ``wall_time_sec``, and the entries of `meta`.
    """
    t_start = time.perf_counter()
    writer = MetricWriter(workdir, options.num_steps, print_fn=print_fn)
    ckpt = Checkpointer(workdir, every_steps=options.checkpoint_every_steps,
                        every_secs=options.checkpoint_every_secs or None, keep=options.keep_checkpoints,
                        async_save=options.async_checkpoints)
    meta = dict(meta or {})
    summary: dict[str, Any] = {}
    try:
        state, restored_meta = ckpt.restore_latest(state)
        start = int(state.step)
        # The step is fed as a host scalar on every call, so every call of a jitted update
        # sees the same input type and sharding (a device array here would recompile once).
        state = state.replace(step=np.asarray(start, np.int32))
        resumed_from = start if restored_meta is not None else None
        if resumed_from is not None:
            writer._print(f"resumed from checkpoint at step {start} in {ckpt.directory}")
        writer.truncate_after(start)
        acc = MeanAccumulator()
        last_train: dict = {}
        last_eval: dict | None = None
        first_step_sec = None
        t_interval, steps_in_interval = time.perf_counter(), 0
        t_steady, steady_steps, eval_time = None, 0, 0.0
        try:
            for step in range(start, options.num_steps):
                t0 = time.perf_counter()
                state, metrics = step_fn(state, step)
                state = state.replace(step=np.asarray(step + 1, np.int32))
                acc.add(metrics)
                done = step + 1
                if first_step_sec is None:
                    _block((state, metrics))
                    first_step_sec = time.perf_counter() - t0
                    t_interval, steps_in_interval = time.perf_counter(), 0
                    t_steady = t_interval
                else:
                    steps_in_interval += 1
                    steady_steps += 1
                last = done == options.num_steps
                if done % options.log_every == 0 or last:
                    values = acc.result()
                    now = time.perf_counter()
                    sps = steps_in_interval / (now - t_interval) if steps_in_interval else None
                    last_train = writer.write(done, values, steps_per_sec=sps, wall_time=now - t_start)
                    t_interval, steps_in_interval = now, 0
                if eval_fn is not None and ((options.eval_every and done % options.eval_every == 0) or last):
                    t_eval = time.perf_counter()
                    last_eval = writer.write(done, eval_fn(state), prefix="eval/",
                                             wall_time=time.perf_counter() - t_start)
                    eval_time += time.perf_counter() - t_eval
                    t_interval, steps_in_interval = time.perf_counter(), 0
                time_check = done % options.log_every == 0 and _agree(ckpt.should_save(done))
                by_steps = ckpt.every_steps and done % ckpt.every_steps == 0
                if by_steps or time_check or last:
                    ckpt.save(done, state, meta=meta)
        except KeyboardInterrupt:
            done = int(state.step)
            writer._print(f"interrupted: saving checkpoint at step {done}")
            ckpt.save(done, state, meta=meta)
            ckpt.wait()
            raise
        ckpt.wait()
        if start >= options.num_steps and eval_fn is not None:
            # A finished run asked to run again: report its evaluation without new records.
            last_eval = {"eval/" + k: float(v) for k, v in jax.device_get(dict(eval_fn(state))).items()}
        steady_time = (time.perf_counter() - t_steady - eval_time) if t_steady is not None else 0.0
        summary = {
            "num_steps": options.num_steps,
            "resumed_from": resumed_from,
            "train": {k: v for k, v in last_train.items() if k != "step" and k not in TIMING_KEYS},
            "eval": None if last_eval is None else {k: v for k, v in last_eval.items()
                                                    if k != "step" and k not in TIMING_KEYS},
            "first_step_sec": first_step_sec,
            "steps_per_sec": (steady_steps / steady_time) if steady_steps and steady_time > 0 else None,
            "wall_time_sec": time.perf_counter() - t_start,
            **meta,
        }
    finally:
        ckpt.close()
        writer.close()
    if plot:
        plotting.plot_curves(workdir)
    write_summary(workdir, summary)
    return state, summary
