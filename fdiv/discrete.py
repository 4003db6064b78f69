"""Exact divergences between categorical distributions given by logits.

Convention (docs/reference.md section 1): ``P`` is the target (teacher) and ``Q`` the model
(student); ``D_f(P || Q) = sum_x q(x) f(p(x) / q(x))``. Every function here
takes ``target_logits`` (for ``P``) and ``model_logits`` (for ``Q``) of the same
shape, normalises both with ``log_softmax`` along ``axis`` (after dividing by
``temperature``) and reduces only that axis: the result has the logits' shape
without ``axis``, one value per position (docs/reference.md section 3, "Exact
(categorical)"). There is no hidden mean over positions and no ``tau**2``
factor; knowledge-distillation losses apply both themselves.

Numerics:

* Everything is computed from log-probabilities. f-divergences go through
  ``FDivergence.perspective(log_p, log_q)``, which carries the limits at zero
  probabilities (``-inf`` logits): ``p = 0`` contributes ``q f(0)``, ``q = 0 < p``
  contributes ``p * lim f(u)/u`` (``+inf`` for forward KL, finite for JS,
  total variation, squared Hellinger).
* Mixtures such as ``a P + (1 - a) Q`` are formed with ``logaddexp`` of
  log-probabilities, never by taking the log of a sum of probabilities, so
  they stay accurate where the probabilities underflow.
* ``bfloat16`` and ``float16`` logits are upcast and the computation and result
  are ``float32``; ``float32`` stays ``float32`` and ``float64`` stays
  ``float64``. Mixed input dtypes are promoted first.
* Logits are normalised by shifting first: ``log p = (x - max x) - log sum
  exp(x - max x)``, so log-probabilities carry only their own rounding (not
  that of the largest logit), adding a constant to the logits changes nothing
  (exactly, when the shifted logits are exact), and a temperature divides the
  shifted logits.
* The rounding of the normaliser still shifts every ``log p`` of a row by the
  same ``delta`` (about ``1e-7`` in float32), and ``sum_x q f(p/q)`` moves by
  ``delta * sum_x p f'(p/q)`` (``~delta`` absolute: relative errors of 1e-4 for
  near-equal distributions). Sums are therefore taken over the canonical terms
  ``q [f(p/q) - f'(1)(p/q - 1)] >= 0`` (``FDivergence.canonical_perspective``;
  the same divergence for normalised P and Q), which move by ``~delta * D_f``:
  a relative error ``delta``. The same terms make a row with one dominant class
  right: ``log(1 + e^-140)`` rounds to 0, and the ``e^-140`` it loses is second
  order in the dominant class's term. Generators with a kink at ``u = 1``
  (total variation, log1p-abs) and user generators have no canonical form;
  for them, where one class dominates a row (normaliser below ``log 2``), the
  normaliser is computed as ``log1p`` of the other classes' mass instead.
* ``where`` masks positions with the double-``where`` trick: masked rows are
  replaced by zeros before any arithmetic, so NaN or ``inf`` in them cannot
  reach the value or the gradient; their output is exactly ``0``.
* NaN in an unmasked row propagates: that row's result is NaN.
* Argument errors (shapes, dtypes, an empty class axis, ranges of Python-number
  parameters, a non-positive or infinite temperature, unknown divergence names)
  raise ``ValueError`` at trace time (``fdiv._checks``). A temperature given as
  a concrete array is checked too; a traced one (an argument of a jitted
  function) cannot be, and a non-positive traced temperature gives meaningless
  values.
"""

from __future__ import annotations

import functools
import numbers
from typing import Optional, Union

import jax
import jax.numpy as jnp

from fdiv import _checks
from fdiv import divergences as _divergences

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
DivergenceLike = Union[str, "_divergences.FDivergence"]

__all__ = [
    "categorical_divergence",
    "skew_kl",
    "skew_reverse_kl",
    "generalized_jsd",
    "cauchy_schwarz",
]


# ---------------------------------------------------------------------------
# Validation and preparation shared by every estimator.
# ---------------------------------------------------------------------------


def _prepare_logits(target_logits, model_logits, temperature, where, axis):
    """Validates the arguments and returns shifted, temperature-scaled logits and the mask.

    Returns:
      ``(target_logits, model_logits, mask, axis)``: the logits in the compute dtype with masked
      rows zeroed and, unless the temperature is the Python number 1, shifted and scaled to
      ``(logits - max) / temperature`` (see `_shift`);
      ``mask`` is ``None`` or a boolean array broadcastable to the output shape and ``axis`` is
      non-negative.
    """
    target_logits = _checks.check_floating(target_logits, "target_logits")
    model_logits = _checks.check_floating(model_logits, "model_logits")
    if target_logits.shape != model_logits.shape:
        raise ValueError(
            "target_logits and model_logits must have the same shape, got"
            f" target_logits.shape={target_logits.shape} and"
            f" model_logits.shape={model_logits.shape}."
        )
    shape = target_logits.shape
    if not shape:
        raise ValueError(
            "target_logits and model_logits must have at least one axis (the"
            " class axis), got scalars."
        )
    if not isinstance(axis, numbers.Integral) or not -len(shape) <= axis < len(shape):
        raise ValueError(
            f"axis must be an integer in [-{len(shape)}, {len(shape)}) for logits"
            f" of shape {shape}, got {axis!r}."
        )
    axis = int(axis) % len(shape)
    if shape[axis] == 0:
        raise ValueError(
            f"target_logits and model_logits have an empty class axis (axis {axis} of shape"
            f" {shape}); a categorical distribution needs at least one class."
        )
    _checks.check_temperature(temperature)

    dtype = _checks.compute_dtype(target_logits.dtype, model_logits.dtype)
    target_logits = target_logits.astype(dtype)
    model_logits = model_logits.astype(dtype)

    mask = None
    if where is not None:
        out_shape = shape[:axis] + shape[axis + 1 :]
        mask = _checks.check_mask(
            where,
            out_shape,
            f"the output shape {out_shape} (the logits shape {shape} without axis {axis})",
        )
        # Double-where, first half: masked rows become zeros before any
        # arithmetic so NaN/inf there cannot poison the gradients.
        keep = jnp.expand_dims(jnp.broadcast_to(mask, out_shape), axis)
        target_logits = jnp.where(keep, target_logits, 0)
        model_logits = jnp.where(keep, model_logits, 0)

    if not (_checks.is_python_number(temperature) and float(temperature) == 1.0):
        scale = jnp.asarray(temperature, dtype)
        target_logits = _shift(target_logits, axis, scale)
        model_logits = _shift(model_logits, axis, scale)
    return target_logits, model_logits, mask, axis


def _row_max(logits, axis):
    # Clipped to the finite range rather than replaced (a row of -inf stays -inf after the
    # shift either way): XLA fuses this into every consumer, and a max/min per entry is
    # cheaper than a compare and a select there.
    top = jax.lax.stop_gradient(jnp.max(logits, axis=axis, keepdims=True))
    finite = float(jnp.finfo(logits.dtype).max)
    return jnp.clip(top, -finite, finite)


def _shift(logits, axis, temperature):
    """``(logits - max) / temperature``: the maximum is exactly 0 and ``-inf`` stays ``-inf``.

    Subtracting the maximum before anything else makes the log-probabilities exactly invariant
    to a constant added to the logits and keeps the rounding of a large maximum out of them;
    dividing after the shift rounds relative to the (small) differences rather than to the
    scaled logits. ``-inf`` logits are kept out of the division by a double ``where`` so that the
    gradient with respect to a traced temperature is not ``inf * 0``.
    """
    shifted = logits - _row_max(logits, axis)
    neg_inf = jnp.isneginf(shifted)
    scaled = jnp.where(neg_inf, jnp.zeros((), shifted.dtype), shifted) / temperature
    return jnp.where(neg_inf, jnp.full((), -jnp.inf, shifted.dtype), scaled)


def _prepare(target_logits, model_logits, temperature, where, axis):
    """As `_prepare_logits`, returning log-probabilities instead of shifted logits."""
    target_logits, model_logits, mask, axis = _prepare_logits(
        target_logits, model_logits, temperature, where, axis
    )
    return _log_softmax(target_logits, axis), _log_softmax(model_logits, axis), mask, axis


def _finish(values, mask):
    # Double-where, second half: masked outputs are exactly 0 with 0 gradient.
    if mask is None:
        return values
    return jnp.where(mask, values, jnp.zeros((), values.dtype))


def _log_mix(log_a, log_b, weight_a):
    """``log(w a + (1 - w) b)`` from ``log a`` and ``log b``, elementwise.

    Where both ``a`` and ``b`` are zero the result is ``-inf``; the inputs of
    ``logaddexp`` are replaced there because its derivative at
    ``(-inf, -inf)`` is NaN, which a zero cotangent would not cancel.
    """
    dtype = log_a.dtype
    weight_a = jnp.asarray(weight_a, dtype)
    log_wa = log_a + jnp.log(weight_a)
    log_wb = log_b + jnp.log1p(-weight_a)
    both_zero = jnp.isneginf(log_wa) & jnp.isneginf(log_wb)
    safe_a = jnp.where(both_zero, jnp.zeros((), dtype), log_wa)
    safe_b = jnp.where(both_zero, jnp.zeros((), dtype), log_wb)
    return jnp.where(both_zero, jnp.full((), -jnp.inf, dtype), jnp.logaddexp(safe_a, safe_b))


def _kl_terms(log_a, log_b):
    # a log(a/b) - a + b: terms >= 0 whose sum is insensitive to the normalisers' rounding.
    return _divergences.get("forward_kl").canonical_perspective(log_a, log_b)


# ---------------------------------------------------------------------------
# Public estimators.
# ---------------------------------------------------------------------------


def categorical_divergence(
    target_logits: ArrayLike,
    model_logits: ArrayLike,
    divergence: DivergenceLike,
    *,
    temperature: ArrayLike = 1.0,
    where: Optional[ArrayLike] = None,
    axis: int = -1,
) -> Array:
    r"""Exact f-divergence ``D_f(P || Q)`` between two categorical distributions.

    ``P = softmax(target_logits / temperature)`` is the target (teacher) and
    ``Q = softmax(model_logits / temperature)`` the model (student), both along
    ``axis``. The result is

    .. math::
      D_f(P \| Q) = \sum_x q(x) f(p(x) / q(x))

    for every position (docs/reference.md sections 1 and 3), computed as the sum over
    ``axis`` of ``divergence.perspective(log_p, log_q)``, so zero probabilities
    (``-inf`` logits) take the limits of docs/reference.md section 1: forward KL is ``+inf``
    when ``q = 0 < p``, Jensen-Shannon, total variation and squared Hellinger
    stay finite. Names follow docs/reference.md section 2: ``"forward_kl"`` is
    ``KL(P || Q) = KL(teacher || student)``, ``"reverse_kl"`` is ``KL(Q || P)``.

    Args:
      target_logits: Logits of the target ``P``, shape ``[..., num_classes, ...]``
        (classes along ``axis``), floating point.
      model_logits: Logits of the model ``Q``, same shape as ``target_logits``.
      divergence: A registered divergence name (``"forward_kl"``, ``"js"``, ...,
        looked up with ``fdiv.divergences.get``) or an ``FDivergence`` such as
        ``fdiv.divergences.get("alpha", alpha=0.5)``.
      temperature: Softmax temperature applied to both logit arrays; a positive
        finite Python number or scalar array (checked unless traced). The result
        is *not* multiplied by ``temperature**2``.
      where: Optional boolean mask over positions, broadcastable to the output
        shape (the logits shape without ``axis``). Masked positions give exactly
        ``0`` and receive zero gradient, whatever their logits contain.
      axis: The class axis.

    Returns:
      The divergence per position, shape ``target_logits.shape`` without
      ``axis``; ``float32`` for ``bfloat16``/``float16``/``float32`` inputs and
      ``float64`` for ``float64`` inputs. Values may be ``+inf`` where the
      divergence is infinite; NaN in an unmasked row gives NaN for that row.

    Raises:
      ValueError: On mismatched shapes, non-floating logits, an invalid
        ``axis``, a non-positive Python ``temperature``, a ``where`` of the wrong
        shape or dtype, or an unknown divergence name.

    Examples:
      >>> import jax.numpy as jnp
      >>> from fdiv.discrete import categorical_divergence
      >>> p, q = jnp.log(jnp.array([0.2, 0.5, 0.3])), jnp.log(jnp.array([0.1, 0.6, 0.3]))
      >>> float(categorical_divergence(p, q, "forward_kl"))  # doctest: +ELLIPSIS
      0.04746...

    References:
      Csiszar, `Information-type measures of difference of probability
      distributions and indirect observations
      <https://static.renyi.hu/~csiszar/Publications/Information_Type_Measures.pdf>`_,
      1967.

      Ali and Silvey, `A General Class of Coefficients of Divergence of One
      Distribution from Another <https://www.jstor.org/stable/2984279>`_, 1966.

      Hinton, Vinyals and Dean, `Distilling the Knowledge in a Neural Network
      <https://arxiv.org/abs/1503.02531>`_, 2015 (temperature).
    """
    divergence = _divergences.resolve(divergence)
    target_logits, model_logits, mask, axis = _prepare_logits(
        target_logits, model_logits, temperature, where, axis
    )
    values = _f_divergence_of_logits(divergence, axis, target_logits, model_logits)
    return _finish(values, mask)


def _log_normalizer(logits, top, axis, exact=False):
    """``log sum exp`` over ``axis`` (keepdims) of ``shifted = logits - top``, ``top`` the row
    maximum (clipped to the finite range), so the maximum of ``shifted`` is exactly 0 (``-inf``
    for a row of ``-inf``).

    The sum is at least 1, so the normaliser is in ``[0, log classes]`` and ``shifted - norm``
    carries only its own rounding: adding the maximum back (as ``logsumexp`` does) would give
    every log-probability the rounding of the largest logit. With ``exact`` (static), when some
    row has one dominant class (sum below 2, normaliser below log 2), the whole batch takes
    `_log1p_normalizer` instead, which keeps a normaliser near 0 (e.g. ``log(1 + e^-140)``) to
    its relative precision; the check alone costs ~20% of a forward KL on CPUs, so only sums
    that need it (generators without a canonical form, see the module docstring) ask for it.
    A row of ``-inf`` gives ``-inf`` and NaN propagates.
    """
    total = jnp.sum(jnp.exp(logits - top), axis=axis, keepdims=True)
    if not exact:
        return jnp.log(total)
    # The branches take the logits and their maxima, not the shifted logits, so that no
    # [..., classes] intermediate has to be materialised for the conditional.
    return jax.lax.cond(
        jnp.any(total < 2.0),
        lambda x, m, _: _log1p_normalizer(x - m, axis),
        lambda x, m, s: jnp.log(s),
        logits,
        top,
        total,
    )


def _log1p_normalizer(shifted, axis):
    """``log1p(sum - 1)`` with the ``1`` of one maximal entry left out of the sum.

    Maximal entries contribute ``1 + s`` (``s = 0``) instead of ``e^s``: the same value and
    derivative, so gradients taken through this function stay right although the maximum
    itself is held constant.
    """
    at_max = shifted == 0
    rest = jnp.where(at_max, shifted, jnp.exp(jnp.where(at_max, -1.0, shifted)))
    ties = jnp.sum(at_max, axis=axis, keepdims=True).astype(shifted.dtype) - 1
    return jnp.log1p(jnp.sum(rest, axis=axis, keepdims=True) + ties)


def _log_softmax(logits, axis):
    top = _row_max(logits, axis)
    return (logits - top) - _log_normalizer(logits, top, axis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _f_divergence_of_logits(divergence, axis, target_logits, model_logits):
    """``sum_axis q f(p/q)`` for ``p, q = softmax(logits)``, with a closed-form backward pass.

    With ``G_p = d/dlog p [q f(p/q)] = p f'(p/q)`` and ``G_q = q f(p/q) - G_p``, the
    gradients are ``G - softmax * sum_axis G`` for each logit array. The backward pass
    recomputes the log-probabilities from the logits, their row maxima and the two
    log-normalisers, so no ``[..., classes]`` intermediate is stored between the passes: one
    fused read of the logits forward, one backward, which is what keeps large vocabularies
    cheap. Forward-mode differentiation (``jax.jvp``) is not defined for this function.
    """
    return _f_divergence_of_logits_fwd(divergence, axis, target_logits, model_logits)[0]


def _f_divergence_of_logits_fwd(divergence, axis, target_logits, model_logits):
    canonical = divergence.has_canonical_perspective
    top_p = _row_max(target_logits, axis)
    top_q = _row_max(model_logits, axis)
    norm_p = _log_normalizer(target_logits, top_p, axis, exact=not canonical)
    norm_q = _log_normalizer(model_logits, top_q, axis, exact=not canonical)
    log_p = (target_logits - top_p) - norm_p
    log_q = (model_logits - top_q) - norm_q
    terms = divergence.canonical_perspective if canonical else divergence.perspective
    value = jnp.sum(terms(log_p, log_q), axis=axis)
    return value, (target_logits, model_logits, top_p, top_q, norm_p, norm_q)


def _f_divergence_of_logits_bwd(divergence, axis, residuals, cotangent):
    target_logits, model_logits, top_p, top_q, norm_p, norm_q = residuals
    log_p = (target_logits - top_p) - norm_p
    log_q = (model_logits - top_q) - norm_q
    grad_log_p, grad_log_q = divergence.perspective_grads(log_p, log_q)
    cotangent = jnp.expand_dims(cotangent, axis)
    d_target = cotangent * (
        grad_log_p - jnp.exp(log_p) * jnp.sum(grad_log_p, axis=axis, keepdims=True)
    )
    d_model = cotangent * (
        grad_log_q - jnp.exp(log_q) * jnp.sum(grad_log_q, axis=axis, keepdims=True)
    )
    return d_target, d_model


_f_divergence_of_logits.defvjp(_f_divergence_of_logits_fwd, _f_divergence_of_logits_bwd)


def _skew_divergence(mixes_model: bool, name: str, doc: str):
    """``KL(A || alpha A + (1 - alpha) B)`` with ``(A, B) = (P, Q)`` (skew KL) or ``(Q, P)``
    (skew reverse KL, ``mixes_model``); the mixture is formed in log space."""

    def skew(
        target_logits: ArrayLike,
        model_logits: ArrayLike,
        *,
        alpha: ArrayLike = 0.1,
        temperature: ArrayLike = 1.0,
        where: Optional[ArrayLike] = None,
        axis: int = -1,
    ) -> Array:
        _checks.check_unit_interval(alpha, "alpha", closed=True, fix="DistiLLM uses alpha=0.1.")
        log_p, log_q, mask, axis = _prepare(target_logits, model_logits, temperature, where, axis)
        log_a, log_b = (log_q, log_p) if mixes_model else (log_p, log_q)
        log_m = _log_mix(log_a, log_b, alpha)
        return _finish(jnp.sum(_kl_terms(log_a, log_m), axis=axis), mask)

    skew.__name__ = skew.__qualname__ = name
    weighted = "Q" if mixes_model else "P"
    skew.__doc__ = doc.replace("{args}", _SKEW_ARGS.replace("{weighted}", weighted))
    return skew


_SKEW_ARGS = """target_logits: Logits of ``P``, shape ``[..., num_classes, ...]``.
      model_logits: Logits of ``Q``, same shape.
      alpha: Weight of ``{weighted}`` in the mixture, in ``[0, 1]`` (checked when it is a
        Python number). DistiLLM uses ``0.1``.
      temperature: Softmax temperature for both logit arrays (no ``tau**2``).
      where: Optional boolean mask over positions, broadcastable to the output.
      axis: The class axis.

    Returns:
      Shape ``target_logits.shape`` without ``axis``, ``float32`` or ``float64``
      as in :func:`categorical_divergence`.

    References:
      Ko, Kim, Chen and Yun, `DistiLLM: Towards Streamlined Distillation for
      Large Language Models <https://arxiv.org/abs/2402.03898>`_, ICML 2024."""


skew_kl = _skew_divergence(
    False,
    "skew_kl",
    r"""Skew KL divergence ``KL(P || alpha P + (1 - alpha) Q)`` (DistiLLM).

    With ``P`` the target (teacher) and ``Q`` the model (student) as in
    :func:`categorical_divergence` (docs/reference.md section 2, non-f table):

    .. math::
      \mathrm{SKL}_\alpha(P, Q) = \mathrm{KL}(P \| \alpha P + (1 - \alpha) Q).

    ``alpha = 0`` is forward KL; larger ``alpha`` bounds the value by
    ``-log(alpha)`` and keeps the gradient finite when ``Q`` has no mass where
    ``P`` does. The mixture is formed in log space.

    Args:
      {args}
    """,
)

skew_reverse_kl = _skew_divergence(
    True,
    "skew_reverse_kl",
    r"""Skew reverse KL ``KL(Q || (1 - alpha) P + alpha Q)`` (DistiLLM).

    With ``P`` the target (teacher) and ``Q`` the model (student) as in
    :func:`categorical_divergence` (docs/reference.md section 2, non-f table):

    .. math::
      \mathrm{SRKL}_\alpha(P, Q) = \mathrm{KL}(Q \| (1 - \alpha) P + \alpha Q).

    ``alpha = 0`` is reverse KL; ``skew_reverse_kl(t, m) = skew_kl(m, t)``. The mixture is
    formed in log space.

    Args:
      {args}
    """,
)


def generalized_jsd(
    target_logits: ArrayLike,
    model_logits: ArrayLike,
    *,
    beta: ArrayLike = 0.5,
    temperature: ArrayLike = 1.0,
    where: Optional[ArrayLike] = None,
    axis: int = -1,
) -> Array:
    r"""Generalised Jensen-Shannon divergence of GKD.

    With ``P`` the target (teacher), ``Q`` the model (student) and
    ``M = beta P + (1 - beta) Q`` (docs/reference.md section 2, non-f table):

    .. math::
      \mathrm{JSD}_\beta(P, Q) = \beta\,\mathrm{KL}(P \| M)
          + (1 - \beta)\,\mathrm{KL}(Q \| M).

    ``beta = 0.5`` is the Jensen-Shannon divergence (``<= log 2``), equal to
    ``categorical_divergence(..., "js")``. The value is bounded by the binary
    entropy of ``beta``, so it is finite for any supports.

    Args:
      target_logits: Logits of ``P``, shape ``[..., num_classes, ...]``.
      model_logits: Logits of ``Q``, same shape.
      beta: Mixture weight of ``P``, in ``(0, 1)`` (checked when it is a Python
        number); the endpoints make the value identically zero.
      temperature: Softmax temperature for both logit arrays (no ``tau**2``).
      where: Optional boolean mask over positions, broadcastable to the output.
      axis: The class axis.

    Returns:
      Shape ``target_logits.shape`` without ``axis``, ``float32`` or ``float64``
      as in :func:`categorical_divergence`.

    References:
      Agarwal, Vieillard, Zhou, Stanczyk, Ramos, Geist and Bachem, `On-Policy
      Distillation of Language Models: Learning from Self-Generated Mistakes
      <https://arxiv.org/abs/2306.13649>`_, ICLR 2024.

      Lin, `Divergence measures based on the Shannon entropy
      <https://doi.org/10.1109/18.61115>`_, 1991.
    """
    _checks.check_unit_interval(
        beta,
        "beta",
        closed=False,
        fix=("for the limits use categorical_divergence with 'forward_kl' or 'reverse_kl'."),
    )
    log_p, log_q, mask, axis = _prepare(target_logits, model_logits, temperature, where, axis)
    log_m = _log_mix(log_p, log_q, beta)
    beta = jnp.asarray(beta, log_p.dtype)
    terms = beta * _kl_terms(log_p, log_m) + (1 - beta) * _kl_terms(log_q, log_m)
    return _finish(jnp.sum(terms, axis=axis), mask)


def cauchy_schwarz(
    target_logits: ArrayLike,
    model_logits: ArrayLike,
    *,
    temperature: ArrayLike = 1.0,
    where: Optional[ArrayLike] = None,
    axis: int = -1,
) -> Array:
    r"""Cauchy-Schwarz divergence between two categorical distributions.

    With ``P`` the target and ``Q`` the model (docs/reference.md section 2, non-f table):

    .. math::
      D_{CS}(P, Q) = -\log \frac{(\sum_x p q)^2}{\sum_x p^2 \sum_x q^2},

    computed as ``-2 lse(log p + log q) + lse(2 log p) + lse(2 log q)``. It is
    symmetric, zero iff ``P = Q`` and ``+inf`` for disjoint supports. It is not
    an f-divergence.

    Args:
      target_logits: Logits of ``P``, shape ``[..., num_classes, ...]``.
      model_logits: Logits of ``Q``, same shape.
      temperature: Softmax temperature for both logit arrays (no ``tau**2``).
      where: Optional boolean mask over positions, broadcastable to the output.
      axis: The class axis.

    Returns:
      Shape ``target_logits.shape`` without ``axis``, ``float32`` or ``float64``
      as in :func:`categorical_divergence`.

    References:
      Principe, Xu and Fisher, `Information Theoretic Learning
      <https://www.cnel.ufl.edu/files/1439227059.pdf>`_, in Unsupervised
      Adaptive Filtering, 2000.

      Jenssen, Principe, Erdogmus and Eltoft, `The Cauchy-Schwarz divergence and
      Parzen windowing <https://doi.org/10.1016/j.jfranklin.2005.10.001>`_, 2006.
    """
    log_p, log_q, mask, axis = _prepare(target_logits, model_logits, temperature, where, axis)
    lse = jax.nn.logsumexp
    values = (
        -2 * lse(log_p + log_q, axis=axis) + lse(2 * log_p, axis=axis) + lse(2 * log_q, axis=axis)
    )
    return _finish(values, mask)
