r"""Compile time and speed of each jitted f-distill train step, measured separately.

A distillation loop step is one ``critic_step`` (fake-score DSM + discriminator update) and,
every ``generator_every``-th step, one ``generator_step`` (f-distill surrogate + GAN term).
For each of the two functions this script reports

- ``compile_sec``: ahead-of-time ``jit(...).lower(...).compile()`` wall time (tracing,
  lowering and XLA compilation; the first call of a training run pays it);
- ``ms_per_step``: median over ``--repeats`` timed blocks of ``--calls`` back-to-back calls
  (the state is threaded through, as in training; each block ends with
  ``block_until_ready``), so asynchronous dispatch overlaps as it does in the loop;

and the loop rate they imply, ``1 / (t_critic + t_generator / generator_every)`` steps/s, next
to the rate measured by the training loop when ``--run_dir`` names a finished run's workdir
(its ``summary.json``). The teacher is restored from the cache (trained on first use).

Usage::

    python -m benchmarks.fdistill_steps --config=configs/fdistill_toy2d.py
    python -m benchmarks.fdistill_steps --config=configs/fdistill_digits.py --out=benchmarks/results/fdistill_steps_digits.json
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m benchmarks.fdistill_steps \
        --config=configs/fdistill_toy2d.py

Config overrides work as for ``experiments.main`` (``--config.divergence=js``).
"""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Any, Callable, Optional

import jax
import numpy as np


def _time_calls(fn: Callable, state: Any, calls: int, repeats: int) -> tuple[float, Any]:
    """Median seconds per call over ``repeats`` blocks of ``calls`` chained calls."""
    per_call = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            state, m = fn(state)
        jax.block_until_ready((state, m))
        per_call.append((time.perf_counter() - t0) / calls)
    return float(np.median(per_call)), state


def measure(
    config: Any,
    *,
    calls: int = 50,
    repeats: int = 5,
    print_fn: Optional[Callable[[str], None]] = None,
) -> dict:
    """Compile time and per-call time of ``critic_step`` and ``generator_step``.

    Returns:
      ``{"critic_step": {...}, "generator_step": {...}, "loop_steps_per_sec": float,
      "generator_every": int, "num_devices": int, "batch_size": int, "data": str,
      "divergence": str, "backend": str}``; each step entry has ``compile_sec`` and
      ``ms_per_step``.
    """
    from experiments import fdistill

    pf = print_fn or (lambda s: print(s, flush=True))
    run = fdistill.build(config, print_fn=pf)
    state = run.state
    batch = run.batch_fn(0)
    results = {}
    for name, fn, args in (
        ("critic_step", run.critic_step, (state, batch)),
        ("generator_step", run.generator_step, (state,)),
    ):
        t0 = time.perf_counter()
        compiled = fn.lower(*args).compile()
        compile_sec = time.perf_counter() - t0
        if name == "critic_step":
            call = lambda s, c=compiled: c(s, batch)  # noqa: E731
        else:
            call = compiled
        jax.block_until_ready(call(state))  # warm-up (allocations, thread pools)
        sec, _ = _time_calls(call, state, calls, repeats)
        results[name] = {"compile_sec": compile_sec, "ms_per_step": 1e3 * sec}
        pf(
            f"{name}: compile {compile_sec:.2f} s, {1e3 * sec:.2f} ms/step "
            f"({1.0 / sec:.1f} steps/s)"
        )
    k = run.cfg.generator_every
    loop_sec = (
        results["critic_step"]["ms_per_step"] + results["generator_step"]["ms_per_step"] / k
    ) / 1e3
    results.update(
        {
            "loop_steps_per_sec": 1.0 / loop_sec,
            "generator_every": k,
            "num_devices": int(run.mesh.devices.size),
            "batch_size": run.cfg.batch_size,
            "data": run.cfg.data,
            "divergence": run.cfg.divergence,
            "backend": jax.default_backend(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        }
    )
    pf(
        f"loop (1 critic + 1/{k} generator step): {results['loop_steps_per_sec']:.1f} steps/s "
        f"on {results['num_devices']} {results['backend']} device(s)"
    )
    return results


def main(argv):
    del argv
    results = measure(FLAGS.config, calls=FLAGS.calls, repeats=FLAGS.repeats)
    if FLAGS.run_dir:
        with open(os.path.join(FLAGS.run_dir, "summary.json")) as f:
            summary = json.load(f)
        results["training_loop"] = {
            "steps_per_sec": summary.get("steps_per_sec"),
            "first_step_sec": summary.get("first_step_sec"),
            "run_dir": FLAGS.run_dir,
        }
        print(
            f"training loop of {FLAGS.run_dir}: {summary.get('steps_per_sec'):.1f} steps/s, "
            f"first step {summary.get('first_step_sec'):.1f} s (compile included)"
        )
    if FLAGS.out:
        os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
        with open(FLAGS.out, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    from absl import app, flags, logging
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "f-distill config file.", lock_config=True)
    flags.DEFINE_integer("calls", 50, "Chained calls per timed block.")
    flags.DEFINE_integer("repeats", 5, "Timed blocks (the median is reported).")
    flags.DEFINE_string("run_dir", "", "A finished run's workdir, to add its loop rate.")
    flags.DEFINE_string("out", "", "Write the results as JSON here.")
    flags.mark_flags_as_required(["config"])
    FLAGS = flags.FLAGS
    logging.set_verbosity(logging.WARNING)
    app.run(main)
