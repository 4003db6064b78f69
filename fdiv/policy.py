"""f-DPG: aligning a sampler to a target known up to a constant, with any f-divergence.

Convention (docs/reference.md section 1): ``P`` is the target, ``Pi_theta`` the model (policy)
that we can sample from and evaluate, ``u = p(x) / pi_theta(x)`` and
``D_f(P || Pi_theta) = E_{pi_theta}[f(u)]``. The target is usually an energy-based model,
``p(x) = a(x) b(x) / Z`` (a base model times a constraint), known only through its unnormalised
log-density ``log p_tilde = log a + log b`` and an estimate of ``log Z``.

The gradient (docs/reference.md section 5) is a score-function gradient with a pseudo-reward:

    grad_theta D_f(P || Pi_theta) = -E_{x ~ pi_theta}[ R(x) grad_theta log pi_theta(x) ],
    R(x) = -(f(u) - u f'(u)) = u f'(u) - f(u) = f*(f'(u)),

with the closed forms of docs/reference.md section 10 (forward KL: ``R = u``; reverse KL:
``R = log u - 1``; JS: ``R = 1/2 log((u + 1)/2)``; TV: ``R = sign(u - 1)/2``; Pearson:
``R = u^2 - 1``). A constant baseline ``b`` subtracted from ``R`` leaves the expectation
unchanged (``E_pi[grad log pi] = 0``) and reduces the variance. When the samples come from a
proposal ``q`` (DPG's offline mode), each term is weighted by ``pi_theta(x) / q(x)`` under a
stop-gradient.

* :func:`pseudo_reward`: ``R`` from ``(log p, log pi)`` in log space.
* :func:`fdpg_loss`: the surrogate whose gradient is the estimate above, with diagnostics.
* :class:`RunningNormalizer`: a running importance-sampling estimate of ``log Z`` (DPG keeps one
  over all samples seen).
* :class:`MovingBaseline`: an exponential moving average or a window of the last rewards.

The two states are pytrees updated functionally, so a whole training step (sampling, the states'
updates, the loss and the optimiser) jits.

The f-DPG paper writes the same gradient with the model in the numerator,
``D_f(pi || p) = E_p[f(pi/p)]`` and pseudo-reward ``-f'(pi/p)``; the two agree through
``f^dagger(u) = u f(1/u)`` (docs/reference.md section 5), so its "KL" objective is this module's
``"forward_kl"`` (DPG) and its "RKL" is ``"reverse_kl"`` (KL-regularised RL).

References:
  Go, Korbak, Kruszewski, Rozen, Ryu and Dymetman, `Aligning Language Models with Preferences
  through f-divergence Minimization <https://arxiv.org/abs/2302.08215>`_, ICML 2023.

  Khalifa, Elsahar and Dymetman, `A Distributional Approach to Controlled Text Generation
  <https://arxiv.org/abs/2012.11635>`_, ICLR 2021 (DPG, the proposal and the partition function).

  Korbak, Perez and Buckley, `RL with KL penalties is better viewed as Bayesian inference
  <https://arxiv.org/abs/2205.11275>`_, 2022.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fdiv import _checks
from fdiv import divergences as _divergences

Array = jax.Array
ArrayLike = Any

__all__ = [
    "MovingBaseline",
    "RunningNormalizer",
    "effective_sample_size",
    "fdpg_loss",
    "pseudo_reward",
]

_LOG2 = math.log(2.0)


# ----------------------------------------------------------------------------------------------
# Input checks.


def _floating(x: ArrayLike, name: str) -> Array:
    if isinstance(x, (jax.Array, np.ndarray)):
        dtype = x.dtype
    elif isinstance(x, (numbers.Real, list, tuple)) and not isinstance(x, bool):
        dtype = np.asarray(x).dtype
    else:
        raise ValueError(f"{name} must be an array of log-probabilities, got {type(x).__name__}.")
    if not jnp.issubdtype(dtype, jnp.floating):
        if jnp.issubdtype(dtype, jnp.integer) and not isinstance(x, (jax.Array, np.ndarray)):
            dtype = np.float32
        else:
            raise ValueError(
                f"{name} must be floating point (log-probabilities), got dtype "
                f"{dtype}; cast with .astype(jnp.float32)."
            )
    x = jnp.asarray(x, dtype=dtype)
    if jnp.finfo(x.dtype).bits < 32:
        # bfloat16 log-probabilities lose the ratio's digits; compute in float32.
        x = x.astype(jnp.float32)
    return x


_is_concrete = _checks.is_concrete


def _common_dtype(*arrays: Array):
    return jnp.result_type(*arrays)


# ----------------------------------------------------------------------------------------------
# Pseudo-rewards.


def _js_reward(log_u: Array) -> Array:
    # 1/2 log((1 + u)/2): the generic softplus(l) - log 2 cancels near u = 1 (relative error
    # ~ eps / |l|); log1p(expm1(l)/2) is exact there and cannot overflow for l <= 1.
    small = log_u <= 1.0
    l_small = jnp.where(small, log_u, 0.0)
    l_big = jnp.where(small, 1.0, log_u)
    near = 0.5 * jnp.log1p(0.5 * jnp.expm1(l_small))
    far = 0.5 * (jax.nn.softplus(l_big) - _LOG2)
    return jnp.where(small, near, far)


# Members whose generic ``conjugate_at_derivative`` loses relative accuracy somewhere; the
# registry holds names, the dispatch compares whole FDivergence values (name and parameters).
_ACCURATE_REWARDS = {
    "js": _js_reward,
}


def _reward_fn(divergence: _divergences.FDivergence):
    for name, fn in _ACCURATE_REWARDS.items():
        if divergence == _divergences.get(name):
            return fn
    return divergence.conjugate_at_derivative


def _resolve(divergence) -> _divergences.FDivergence:
    try:
        return _divergences.resolve(divergence)
    except ValueError as e:
        raise ValueError(f"divergence: {e}") from None


def pseudo_reward(log_target: ArrayLike, log_model: ArrayLike, divergence) -> Array:
    """The f-DPG pseudo-reward ``R = -(f(u) - u f'(u))`` at ``u = p / pi`` (elementwise).

    Computed from ``log u = log_target - log_model`` without forming ``u`` where it would
    overflow: finite for ``|log u|`` up to 80 in float32 wherever the true value is, and
    float32/float64-accurate against an arbitrary-precision computation (the closed forms are in
    docs/reference.md section 10; forward KL ``u``, reverse KL ``log u - 1``, JS
    ``1/2 log((u+1)/2)``, TV ``sign(u - 1)/2``, Pearson ``u^2 - 1``). The value is
    ``divergence.conjugate_at_derivative(log u)`` (``f*(f'(u))``), except for JS, whose generic
    form cancels near ``u = 1`` and is replaced by an exact one.

    Args:
      log_target: ``log p(x)`` of the *normalised* target, any shape; ``-inf`` where ``p = 0``
        (then ``R = -f(0)``: ``-inf`` for reverse KL, finite for forward KL, JS, TV, Pearson).
      log_model: ``log pi(x)`` of the model, broadcastable with ``log_target``.
      divergence: a registered name (``"forward_kl"``, ``"js"``, ...) or an ``FDivergence``.

    Returns:
      ``R`` with the broadcast shape, float32 for bfloat16/float16/float32 inputs, float64 for
      float64. ``+inf`` only where the true value overflows (Pearson beyond ``log u ~ 44`` in
      float32); NaN where an input is NaN or both are ``-inf`` (no ratio).

    Raises:
      ValueError: non-floating inputs, shapes that do not broadcast, an unknown divergence.
    """
    divergence = _resolve(divergence)
    log_target = _floating(log_target, "log_target")
    log_model = _floating(log_model, "log_model")
    try:
        np.broadcast_shapes(log_target.shape, log_model.shape)
    except ValueError:
        raise ValueError(
            f"log_target and log_model must broadcast, got shapes {log_target.shape}"
            f" and {log_model.shape}."
        ) from None
    dtype = _common_dtype(log_target, log_model)
    log_u = log_target.astype(dtype) - log_model.astype(dtype)
    return _reward_fn(divergence)(log_u)


# ----------------------------------------------------------------------------------------------
# The surrogate loss.


def _log_reward_far(divergence: _divergences.FDivergence):
    """``l -> log R(e^l)`` for ``l > 0`` for members whose reward grows like a power of ``u``
    (``R = (u^a - 1)/a``: forward KL is ``a = 1`` in the limit, Pearson twice ``a = 2``), or
    None. Other members' rewards grow at most linearly, so ``R/u`` is representable."""
    params = dict(divergence.params)
    if divergence.name == "forward_kl":
        return lambda l: l
    if divergence.name == "pearson":
        return lambda l: 2.0 * l + jnp.log1p(-jnp.exp(-2.0 * l))
    if divergence.name == "alpha" and params.get("alpha", 0.0) > 1.0:
        a = float(params["alpha"])
        return lambda l: a * l + jnp.log1p(-jnp.exp(-a * l)) - math.log(a)
    return None


def _weighted_reward(divergence, direct, log_w, l_high, low):
    """``w R(u)``, computed in log space where the plain product fails.

    ``direct = w * R(u)`` is exact wherever it is finite and ``w > 0``. A sample the policy
    rarely draws but the proposal does has ``w = pi/s`` underflowing to 0 next to a huge
    ``u = p/pi`` (``R = u`` for forward KL, ``u^2 - 1`` for Pearson overflows): there the product
    is ``0 * inf = NaN`` or a wrong 0, while ``w R`` itself is representable. The fallback is
    ``exp(log w + log R)`` for power-growth rewards and ``sign * exp(log(p/s) + log|R/u|)`` with
    ``R/u = f'(u) - f(u)/u`` for the others, so it is ``inf`` only where the true value overflows.
    """
    log_reward = _log_reward_far(divergence)
    safe_l = jnp.where(low, 1.0, l_high)
    if log_reward is not None:
        fallback = jnp.exp(log_w + log_reward(safe_l))
    else:
        r_over_u = divergence.f_prime(safe_l) - divergence.f_over_u(safe_l)
        magnitude = jnp.abs(r_over_u)
        safe_magnitude = jnp.where(magnitude > 0, magnitude, 1.0)
        fallback = jnp.where(
            magnitude > 0,
            jnp.sign(r_over_u) * jnp.exp(log_w + safe_l + jnp.log(safe_magnitude)),
            0.0,
        )
    use_fallback = ~low & (~jnp.isfinite(direct) | (jnp.exp(log_w) == 0))
    return jnp.where(use_fallback, fallback, direct)


def effective_sample_size(log_weights: ArrayLike) -> Array:
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` of importance weights, in log space.

    Args:
      log_weights: ``log w_i``, shape ``[n]`` (any constant offset cancels).

    Returns:
      A scalar in ``[1, n]`` (``n`` for equal weights); NaN when every weight is zero.
    """
    log_w = _floating(log_weights, "log_weights")
    return jnp.exp(2.0 * jax.nn.logsumexp(log_w) - jax.nn.logsumexp(2.0 * log_w))


def _check_scalar(x: ArrayLike, name: str, fix: str) -> Array:
    if isinstance(x, bool) or not isinstance(x, (numbers.Real, jax.Array, np.ndarray)):
        raise ValueError(f"{name} must be a scalar number or array, got {type(x).__name__}; {fix}")
    if np.ndim(x) != 0:
        raise ValueError(f"{name} must be a scalar, got shape {np.shape(x)}; {fix}")
    if _is_concrete(x) and np.isnan(np.asarray(x, np.float64)):
        raise ValueError(f"{name} is NaN; {fix}")
    arr = jnp.asarray(x)
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.float32)
    return arr


def fdpg_loss(
    log_model: ArrayLike,
    log_target: ArrayLike,
    divergence,
    *,
    log_proposal: ArrayLike | None = None,
    baseline: ArrayLike = 0.0,
    log_normalizer: ArrayLike | None = None,
) -> tuple[Array, dict[str, Array]]:
    r"""Surrogate loss whose gradient is the f-DPG estimate of ``grad D_f(P || Pi_theta)``.

    With samples ``x_i`` from the sampler ``s`` (the proposal ``q`` if given, else the model
    itself), ``w_i = pi_theta(x_i) / s(x_i)`` (1 on-policy), ``u_i = p_tilde(x_i) /
    (Z pi_theta(x_i))`` and ``R_i`` the pseudo-reward (:func:`pseudo_reward`,
    docs/reference.md sections 5 and 10):

    .. math::
      \mathrm{loss} = -\frac{1}{n} \sum_i \mathrm{sg}\big(w_i (R_i - b)\big)
      \log \pi_\theta(x_i),

    so ``grad loss = -mean(w (R - b) grad log pi_theta)``, an unbiased estimate of
    ``grad_theta D_f(P || Pi_theta)`` for any constant ``b`` when ``Z`` is exact (consistent,
    with an ``O(1/n)`` bias, when ``Z`` is estimated from the same batch). Minimising the loss
    minimises the divergence. Only ``log_model`` is differentiated; every weight, reward,
    baseline and normaliser is held under ``stop_gradient``. The loss value itself carries no
    meaning (use ``aux["divergence"]``).

    Args:
      log_model: ``log pi_theta(x_i)``, shape ``[n]``, differentiable in the parameters (for a
        sequence model, the sum of the token log-probabilities).
      log_target: ``log p_tilde(x_i)``, the target's log-density up to a constant, ``[n]``;
        ``-inf`` where the target is zero.
      divergence: registered name or ``FDivergence`` (``fdiv.get(name)``).
      log_proposal: ``log q(x_i)`` when the samples come from a proposal ``q`` rather than the
        model (normalised), ``[n]``; ``None`` for on-policy samples.
      baseline: scalar subtracted from the reward (e.g. ``MovingBaseline.value``); must not
        depend on the current batch for exact unbiasedness.
      log_normalizer: ``log Z`` (e.g. ``RunningNormalizer.log_normalizer``); when ``None`` it
        is estimated from this batch by importance sampling,
        ``log mean(p_tilde / s)``.

    Returns:
      ``(loss, aux)``; ``aux`` has scalar ``"divergence"`` (the importance-sampling estimate
      ``mean(w f(u))`` of ``D_f(P || Pi_theta)``), ``"ess"`` (the effective sample size of the
      weights ``w``, ``n`` on-policy), ``"mean_reward"`` (``mean R``, what a baseline tracks),
      ``"mean_weighted_reward"`` (``mean w R``, the estimate of ``E_pi[R]``) and
      ``"log_normalizer"`` (the ``log Z`` used). Float32 for float32 and half-precision inputs.

    Raises:
      ValueError: non-floating or non-1-D inputs, mismatched shapes, an empty batch, a
        non-scalar or NaN baseline or normaliser (checked when concrete), an unknown
        divergence. Values inside traced arrays cannot be checked: a sample with
        ``log_model = -inf`` from the model itself is an inconsistent input and gives NaN.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from fdiv.policy import fdpg_loss
      >>> theta = jnp.zeros(4)
      >>> x = jnp.array([0, 1, 2, 3, 3])
      >>> log_p_tilde = jnp.log(jnp.array([1.0, 2.0, 3.0, 4.0]))[x]
      >>> grad = jax.grad(lambda t: fdpg_loss(jax.nn.log_softmax(t)[x], log_p_tilde, "js")[0])
      >>> grad(theta).shape
      (4,)
    """
    divergence = _resolve(divergence)
    log_model = _floating(log_model, "log_model")
    log_target = _floating(log_target, "log_target")
    if log_model.ndim != 1:
        raise ValueError(
            f"log_model must have shape [n] (one log-probability per sample), got "
            f"shape {log_model.shape}; flatten the batch first."
        )
    n = log_model.shape[0]
    if n == 0:
        raise ValueError("log_model is empty; fdpg_loss needs at least one sample.")
    if log_target.shape != log_model.shape:
        raise ValueError(
            f"log_target must have the shape of log_model {log_model.shape}, got "
            f"{log_target.shape}."
        )
    arrays = [log_model, log_target]
    if log_proposal is not None:
        log_proposal = _floating(log_proposal, "log_proposal")
        if log_proposal.shape != log_model.shape:
            raise ValueError(
                f"log_proposal must have the shape of log_model {log_model.shape}, "
                f"got {log_proposal.shape}."
            )
        arrays.append(log_proposal)
    baseline = _check_scalar(baseline, "baseline", "pass a float, e.g. MovingBaseline.value.")
    if log_normalizer is not None:
        log_normalizer = _check_scalar(
            log_normalizer,
            "log_normalizer",
            "pass log Z (e.g. RunningNormalizer.log_normalizer) or None to estimate it.",
        )
    dtype = _common_dtype(*arrays)

    log_model_sg = jax.lax.stop_gradient(log_model).astype(dtype)
    log_target = jax.lax.stop_gradient(log_target).astype(dtype)
    if log_proposal is None:
        log_sampler = log_model_sg
        log_w = jnp.zeros_like(log_model_sg)
    else:
        log_sampler = jax.lax.stop_gradient(log_proposal).astype(dtype)
        log_w = log_model_sg - log_sampler
    if log_normalizer is None:
        log_z = jax.nn.logsumexp(log_target - log_sampler) - jnp.log(jnp.asarray(n, dtype))
    else:
        log_z = jax.lax.stop_gradient(log_normalizer).astype(dtype)
    log_u = log_target - log_z - log_model_sg

    # Samples the model cannot produce (w = 0) carry nothing, whatever their reward (u = inf).
    alive = log_w > -jnp.inf
    safe_log_u = jnp.where(alive, log_u, 0.0)
    reward = jnp.where(alive, _reward_fn(divergence)(safe_log_u), 0.0)
    weight = jnp.exp(log_w)
    low = safe_log_u <= 0
    l_low = jnp.where(low, safe_log_u, 0.0)
    l_high = jnp.where(low, 0.0, safe_log_u)
    weighted_reward = _weighted_reward(divergence, weight * reward, log_w, l_high, low)
    coefficient = jnp.where(alive, weighted_reward - weight * baseline.astype(dtype), 0.0)
    loss = -jnp.mean(jax.lax.stop_gradient(coefficient) * log_model.astype(dtype))

    # w f(u) as w f(u) where u <= 1 and (p/s) (f(u)/u) where u > 1: each factor stays finite
    # where the other over- or underflows (w = pi/s tiny next to a huge u = p/pi).
    divergence_terms = jnp.where(
        low, weight * divergence.f(l_low), jnp.exp(log_w + l_high) * divergence.f_over_u(l_high)
    )
    aux = {
        "divergence": jnp.mean(jnp.where(alive, divergence_terms, 0.0)),
        "ess": effective_sample_size(log_w),
        "mean_reward": jnp.sum(reward) / jnp.maximum(jnp.sum(alive), 1),
        "mean_weighted_reward": jnp.mean(jnp.where(alive, weighted_reward, 0.0)),
        "log_normalizer": log_z,
    }
    return loss, jax.lax.stop_gradient(aux)


# ----------------------------------------------------------------------------------------------
# States.


@dataclasses.dataclass(frozen=True)
class RunningNormalizer:
    """A running importance-sampling estimate of ``log Z`` over every sample seen.

    For a target ``p = p_tilde / Z`` and samples ``x_i`` from (possibly changing) normalised
    samplers ``s_i``, each ``p_tilde(x_i) / s_i(x_i)`` is an unbiased estimate of ``Z``, so
    their running mean is too (DPG's estimator). The sum is kept in log space,
    ``log_sum = logsumexp_i(log p_tilde(x_i) - log s_i(x_i))``, so ratios far outside the float
    range stay exact. A pytree: pass it through ``jax.jit`` and update it functionally.

    Attributes:
      log_sum: scalar ``log sum_i p_tilde(x_i) / s_i(x_i)``; ``-inf`` before any sample.
      count: scalar number of samples seen (float, so long runs do not overflow int32).
    """

    log_sum: Array
    count: Array

    @classmethod
    def create(cls, dtype=jnp.float32) -> RunningNormalizer:
        """The empty state (``log_normalizer`` is ``-inf`` until the first `update`)."""
        return cls(jnp.full((), -jnp.inf, dtype), jnp.zeros((), dtype))

    def update(
        self, log_target: ArrayLike, log_sampler: ArrayLike, where: ArrayLike | None = None
    ) -> RunningNormalizer:
        """The state after adding samples ``x_i ~ s`` with ``log p_tilde(x_i)``, ``log s(x_i)``.

        Args:
          log_target: ``[n]`` unnormalised target log-densities.
          log_sampler: ``[n]`` log-probabilities of the (normalised) distribution sampled.
          where: optional boolean ``[n]`` mask of the samples to count.
        """
        log_target = _floating(log_target, "log_target")
        log_sampler = _floating(log_sampler, "log_sampler")
        if log_target.ndim != 1 or log_target.shape != log_sampler.shape:
            raise ValueError(
                f"log_target and log_sampler must both have shape [n], got "
                f"{log_target.shape} and {log_sampler.shape}."
            )
        log_ratio = jax.lax.stop_gradient(log_target - log_sampler).astype(self.log_sum.dtype)
        if where is None:
            batch_log_sum = jax.nn.logsumexp(log_ratio)
            batch_count = jnp.asarray(log_ratio.shape[0], self.count.dtype)
        else:
            mask = jnp.asarray(where)
            if mask.dtype != jnp.bool_ or mask.shape != log_ratio.shape:
                raise ValueError(
                    f"where must be a boolean mask of shape {log_ratio.shape}, got "
                    f"dtype {mask.dtype} and shape {mask.shape}."
                )
            batch_log_sum = jax.nn.logsumexp(jnp.where(mask, log_ratio, -jnp.inf))
            batch_count = jnp.sum(mask).astype(self.count.dtype)
        return RunningNormalizer(
            jnp.logaddexp(self.log_sum, batch_log_sum), self.count + batch_count
        )

    @property
    def log_normalizer(self) -> Array:
        """``log Z`` estimate ``log_sum - log count`` (``-inf`` before any sample)."""
        return self.log_sum - jnp.log(jnp.maximum(self.count, 1.0))


@dataclasses.dataclass(frozen=True)
class MovingBaseline:
    """A reward baseline: an exponential moving average of batch means, or a sliding window.

    Build it with :meth:`ema` (``value`` = bias-corrected EMA of the batch mean rewards, as
    ``optax.ema(debias=True)``) or :meth:`windowed` (``value`` = mean of the last ``window``
    rewards, DPG's windowed average). Use ``value`` *before* adding the current batch with
    :meth:`update` so that the baseline does not depend on the rewards it multiplies (then it
    adds no bias; docs/reference.md section 10). ``value`` is 0 before any update. A pytree
    whose ``decay`` and ``window`` are static.

    Attributes:
      accumulator: EMA mode: the un-debiased EMA; windowed mode: unused (0).
      buffer: windowed mode: ``[window]`` ring buffer of the last rewards; EMA mode: ``[1]``,
        unused (checkpoint writers reject empty arrays).
      count: number of updates (EMA) or of rewards seen (windowed), int32.
      decay: EMA decay in ``[0, 1)``, or None in windowed mode.
      window: window length, or None in EMA mode.
    """

    accumulator: Array
    buffer: Array
    count: Array
    decay: float | None = None
    window: int | None = None

    @classmethod
    def ema(cls, decay: float = 0.99, dtype=jnp.float32) -> MovingBaseline:
        if isinstance(decay, bool) or not isinstance(decay, numbers.Real) or not 0 <= decay < 1:
            raise ValueError(f"decay must be a Python number in [0, 1), got {decay!r}.")
        return cls(
            jnp.zeros((), dtype),
            jnp.zeros((1,), dtype),
            jnp.zeros((), jnp.int32),
            decay=float(decay),
            window=None,
        )

    @classmethod
    def windowed(cls, window: int = 1024, dtype=jnp.float32) -> MovingBaseline:
        if isinstance(window, bool) or not isinstance(window, numbers.Integral) or window < 1:
            raise ValueError(f"window must be a positive Python int, got {window!r}.")
        return cls(
            jnp.zeros((), dtype),
            jnp.zeros((int(window),), dtype),
            jnp.zeros((), jnp.int32),
            decay=None,
            window=int(window),
        )

    @property
    def value(self) -> Array:
        if self.window is None:
            correction = 1.0 - jnp.power(
                jnp.asarray(self.decay, self.accumulator.dtype),
                self.count.astype(self.accumulator.dtype),
            )
            return jnp.where(
                self.count > 0, self.accumulator / jnp.where(self.count > 0, correction, 1.0), 0.0
            )
        filled = jnp.minimum(self.count, self.window)
        valid = jnp.arange(self.window) < filled
        return jnp.sum(jnp.where(valid, self.buffer, 0.0)) / jnp.maximum(filled, 1)

    def update(self, rewards: ArrayLike) -> MovingBaseline:
        """The state after seeing the batch of rewards ``[n]`` (e.g. ``aux["mean_reward"]``'s
        terms, or the scalar batch mean: a scalar counts as one reward)."""
        rewards = jax.lax.stop_gradient(_floating(rewards, "rewards")).reshape(-1)
        rewards = rewards.astype(self.accumulator.dtype)
        if rewards.shape[0] == 0:
            raise ValueError("rewards is empty; update the baseline with at least one reward.")
        if self.window is None:
            mean = jnp.mean(rewards)
            accumulator = self.decay * self.accumulator + (1.0 - self.decay) * mean
            return dataclasses.replace(self, accumulator=accumulator, count=self.count + 1)
        kept = rewards[-self.window :]
        positions = (self.count + jnp.arange(kept.shape[0])) % self.window
        buffer = self.buffer.at[positions].set(kept)
        return dataclasses.replace(self, buffer=buffer, count=self.count + kept.shape[0])


jax.tree_util.register_dataclass(
    RunningNormalizer, data_fields=["log_sum", "count"], meta_fields=[]
)
jax.tree_util.register_dataclass(
    MovingBaseline, data_fields=["accumulator", "buffer", "count"], meta_fields=["decay", "window"]
)
