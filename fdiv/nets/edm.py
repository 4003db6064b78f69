"""EDM denoiser and one-step generator modules around a raw network (docs/reference.md section 6)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fdiv import diffusion

Array = jax.Array


class EDMDenoiser(nnx.Module):
    """``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)`` around a raw network ``F``.

    ``F`` is any module called as ``F(x_in, c_noise, return_features=...)`` (`MLP`, `UNet`).
    Calling the denoiser with ``return_features=True`` also returns ``F``'s features at
    ``(x, sigma)``, which a `DiscriminatorHead` turns into a log density-ratio.

    Args:
      net: the raw network.
      sigma_data: standard deviation of the data (0.5 for images in [-1, 1]).

    References:
      Karras et al. 2022, Eq. (7) and Table 1; docs/reference.md section 6.
    """

    def __init__(self, net: nnx.Module, sigma_data: float):
        self.net = net
        self.sigma_data = float(sigma_data)

    @property
    def feature_dim(self) -> int:
        return self.net.feature_dim

    def __call__(self, x: Array, sigma: Array, *, return_features: bool = False):
        s = diffusion.expand_sigma(x, sigma)
        out, features = self.net(
            diffusion.c_in(s, self.sigma_data) * x,
            diffusion.c_noise(s.reshape(-1)),
            return_features=True,
        )
        d = diffusion.c_skip(s, self.sigma_data) * x + diffusion.c_out(s, self.sigma_data) * out
        return (d, features) if return_features else d


class OneStepGenerator(nnx.Module):
    """One-step generator ``G(z) = D_gen(latent_std z; sigma)`` (docs/reference.md section 6, DMD).

    ``D_gen`` has the teacher's architecture; `from_teacher` copies the teacher's weights so
    that at initialisation ``G`` is the teacher's one-step (single denoising) sample from noise
    level ``sigma``. The default ``latent_std = sigma = sigma_max`` is DMD's generator: at
    initialisation it maps nearly every ``z`` to the data mean. A lower ``sigma`` with
    ``latent_std = sqrt(sigma^2 + sigma_data^2)`` (the standard deviation of data noised to
    ``sigma``) starts from a blurred copy of the data instead, which keeps many small modes
    reachable (``configs/fdistill_toy2d.py:grid25``).

    Args:
      denoiser: the generator's `EDMDenoiser` (owned; not shared with the teacher).
      sigma_max: the noise level given to the denoiser.
      latent_std: the latent's scale (default ``sigma_max``).

    References:
      Yin et al. 2024 (DMD), Section 3; Xu et al. 2025 (f-distill); docs/reference.md section 6.
    """

    def __init__(self, denoiser: EDMDenoiser, sigma_max: float, latent_std: float | None = None):
        if not 0.0 < float(sigma_max) < float("inf"):
            raise ValueError(f"sigma_max must be a positive noise level, got {sigma_max}.")
        if latent_std is not None and not 0.0 < float(latent_std) < float("inf"):
            raise ValueError(
                f"latent_std must be positive (or None for sigma_max), got {latent_std}."
            )
        self.denoiser = denoiser
        self.sigma_max = float(sigma_max)
        self.latent_std = float(sigma_max if latent_std is None else latent_std)

    @classmethod
    def from_teacher(
        cls, teacher: EDMDenoiser, sigma_max: float, latent_std: float | None = None
    ) -> "OneStepGenerator":
        """A generator initialised with a copy of the teacher's weights."""
        return cls(nnx.clone(teacher), sigma_max, latent_std)

    def __call__(self, z: Array) -> Array:
        sigma = jnp.full((z.shape[0],), self.sigma_max, z.dtype)
        return self.denoiser(self.latent_std * z, sigma)
