"""EDM diffusion utilities: preconditioning, denoising score matching, samplers.

Everything follows the variance-exploding EDM parametrisation of Karras et al. (2022), docs/reference.md
section 6: ``x_sigma = x + sigma * eps`` (alpha_t = 1), a denoiser

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma))

wrapped around a raw network ``F``, trained with the denoising score matching (DSM) loss
``lambda(sigma) ||D(x + sigma eps; sigma) - x||^2`` with ``lambda = 1 / c_out^2`` and
``log sigma ~ N(P_mean, P_std^2)``, and sampled with the deterministic Heun (or Euler) solver of
the probability-flow ODE ``dx/dsigma = (x - D(x; sigma)) / sigma`` on the Karras sigma steps.

Conventions:

- ``sigma`` is a scalar or a ``[batch]`` vector (one noise level per sample); it is broadcast
  over the trailing data axes of ``x`` (``[batch, ...]``).
- A *denoise function* is any callable ``denoise_fn(x, sigma) -> D(x; sigma)`` with ``x``
  ``[batch, ...]`` and ``sigma`` ``[batch]``; `denoiser` builds one from a raw network.
- The score of the noised data distribution is ``(D(x; sigma) - x) / sigma^2``
  (`score_from_denoiser`), Tweedie's formula.

References:
  Karras, Aittala, Aila, Laine, "Elucidating the Design Space of Diffusion-Based Generative
  Models", NeurIPS 2022, https://arxiv.org/abs/2206.00364 (Table 1 and Algorithm 1).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
DenoiseFn = Callable[[Array, Array], Array]
RawNetFn = Callable[[Array, Array], Array]

__all__ = [
    "c_skip",
    "c_out",
    "c_in",
    "c_noise",
    "preconditioning",
    "expand_sigma",
    "denoiser",
    "score_from_denoiser",
    "denoiser_from_score",
    "sample_sigma",
    "dsm_loss_per_sample",
    "dsm_loss",
    "karras_sigmas",
    "heun_sampler",
    "euler_sampler",
    "sample",
    "num_evaluations",
]


# ---------------------------------------------------------------------------------------------
# Preconditioning (docs/reference.md section 6; Karras et al. 2022, Table 1, "EDM" column).
# Each coefficient takes noise levels `sigma` of any shape and the data standard deviation
# `sigma_data`, and returns an array of the shape of `sigma`.


def c_skip(sigma: Array, sigma_data: float) -> Array:
    """Skip scaling ``sigma_data^2 / (sigma^2 + sigma_data^2)`` (EDM Table 1)."""
    sigma = jnp.asarray(sigma)
    return sigma_data**2 / (sigma**2 + sigma_data**2)


def c_out(sigma: Array, sigma_data: float) -> Array:
    """Output scaling ``sigma sigma_data / sqrt(sigma^2 + sigma_data^2)`` (EDM Table 1)."""
    return jnp.asarray(sigma) * sigma_data * c_in(sigma, sigma_data)


def c_in(sigma: Array, sigma_data: float) -> Array:
    """Input scaling ``1 / sqrt(sigma^2 + sigma_data^2)`` (EDM Table 1)."""
    sigma = jnp.asarray(sigma)
    return jax.lax.rsqrt(sigma**2 + sigma_data**2)


def c_noise(sigma: Array) -> Array:
    """Noise conditioning input ``log(sigma) / 4`` of positive noise levels (EDM Table 1)."""
    return jnp.log(jnp.asarray(sigma)) / 4.0


def preconditioning(sigma: Array, sigma_data: float) -> tuple[Array, Array, Array, Array]:
    """All four EDM coefficients ``(c_skip, c_out, c_in, c_noise)`` at ``sigma``.

    Args:
      sigma: positive noise levels, any shape.
      sigma_data: standard deviation of the data (0.5 for images in [-1, 1]).

    Returns:
      A tuple of four arrays of the shape of ``sigma``.

    References:
      Karras et al. 2022, Table 1; docs/reference.md section 6.
    """
    return (
        c_skip(sigma, sigma_data),
        c_out(sigma, sigma_data),
        c_in(sigma, sigma_data),
        c_noise(sigma),
    )


def expand_sigma(x: Array, sigma: Array, name: str = "sigma") -> Array:
    """Broadcasts a scalar or ``[batch]`` sigma to ``[batch, 1, ..., 1]`` against ``x``.

    Raises:
      ValueError: if ``sigma`` is neither a scalar nor ``[batch]`` (both shapes named).
    """
    sigma = jnp.asarray(sigma, dtype=x.dtype)
    if x.ndim < 1:
        raise ValueError(f"x must have a leading batch axis, got shape {x.shape}.")
    if sigma.ndim == 0:
        sigma = jnp.full((x.shape[0],), sigma, dtype=x.dtype)
    if sigma.shape != (x.shape[0],):
        raise ValueError(
            f"{name} must be a scalar or have shape [batch] = {(x.shape[0],)} to match x of shape "
            f"{x.shape}; got {name} of shape {sigma.shape}."
        )
    return sigma.reshape(sigma.shape + (1,) * (x.ndim - 1))


def denoiser(net_fn: RawNetFn, x: Array, sigma: Array, sigma_data: float) -> Array:
    """EDM denoiser ``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)`` (docs/reference.md section 6).

    Args:
      net_fn: raw network ``F(x_in, c_noise) -> out`` with ``x_in`` of the shape of ``x`` and
        ``c_noise`` of shape ``[batch]``; ``out`` must have the shape of ``x``.
      x: noisy inputs, ``[batch, ...]``.
      sigma: noise levels, scalar or ``[batch]``.
      sigma_data: standard deviation of the data.

    Returns:
      ``D(x; sigma)``, same shape as ``x``.

    References:
      Karras et al. 2022, Eq. (7) and Table 1.
    """
    s = expand_sigma(x, sigma)
    out = net_fn(c_in(s, sigma_data) * x, c_noise(s.reshape(-1)))
    if out.shape != x.shape:
        raise ValueError(
            f"net_fn must return an array of the shape of x {x.shape}; got {out.shape}."
        )
    return c_skip(s, sigma_data) * x + c_out(s, sigma_data) * out


def score_from_denoiser(denoised: Array, x: Array, sigma: Array) -> Array:
    """Score of the noised distribution, ``(D(x; sigma) - x) / sigma^2`` (Tweedie).

    Args:
      denoised: ``D(x; sigma)``, ``[batch, ...]``.
      x: noisy inputs, same shape.
      sigma: noise levels, scalar or ``[batch]``.

    Returns:
      ``grad_x log p_sigma(x)``, same shape as ``x``.

    References:
      Karras et al. 2022, Eq. (3); docs/reference.md section 6.
    """
    if denoised.shape != x.shape:
        raise ValueError(
            f"denoised and x must have the same shape; got {denoised.shape} and {x.shape}."
        )
    s = expand_sigma(x, sigma)
    return (denoised - x) / s**2


def denoiser_from_score(score: Array, x: Array, sigma: Array) -> Array:
    """Inverse of `score_from_denoiser`: ``D = x + sigma^2 score``.

    Args:
      score: ``grad_x log p_sigma(x)``, ``[batch, ...]``.
      x: noisy inputs, same shape.
      sigma: noise levels, scalar or ``[batch]``.

    Returns:
      The denoiser output, same shape as ``x``.

    References:
      Karras et al. 2022, Eq. (3).
    """
    if score.shape != x.shape:
        raise ValueError(f"score and x must have the same shape; got {score.shape} and {x.shape}.")
    s = expand_sigma(x, sigma)
    return x + s**2 * score


# ---------------------------------------------------------------------------------------------
# Denoising score matching (docs/reference.md section 6).


def sample_sigma(
    key: Array, shape: tuple[int, ...], p_mean: float = -1.2, p_std: float = 1.2
) -> Array:
    """Log-normal training noise levels, ``log sigma ~ N(p_mean, p_std^2)``.

    Args:
      key: PRNG key.
      shape: output shape, usually ``(batch,)``.
      p_mean: mean of ``log sigma`` (-1.2 for images in [-1, 1]).
      p_std: standard deviation of ``log sigma`` (1.2 for images).

    Returns:
      Positive array of shape ``shape``.

    References:
      Karras et al. 2022, Table 1 (training distribution).
    """
    return jnp.exp(p_mean + p_std * jax.random.normal(key, shape))


def dsm_loss_per_sample(
    denoise_fn: DenoiseFn, x: Array, sigma: Array, noise: Array, sigma_data: float
) -> Array:
    """Weighted DSM loss per sample, ``lambda(sigma) mean_dims (D(x + sigma n; sigma) - x)^2``.

    With ``lambda = 1 / c_out^2`` the effective target of the raw network has unit variance at
    every noise level, which is why EDM uses this weighting.

    Args:
      denoise_fn: ``D(x_noisy, sigma) -> x0_hat``, ``sigma`` of shape ``[batch]``.
      x: clean samples, ``[batch, ...]``.
      sigma: noise levels, ``[batch]`` (or scalar).
      noise: standard normal noise, shape of ``x``.
      sigma_data: standard deviation of the data.

    Returns:
      ``[batch]`` losses, averaged over the data dimensions.

    References:
      Karras et al. 2022, Eq. (8) and Table 1; docs/reference.md section 6.
    """
    if noise.shape != x.shape:
        raise ValueError(f"noise must have the shape of x; got {noise.shape} and {x.shape}.")
    s = expand_sigma(x, sigma)
    d = denoise_fn(x + s * noise, s.reshape(-1))
    if d.shape != x.shape:
        raise ValueError(f"denoise_fn must return the shape of x {x.shape}; got {d.shape}.")
    weight = 1.0 / c_out(s, sigma_data) ** 2
    err = weight * (d - x) ** 2
    return jnp.mean(err.reshape(x.shape[0], -1), axis=-1)


def dsm_loss(
    denoise_fn: DenoiseFn,
    x: Array,
    key: Array,
    sigma_data: float,
    *,
    p_mean: float = -1.2,
    p_std: float = 1.2,
) -> Array:
    """EDM denoising score matching loss with log-normal noise levels (scalar).

    Draws ``log sigma ~ N(p_mean, p_std^2)`` and ``noise ~ N(0, I)`` from ``key`` and averages
    `dsm_loss_per_sample` over the batch.

    Args:
      denoise_fn: ``D(x_noisy, sigma) -> x0_hat``.
      x: clean samples, ``[batch, ...]``.
      key: PRNG key.
      sigma_data: standard deviation of the data.
      p_mean: mean of ``log sigma``.
      p_std: standard deviation of ``log sigma``.

    Returns:
      Scalar loss.

    References:
      Karras et al. 2022, Eq. (8); docs/reference.md section 6.
    """
    k_sigma, k_noise = jax.random.split(key)
    sigma = sample_sigma(k_sigma, (x.shape[0],), p_mean, p_std)
    noise = jax.random.normal(k_noise, x.shape, x.dtype)
    return jnp.mean(dsm_loss_per_sample(denoise_fn, x, sigma, noise, sigma_data))


# ---------------------------------------------------------------------------------------------
# Sampling (docs/reference.md section 6, EDM Algorithm 1 without stochasticity).


def karras_sigmas(
    num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
) -> Array:
    """Karras noise levels ``sigma_0 > ... > sigma_{N-1}`` followed by ``sigma_N = 0``.

    ``sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``.

    Args:
      num_steps: N >= 1 (N = 1 gives ``[sigma_max, 0]``).
      sigma_min: smallest positive noise level.
      sigma_max: largest noise level.
      rho: time-discretisation exponent (7 in EDM).

    Returns:
      ``[num_steps + 1]`` array, decreasing, ending in 0.

    References:
      Karras et al. 2022, Eq. (5); docs/reference.md section 6.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(
            f"need 0 < sigma_min <= sigma_max; got sigma_min={sigma_min}, sigma_max={sigma_max}."
        )
    i = jnp.arange(num_steps, dtype=jnp.result_type(float))
    frac = i / max(num_steps - 1, 1)
    inv = 1.0 / rho
    sig = (sigma_max**inv + frac * (sigma_min**inv - sigma_max**inv)) ** rho
    return jnp.concatenate([sig, jnp.zeros((1,), sig.dtype)])


def num_evaluations(num_steps: int, method: str = "heun") -> int:
    """Network evaluations of the deterministic sampler: ``2N - 1`` (Heun) or ``N`` (Euler).

    References:
      Karras et al. 2022, Algorithm 1; docs/reference.md section 6 (N = 18 Heun steps cost 35).
    """
    if method == "heun":
        return 2 * num_steps - 1
    if method == "euler":
        return num_steps
    raise ValueError(f"method must be 'heun' or 'euler', got {method!r}.")


def _ode_direction(denoise_fn: DenoiseFn, x: Array, sigma: Array) -> Array:
    d = denoise_fn(x, jnp.full((x.shape[0],), sigma, x.dtype))
    return (x - d) / sigma


def euler_sampler(denoise_fn: DenoiseFn, x_init: Array, sigmas: Array) -> Array:
    """Deterministic Euler solver of ``dx/dsigma = (x - D(x; sigma)) / sigma``.

    Args:
      denoise_fn: ``D(x, sigma[batch]) -> x0_hat``.
      x_init: starting points at ``sigmas[0]`` (e.g. ``sigma_max * z``), ``[batch, ...]``.
      sigmas: ``[N + 1]`` decreasing noise levels ending in 0 (`karras_sigmas`).

    Returns:
      Samples at ``sigma = 0``, shape of ``x_init``; ``N`` network evaluations.

    References:
      Karras et al. 2022, Algorithm 1 (first-order variant).
    """
    sigmas = jnp.asarray(sigmas, x_init.dtype)

    def body(i, x):
        s, s_next = sigmas[i], sigmas[i + 1]
        return x + (s_next - s) * _ode_direction(denoise_fn, x, s)

    return jax.lax.fori_loop(0, sigmas.shape[0] - 1, body, x_init)


def heun_sampler(denoise_fn: DenoiseFn, x_init: Array, sigmas: Array) -> Array:
    """Deterministic Heun (2nd order) solver, the EDM sampler; ``2N - 1`` evaluations.

    Every step but the last (to ``sigma = 0``) applies Heun's correction; the last step is
    Euler because the ODE direction is undefined at ``sigma = 0``.

    Args:
      denoise_fn: ``D(x, sigma[batch]) -> x0_hat``.
      x_init: starting points at ``sigmas[0]`` (e.g. ``sigma_max * z``), ``[batch, ...]``.
      sigmas: ``[N + 1]`` decreasing noise levels ending in 0 (`karras_sigmas`).

    Returns:
      Samples at ``sigma = 0``, shape of ``x_init``.

    References:
      Karras et al. 2022, Algorithm 1 (S_churn = 0); docs/reference.md section 6.
    """
    sigmas = jnp.asarray(sigmas, x_init.dtype)
    n = sigmas.shape[0] - 1

    def body(i, x):
        s, s_next = sigmas[i], sigmas[i + 1]
        d = _ode_direction(denoise_fn, x, s)
        x_euler = x + (s_next - s) * d
        d_next = _ode_direction(denoise_fn, x_euler, s_next)
        return x + (s_next - s) * 0.5 * (d + d_next)

    x = jax.lax.fori_loop(0, n - 1, body, x_init)
    s = sigmas[n - 1]
    return x + (sigmas[n] - s) * _ode_direction(denoise_fn, x, s)


def sample(
    denoise_fn: DenoiseFn,
    key: Array,
    shape: tuple[int, ...],
    *,
    num_steps: int = 18,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    method: str = "heun",
    dtype=jnp.float32,
) -> Array:
    """Draws samples with the deterministic EDM sampler from ``x_init = sigma_max z``.

    Args:
      denoise_fn: ``D(x, sigma[batch]) -> x0_hat``.
      key: PRNG key for the initial noise.
      shape: ``(batch, ...)`` of the samples.
      num_steps: N; Heun costs ``2N - 1`` evaluations (N = 18 -> 35), Euler ``N``.
      sigma_min: smallest positive noise level.
      sigma_max: largest noise level (scale it to the data for toy targets).
      rho: Karras step exponent.
      method: ``"heun"`` or ``"euler"``.
      dtype: floating dtype of the samples.

    Returns:
      ``[batch, ...]`` samples.

    References:
      Karras et al. 2022, Algorithm 1; docs/reference.md section 6.
    """
    sigmas = karras_sigmas(num_steps, sigma_min, sigma_max, rho).astype(dtype)
    x_init = sigma_max * jax.random.normal(key, shape, dtype)
    if method == "heun":
        return heun_sampler(denoise_fn, x_init, sigmas)
    if method == "euler":
        return euler_sampler(denoise_fn, x_init, sigmas)
    raise ValueError(f"method must be 'heun' or 'euler', got {method!r}.")
