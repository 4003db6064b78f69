"""Noise-level embeddings shared by the networks in fdiv.nets."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array


def fourier_embedding(c_noise: Array, dim: int, max_freq: float = 64.0) -> Array:
    """Sinusoidal features of the noise conditioning ``c_noise = log(sigma) / 4``.

    Frequencies are geometric between 1 and ``max_freq``: EDM's ``c_noise`` spans only a few
    units (about [-1.6, 1.1] for sigma in [0.002, 80]), so the fastest frequencies must be
    well above 1 to resolve nearby noise levels.

    Args:
      c_noise: ``[batch]`` noise conditioning values.
      dim: even embedding size.
      max_freq: largest angular frequency.

    Returns:
      ``[batch, dim]`` features ``[cos(w c), sin(w c)]``.

    References:
      Vaswani et al. 2017 (sinusoidal embedding); Karras et al. 2022, Table 1 (c_noise).
    """
    if dim % 2:
        raise ValueError(f"dim must be even, got {dim}.")
    c_noise = jnp.asarray(c_noise)
    if c_noise.ndim != 1:
        raise ValueError(f"c_noise must have shape [batch], got {c_noise.shape}.")
    freqs = jnp.exp(jnp.linspace(0.0, math.log(max_freq), dim // 2))
    angles = c_noise[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)
