"""Minimal reproduction of the jaxlib 0.10.2 CPU miscompile of a fused reduction.

On jaxlib 0.10.2 the XLA CPU backend's YNNPACK reduce fusion computes a jitted

    jnp.sum(2 * jnp.exp(0.5 * x) * jnp.expm1(0.5 * x) - jnp.expm1(x))

over 4096 float32 values in [-0.05, 0] as about -49 instead of 0.838 (eager mode, jaxlib
0.10.1 and 0.9.2 are right; ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-reduce``
avoids it on 0.10.2). This is the reduction inside the alpha divergence's perspective before it
was rewritten, which made ``categorical_divergence(..., get("alpha"))`` wrong under ``jax.jit``
at 4096 classes and more. fdiv's packaging excludes jaxlib 0.10.2; run this script on a new
jaxlib before lifting the exclusion:

    python benchmarks/repro_jaxlib_0_10_2_reduce.py

It prints the eager and jitted sums and float64 NumPy's, and exits with status 1 when the jitted
sum is wrong.
"""

import sys

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np


def expression(x):
    return jnp.sum(2 * jnp.exp(0.5 * x) * jnp.expm1(0.5 * x) - jnp.expm1(x))


def main():
    x = np.linspace(-0.05, 0.0, 4096, dtype=np.float32)
    x64 = x.astype(np.float64)
    reference = float(np.sum(2 * np.exp(0.5 * x64) * np.expm1(0.5 * x64) - np.expm1(x64)))
    eager = float(expression(jnp.asarray(x)))
    jitted = float(jax.jit(expression)(jnp.asarray(x)))
    ok = abs(jitted - reference) <= 1e-3 * abs(reference)
    print(f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, backend {jax.default_backend()}")
    print(f"float64 numpy: {reference:.6f}")
    print(f"eager:         {eager:.6f}")
    print(f"jit:           {jitted:.6f}")
    print(
        "verdict: "
        + (
            "jit agrees with float64 (not affected)"
            if ok
            else "MISCOMPILED: jit disagrees with float64"
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
