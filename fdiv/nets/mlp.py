"""Residual MLP raw network ``F(x_in; c_noise)`` for vector data (toy 2-D targets)."""

from __future__ import annotations

import jax
from flax import nnx

from fdiv.nets.embedding import fourier_embedding

Array = jax.Array


class _Block(nnx.Module):
    """Pre-activation residual block with an additive noise-level embedding."""

    def __init__(self, hidden: int, *, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(hidden, rngs=rngs)
        self.fc1 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.emb = nnx.Linear(hidden, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, hidden, rngs=rngs)

    def __call__(self, h: Array, e: Array) -> Array:
        y = self.fc1(nnx.silu(self.norm(h))) + self.emb(e)
        return h + self.fc2(nnx.silu(y))


class MLP(nnx.Module):
    """Noise-conditioned residual MLP, the raw network F of an EDM denoiser (docs/reference.md section 6).

    ``F(x_in, c_noise)``: ``x_in`` ``[batch, dim]`` (already scaled by ``c_in``), ``c_noise``
    ``[batch]``; returns ``[batch, dim]`` and, with ``return_features=True``, also the last
    hidden activations ``[batch, hidden]`` for a discriminator head. The output layer starts
    at zero so that a fresh denoiser is ``D = c_skip x``, the optimal denoiser of
    N(0, sigma_data^2).

    Args:
      dim: data dimension.
      hidden: width.
      depth: number of residual blocks.
      emb_dim: size of the Fourier embedding of ``c_noise``.
      rngs: `nnx.Rngs` for initialisation.

    References:
      Karras et al. 2022 (EDM preconditioning the network is used with).
    """

    def __init__(
        self, dim: int, *, hidden: int = 128, depth: int = 3, emb_dim: int = 32, rngs: nnx.Rngs
    ):
        self.dim = dim
        self.hidden = hidden
        self.emb_dim = emb_dim
        self.emb_in = nnx.Linear(emb_dim, hidden, rngs=rngs)
        self.emb_out = nnx.Linear(hidden, hidden, rngs=rngs)
        self.inp = nnx.Linear(dim, hidden, rngs=rngs)
        self.blocks = nnx.List([_Block(hidden, rngs=rngs) for _ in range(depth)])
        self.norm = nnx.LayerNorm(hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, dim, kernel_init=nnx.initializers.zeros, rngs=rngs)

    @property
    def feature_dim(self) -> int:
        return self.hidden

    def __call__(self, x_in: Array, c_noise: Array, *, return_features: bool = False):
        if x_in.ndim != 2 or x_in.shape[-1] != self.dim:
            raise ValueError(f"x_in must have shape [batch, {self.dim}], got {x_in.shape}.")
        if c_noise.shape != (x_in.shape[0],):
            raise ValueError(
                f"c_noise must have shape [batch] = {(x_in.shape[0],)} to match "
                f"x_in of shape {x_in.shape}; got {c_noise.shape}."
            )
        e = self.emb_out(nnx.silu(self.emb_in(fourier_embedding(c_noise, self.emb_dim))))
        e = nnx.silu(e)
        h = self.inp(x_in)
        for block in self.blocks:
            h = block(h, e)
        features = nnx.silu(self.norm(h))
        out = self.out(features)
        return (out, features) if return_features else out
