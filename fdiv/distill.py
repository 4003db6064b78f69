"""f-distill: score-weighted generator gradients for one-step diffusion distillation.

docs/reference.md section 4. A one-step generator ``x = G_theta(z)`` with density ``q_theta`` is trained to
minimise ``D_f(P || Q_theta)`` where ``P`` is the teacher's distribution. With
``r = p(x) / q_theta(x)`` and the scores ``s_p = grad_x log p``, ``s_q = grad_x log q_theta``:

    grad_theta D_f(P || Q_theta) = E_z[ h(r) (s_q(x) - s_p(x))^T dG_theta(z)/dtheta ],
    h(r) = r^2 f''(r).

Reverse KL has ``h = 1`` (the VSD / DMD gradient); forward KL has ``h = r``. Every quantity
the estimator needs is treated as a constant (stop-gradient): the gradient flows only through
the generator sample ``x``. The training version evaluates scores of the *noised*
distributions at ``x_t = x + sigma_t eps`` from denoisers (teacher for ``p_t``, a fake-score
network trained on generator samples for ``q_t``) and estimates ``log r_t`` with a
discriminator, whose logit is trained with `discriminator_loss`.

Conventions: P is the target (teacher / real data), Q the model (generator); a
``log_ratio`` is ``log p - log q`` (a discriminator logit trained with `discriminator_loss`
estimates it); batches are ``[batch, ...]`` and per-sample quantities ``[batch]``.

References:
  Xu, Nie, Vahdat, "One-step Diffusion Models with f-Divergence Distribution Matching"
  (f-distill), 2025, https://arxiv.org/abs/2502.15681.
  Yin et al., "One-step Diffusion with Distribution Matching Distillation" (DMD), CVPR 2024,
  https://arxiv.org/abs/2311.18828 (the reverse-KL special case and its normalisation).
  Yin et al., "Improved Distribution Matching Distillation" (DMD2), NeurIPS 2024,
  https://arxiv.org/abs/2405.14867 (discriminator head on the fake score, GAN term).
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

from fdiv import divergences as _divergences

Array = jax.Array

__all__ = [
    "resolve_divergence",
    "clip_log_ratio",
    "weights",
    "score_weighted_loss",
    "fdistill_loss",
    "discriminator_loss",
    "generator_gan_loss",
]

_EPS = 1e-6


def resolve_divergence(divergence) -> "_divergences.FDivergence":
    """Returns the `FDivergence` for a name or instance and checks that it has a weight h.

    Raises:
      ValueError: for an unknown name (listing the valid ones) or a divergence without an
        f-distill weight (``f''`` is zero almost everywhere, e.g. total variation), naming the
        registered divergences that have one.
    """
    d = _divergences.resolve(divergence)
    if not d.has_weight:
        weighted = [
            n
            for n in _divergences.names()
            if n in ("alpha", "t_power") or _divergences.get(n).has_weight
        ]
        raise ValueError(
            f"divergence {d.name!r} has no f-distill weight h(u) = u^2 f''(u) "
            f"(f'' vanishes almost everywhere), so its score-weighted gradient is undefined; "
            f"use one of {weighted}."
        )
    return d


def clip_log_ratio(
    log_ratio: Array,
    logit_clip: Optional[float] = 10.0,
    ratio_clip: Optional[tuple[float, float]] = (0.1, 20.0),
) -> Array:
    """Clips a discriminator log-ratio as in the f-distill implementation (docs/reference.md section 4).

    The logit is clamped to ``[-logit_clip, logit_clip]`` and the ratio ``r = exp(logit)`` to
    ``ratio_clip``; both are done in log space. ``None`` disables a clip.

    Args:
      log_ratio: ``log p - log q`` estimates, any shape.
      logit_clip: symmetric bound on the logit, or None.
      ratio_clip: ``(r_min, r_max)`` with ``0 < r_min < r_max``, or None.

    Returns:
      Clipped log-ratios, same shape.

    References:
      Xu et al. 2025 (f-distill) and the authors' released implementation; docs/reference.md section 4.
    """
    log_ratio = jnp.asarray(log_ratio)
    if logit_clip is not None:
        if logit_clip <= 0:
            raise ValueError(f"logit_clip must be positive or None, got {logit_clip}.")
        log_ratio = jnp.clip(log_ratio, -logit_clip, logit_clip)
    if ratio_clip is not None:
        lo, hi = ratio_clip
        if not 0 < lo < hi:
            raise ValueError(
                f"ratio_clip must be (r_min, r_max) with 0 < r_min < r_max, got {ratio_clip}."
            )
        log_ratio = jnp.clip(log_ratio, math.log(lo), math.log(hi))
    return log_ratio


def weights(
    log_ratio: Array,
    divergence,
    *,
    logit_clip: Optional[float] = 10.0,
    ratio_clip: Optional[tuple[float, float]] = (0.1, 20.0),
    normalize: bool = True,
    axis_name: Optional[str] = None,
) -> Array:
    """f-distill weights ``h(r) = r^2 f''(r)`` from log density ratios (docs/reference.md section 4).

    The log-ratio is clipped with `clip_log_ratio`, ``h`` evaluated in log space by
    ``divergence.weight``, and, with ``normalize``, divided by its batch mean:
    ``h / (mean h + 1e-6)``. The mean runs over every element of ``log_ratio``; under
    ``jax.jit`` with a globally sharded batch that is already the mean over all devices, and
    inside ``shard_map`` / ``pmap`` pass ``axis_name`` to average across devices with
    ``lax.pmean`` (each device must hold the same number of elements). The result is
    stop-gradiented: weights are constants of the generator update.

    Args:
      log_ratio: ``log p(x) - log q(x)`` (a discriminator logit), usually ``[batch]``.
      divergence: divergence name (e.g. ``"js"``) or `FDivergence` with a weight.
      logit_clip: bound on ``|logit|`` (None: no clip).
      ratio_clip: bounds on ``r`` (None: no clip).
      normalize: divide by the (global) batch mean.
      axis_name: mapped axis name(s) for the cross-device mean, or None.

    Returns:
      Non-negative weights with the shape of ``log_ratio``.

    Raises:
      ValueError: for divergences without a weight (total variation).

    References:
      Xu et al. 2025 (f-distill); docs/reference.md sections 2 and 4.
    """
    d = resolve_divergence(divergence)
    log_r = clip_log_ratio(jax.lax.stop_gradient(log_ratio), logit_clip, ratio_clip)
    h = d.weight(log_r)
    if normalize:
        mean_h = jnp.mean(h)
        if axis_name is not None:
            mean_h = jax.lax.pmean(mean_h, axis_name)
        h = h / (mean_h + _EPS)
    return jax.lax.stop_gradient(h)


def _check_batch(name: str, arr: Array, x: Array) -> None:
    if arr.shape != (x.shape[0],):
        raise ValueError(
            f"{name} must have shape [batch] = {(x.shape[0],)} to match x of shape {x.shape}; "
            f"got {name} of shape {arr.shape}."
        )


def _check_same(name: str, arr: Array, x: Array) -> None:
    if arr.shape != x.shape:
        raise ValueError(
            f"{name} must have the shape of x; got {name} of shape {arr.shape} and "
            f"x of shape {x.shape}."
        )


def _surrogate(x: Array, g: Array) -> Array:
    """Mean over the batch of ``1/2 ||x - sg(x - g)||^2``: its gradient is ``mean g^T dx``."""
    target = jax.lax.stop_gradient(x - g)
    per_sample = 0.5 * jnp.sum(((x - target) ** 2).reshape(x.shape[0], -1), axis=-1)
    return jnp.mean(per_sample)


def score_weighted_loss(
    x: Array,
    target_score: Array,
    model_score: Array,
    log_ratio: Array,
    divergence,
    *,
    normalize: bool = False,
    logit_clip: Optional[float] = None,
    ratio_clip: Optional[tuple[float, float]] = None,
    axis_name: Optional[str] = None,
) -> Array:
    """Surrogate whose gradient is the f-divergence gradient ``E[h(r)(s_q - s_p)^T dx]``.

    ``loss = mean_b 1/2 ||x_b - sg(x_b - g_b)||^2`` with ``g = h(r) (s_q - s_p)`` constant, so
    for any parameters ``theta`` that ``x`` depends on,
    ``grad_theta loss = mean_b h(r_b) (s_q(x_b) - s_p(x_b))^T dx_b/dtheta``, which equals
    ``grad_theta D_f(P || Q_theta)`` in expectation when the scores and ratios are exact
    (docs/reference.md section 4). The loss *value* is ``1/2 mean ||g||^2``, not the divergence.

    The defaults are the exact estimator (no clipping, no normalisation); pass
    ``normalize=True, logit_clip=10.0, ratio_clip=(0.1, 20.0)`` for the practical weights.

    Args:
      x: generator samples, ``[batch, ...]``, differentiable w.r.t. the generator.
      target_score: ``s_p(x)``, the target's score, same shape as ``x``.
      model_score: ``s_q(x)``, the generator distribution's score, same shape as ``x``.
      log_ratio: ``log p(x) - log q(x)``, ``[batch]``.
      divergence: name or `FDivergence` with a weight.
      normalize: divide ``h`` by its batch mean (see `weights`).
      logit_clip: see `weights` (default None here: exact).
      ratio_clip: see `weights` (default None here: exact).
      axis_name: mapped axis name for the normalisation mean.

    Returns:
      Scalar surrogate loss.

    References:
      Xu et al. 2025 (f-distill); docs/reference.md section 4 (derivation and numerical check).
    """
    _check_same("target_score", target_score, x)
    _check_same("model_score", model_score, x)
    _check_batch("log_ratio", jnp.asarray(log_ratio), x)
    h = weights(
        log_ratio,
        divergence,
        logit_clip=logit_clip,
        ratio_clip=ratio_clip,
        normalize=normalize,
        axis_name=axis_name,
    )
    h = h.reshape(h.shape + (1,) * (x.ndim - 1))
    g = jax.lax.stop_gradient(h * (model_score - target_score))
    return _surrogate(x, g)


def fdistill_loss(
    x_t: Array,
    sigma: Array,
    x0_fake: Array,
    x0_teacher: Array,
    log_ratio: Array,
    divergence,
    *,
    x: Optional[Array] = None,
    normalize: bool = True,
    logit_clip: Optional[float] = 10.0,
    ratio_clip: Optional[tuple[float, float]] = (0.1, 20.0),
    axis_name: Optional[str] = None,
) -> Array:
    """Denoiser-space f-distill generator loss used in training (docs/reference.md sections 4 and 6).

    At the noised generator sample ``x_t = x + sigma eps`` (EDM, ``alpha_t = 1``) the score
    difference is ``s_q - s_p = (x0_fake - x0_teacher) / sigma^2`` from the fake-score and
    teacher denoisers. The per-sample update direction is

    - ``g = h(r) (x0_fake - x0_teacher) / sigma^2`` without ``x``;
    - ``g = h(r) (x0_fake - x0_teacher) / (mean|x - x0_teacher| + 1e-6)`` when the generator
      sample ``x`` is given: DMD's weight ``sigma^2 / mean|x - x0_teacher|`` (mean over the
      data dimensions of each sample) cancels the ``1 / sigma^2`` and makes the step size
      invariant to the noise level and the data scale.

    and the loss is ``mean_b 1/2 ||x_t - sg(x_t - g)||^2``; its gradient w.r.t. the generator is
    ``mean_b g_b^T dx_t/dtheta`` (``dx_t/dtheta = dx/dtheta``).

    Args:
      x_t: noised generator samples, ``[batch, ...]``, differentiable w.r.t. the generator.
      sigma: noise levels, scalar or ``[batch]``.
      x0_fake: fake-score denoiser output at ``(x_t, sigma)``, shape of ``x_t``.
      x0_teacher: teacher denoiser output at ``(x_t, sigma)``, shape of ``x_t``.
      log_ratio: discriminator logits ``~ log p_t(x_t) - log q_t(x_t)``, ``[batch]``.
      divergence: name or `FDivergence` with a weight.
      x: the clean generator samples for the DMD normalisation, or None to use ``1/sigma^2``.
      normalize: divide ``h`` by its (global) batch mean.
      logit_clip: bound on the logit (f-distill: 10).
      ratio_clip: bounds on ``r`` (f-distill: (0.1, 20)).
      axis_name: mapped axis name for the normalisation mean.

    Returns:
      Scalar surrogate loss.

    References:
      Xu et al. 2025 (f-distill); Yin et al. 2024 (DMD, the per-sample normalisation);
      docs/reference.md sections 4 and 6.
    """
    _check_same("x0_fake", x0_fake, x_t)
    _check_same("x0_teacher", x0_teacher, x_t)
    _check_batch("log_ratio", jnp.asarray(log_ratio), x_t)
    expand = (x_t.shape[0],) + (1,) * (x_t.ndim - 1)
    sigma = jnp.asarray(sigma, x_t.dtype)
    if sigma.ndim == 0:
        sigma = jnp.full((x_t.shape[0],), sigma, x_t.dtype)
    _check_batch("sigma", sigma, x_t)
    diff = jax.lax.stop_gradient(x0_fake - x0_teacher)
    if x is None:
        scale = 1.0 / sigma.reshape(expand) ** 2
    else:
        _check_same("x", x, x_t)
        dist = jnp.mean(jnp.abs(x - x0_teacher).reshape(x.shape[0], -1), axis=-1)
        scale = 1.0 / (dist.reshape(expand) + _EPS)
    h = weights(
        log_ratio,
        divergence,
        logit_clip=logit_clip,
        ratio_clip=ratio_clip,
        normalize=normalize,
        axis_name=axis_name,
    )
    g = jax.lax.stop_gradient(h.reshape(expand) * scale * diff)
    return _surrogate(x_t, g)


def discriminator_loss(logit_real: Array, logit_fake: Array) -> Array:
    """Logistic density-ratio loss ``E_Q softplus(l) + E_P softplus(-l)`` (docs/reference.md section 3).

    P is the real / teacher side, Q the generator side. At the optimum the logit is
    ``log p - log q`` (plus ``log(n_P / n_Q)`` for unequal batch sizes), the ratio that
    `weights` needs.

    Args:
      logit_real: logits on P samples, ``[n_p]`` (any shape; averaged).
      logit_fake: logits on Q samples, ``[n_q]`` (any shape; averaged).

    Returns:
      Scalar loss.

    References:
      Goodfellow et al. 2014; docs/reference.md sections 3 and 4.
    """
    return jnp.mean(jax.nn.softplus(logit_fake)) + jnp.mean(jax.nn.softplus(-logit_real))


def generator_gan_loss(logit_fake: Array) -> Array:
    """Non-saturating generator GAN term ``E_Q softplus(-l)`` (docs/reference.md section 4).

    Args:
      logit_fake: discriminator logits on generator samples (any shape; averaged).

    Returns:
      Scalar loss.

    References:
      Goodfellow et al. 2014; Yin et al. 2024 (DMD2); docs/reference.md section 4.
    """
    return jnp.mean(jax.nn.softplus(-logit_fake))
