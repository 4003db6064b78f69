"""Argument checks and dtype rules shared by ``fdiv.divergences``, ``fdiv.discrete`` and
``fdiv.montecarlo``.

Every check runs at trace time on static information (shapes, dtypes, Python numbers) and, for
array arguments, on their values when they are concrete (not traced by ``jit``/``grad``/
``vmap``); a traced value cannot be inspected and is accepted as it is. Each error is one line
that names the argument and the fix.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np


def as_compute_float(x):
    """``x`` as an array computed in at least float32 (bf16/f16 and integers become float32)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating) or jnp.finfo(x.dtype).bits < 32:
        return x.astype(jnp.float32)
    return x


def compute_dtype(*dtypes):
    """The common dtype of floating ``dtypes``, at least float32.

    Half precision cannot hold log-probabilities of large vocabularies to the accuracy the sums
    need, so the arithmetic is done in float32.
    """
    dtype = jnp.result_type(*dtypes)
    if jnp.finfo(dtype).bits < 32:
        dtype = jnp.dtype(jnp.float32)
    return dtype


def check_floating(x, name):
    """``x`` as an array; raises unless its dtype is floating point."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"{name} must be floating point, got {x.dtype}; cast with .astype(jnp.float32)"
        )
    return x


def floating_input(x, name):
    """``x`` as an array computed in at least float32; raises unless its dtype is floating point.

    bfloat16/float16 inputs are accepted and computed in float32 (float32-accurate results).
    """
    return as_compute_float(check_floating(x, name))


def check_mask(where, shape, target):
    """``where`` as a boolean array after checking that it broadcasts to ``shape``.

    ``target`` says what ``shape`` is, for the error message.
    """
    mask = jnp.asarray(where)
    if mask.dtype != jnp.bool_:
        raise ValueError(
            f"where must be a boolean mask, got dtype {mask.dtype}; pass e.g."
            " `lengths_mask > 0` or `.astype(bool)`."
        )
    try:
        broadcast = np.broadcast_shapes(mask.shape, tuple(shape))
    except ValueError:
        broadcast = None
    if broadcast != tuple(shape):
        raise ValueError(f"where must be broadcastable to {target}, got where.shape={mask.shape}.")
    return mask


def is_python_number(x):
    if isinstance(x, np.ndarray):
        return x.ndim == 0
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def is_concrete(x):
    """Whether the values of ``x`` can be read now (not a tracer inside jit/grad/vmap)."""
    return not isinstance(x, jax.core.Tracer)


def check_temperature(temperature):
    """Raises unless ``temperature`` is a positive finite scalar.

    Python numbers and concrete arrays are checked; a traced temperature is not (its value is
    unknown at trace time): a non-positive or infinite traced temperature gives NaN or
    meaningless values.
    """
    if is_python_number(temperature):
        value = float(temperature)
        if not 0.0 < value < float("inf"):
            raise ValueError(
                f"temperature must be > 0 and finite, got {temperature}; the usual distillation"
                " temperatures are 1 to 10."
            )
        return
    temperature = jnp.asarray(temperature)
    if temperature.ndim != 0:
        raise ValueError(
            f"temperature must be a scalar, got an array of shape {temperature.shape}; pass one"
            " temperature for both logit arrays."
        )
    if is_concrete(temperature):
        value = float(np.asarray(temperature))
        if not 0.0 < value < float("inf"):
            raise ValueError(
                f"temperature must be > 0 and finite, got an array holding {value}; the usual"
                " distillation temperatures are 1 to 10."
            )


def check_unit_interval(value, name, *, closed, fix):
    """Raises unless a Python-number ``value`` is in [0, 1] (``closed``) or (0, 1)."""
    if not is_python_number(value):
        return
    value = float(value)
    inside = (0.0 <= value <= 1.0) if closed else (0.0 < value < 1.0)
    if not inside:
        interval = "[0, 1]" if closed else "(0, 1)"
        raise ValueError(f"{name} must be in {interval}, got {value}; {fix}")
