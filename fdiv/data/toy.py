"""2-D toy targets with exact densities and scores (docs/reference.md section 8).

`ring8()` and `grid25()` return a `GaussianMixture2D` (frozen, hashable) with ``sample(key,
n)``, exact ``log_prob(x, sigma=0)`` and ``score(x, sigma=0)`` (also of the target convolved
with N(0, sigma^2 I), i.e. the exact noised target of a variance-exploding diffusion,
docs/reference.md section 6), ``denoiser``, ``nearest_mode(x)`` and the mode metadata the
metrics need (``centres``, ``weights``, ``std``, ``near_radius`` = 3 std).

`Moons` and `SwissRoll` are samplers only: their densities are Gaussian blurs of a curve, a
one-dimensional integral with no closed form, so they have no ``log_prob``
(``has_log_prob = False``). `toy_target(name)` looks any of them up in `TOY_TARGETS`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class GaussianMixture2D:
    """Isotropic Gaussian mixture in 2-D with a shared standard deviation.

    Hashable (tuples only), so it can be closed over by jitted functions or used as a static
    argument.

    References:
      docs/reference.md section 8 (target definitions and mode metrics); Karras et al. 2022,
      "Elucidating the design space of diffusion-based generative models" (noised target
      p_sigma).

    Attributes:
      name: identifier (``"ring8"``, ``"grid25"``).
      centres: K centres, tuple of (x, y).
      weights: K mixture weights, normalised to sum to 1.
      std: per-coordinate standard deviation of every component.
    """

    name: str
    centres: tuple[tuple[float, float], ...]
    weights: tuple[float, ...]
    std: float

    has_log_prob = True

    def __post_init__(self):
        if len(self.centres) != len(self.weights):
            raise ValueError(
                f"GaussianMixture2D: {len(self.centres)} centres but {len(self.weights)} weights."
            )
        if not all(len(c) == 2 for c in self.centres):
            raise ValueError("GaussianMixture2D: every centre must be a pair (x, y).")
        if not self.std > 0:
            raise ValueError(f"GaussianMixture2D: std must be positive, got {self.std}.")
        w = np.asarray(self.weights, np.float64)
        if np.any(w <= 0):
            raise ValueError("GaussianMixture2D: weights must be positive.")
        object.__setattr__(self, "weights", tuple(float(v) for v in w / w.sum()))
        object.__setattr__(self, "centres", tuple((float(a), float(b)) for a, b in self.centres))
        object.__setattr__(self, "std", float(self.std))

    @property
    def num_modes(self) -> int:
        return len(self.weights)

    @property
    def centres_array(self) -> np.ndarray:
        """Centres as a float32 array [K, 2]."""
        return np.asarray(self.centres, np.float32)

    @property
    def weights_array(self) -> np.ndarray:
        """Weights as a float32 array [K] (sum 1)."""
        return np.asarray(self.weights, np.float32)

    @property
    def near_radius(self) -> float:
        """A sample is *near* its nearest mode within this distance: 3 std (section 8)."""
        return 3.0 * self.std

    @property
    def mean(self) -> np.ndarray:
        """Mixture mean [2]."""
        return np.asarray(self.weights) @ np.asarray(self.centres)

    @property
    def sigma_data(self) -> float:
        """sqrt of the per-coordinate variance averaged over both coordinates (EDM's sigma_data)."""
        c = np.asarray(self.centres) - self.mean
        var = np.asarray(self.weights) @ np.sum(c * c, axis=1) / 2.0 + self.std**2
        return float(np.sqrt(var))

    def sample(self, key: jax.Array, n: int, *, return_labels: bool = False):
        """Draws `n` samples.

        Args:
          key: PRNG key.
          n: number of samples (static).
          return_labels: also return the component index of every sample.

        Returns:
          x: float32 [n, 2]; with `return_labels`, also int32 [n] component indices.
        """
        k_comp, k_noise = jax.random.split(key)
        logits = jnp.log(jnp.asarray(self.weights_array))
        labels = jax.random.categorical(k_comp, logits, shape=(n,))
        x = jnp.asarray(self.centres_array)[labels] + self.std * jax.random.normal(k_noise, (n, 2))
        return (x, labels.astype(jnp.int32)) if return_labels else x

    def _check(self, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x)
        if x.ndim < 1 or x.shape[-1] != 2:
            raise ValueError(f"{self.name}: x must have shape [..., 2], got {x.shape}.")
        return x

    def _component_terms(self, x, sigma):
        # Returns log w_k + log N(x; c_k, s^2 I) for every k ([..., K]) and s^2 = std^2 + sigma^2.
        x = self._check(x)
        s2 = self.std**2 + jnp.square(jnp.asarray(sigma, x.dtype))
        s2 = jnp.asarray(s2)[..., None]
        # Constants from the float64 tuples, so float64 inputs get float64 accuracy.
        c = jnp.asarray(np.asarray(self.centres), x.dtype)
        d2 = jnp.sum(jnp.square(x[..., None, :] - c), axis=-1)
        logw = jnp.asarray(np.log(np.asarray(self.weights)), x.dtype)
        return logw - 0.5 * d2 / s2 - jnp.log(2.0 * jnp.pi * s2), s2, c

    def log_prob(self, x: jax.Array, sigma: jax.Array | float = 0.0) -> jax.Array:
        """Exact log-density, optionally of the target convolved with N(0, sigma^2 I).

        Args:
          x: points [..., 2].
          sigma: noise level broadcastable to ``x.shape[:-1]`` (0: the target itself); the
            noised density is the mixture with per-component variance std^2 + sigma^2.

        Returns:
          [...] log p_sigma(x), computed with logsumexp over components.
        """
        terms, _, _ = self._component_terms(x, sigma)
        return jax.nn.logsumexp(terms, axis=-1)

    def score(self, x: jax.Array, sigma: jax.Array | float = 0.0) -> jax.Array:
        """Exact score grad_x log p_sigma(x) [..., 2] (responsibility-weighted (c_k - x) / s^2)."""
        terms, s2, c = self._component_terms(x, sigma)
        resp = jax.nn.softmax(terms, axis=-1)
        return (resp @ c - jnp.asarray(x)) / s2

    def denoiser(self, x: jax.Array, sigma: jax.Array | float) -> jax.Array:
        """Exact posterior mean E[x0 | x0 + sigma eps = x] = x + sigma^2 score_sigma(x).

        Tweedie's formula, docs/reference.md section 6.
        """
        sigma = jnp.asarray(sigma, jnp.asarray(x).dtype)
        return x + jnp.square(sigma)[..., None] * self.score(x, sigma)

    def nearest_mode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Index int32 [...] of the nearest centre and the distance to it [...]."""
        x = self._check(x)
        c = jnp.asarray(np.asarray(self.centres), x.dtype)
        d2 = jnp.sum(jnp.square(x[..., None, :] - c), axis=-1)
        idx = jnp.argmin(d2, axis=-1)
        dist = jnp.sqrt(jnp.take_along_axis(d2, idx[..., None], axis=-1)[..., 0])
        return idx.astype(jnp.int32), dist


def ring8() -> GaussianMixture2D:
    """8 Gaussians at radius 2, angles 2 pi k / 8, std 0.08, weights ∝ [4, 1, 3, 1, 4, 2, 1, 2].

    docs/reference.md section 8.
    """
    angles = [2.0 * math.pi * k / 8 for k in range(8)]
    centres = tuple((2.0 * math.cos(a), 2.0 * math.sin(a)) for a in angles)
    return GaussianMixture2D("ring8", centres, (4, 1, 3, 1, 4, 2, 1, 2), 0.08)


def grid25() -> GaussianMixture2D:
    """25 Gaussians on {-2..2}^2, std 0.05, weights ∝ 1 + (k mod 4).

    Row-major: k = 5 i + j for centre (x_i, y_j) (docs/reference.md section 8).
    """
    vals = (-2.0, -1.0, 0.0, 1.0, 2.0)
    centres = tuple((a, b) for a in vals for b in vals)
    return GaussianMixture2D("grid25", centres, tuple(1 + (k % 4) for k in range(25)), 0.05)


@dataclasses.dataclass(frozen=True)
class Moons:
    """Two interleaving half circles (scikit-learn's ``make_moons`` geometry), centred and scaled.

    A sample is ``scale * (point_on_curve - (0.5, 0.25)) + noise * scale * N(0, I)``, with each
    half chosen with probability 1/2 and the curve parameter uniform on [0, pi]. The density
    is the Gaussian blur of a curve measure (a 1-D integral, no closed form): there is no
    ``log_prob``; compare samples with sample-based metrics (MMD, energy distance).
    """

    noise: float = 0.05
    scale: float = 1.5
    name: str = "moons"
    has_log_prob = False

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """float32 [n, 2] samples."""
        k_half, k_t, k_noise = jax.random.split(key, 3)
        t = jax.random.uniform(k_t, (n,), maxval=jnp.pi)
        upper = jax.random.bernoulli(k_half, 0.5, (n,))
        outer = jnp.stack([jnp.cos(t), jnp.sin(t)], -1)
        inner = jnp.stack([1.0 - jnp.cos(t), 0.5 - jnp.sin(t)], -1)
        x = jnp.where(upper[:, None], outer, inner) - jnp.asarray([0.5, 0.25])
        return self.scale * (x + self.noise * jax.random.normal(k_noise, (n, 2)))


@dataclasses.dataclass(frozen=True)
class SwissRoll:
    """2-D Swiss roll: t ~ U[1.5 pi, 4.5 pi], x = (t cos t, t sin t) * scale + noise * N(0, I).

    The default scale 1/5 maps the roll into about [-2.7, 2.7]^2. Like `Moons` its density is
    a blurred curve with no closed form: no ``log_prob``.
    """

    noise: float = 0.05
    scale: float = 0.2
    name: str = "swiss_roll"
    has_log_prob = False

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """float32 [n, 2] samples."""
        k_t, k_noise = jax.random.split(key)
        t = 1.5 * jnp.pi * (1.0 + 2.0 * jax.random.uniform(k_t, (n,)))
        x = self.scale * jnp.stack([t * jnp.cos(t), t * jnp.sin(t)], -1)
        return x + self.noise * jax.random.normal(k_noise, (n, 2))


TOY_TARGETS = {
    "ring8": ring8,
    "grid25": grid25,
    "moons": Moons,
    "swiss_roll": SwissRoll,
}


def toy_target(name: str, **kwargs: Any):
    """The toy target `name` (``ring8``, ``grid25``, ``moons``, ``swiss_roll``).

    Keyword arguments go to its constructor.
    """
    if name not in TOY_TARGETS:
        raise ValueError(f"unknown toy target {name!r}; available: {sorted(TOY_TARGETS)}.")
    return TOY_TARGETS[name](**kwargs)
