"""Variational (critic) estimates of f-divergences from samples; density ratios by classifiers.

Convention (docs/reference.md section 1): ``P`` is the target (data, teacher), ``Q`` the model
(generator, student), ``D_f(P || Q) = E_Q[f(p/q)]``. Every function here takes the outputs of a
critic evaluated on P-samples (``critic_p``, shape ``[n_p]``) and on Q-samples (``critic_q``,
shape ``[n_q]``) and returns a scalar; none of them sees a network, so any model (Flax, a
closed form, a kernel machine) can supply the critic. :func:`fdiv.critic.train_critic` trains
a Flax NNX critic with these objectives.

The variational bound (docs/reference.md section 3)::

    D_f(P || Q) >= sup_T  E_P[T(x)] - E_Q[f*(T(x))],     T* = f'(p/q).

* :func:`lower_bound` with ``parametrization="log_ratio"`` reads the critic output ``l`` as an
  estimate of ``log(p/q)`` and uses ``T = f'(e^l)``, ``f*(T) = u f'(u) - f(u)`` at ``u = e^l``
  (both from :class:`fdiv.FDivergence` in log space, so no conjugate is evaluated): one critic
  serves every divergence, and at the optimum its output is the log density ratio itself.
* ``parametrization="fgan"`` applies the f-GAN paper's output activation ``T = g_f(v)`` to the
  raw output ``v`` (:func:`fgan_activation`) and evaluates the conjugate ``f*``.
* :func:`nwj` and :func:`donsker_varadhan` are the two classical KL bounds; :func:`info_nce`
  the contrastive bound on mutual information (``P`` the joint, ``Q`` the product of marginals).
* :func:`classifier_loss` is the logistic loss whose minimiser is the log density ratio;
  :func:`log_ratio_from_logits` removes the class-prior offset of a classifier trained on a
  pooled, unbalanced sample.

All of them are biased estimates from finite samples: a bound evaluated at a critic fitted on
the same samples can exceed the divergence, and the DV and InfoNCE values are biased below
their expectation by Jensen's inequality (log of a sample mean). Half-precision inputs are
computed in float32. Concrete inputs are checked (shape, dtype, NaN); under ``jit`` the shape
checks still run but NaN cannot be detected.

References:
  Nguyen, Wainwright & Jordan, "Estimating divergence functionals and the likelihood ratio by
  convex risk minimization", IEEE Trans. Inf. Theory 2010 (NWJ).
  Donsker & Varadhan, "Asymptotic evaluation of certain Markov process expectations", 1983.
  Nowozin, Cseke & Tomioka, "f-GAN", NeurIPS 2016 (Table 6: output activations).
  van den Oord, Li & Vinyals, "Representation learning with contrastive predictive coding",
  2018; Poole et al., "On variational bounds of mutual information", ICML 2019 (InfoNCE).
  Sugiyama, Suzuki & Kanamori, "Density ratio estimation in machine learning", 2012.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp

from fdiv import _checks
from fdiv import divergences as _divergences

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = [
    "FGANActivation",
    "classifier_loss",
    "donsker_varadhan",
    "fgan_activation",
    "info_nce",
    "log_ratio_from_logits",
    "lower_bound",
    "nwj",
    "train_critic",
]

_LOG2 = math.log(2.0)
_PARAMETRIZATIONS = ("log_ratio", "fgan")


# ----------------------------------------------------------------------------------------------
# Input checks.


_is_concrete = _checks.is_concrete

_as_compute = _checks.floating_input


def _check_no_nan(x: Array, name: str) -> None:
    if _is_concrete(x) and bool(jnp.any(jnp.isnan(x))):
        raise ValueError(
            f"{name} contains NaN; the critic produced NaN on some samples (check "
            "its inputs and training)."
        )


def _critic_pair(critic_p: ArrayLike, critic_q: ArrayLike) -> tuple[Array, Array]:
    critic_p = _as_compute(critic_p, "critic_p")
    critic_q = _as_compute(critic_q, "critic_q")
    for name, value in (("critic_p", critic_p), ("critic_q", critic_q)):
        if value.ndim != 1:
            raise ValueError(
                f"{name} must be a 1-D array of critic outputs, one per sample "
                f"([n]), got shape {value.shape}; flatten a [n, 1] output with "
                ".reshape(-1)."
            )
        if value.shape[0] == 0:
            raise ValueError(
                f"{name} is empty: the estimate needs at least one sample from "
                f"{'P' if name == 'critic_p' else 'Q'}."
            )
        _check_no_nan(value, name)
    dtype = jnp.result_type(critic_p, critic_q)
    return critic_p.astype(dtype), critic_q.astype(dtype)


# ----------------------------------------------------------------------------------------------
# f-GAN output activations.


@dataclasses.dataclass(frozen=True)
class FGANActivation:
    """The f-GAN output activation ``T = g_f(v)`` of one divergence and its inverse.

    Attributes:
      name: the divergence's registry name.
      activation: ``g_f``, maps a raw critic output ``v`` (any real) into the effective domain
        of the conjugate ``f*``.
      inverse: ``g_f^{-1}``, the raw output whose activation is ``t`` (for ``t`` in the range
        of ``g_f``); ``inverse(f'(p/q))`` is the optimal raw critic.
      source: ``"f-GAN table 6"`` for the divergences of that table (rescaled to fdiv's
        generators), ``"slope rule"`` for the others (see :func:`fgan_activation`).
    """

    name: str
    activation: Callable[[Array], Array]
    inverse: Callable[[Array], Array]
    source: str


def _neg_log_expm1(x: Array) -> Array:
    """``-log(expm1(x))`` for ``x >= 0`` without overflow: ``-x - log(-expm1(-x))``.

    ``x = 0`` (a target value that rounded onto the edge of the activation's range) gives
    ``+inf``, the raw output whose activation is that edge.
    """
    x = jnp.maximum(x, 0.0)
    return -x - jnp.log(-jnp.expm1(-x))


def _scaled_log_sigmoid(scale: float) -> tuple[Callable, Callable]:
    # t = scale (log 2 - softplus(-v)) < scale log 2; v = -log(expm1(log 2 - t / scale)).
    def forward(v):
        return scale * (_LOG2 - jax.nn.softplus(-v))

    def inverse(t):
        return _neg_log_expm1(_LOG2 - t / scale)

    return forward, inverse


def _one_minus_exp(scale: float) -> tuple[Callable, Callable]:
    # t = scale (1 - e^-v) < scale; v = -log1p(-t / scale).
    return (lambda v: -scale * jnp.expm1(-v)), (lambda t: -jnp.log1p(-t / scale))


def _slope_minus_softplus(slope: float) -> tuple[Callable, Callable]:
    # t = slope - softplus(-v) < slope; v = -log(expm1(slope - t)).
    return (lambda v: slope - jax.nn.softplus(-v)), (lambda t: _neg_log_expm1(slope - t))


def _identity_pair() -> tuple[Callable, Callable]:
    return (lambda v: v), (lambda t: t)


def _table_activation(name: str):
    """Nowozin et al. (2016) table 6, rescaled where fdiv's generator is a multiple of theirs."""
    if name in ("forward_kl", "pearson"):
        return _identity_pair()
    if name == "reverse_kl":
        return (lambda v: -jnp.exp(-v)), (lambda t: -jnp.log(-t))
    if name == "squared_hellinger":
        # Theirs: f = (sqrt u - 1)^2 with g = 1 - e^-v (t < 1); fdiv's f is half of it, so the
        # conjugate's domain halves: f_fdiv*(t) = 1/2 f*(2t).
        return _one_minus_exp(0.5)
    if name == "neyman":
        return _one_minus_exp(1.0)
    if name == "js":
        # Theirs: 2 x JSD with g = log 2 - log(1 + e^-v) (t < log 2); fdiv's JSD halves it.
        return _scaled_log_sigmoid(0.5)
    if name == "total_variation":
        return (lambda v: 0.5 * jnp.tanh(v)), (lambda t: jnp.arctanh(2.0 * t))
    return None


def fgan_activation(divergence: _divergences.FDivergence | str) -> FGANActivation:
    """The output activation used by ``lower_bound(..., parametrization="fgan")``.

    For the divergences of the f-GAN paper's table 6 (forward and reverse KL, Pearson and
    Neyman chi^2, squared Hellinger, Jensen-Shannon, total variation) it is the paper's
    activation, rescaled to fdiv's generators (fdiv's JSD and squared Hellinger are half the
    paper's; see docs/reference.md section 2). Every other divergence gets the rule that
    reproduces the table from the conjugate's domain ``t < s``, ``s = lim_{u->inf} f(u)/u``:
    ``g(v) = v`` when ``s = inf``, else ``g(v) = s - softplus(-v)``. In float32 that
    activation reaches ``s`` itself once ``softplus(-v)`` drops below half an ulp of ``s``
    (``v`` above ~17), where the conjugate of some members (e.g. ``modified_gan``) is
    returned as ``+inf``: keep raw outputs moderate, or use the log-ratio parametrization.
    """
    d = _divergences.resolve(divergence)
    pair = _table_activation(d.name)
    source = "f-GAN table 6"
    if pair is None:
        source = "slope rule"
        slope = d.slope_at_infinity
        pair = _identity_pair() if math.isinf(slope) else _slope_minus_softplus(float(slope))
    return FGANActivation(name=d.name, activation=pair[0], inverse=pair[1], source=source)


# ----------------------------------------------------------------------------------------------
# Bounds.


def _bound_terms(critic_p, critic_q, d, parametrization):
    """Per-sample terms ``(T(x_p), f*(T(x_q)))`` of the bound."""
    if parametrization == "log_ratio":
        return d.f_prime(critic_p), d.conjugate_at_derivative(critic_q)
    act = fgan_activation(d).activation
    return act(critic_p), d.conjugate(act(critic_q))


def lower_bound(
    critic_p: ArrayLike,
    critic_q: ArrayLike,
    divergence: _divergences.FDivergence | str,
    *,
    parametrization: str = "log_ratio",
) -> Array:
    """Variational lower bound ``E_P[T] - E_Q[f*(T)]`` on ``D_f(P || Q)``.

    A lower bound for every critic (Fenchel-Young inequality), with equality at ``T = f'(p/q)``
    (docs/reference.md section 3). Maximising it over the critic trains the critic; the value
    at a fitted critic is a biased estimate (below the truth when the critic is evaluated on
    fresh samples and imperfect; it can exceed the truth on the samples it was fitted to).

    Args:
      critic_p: ``[n_p]`` critic outputs on samples from P (target).
      critic_q: ``[n_q]`` critic outputs on samples from Q (model).
      divergence: an :class:`fdiv.FDivergence` or a registered name (every registered member
        works with both parametrizations).
      parametrization: ``"log_ratio"``: the outputs are log-ratio estimates ``l ~ log(p/q)``,
        ``T = f'(e^l)`` and ``f*(T) = u f'(u) - f(u)`` at ``u = e^l``, all in log space (finite
        for ``|l| <= 80`` in float32 wherever ``f'(e^l)`` and ``u f'(u) - f(u)`` are, e.g.
        for KL, JS, Hellinger; Pearson's ``u^2 - 1`` overflows beyond ``l ~ 44``, as the true
        value does). The optimal output is ``log(p/q)`` for every divergence. ``"fgan"``: the
        outputs are raw values ``v``, ``T = g_f(v)`` with :func:`fgan_activation`, and ``f*``
        is the divergence's conjugate; the optimal output is ``g_f^{-1}(f'(p/q))``.

    Returns:
      Scalar float32 (float64 for float64 inputs).

    Raises:
      ValueError: for non-1-D or empty critic outputs, non-floating dtypes, NaN (concrete
        inputs), an unknown parametrization or divergence.

    Examples:
      >>> import jax.numpy as jnp
      >>> from fdiv.variational import lower_bound
      >>> critic_p = jnp.array([0.3, -0.2, 1.0])   # log-ratio estimates on P-samples
      >>> critic_q = jnp.array([-0.5, 0.1, 0.4])   # ... and on Q-samples
      >>> round(float(lower_bound(critic_p, critic_q, "forward_kl")), 4)
      0.2988
    """
    if parametrization not in _PARAMETRIZATIONS:
        raise ValueError(
            f"parametrization must be one of {_PARAMETRIZATIONS}, got {parametrization!r}."
        )
    d = _divergences.resolve(divergence)
    if parametrization == "fgan" and not d.has_conjugate:
        raise ValueError(
            f"divergence {d.name!r} has no conjugate, which parametrization='fgan' "
            "needs; use parametrization='log_ratio'."
        )
    critic_p, critic_q = _critic_pair(critic_p, critic_q)
    t_p, conj_q = _bound_terms(critic_p, critic_q, d, parametrization)
    return jnp.mean(t_p) - jnp.mean(conj_q)


def nwj(critic_p: ArrayLike, critic_q: ArrayLike) -> Array:
    """The NWJ lower bound ``KL(P || Q) >= E_P[T] - E_Q[exp(T - 1)]``.

    Equality at ``T* = 1 + log(p/q)`` (docs/reference.md section 3); it is :func:`lower_bound`
    for forward KL in the f-GAN parametrization. Unbiased for a fixed critic (both terms are
    sample means), with high variance when ``exp(T)`` is heavy-tailed under Q.

    Args:
      critic_p: ``[n_p]`` critic values ``T`` on P-samples.
      critic_q: ``[n_q]`` critic values on Q-samples.

    Returns:
      Scalar.

    References:
      Nguyen, Wainwright & Jordan 2010.
    """
    critic_p, critic_q = _critic_pair(critic_p, critic_q)
    return jnp.mean(critic_p) - jnp.mean(jnp.exp(critic_q - 1.0))


def donsker_varadhan(critic_p: ArrayLike, critic_q: ArrayLike) -> Array:
    """The Donsker-Varadhan lower bound ``KL(P || Q) >= E_P[T] - log E_Q[exp T]``.

    Tighter than NWJ for every critic, with equality at ``T* = log(p/q) + c`` for any constant
    ``c`` (docs/reference.md section 3). ``log E_Q`` is computed with a logsumexp, so critic
    values in the thousands stay finite. For a fixed critic the sample value is biased upward
    (``-log`` of a sample mean is convex: Jensen), by about ``Var_Q[e^T] / (2 n_q E_Q[e^T]^2)``.

    Args:
      critic_p: ``[n_p]`` critic values on P-samples.
      critic_q: ``[n_q]`` critic values on Q-samples.

    Returns:
      Scalar.

    References:
      Donsker & Varadhan 1983; Belghazi et al., "MINE", ICML 2018.
    """
    critic_p, critic_q = _critic_pair(critic_p, critic_q)
    n_q = critic_q.shape[0]
    return jnp.mean(critic_p) - (jax.nn.logsumexp(critic_q) - math.log(n_q))


def info_nce(scores: ArrayLike) -> Array:
    """The InfoNCE lower bound on mutual information from a ``[n, n]`` score matrix.

    ``scores[i, j] = T(x_i, y_j)`` for ``n`` pairs ``(x_i, y_i)`` drawn from the joint ``P_XY``:
    the diagonal holds the positives (``P = P_XY``), the off-diagonal entries pair ``x_i`` with
    other ``y_j`` (``Q = P_X P_Y``). Returns

        I(X; Y) >= mean_i [ scores[i, i] - logsumexp_j scores[i, j] ] + log n,

    the bound of van den Oord et al. (2018) in the form of Poole et al. (2019), eq. (12). It can
    never exceed ``log n`` (each term is at most ``log n``), so it saturates for ``I > log n``:
    a large batch is needed to measure a large mutual information. Optimal critic:
    ``T(x, y) = log p(y | x) / p(y) + c(x)``.

    Args:
      scores: ``[n, n]`` critic values, ``n >= 1``.

    Returns:
      Scalar.
    """
    scores = _as_compute(scores, "scores")
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(
            f"scores must be a square [n, n] matrix (scores[i, j] = T(x_i, y_j), "
            f"positives on the diagonal), got shape {scores.shape}."
        )
    if scores.shape[0] == 0:
        raise ValueError("scores is empty: InfoNCE needs at least one pair (n >= 1).")
    _check_no_nan(scores, "scores")
    n = scores.shape[0]
    return jnp.mean(jnp.diagonal(scores) - jax.nn.logsumexp(scores, axis=1)) + math.log(n)


# ----------------------------------------------------------------------------------------------
# Density ratio by classification.


def classifier_loss(logits_p: ArrayLike, logits_q: ArrayLike) -> Array:
    """Logistic loss of P-samples (label 1) against Q-samples (label 0), balanced.

    ``mean softplus(-logits_p) + mean softplus(logits_q)``: each class is averaged on its own,
    so the classes weigh equally whatever ``n_p / n_q`` is and the minimiser over all functions
    is exactly ``logit = log(p/q)`` (docs/reference.md section 3). It is the softplus GAN
    discriminator loss; ``log 4 - 2 JSD(P, Q)`` is its minimum value, so
    ``log 2 - classifier_loss / 2`` is a lower bound on the Jensen-Shannon divergence.

    Args:
      logits_p: ``[n_p]`` classifier logits on P-samples.
      logits_q: ``[n_q]`` logits on Q-samples.

    Returns:
      Scalar loss to minimise.
    """
    logits_p, logits_q = _critic_pair(logits_p, logits_q)
    return jnp.mean(jax.nn.softplus(-logits_p)) + jnp.mean(jax.nn.softplus(logits_q))


def log_ratio_from_logits(logits: ArrayLike, n_p: float, n_q: float) -> Array:
    """``log(p/q) = logit - log(n_p / n_q)``: the class-prior correction of a classifier.

    A classifier trained with the logistic loss summed (not class-averaged) over a pooled set of
    ``n_p`` P-samples (label 1) and ``n_q`` Q-samples (label 0) has optimal logit
    ``log(p/q) + log(n_p/n_q)`` (docs/reference.md section 3). A classifier trained with the
    balanced :func:`classifier_loss` needs no correction (pass ``n_p = n_q``).

    Args:
      logits: logits of any shape.
      n_p: number (or prior weight) of P-samples in the training set, > 0.
      n_q: number (or prior weight) of Q-samples, > 0.

    Returns:
      The log density ratio estimate, same shape as ``logits``.
    """
    for name, value in (("n_p", n_p), ("n_q", n_q)):
        if not isinstance(value, numbers.Real) or not value > 0 or not math.isfinite(value):
            raise ValueError(
                f"{name} must be a positive finite number (the class count or "
                f"prior weight), got {value!r}."
            )
    logits = _as_compute(logits, "logits")
    return logits - math.log(float(n_p) / float(n_q))


def train_critic(*args, **kwargs):
    """:func:`fdiv.critic.train_critic`, re-exported here (it imports Flax lazily)."""
    from fdiv import critic as _critic

    return _critic.train_critic(*args, **kwargs)
