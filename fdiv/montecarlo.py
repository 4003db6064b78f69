"""Monte Carlo estimates of f-divergences from samples with log-densities.

Convention (docs/reference.md section 1): ``P`` is the target, ``Q`` the model,
``u = p / q`` and ``D_f(P || Q) = E_Q[f(u)]``. Every estimator takes the
log-densities of both distributions evaluated at the samples, ``log_p[i] =
log p(x_i)`` and ``log_q[i] = log q(x_i)``, and returns ``(estimate,
standard_error)`` (docs/reference.md section 3, "Monte Carlo with densities"):

* :func:`mc_divergence_from_model_samples`: ``x_i ~ Q``, mean of ``f(u_i)``.
* :func:`mc_divergence_from_target_samples`: ``x_i ~ P``, mean of
  ``f(u_i) / u_i`` (since ``E_P[f(u)/u] = E_Q[f(u)]``).
* :func:`mc_divergence_from_both_samples`: ``n_P`` samples of ``P`` and ``n_Q`` of
  ``Q``, pooled as one stratified sample of the mixture ``a P + (1 - a) Q`` (``a = n_P / n``)
  with the balance-heuristic weight ``q / m``: bounded terms wherever ``f(u)/u`` or ``f(u)``
  grows slowly, so it stays accurate when the two distributions barely overlap.
* :func:`mc_divergence_self_normalized`: ``x_i ~ Q`` and ``p`` known only up
  to a constant; the ratios are normalised by the importance-sampling estimate
  of the constant (:func:`mc_log_normalizer`). Biased for finite ``n``,
  consistent as ``n -> inf``.

The standard error is ``std / sqrt(n)`` with the unbiased (``ddof=1``) sample
standard deviation of the per-sample terms; for the self-normalised estimator
the terms are the delta-method influence values (see its docstring).
Reductions are over ``axis`` (all axes by default), so a batch of independent
problems can share one call. ``where`` masks samples out: they count neither
in the mean nor in ``n`` and receive zero gradient (double-``where``).
Half-precision inputs are computed in ``float32``.

The per-sample terms ``f(u)`` and ``f(u)/u`` are exact in log space (see
``fdiv.divergences``): a sample with an extreme ratio (``log u`` of +-100 in
float32, +-1000 in float64) contributes its true, finite value, e.g. ``-log u``
for reverse KL. A sample whose term is infinite (e.g. ``p(x) = 0`` for reverse
KL, where ``f(0) = inf``) makes the estimate ``+inf`` and the standard error
NaN; NaN inputs propagate.
"""

from __future__ import annotations

import numbers
from typing import Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from fdiv import _checks
from fdiv import divergences as _divergences

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
Axis = Union[int, Sequence[int], None]

__all__ = [
    "mc_divergence_from_both_samples",
    "mc_divergence_from_model_samples",
    "mc_divergence_from_target_samples",
    "mc_divergence_self_normalized",
    "mc_log_normalizer",
]


def _normalize_axis(axis, ndim, name_shape):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, numbers.Integral) else tuple(axis)
    out = []
    for a in axes:
        if not isinstance(a, numbers.Integral) or not -ndim <= a < ndim:
            raise ValueError(
                f"axis must be None, an integer or a tuple of integers in [-{ndim},"
                f" {ndim}) for samples of shape {name_shape}, got {axis!r}."
            )
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"axis contains repeated axes: {axis!r}.")
    return tuple(sorted(out))


def _prepare(log_p, log_q, where, axis, names):
    """Validates and returns ``(log_u, mask, axes)`` in the compute dtype."""
    name_p, name_q = names
    log_p = _checks.check_floating(log_p, name_p)
    log_q = _checks.check_floating(log_q, name_q)
    if log_p.shape != log_q.shape:
        raise ValueError(
            f"{name_p} and {name_q} must have the same shape (one entry per"
            f" sample), got {name_p}.shape={log_p.shape} and"
            f" {name_q}.shape={log_q.shape}."
        )
    shape = log_p.shape
    axes = _normalize_axis(axis, len(shape), shape)
    n_static = int(np.prod([shape[a] for a in axes], dtype=np.int64))
    if n_static < 2:
        raise ValueError(
            "at least 2 samples along axis are needed for a standard error, got"
            f" {n_static} (samples shape {shape}, axis {axis!r})."
        )
    dtype = _checks.compute_dtype(log_p.dtype, log_q.dtype)
    log_p = log_p.astype(dtype)
    log_q = log_q.astype(dtype)

    mask = None
    if where is not None:
        mask = _checks.check_mask(where, shape, f"the samples shape {shape}")
        mask = jnp.broadcast_to(mask, shape)
        # Double-where, first half: masked samples get log_u = 0 (u = 1) before
        # any arithmetic, so inf/NaN there cannot reach values or gradients.
        zero = jnp.zeros((), dtype)
        log_p = jnp.where(mask, log_p, zero)
        log_q = jnp.where(mask, log_q, zero)
    return log_p - log_q, mask, axes


def _count(mask, shape, axes, dtype):
    if mask is None:
        return jnp.asarray(np.prod([shape[a] for a in axes]), dtype)
    return jnp.sum(mask, axis=axes).astype(dtype)


def _masked(values, mask):
    if mask is None:
        return values
    return jnp.where(mask, values, jnp.zeros((), values.dtype))


def _mean_and_se(values, mask, axes):
    """Masked mean and ``std(ddof=1) / sqrt(n)`` over ``axes``."""
    n = _count(mask, values.shape, axes, values.dtype)
    mean = jnp.sum(_masked(values, mask), axis=axes) / n
    centred = _masked(values - jnp.expand_dims(mean, axes), mask)
    var = jnp.sum(centred * centred, axis=axes) / (n - 1)
    return mean, jnp.sqrt(var / n)


def _sample_mean_estimator(integrand: str, name: str, doc: str):
    """One of the two sample-mean estimators: the mean and standard error of
    ``getattr(divergence, integrand)(log p - log q)`` over the sample axes."""

    def estimator(
        log_p: ArrayLike,
        log_q: ArrayLike,
        divergence: Union[str, "_divergences.FDivergence"],
        *,
        where: Optional[ArrayLike] = None,
        axis: Axis = None,
    ) -> Tuple[Array, Array]:
        divergence = _divergences.resolve(divergence)
        log_u, mask, axes = _prepare(log_p, log_q, where, axis, ("log_p", "log_q"))
        return _mean_and_se(getattr(divergence, integrand)(log_u), mask, axes)

    estimator.__name__ = estimator.__qualname__ = name
    estimator.__doc__ = doc
    return estimator


_SAMPLE_MEAN_ARGS = """divergence: A registered divergence name or an ``FDivergence``.
      where: Optional boolean mask over samples, broadcastable to ``log_p``;
        masked samples count neither in the mean nor in ``n``.
      axis: Sample axis or axes to reduce; ``None`` (default) reduces all.

    Returns:
      ``(estimate, standard_error)``, each of shape ``log_p.shape`` without
      ``axis`` (scalars by default)."""

mc_divergence_from_model_samples = _sample_mean_estimator(
    "f",
    "mc_divergence_from_model_samples",
    r"""Monte Carlo ``D_f(P || Q)`` from samples of the model ``Q``.

    With ``x_i ~ Q`` and ``u_i = p(x_i) / q(x_i)`` (docs/reference.md section 3):

    .. math::
      \hat D = \frac{1}{n} \sum_i f(u_i), \qquad
      \mathrm{se} = \mathrm{std}_i(f(u_i)) / \sqrt{n}.

    Unbiased. Its variance is finite only when ``E_Q[f(u)^2]`` is; for
    forward KL with a heavy-tailed ratio prefer
    :func:`mc_divergence_from_target_samples`.

    Args:
      log_p: ``log p(x_i)`` of the (normalised) target, shape ``[n]`` or any
        shape whose ``axis`` axes index samples.
      log_q: ``log q(x_i)`` of the model at the same samples, same shape.
      {args}

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from fdiv.montecarlo import mc_divergence_from_model_samples
      >>> x = jax.random.normal(jax.random.key(0), (20000,)) + 0.5   # samples of Q = N(0.5, 1)
      >>> log_p, log_q = -0.5 * x**2, -0.5 * (x - 0.5) ** 2           # P = N(0, 1); constants cancel
      >>> est, se = mc_divergence_from_model_samples(log_p, log_q, "reverse_kl")
      >>> bool(abs(est - 0.125) < 4 * se)                            # KL(Q || P) = 0.5^2 / 2
      True

    References:
      Owen, `Monte Carlo theory, methods and examples
      <https://artowen.su.domains/mc/>`_, 2013, chapter 2.
    """.replace("{args}", _SAMPLE_MEAN_ARGS),
)

mc_divergence_from_target_samples = _sample_mean_estimator(
    "f_over_u",
    "mc_divergence_from_target_samples",
    r"""Monte Carlo ``D_f(P || Q)`` from samples of the target ``P``.

    With ``x_i ~ P`` and ``u_i = p(x_i) / q(x_i)``, using
    ``E_Q[f(u)] = E_P[f(u) / u]`` (docs/reference.md section 3):

    .. math::
      \hat D = \frac{1}{n} \sum_i \frac{f(u_i)}{u_i}, \qquad
      \mathrm{se} = \mathrm{std}_i(f(u_i)/u_i) / \sqrt{n}.

    Unbiased when ``Q`` is positive wherever ``P`` is. ``f(u)/u`` is computed by
    ``divergence.f_over_u`` in log space (for forward KL it is ``log u``).

    Args:
      log_p: ``log p(x_i)`` of the (normalised) target at ``x_i ~ P``, shape
        ``[n]`` or any shape whose ``axis`` axes index samples.
      log_q: ``log q(x_i)`` of the model at the same samples, same shape.
      {args}

    References:
      Owen, `Monte Carlo theory, methods and examples
      <https://artowen.su.domains/mc/>`_, 2013, chapters 2 and 9.
    """.replace("{args}", _SAMPLE_MEAN_ARGS),
)


def _balance_heuristic_terms(divergence, log_u, a):
    """``f(u) / (a u + 1 - a)``, the per-sample term of the mixture estimator, from ``log u``.

    Where ``u <= 1`` it is ``f(u) / (1 - a + a u)``, elsewhere ``(f(u)/u) / (a + (1 - a)/u)``:
    each denominator lies in ``[min(a, 1 - a), 1]``, so no branch overflows for ``log u`` far
    from 0, and each branch sees only its own half of the line (finite gradients).
    """
    zero = jnp.zeros((), log_u.dtype)
    below = log_u <= 0
    log_u_below = jnp.where(below, log_u, zero)
    log_u_above = jnp.where(below, zero, log_u)
    term_below = divergence.f(log_u_below) / ((1 - a) + a * jnp.exp(log_u_below))
    term_above = divergence.f_over_u(log_u_above) / (a + (1 - a) * jnp.exp(-log_u_above))
    return jnp.where(below, term_below, term_above)


def mc_divergence_from_both_samples(
    log_p_at_p: ArrayLike,
    log_q_at_p: ArrayLike,
    log_p_at_q: ArrayLike,
    log_q_at_q: ArrayLike,
    divergence: Union[str, "_divergences.FDivergence"],
    *,
    where_p: Optional[ArrayLike] = None,
    where_q: Optional[ArrayLike] = None,
) -> Tuple[Array, Array]:
    r"""Monte Carlo ``D_f(P || Q)`` from samples of both distributions.

    With ``x_1..x_{n_P} ~ P`` and ``y_1..y_{n_Q} ~ Q`` pooled as a stratified sample of the
    mixture ``M = a P + (1 - a) Q``, ``a = n_P / (n_P + n_Q)``, and the balance-heuristic
    importance weight ``q / m = 1 / (a u + 1 - a)`` (docs/reference.md section 3):

    .. math::
      \hat D = rac{1}{n_P + n_Q} \Big[\sum_i g(u(x_i)) + \sum_j g(u(y_j))\Big], \qquad
      g(u) = rac{f(u)}{a u + 1 - a}.

    Unbiased, since ``a E_P[g] + (1 - a) E_Q[g] = E_M[(q/m) f(u)] = E_Q[f(u)]``. Each sample's
    weight is at most ``1 / min(a, 1 - a)``: where the two distributions barely overlap (a
    model that puts almost no mass where the target lives), the target's samples still see
    the target's mass, which a model-only estimate misses until ``n`` is of the order of
    ``1 / Q(supp P)``. For bounded divergences (JS, TV, squared Hellinger) every term is
    bounded. The standard error is the stratified one,
    ``sqrt(n_P var_P(g) + n_Q var_Q(g)) / (n_P + n_Q)``.

    Args:
      log_p_at_p: ``log p(x_i)`` of the (normalised) target at its own samples ``x_i ~ P``,
        any shape (all axes are samples).
      log_q_at_p: ``log q(x_i)`` of the model at the same samples, same shape.
      log_p_at_q: ``log p(y_j)`` at the model's samples ``y_j ~ Q``, any shape.
      log_q_at_q: ``log q(y_j)`` at the same samples, same shape as ``log_p_at_q``.
      divergence: A registered divergence name or an ``FDivergence``.
      where_p: Optional boolean mask over the target's samples; masked samples count neither
        in the sums nor in ``n_P``.
      where_q: The same for the model's samples.

    Returns:
      ``(estimate, standard_error)``, scalars.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from fdiv.montecarlo import mc_divergence_from_both_samples
      >>> kx, ky = jax.random.split(jax.random.key(0))
      >>> x = jax.random.normal(kx, (20000,))              # samples of P = N(0, 1)
      >>> y = jax.random.normal(ky, (20000,)) + 8.0        # samples of Q = N(8, 1)
      >>> lp = lambda z: -0.5 * z**2                       # constants cancel in log p - log q
      >>> lq = lambda z: -0.5 * (z - 8.0) ** 2
      >>> est, se = mc_divergence_from_both_samples(lp(x), lq(x), lp(y), lq(y), "total_variation")
      >>> bool(abs(est - 0.99994) < 1e-3)                  # TV = 2 Phi(4) - 1
      True

    References:
      Veach and Guibas, `Optimally combining sampling techniques for Monte Carlo rendering
      <https://doi.org/10.1145/218380.218498>`_, SIGGRAPH 1995 (the balance heuristic).
      Owen, `Monte Carlo theory, methods and examples
      <https://artowen.su.domains/mc/>`_, 2013, chapter 9 (mixture importance sampling).
    """
    divergence = _divergences.resolve(divergence)
    log_u_p, mask_p, axes_p = _prepare(
        log_p_at_p, log_q_at_p, where_p, None, ("log_p_at_p", "log_q_at_p")
    )
    log_u_q, mask_q, axes_q = _prepare(
        log_p_at_q, log_q_at_q, where_q, None, ("log_p_at_q", "log_q_at_q")
    )
    dtype = jnp.promote_types(log_u_p.dtype, log_u_q.dtype)
    log_u_p, log_u_q = log_u_p.astype(dtype), log_u_q.astype(dtype)
    n_p = _count(mask_p, log_u_p.shape, axes_p, dtype)
    n_q = _count(mask_q, log_u_q.shape, axes_q, dtype)
    a = n_p / (n_p + n_q)
    mean_p, se_p = _mean_and_se(_balance_heuristic_terms(divergence, log_u_p, a), mask_p, axes_p)
    mean_q, se_q = _mean_and_se(_balance_heuristic_terms(divergence, log_u_q, a), mask_q, axes_q)
    estimate = a * mean_p + (1 - a) * mean_q
    # se_k = std_k / sqrt(n_k): a^2 se_p^2 + (1 - a)^2 se_q^2 = (n_p var_p + n_q var_q) / n^2.
    return estimate, jnp.sqrt((a * se_p) ** 2 + ((1 - a) * se_q) ** 2)


def _masked_logsumexp(x, mask, axes):
    if mask is None:
        return jax.nn.logsumexp(x, axis=axes)
    # `b=mask` drops masked samples without touching their (already safe) value.
    return jax.nn.logsumexp(x, axis=axes, b=mask.astype(x.dtype))


def _self_normalize(log_p_unnormalized, log_q, where, axis):
    log_w, mask, axes = _prepare(
        log_p_unnormalized, log_q, where, axis, ("log_p_unnormalized", "log_q")
    )
    n = _count(mask, log_w.shape, axes, log_w.dtype)
    log_z = _masked_logsumexp(log_w, mask, axes) - jnp.log(n)
    log_u = log_w - jnp.expand_dims(log_z, axes)
    return log_u, log_z, n, mask, axes


def mc_log_normalizer(
    log_p_unnormalized: ArrayLike,
    log_q: ArrayLike,
    *,
    where: Optional[ArrayLike] = None,
    axis: Axis = None,
) -> Tuple[Array, Array]:
    r"""Importance-sampling estimate of ``log Z`` for ``p = p_tilde / Z``.

    With ``x_i ~ Q`` and ``w_i = p_tilde(x_i) / q(x_i)``:

    .. math::
      \log \hat Z = \mathrm{logsumexp}_i(\log w_i) - \log n, \qquad
      \mathrm{se} = \mathrm{std}_i(w_i / \hat Z) / \sqrt{n}.

    ``hat Z`` is unbiased for ``Z``; ``log hat Z`` is biased low (Jensen) and
    consistent. The standard error is the delta method's
    ``se(hat Z) / hat Z``.

    Args:
      log_p_unnormalized: ``log p_tilde(x_i)`` at ``x_i ~ Q``, shape ``[n]`` or
        any shape whose ``axis`` axes index samples.
      log_q: ``log q(x_i)`` of the (normalised) proposal, same shape.
      where: Optional boolean mask over samples, broadcastable to the samples.
      axis: Sample axis or axes to reduce; ``None`` (default) reduces all.

    Returns:
      ``(log_z, standard_error)``, each of shape ``log_q.shape`` without ``axis``.

    References:
      Owen, `Monte Carlo theory, methods and examples
      <https://artowen.su.domains/mc/>`_, 2013, chapter 9.
    """
    log_u, log_z, _, mask, axes = _self_normalize(log_p_unnormalized, log_q, where, axis)
    _, se = _mean_and_se(jnp.exp(log_u), mask, axes)
    return log_z, se


def mc_divergence_self_normalized(
    log_p_unnormalized: ArrayLike,
    log_q: ArrayLike,
    divergence: Union[str, "_divergences.FDivergence"],
    *,
    where: Optional[ArrayLike] = None,
    axis: Axis = None,
) -> Tuple[Array, Array]:
    r"""Self-normalised ``D_f(P || Q)`` from model samples, ``p`` unnormalised.

    With ``x_i ~ Q``, ``p = p_tilde / Z`` and ``w_i = p_tilde(x_i) / q(x_i)``,
    the normaliser is estimated by importance sampling (docs/reference.md section 3), and the
    ratios are normalised by it:

    .. math::
      \hat Z = \frac{1}{n}\sum_i w_i, \quad \hat u_i = w_i / \hat Z, \quad
      \hat D = \frac{1}{n} \sum_i f(\hat u_i).

    The estimate is **biased** for finite ``n`` (``hat Z`` sits inside the
    nonlinear ``f``) and **consistent**: it converges to ``D_f(P || Q)`` as
    ``n -> inf``, with bias ``O(1/n)``. It does not depend on the constant in
    ``p_tilde``.

    The standard error is the delta method's: ``hat D`` is the plug-in estimate
    of ``T(Q) = E_Q[f(w / E_Q w)]``, whose influence function at ``x_i`` is
    ``f(u_i) - D - c (u_i - 1)`` with ``c = E_Q[u f'(u)]``; the reported value
    is the sample standard deviation of ``f(hat u_i) - hat c (hat u_i - 1)``
    over ``sqrt(n)``.

    Args:
      log_p_unnormalized: ``log p_tilde(x_i)``, the target's log-density up to
        an additive constant, at ``x_i ~ Q``; shape ``[n]`` or any shape whose
        ``axis`` axes index samples.
      log_q: ``log q(x_i)`` of the (normalised) model, same shape.
      divergence: A registered divergence name or an ``FDivergence``.
      where: Optional boolean mask over samples, broadcastable to the samples.
      axis: Sample axis or axes to reduce; ``None`` (default) reduces all.

    Returns:
      ``(estimate, standard_error)``, each of shape ``log_q.shape`` without
      ``axis`` (scalars by default).

    References:
      Owen, `Monte Carlo theory, methods and examples
      <https://artowen.su.domains/mc/>`_, 2013, chapter 9 (self-normalised
      importance sampling and its delta-method variance).

      Go, Korbak, Kruszewski, Rozen and Dymetman, `Aligning Language Models
      with Preferences through f-divergence Minimization
      <https://arxiv.org/abs/2302.08215>`_, ICML 2023 (partition function by
      importance sampling).
    """
    divergence = _divergences.resolve(divergence)
    log_u, _, _, mask, axes = _self_normalize(log_p_unnormalized, log_q, where, axis)
    f_u = divergence.f(log_u)
    estimate, _ = _mean_and_se(f_u, mask, axes)
    # u f'(u) -> 0 as u -> 0 whenever f(0) is finite (f' is monotone and
    # integrable near 0); where f(0) = inf the estimate is inf regardless.
    zero_u = jnp.isneginf(log_u)
    safe_log_u = jnp.where(zero_u, jnp.zeros((), log_u.dtype), log_u)
    u = jnp.exp(safe_log_u)
    u_f_prime = u * divergence.f_prime(safe_log_u)
    # u f'(u) = f*(f'(u)) + f(u) where the product is inf * 0 (e.g. reverse KL at a ratio
    # beyond exp's range, whose u f'(u) is -1).
    u_f_prime = jnp.where(
        jnp.isnan(u_f_prime) & ~jnp.isnan(safe_log_u),
        divergence.conjugate_at_derivative(safe_log_u) + divergence.f(safe_log_u),
        u_f_prime,
    )
    u_f_prime = jnp.where(zero_u, jnp.zeros((), u.dtype), u_f_prime)
    u = jnp.where(zero_u, jnp.zeros((), u.dtype), u)
    n = _count(mask, log_u.shape, axes, log_u.dtype)
    c = jnp.sum(_masked(u_f_prime, mask), axis=axes) / n
    influence = f_u - jnp.expand_dims(c, axes) * (u - 1)
    _, se = _mean_and_se(influence, mask, axes)
    return estimate, se
