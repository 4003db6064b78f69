r"""Speed of exact categorical divergences against optax's KL on large logits.

Times ``fdiv.discrete.categorical_divergence`` (value, and value + gradient with
respect to the model logits) for forward KL, reverse KL, Jensen-Shannon and the
alpha divergence at alpha = 0.5 on float32 logits of shape ``--shape``, and in
the same process the baseline

    optax.kl_divergence(jax.nn.log_softmax(model_logits), jax.nn.softmax(target_logits))

(forward KL written the usual way). Every function is jitted; after
compilation and ``--warmup`` untimed runs each is timed ``--repeats`` times with
``block_until_ready``, interleaved with the others; the median wall time, the best wall time
and the median CPU time (``time.process_time``, all threads) are reported.
Prints a Markdown table of milliseconds and ratios (against optax and against
fdiv's forward KL) and writes the numbers to ``--output`` as JSON, with
``lscpu``'s model name and flags: the ratios depend on the CPU (AVX-512 and AMX
machines fuse these kernels differently), so every table names its CPU.

Targets: forward KL no slower than optax; every divergence within 1.5x of
forward KL.

Usage (the default shape, [8192, 32768], is 1 GiB per float32 array; a run on
two CPU cores takes several minutes)::

    python -m benchmarks.categorical
    python -m benchmarks.categorical --shape=1024,8192 --repeats=5
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from absl import app, flags

from fdiv import discrete
from fdiv.divergences import get

_SHAPE = flags.DEFINE_list("shape", ["8192", "32768"], "Logits shape [positions, classes].")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per function (median reported).")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed runs after compilation.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed of the logits.")
_OUTPUT = flags.DEFINE_string(
    "output",
    os.path.join(os.path.dirname(__file__), "results", "categorical.json"),
    "Where to write the JSON results.",
)

DIVERGENCES = (
    ("forward_kl", get("forward_kl")),
    ("reverse_kl", get("reverse_kl")),
    ("js", get("js")),
    ("alpha_0.5", get("alpha", alpha=0.5)),
)
BASELINE = "optax_kl"


def _optax_kl(target_logits, model_logits):
    return optax.kl_divergence(jax.nn.log_softmax(model_logits), jax.nn.softmax(target_logits))


def _functions():
    """``{label: (value_fn, value_and_grad_fn)}``, all jitted; grads w.r.t. the model."""
    fns = {BASELINE: _optax_kl}
    for label, d in DIVERGENCES:
        fns[label] = (lambda d: lambda t, m: discrete.categorical_divergence(t, m, d))(d)
    out = {}
    for label, fn in fns.items():
        loss = (lambda fn: lambda t, m: jnp.sum(fn(t, m)))(fn)
        out[label] = (jax.jit(fn), jax.jit(jax.value_and_grad(loss, argnums=1)))
    return out


def _summary(times: Sequence[float], cpu_times: Sequence[float], first: float) -> dict:
    return {
        "median_ms": 1e3 * statistics.median(times),
        "min_ms": 1e3 * min(times),
        "cpu_median_ms": 1e3 * statistics.median(cpu_times),
        "first_call_ms": 1e3 * first,
        "times_ms": [1e3 * t for t in times],
        "cpu_times_ms": [1e3 * t for t in cpu_times],
    }


def cpu_info() -> dict:
    """``lscpu``'s model name and flags (the ratios depend on the CPU's vector extensions)."""
    info = {"model_name": platform.processor() or "unknown", "flags": ""}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return info
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name":
            info["model_name"] = value.strip()
        elif key.strip() == "Flags":
            info["flags"] = value.strip()
    return info


def vector_flags(flags: str) -> str:
    """The flags that matter for these kernels (AVX-512 subsets, AMX, FMA)."""
    keep = [f for f in flags.split() if f.startswith(("avx", "amx", "fma"))]
    return " ".join(keep)


def _timed(fn: Callable, args: Sequence) -> tuple[float, float]:
    """Wall-clock and CPU seconds (all threads of this process) of one call."""
    start, start_cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start, time.process_time() - start_cpu


def run(shape: Sequence[int], repeats: int = 5, warmup: int = 1, seed: int = 0) -> dict:
    """Times every function on random float32 logits; returns the results dict.

    The timed runs are interleaved (round r runs every function once) so that
    load from other processes shifts all functions alike and the ratios stay
    meaningful on a shared machine.
    """
    key_t, key_m = jax.random.split(jax.random.key(seed))
    # A peaked teacher and a flatter student, as in distillation.
    target_logits = 4.0 * jax.random.normal(key_t, shape, jnp.float32)
    model_logits = 2.0 * jax.random.normal(key_m, shape, jnp.float32)
    args = jax.block_until_ready((target_logits, model_logits))
    fns = {
        (label, mode): fn
        for label, pair in _functions().items()
        for mode, fn in zip(("value", "value_and_grad"), pair)
    }
    first = {key: _timed(fn, args)[0] for key, fn in fns.items()}  # compiles
    for _ in range(warmup):
        for fn in fns.values():
            _timed(fn, args)
    times = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            times[key].append(_timed(fn, args))
    results = {}
    for (label, mode), ts in times.items():
        wall, cpu = zip(*ts)
        results.setdefault(label, {})[mode] = _summary(wall, cpu, first[(label, mode)])
    for label, r in results.items():
        print(
            f"{label:>12}: value {r['value']['median_ms']:9.1f} ms, value+grad "
            f"{r['value_and_grad']['median_ms']:9.1f} ms",
            flush=True,
        )
    # Agreement of the two forward KLs, so the timings compare equal work.
    ours = jax.jit(lambda t, m: discrete.categorical_divergence(t, m, "forward_kl"))(*args)
    theirs = jax.jit(_optax_kl)(*args)
    max_rel = float(jnp.max(jnp.abs(ours - theirs) / jnp.maximum(jnp.abs(theirs), 1e-6)))
    return {
        "shape": list(shape),
        "dtype": "float32",
        "repeats": repeats,
        "device": str(jax.devices()[0]),
        "device_kind": jax.devices()[0].device_kind,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "jax_version": jax.__version__,
        "optax_version": optax.__version__,
        "forward_kl_vs_optax_max_rel_diff": max_rel,
        "cpu": cpu_info(),
        "results": results,
    }


def table(results: dict, stat: str = "median_ms") -> str:
    """Markdown table of ``stat`` (``median_ms``, ``min_ms`` or ``cpu_median_ms``) and ratios.

    Ratios are against optax's KL and against fdiv's forward KL. On a shared machine the CPU
    time (summed over this process's threads) is the steadier measure: it does not count the
    time other processes hold the cores.
    """
    res = results["results"]
    what = {
        "median_ms": "median wall time",
        "min_ms": "best wall time",
        "cpu_median_ms": "median CPU time (all threads)",
    }[stat]
    cpu = results.get("cpu", {"model_name": "unknown", "flags": ""})
    lines = [
        f"shape {results['shape']}, float32, {results['device_kind']} "
        f"({results['cpu_count']} cores), {what} of {results['repeats']} runs, jax "
        f"{results['jax_version']}",
        f"CPU: {cpu['model_name']}; vector flags: {vector_flags(cpu['flags'])}",
        "",
        "| divergence | value ms | / optax | / forward KL | value+grad ms | / optax "
        "| / forward KL |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in res.items():
        cells = [label]
        for mode in ("value", "value_and_grad"):
            ms = r[mode][stat]
            cells += [
                f"{ms:.1f}",
                f"{ms / res[BASELINE][mode][stat]:.2f}",
                f"{ms / res['forward_kl'][mode][stat]:.2f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv):
    del argv
    shape = tuple(int(s) for s in _SHAPE.value)
    results = run(shape, repeats=_REPEATS.value, warmup=_WARMUP.value, seed=_SEED.value)
    results["table"] = table(results)
    results["table_best"] = table(results, "min_ms")
    results["table_cpu"] = table(results, "cpu_median_ms")
    for key in ("table", "table_best", "table_cpu"):
        print()
        print(results[key])
    os.makedirs(os.path.dirname(os.path.abspath(_OUTPUT.value)), exist_ok=True)
    with open(_OUTPUT.value, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {_OUTPUT.value}")


if __name__ == "__main__":
    app.run(main)
