"""Small noise-conditioned U-Net raw network for 8x8 and 28x28 images (NHWC)."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from fdiv.nets.embedding import fourier_embedding

Array = jax.Array


def _groups(channels: int) -> int:
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


class _ResBlock(nnx.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, *, rngs: nnx.Rngs):
        self.norm1 = nnx.GroupNorm(c_in, num_groups=_groups(c_in), rngs=rngs)
        self.conv1 = nnx.Conv(c_in, c_out, (3, 3), rngs=rngs)
        self.emb = nnx.Linear(emb_dim, c_out, rngs=rngs)
        self.norm2 = nnx.GroupNorm(c_out, num_groups=_groups(c_out), rngs=rngs)
        self.conv2 = nnx.Conv(c_out, c_out, (3, 3), kernel_init=nnx.initializers.zeros, rngs=rngs)
        self.skip = nnx.Conv(c_in, c_out, (1, 1), rngs=rngs) if c_in != c_out else None

    def __call__(self, x: Array, e: Array) -> Array:
        h = self.conv1(nnx.silu(self.norm1(x)))
        h = h + self.emb(e)[:, None, None, :]
        h = self.conv2(nnx.silu(self.norm2(h)))
        return h + (self.skip(x) if self.skip is not None else x)


def _down(x: Array) -> Array:
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _up(x: Array) -> Array:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class UNet(nnx.Module):
    """Noise-conditioned U-Net ``F(x_in, c_noise)`` for small images (docs/reference.md section 6).

    Each resolution level has ``num_res`` residual blocks; levels are separated by 2x2 average
    pooling / nearest upsampling, so the image side must be divisible by
    ``2^(len(channel_mult) - 1)`` (8 -> 4 -> 2 and 28 -> 14 -> 7 with two halvings). With
    ``return_features=True`` it also returns the spatially averaged bottleneck activations
    ``[batch, base * channel_mult[-1]]`` for a discriminator head. The output convolution
    starts at zero (``D = c_skip x`` at initialisation).

    Args:
      in_channels: image channels C; inputs are ``[batch, H, W, C]``.
      base: channels at the first level.
      channel_mult: channel multiplier per level.
      num_res: residual blocks per level (down path; the up path uses the same number).
      emb_dim: size of the noise-level embedding.
      rngs: `nnx.Rngs`.

    References:
      Ronneberger et al. 2015 (U-Net); Ho et al. 2020 (residual diffusion U-Net);
      Karras et al. 2022.
    """

    def __init__(
        self,
        in_channels: int = 1,
        *,
        base: int = 32,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res: int = 1,
        emb_dim: int = 64,
        rngs: nnx.Rngs,
    ):
        self.in_channels = in_channels
        self.emb_dim = emb_dim
        self.num_levels = len(channel_mult)
        self.num_res = num_res
        chans = [base * m for m in channel_mult]
        self.out_features = chans[-1]
        self.emb_in = nnx.Linear(emb_dim, emb_dim, rngs=rngs)
        self.emb_out = nnx.Linear(emb_dim, emb_dim, rngs=rngs)
        self.conv_in = nnx.Conv(in_channels, base, (3, 3), rngs=rngs)
        down, skips_ch, ch = [], [], base
        for c in chans:
            for _ in range(num_res):
                down.append(_ResBlock(ch, c, emb_dim, rngs=rngs))
                ch = c
            skips_ch.append(ch)
        self.down = nnx.List(down)
        self.mid = _ResBlock(ch, ch, emb_dim, rngs=rngs)
        up = []
        for level in reversed(range(self.num_levels)):
            c = chans[level]
            up.append(_ResBlock(ch + skips_ch[level], c, emb_dim, rngs=rngs))
            ch = c
            for _ in range(num_res - 1):
                up.append(_ResBlock(ch, c, emb_dim, rngs=rngs))
        self.up = nnx.List(up)
        self.norm_out = nnx.GroupNorm(ch, num_groups=_groups(ch), rngs=rngs)
        self.conv_out = nnx.Conv(
            ch, in_channels, (3, 3), kernel_init=nnx.initializers.zeros, rngs=rngs
        )

    @property
    def feature_dim(self) -> int:
        return self.out_features

    def __call__(self, x_in: Array, c_noise: Array, *, return_features: bool = False):
        if x_in.ndim != 4 or x_in.shape[-1] != self.in_channels:
            raise ValueError(
                f"x_in must have shape [batch, H, W, {self.in_channels}], got {x_in.shape}."
            )
        factor = 2 ** (self.num_levels - 1)
        if x_in.shape[1] % factor or x_in.shape[2] % factor:
            raise ValueError(
                f"image sides {x_in.shape[1:3]} must be divisible by {factor} for "
                f"{self.num_levels} levels; use fewer levels in channel_mult."
            )
        if c_noise.shape != (x_in.shape[0],):
            raise ValueError(
                f"c_noise must have shape [batch] = {(x_in.shape[0],)} to match "
                f"x_in of shape {x_in.shape}; got {c_noise.shape}."
            )
        e = nnx.silu(self.emb_out(nnx.silu(self.emb_in(fourier_embedding(c_noise, self.emb_dim)))))
        h = self.conv_in(x_in)
        skips = []
        i = 0
        for level in range(self.num_levels):
            for _ in range(self.num_res):
                h = self.down[i](h, e)
                i += 1
            skips.append(h)
            if level < self.num_levels - 1:
                h = _down(h)
        h = self.mid(h, e)
        features = jnp.mean(h, axis=(1, 2))
        i = 0
        for level in reversed(range(self.num_levels)):
            h = self.up[i](jnp.concatenate([h, skips[level]], axis=-1), e)
            i += 1
            for _ in range(self.num_res - 1):
                h = self.up[i](h, e)
                i += 1
            if level > 0:
                h = _up(h)
        out = self.conv_out(nnx.silu(self.norm_out(h)))
        return (out, features) if return_features else out
