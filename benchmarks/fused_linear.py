r"""Fused large-vocabulary distillation loss against the naive computation (time and memory).

For a student and a teacher with hidden states ``[tokens, hidden]`` and heads ``[hidden, vocab]``
(default: 8192 tokens, hidden 576, vocabulary 49152, the head of SmolLM2-135M), times the
value and both student gradients (hidden states and head) of the token-mean loss

* naive: ``kd.reduce(kd.divergence_loss(stop_gradient(h_t @ W_t), h_s @ W_s, d))``, which
  materialises the ``[tokens, vocab]`` logits (1.6 GB each in float32), against
* fused: ``kd.reduce(kd.fused_linear_divergence(h_s, W_s, h_t, W_t, d, chunk_size=c))``,

for forward KL, reverse KL and Jensen-Shannon, and the label cross-entropy three ways: naive
(``optax.softmax_cross_entropy_with_integer_labels`` on materialised logits),
``kd.fused_linear_cross_entropy`` and the ``jax-cce`` package's ``linear_cross_entropy`` (an
outside JAX implementation of fused cross-entropy, chunked over the vocabulary).

Time: every function is compiled first, then run ``--repeats`` times interleaved with the others
in the same process (so load from other processes shifts all alike); medians are reported.
Memory: the compiled memory statistics (``jitted.lower(...).compile().memory_analysis()``:
temporaries, and temporaries + arguments + outputs - aliased) and the measured peak resident
memory of a fresh subprocess per function (peak RSS minus the RSS once the inputs exist).
Targets: at least 8x less peak memory at no more than 1.3x the naive time.

Usage (heavy: hold the shared lock)::

    python -m benchmarks.fused_linear
    python -m benchmarks.fused_linear --quick   # seconds; a smoke test
    # peak RSS of every function of results/fused_linear.json, one fresh subprocess each
    python -m benchmarks.fused_linear --rss_only --chunk_sizes=256
    # chunk-size sweep of one loss (results/fused_linear_chunks.json)
    python -m benchmarks.fused_linear --losses=forward_kl --chunk_sizes=256,512,1024 \
        --repeats=2 --output=benchmarks/results/fused_linear_chunks.json
    # compiled memory only (light: nothing runs)
    python -m benchmarks.fused_linear --compile_only --chunk_sizes=128,256,512,1024

Measured (AMD EPYC, 2 shared cores): compiled peak naive 6522 MiB, fused 618 / 728 / 967 /
1466 MiB at chunk 128 / 256 / 512 / 1024 (10.5x / 9.0x / 6.7x / 4.4x); measured peak RSS
naive 6427 MiB, fused 513 / 754 / 1333 MiB at 256 / 512 / 1024 (12.5x / 8.5x / 4.8x). The
times of the chunk sizes could not be told apart on the loaded machine (run-to-run spread up
to 2x); see benchmarks/results/.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from fdiv import kd

DIVERGENCES = ("forward_kl", "reverse_kl", "js")
LOSSES = DIVERGENCES + ("cross_entropy",)

_TOKENS = flags.DEFINE_integer("tokens", 8192, "Tokens (rows of the hidden states).")
_HIDDEN = flags.DEFINE_integer("hidden", 576, "Hidden size of student and teacher.")
_VOCAB = flags.DEFINE_integer("vocab", 49152, "Vocabulary size.")
_CHUNKS = flags.DEFINE_list("chunk_sizes", ["256", "1024"], "Token chunk sizes of the fused loss.")
_LOSSES = flags.DEFINE_list(
    "losses",
    list(LOSSES),
    "Losses to run (a subset makes a chunk-size sweep affordable).",
)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per function (median reported).")
_MEASURE = flags.DEFINE_bool("measure_rss", True, "Measure peak RSS in one subprocess each.")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny sizes (a smoke test of seconds).")
_ONE = flags.DEFINE_string("measure_one", None, "Internal: measure one function's peak RSS.")
_RSS_ONLY = flags.DEFINE_bool(
    "rss_only", False, "Only (re)measure the peak RSS of each function into --output's JSON."
)
_COMPILE_ONLY = flags.DEFINE_bool(
    "compile_only", False, "Only the compiled memory statistics (nothing runs; light)."
)
_OUTPUT = flags.DEFINE_string(
    "output",
    os.path.join(os.path.dirname(__file__), "results", "fused_linear.json"),
    "Where to write the JSON results (the Markdown table goes beside it as .md).",
)

QUICK = {"tokens": 256, "hidden": 32, "vocab": 1024, "chunk_sizes": [64], "repeats": 1}


def inputs(tokens, hidden, vocab, seed=0):
    """Student/teacher hidden states and heads scaled to give LM-like logit spreads, labels."""
    keys = jax.random.split(jax.random.key(seed), 5)
    hs = jax.random.normal(keys[0], (tokens, hidden), jnp.float32)
    ht = jax.random.normal(keys[1], (tokens, hidden), jnp.float32)
    ws = jax.random.normal(keys[2], (hidden, vocab), jnp.float32) * (3.0 / hidden**0.5)
    wt = jax.random.normal(keys[3], (hidden, vocab), jnp.float32) * (4.0 / hidden**0.5)
    labels = jax.random.randint(keys[4], (tokens,), 0, vocab)
    return jax.block_until_ready((hs, ws, ht, wt, labels))


def losses(chunk_sizes: Sequence[int], names: Sequence[str] = LOSSES) -> dict:
    """``{(loss, method): scalar_loss(hs, ws, ht, wt, labels)}`` for the losses in `names`."""
    import jax_cce  # pylint: disable=import-outside-toplevel

    def naive(d, hs, ws, ht, wt, y):
        return kd.reduce(kd.divergence_loss(jax.lax.stop_gradient(ht @ wt), hs @ ws, d))

    def fused(d, c, hs, ws, ht, wt, y):
        return kd.reduce(kd.fused_linear_divergence(hs, ws, ht, wt, d, chunk_size=c))

    def naive_ce(hs, ws, ht, wt, y):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(hs @ ws, y))

    def fused_ce(c, hs, ws, ht, wt, y):
        return kd.reduce(kd.fused_linear_cross_entropy(hs, ws, y, chunk_size=c))

    def jax_cce_ce(hs, ws, ht, wt, y):
        return jax_cce.linear_cross_entropy(hs, ws.T, y)

    out = {}
    for d in (d for d in DIVERGENCES if d in names):
        out[(d, "naive")] = functools.partial(naive, d)
        for c in chunk_sizes:
            out[(d, f"fused c={c}")] = functools.partial(fused, d, c)
    if "cross_entropy" in names:
        out[("cross_entropy", "naive")] = naive_ce
        for c in chunk_sizes:
            out[("cross_entropy", f"fused c={c}")] = functools.partial(fused_ce, c)
        out[("cross_entropy", "jax_cce")] = jax_cce_ce
    return out


def _value_and_grad(fn):
    return jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))


def _memory_stats(compiled) -> dict:
    m = compiled.memory_analysis()
    total = (
        m.temp_size_in_bytes
        + m.argument_size_in_bytes
        + m.output_size_in_bytes
        - m.alias_size_in_bytes
    )
    return {"temp_mib": m.temp_size_in_bytes / 2**20, "total_mib": total / 2**20}


def _rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure_one(key: str, sizes: dict) -> dict:
    """Peak RSS of one compiled call in this (fresh) process, above the RSS with the inputs."""
    loss, method = key.split("/")
    args = inputs(sizes["tokens"], sizes["hidden"], sizes["vocab"])
    compiled = _value_and_grad(losses(sizes["chunk_sizes"])[(loss, method)]).lower(*args).compile()
    base = _rss_mib()
    _reset_peak_rss()
    jax.block_until_ready(compiled(*args))
    peak = _peak_rss_mib()
    return {"rss_with_inputs_mib": base, "peak_rss_mib": peak, "peak_over_inputs_mib": peak - base}


def _reset_peak_rss():
    # Writing 5 to clear_refs resets this process's VmHWM (Linux >= 4.0), so the peak below is
    # the call's, not the compiler's. ru_maxrss is no use here: Linux carries it across
    # fork/exec from the parent.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measure_in_subprocess(key: str, sizes: dict) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.fused_linear",
        f"--measure_one={key}",
        f"--tokens={sizes['tokens']}",
        f"--hidden={sizes['hidden']}",
        f"--vocab={sizes['vocab']}",
        f"--chunk_sizes={','.join(str(c) for c in sizes['chunk_sizes'])}",
    ]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=root)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _max_rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def run(
    tokens: int,
    hidden: int,
    vocab: int,
    chunk_sizes: Sequence[int],
    repeats: int = 3,
    measure_rss: bool = True,
    print_fn=print,
    names: Sequence[str] = LOSSES,
) -> dict:
    sizes = {"tokens": tokens, "hidden": hidden, "vocab": vocab, "chunk_sizes": list(chunk_sizes)}
    args = inputs(tokens, hidden, vocab)
    fns = losses(chunk_sizes, names)
    compiled, memory, first, outputs = {}, {}, {}, {}
    for key, fn in fns.items():
        start = time.perf_counter()
        compiled[key] = _value_and_grad(fn).lower(*args).compile()
        memory[key] = _memory_stats(compiled[key])
        outputs[key] = jax.block_until_ready(compiled[key](*args))
        first[key] = time.perf_counter() - start
        print_fn(f"compiled {key}: {memory[key]['total_mib']:.0f} MiB compiled peak")
        if key[1] != "naive":  # the result itself is not needed beyond the agreement check
            outputs[key] = jax.tree.map(np.asarray, outputs[key])
    agreement = {}
    for key in fns:
        if key[1] != "naive":
            ref = outputs[(key[0], "naive")]
            agreement["/".join(key)] = {
                "value": _max_rel(outputs[key][0], ref[0]),
                "grad_hidden": _max_rel(outputs[key][1][0], ref[1][0]),
                "grad_head": _max_rel(outputs[key][1][1], ref[1][1]),
            }
    del outputs
    times = {key: [] for key in fns}
    for _ in range(repeats):
        for key, c in compiled.items():
            start = time.perf_counter()
            jax.block_until_ready(c(*args))
            times[key].append(time.perf_counter() - start)
    del compiled
    results = {}
    for key in fns:
        entry = {
            "median_s": statistics.median(times[key]),
            "times_s": times[key],
            "first_call_s": first[key],
            **memory[key],
        }
        if measure_rss:
            entry.update(_measure_in_subprocess("/".join(key), sizes))
        results["/".join(key)] = entry
        print_fn(
            f"{'/'.join(key)}: {entry['median_s']:.2f} s, "
            f"{entry['total_mib']:.0f} MiB compiled"
            + (f", {entry['peak_over_inputs_mib']:.0f} MiB measured" if measure_rss else "")
        )
    return {
        **sizes,
        "repeats": repeats,
        "dtype": "float32",
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "device_kind": jax.devices()[0].device_kind,
        "platform": platform.platform(),
        "jax_version": jax.__version__,
        "results": results,
        "agreement": agreement,
    }


def compiled_memory(
    tokens: int, hidden: int, vocab: int, chunk_sizes: Sequence[int], names: Sequence[str] = LOSSES
) -> dict:
    """Compiled memory statistics of every function at this size, without running anything."""
    shapes = (
        jax.ShapeDtypeStruct((tokens, hidden), jnp.float32),
        jax.ShapeDtypeStruct((hidden, vocab), jnp.float32),
        jax.ShapeDtypeStruct((tokens, hidden), jnp.float32),
        jax.ShapeDtypeStruct((hidden, vocab), jnp.float32),
        jax.ShapeDtypeStruct((tokens,), jnp.int32),
    )
    results = {
        "/".join(key): _memory_stats(_value_and_grad(fn).lower(*shapes).compile())
        for key, fn in losses(chunk_sizes, names).items()
    }
    return {
        "tokens": tokens,
        "hidden": hidden,
        "vocab": vocab,
        "chunk_sizes": list(chunk_sizes),
        "dtype": "float32",
        "jax_version": jax.__version__,
        "results": results,
    }


def compiled_table(r: dict) -> str:
    res = r["results"]
    lines = [
        (
            f"{r['tokens']} tokens, hidden {r['hidden']}, vocabulary {r['vocab']}, float32,"
            " value + gradients w.r.t. student hidden states and head: compiled memory"
            " (XLA CPU buffer assignment)"
        ),
        "",
        (
            "| loss | method | temporaries (MiB) | peak: temporaries + arguments + outputs"
            " (MiB) | naive / this |"
        ),
        "|---|---|---:|---:|---:|",
    ]
    for key, e in res.items():
        loss, method = key.split("/")
        naive = res[f"{loss}/naive"]
        lines.append(
            f"| {loss} | {method} | {e['temp_mib']:.0f} | {e['total_mib']:.0f} |"
            f" {naive['total_mib'] / e['total_mib']:.1f} |"
        )
    return "\n".join(lines)


def _cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def table(r: dict) -> str:
    res = r["results"]
    measured = "peak_over_inputs_mib" in next(iter(res.values()))
    lines = [
        (
            f"{r['tokens']} tokens, hidden {r['hidden']}, vocabulary {r['vocab']}, float32, value"
            f" + gradients w.r.t. student hidden states and head; {r['cpu_model']}"
            f" ({r['cpu_count']} cores), median of {r['repeats']} interleaved runs"
        ),
        "",
        (
            "| loss | method | time (s) | time / naive | compiled peak (MiB) | naive / this |"
            + (" measured peak (MiB) | naive / this |" if measured else "")
        ),
        "|---|---|---:|---:|---:|---:|" + ("---:|---:|" if measured else ""),
    ]
    for key, e in res.items():
        loss, method = key.split("/")
        naive = res[f"{loss}/naive"]
        cells = [
            loss,
            method,
            f"{e['median_s']:.2f}",
            f"{e['median_s'] / naive['median_s']:.2f}",
            f"{e['total_mib']:.0f}",
            f"{naive['total_mib'] / e['total_mib']:.1f}",
        ]
        if measured:
            cells += [
                f"{e['peak_over_inputs_mib']:.0f}",
                f"{naive['peak_over_inputs_mib'] / max(e['peak_over_inputs_mib'], 1):.1f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv):
    del argv
    if _QUICK.value:
        sizes = dict(QUICK)
    else:
        sizes = {
            "tokens": _TOKENS.value,
            "hidden": _HIDDEN.value,
            "vocab": _VOCAB.value,
            "chunk_sizes": [int(c) for c in _CHUNKS.value],
            "repeats": _REPEATS.value,
        }
    names = list(_LOSSES.value)
    unknown = [n for n in names if n not in LOSSES]
    if unknown or not names:
        raise app.UsageError(f"--losses={','.join(names)}: choose among {','.join(LOSSES)}")
    if _ONE.value:
        print(json.dumps(measure_one(_ONE.value, sizes)))
        return
    if _RSS_ONLY.value:
        with open(_OUTPUT.value) as f:
            r = json.load(f)
        for key, entry in r["results"].items():
            entry.update(_measure_in_subprocess(key, sizes))
            print(f"{key}: {entry['peak_over_inputs_mib']:.0f} MiB measured", flush=True)
        r["table"] = table(r)
        print(r["table"])
        with open(_OUTPUT.value, "w") as f:
            json.dump(r, f, indent=2)
        with open(os.path.splitext(_OUTPUT.value)[0] + ".md", "w") as f:
            f.write(r["table"] + "\n")
        return
    if _COMPILE_ONLY.value:
        r = compiled_memory(
            sizes["tokens"], sizes["hidden"], sizes["vocab"], sizes["chunk_sizes"], names
        )
        r["table"] = compiled_table(r)
        print(r["table"])
        output = os.path.join(os.path.dirname(_OUTPUT.value), "fused_linear_compiled.json")
        with open(output, "w") as f:
            json.dump(r, f, indent=2)
        with open(os.path.splitext(output)[0] + ".md", "w") as f:
            f.write(r["table"] + "\n")
        print(f"\nwrote {output}")
        return
    r = run(
        sizes["tokens"],
        sizes["hidden"],
        sizes["vocab"],
        sizes["chunk_sizes"],
        repeats=sizes["repeats"],
        measure_rss=_MEASURE.value,
        names=names,
    )
    r["table"] = table(r)
    print()
    print(r["table"])
    output = _OUTPUT.value
    if _QUICK.value and output == _OUTPUT.default:
        output = os.path.join(os.path.dirname(output), "fused_linear_quick.json")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(r, f, indent=2)
    with open(os.path.splitext(output)[0] + ".md", "w") as f:
        f.write(r["table"] + "\n")
    print(f"\nwrote {output}")


if __name__ == "__main__":
    app.run(main)
