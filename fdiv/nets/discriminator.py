"""Discriminator head producing a log density-ratio from denoiser features (docs/reference.md section 4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fdiv.nets.embedding import fourier_embedding

Array = jax.Array


class DiscriminatorHead(nnx.Module):
    """Logit ``l(x_t, sigma) ~ log p_t(x_t) - log q_t(x_t)`` from network features.

    An MLP on ``[features, embedding(c_noise)]``. The features come from the teacher or the
    fake-score network evaluated at ``(x_t, sigma)`` (``EDMDenoiser(..., return_features=True)``);
    trained with `fdiv.distill.discriminator_loss` (P = real/teacher side), its logit is the
    log-ratio that `fdiv.distill.weights` needs. The last layer starts at zero, so the initial
    ratio is 1 everywhere.

    Args:
      feature_dim: size of the input features.
      hidden: width of the MLP.
      depth: number of hidden layers.
      emb_dim: size of the noise-level embedding.
      rngs: `nnx.Rngs`.

    Returns (when called with ``features`` ``[batch, feature_dim]`` and ``c_noise``
    ``[batch]``): logits ``[batch]``.

    References:
      Yin et al. 2024 (DMD2), Section 4.3; Xu et al. 2025 (f-distill); docs/reference.md section 4.
    """

    def __init__(
        self,
        feature_dim: int,
        *,
        hidden: int = 128,
        depth: int = 2,
        emb_dim: int = 32,
        rngs: nnx.Rngs,
    ):
        self.feature_dim = feature_dim
        self.emb_dim = emb_dim
        dims = [feature_dim + emb_dim] + [hidden] * depth
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])])
        self.out = nnx.Linear(dims[-1], 1, kernel_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, features: Array, c_noise: Array) -> Array:
        if features.ndim != 2 or features.shape[-1] != self.feature_dim:
            raise ValueError(
                f"features must have shape [batch, {self.feature_dim}], got {features.shape}."
            )
        if c_noise.shape != (features.shape[0],):
            raise ValueError(
                f"c_noise must have shape [batch] = {(features.shape[0],)} to "
                f"match features of shape {features.shape}; got {c_noise.shape}."
            )
        h = jnp.concatenate([features, fourier_embedding(c_noise, self.emb_dim)], axis=-1)
        for layer in self.layers:
            h = nnx.silu(layer(h))
        return self.out(h)[:, 0]
