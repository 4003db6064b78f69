"""The f-divergence family: generators, derivatives, conjugates and perspectives in log space.

Convention (docs/reference.md section 1): ``P`` is the target (teacher, data), ``Q`` the model (student,
generator), ``u = r = p / q`` the density ratio and

    D_f(P || Q) = E_Q[ f(p / q) ] = sum_x q(x) f(p(x) / q(x)),   f convex, f(1) = 0.

Every method of :class:`FDivergence` takes its argument in log space, ``log_u = log p - log q``,
so that ratios spanning hundreds of orders of magnitude (logits up to +-1e4) stay finite.

How the numerics work
---------------------
Each divergence is described by two one-sided functions that are only ever evaluated on
``log_u <= 0`` (``u`` in ``[0, 1]``), where nothing can overflow:

* ``f_nonpos(l)     = f(e^l)``                  for ``l <= 0``,
* ``dual_nonpos(l)  = e^l f(e^-l) = f^dagger(e^l)`` for ``l <= 0``.

``f^dagger(u) = u f(1/u)`` is the generator of the reversed divergence, ``D_f(P||Q) =
D_{f^dagger}(Q||P)``. The perspective ``q f(p/q)`` then never multiplies a huge ratio by a tiny
probability:

    q f(p/q) = q f_nonpos(log p - log q)       if p <= q,
             = p dual_nonpos(log q - log p)    if p >  q,

and its limits at zero probabilities are the limits of these one-sided functions at ``-inf``:
``f_nonpos(-inf) = f(0)`` and ``dual_nonpos(-inf) = lim_{u->inf} f(u)/u`` (docs/reference.md section 1). Both
branches are computed on "safe" inputs (the double-``where`` pattern) so that the branch not
taken can never leak NaN into gradients.

Power-growth members (Pearson, Neyman, alpha outside [0, 1], t-power outside [0, 1],
log1p-abs) have a one-sided function that grows like ``e^(c |l|)``; for them ``log g`` is also
given (``log_f_nonpos`` / ``log_dual_nonpos``) and beyond a threshold the perspective is
``exp(log q + log g(x))``, representable whenever ``q f(p/q)`` is (``f(p/q)`` alone overflows).
``f`` and ``f/u`` use the same forms (and split ``e^l`` into two halves), so each is exact
where its value is representable, +-inf where it overflows and 0 where it underflows; members
whose full-range value has a simpler exact form (KL: ``f/u = log u``, reverse KL: ``f = -log
u``, t-power) give it directly.

For bounded divergences (finite ``f(0)`` and slope: JS, Hellinger, TV, triangular, alpha in
(0, 1)) ``-inf`` is instead replaced by ``-1e30``, whose ``exp`` is exactly 0: the limits come
out of the arithmetic with no ``isinf`` tests, which matters because selects on boolean arrays
are an order of magnitude slower than ``exp`` on XLA's CPU backend. ``perspective_grads`` gives
both partial derivatives in closed form for backward passes that recompute instead of storing
(``fdiv.discrete``).

jaxlib 0.10.2
-------------
jaxlib 0.10.2's CPU backend miscompiles some fused reductions (its YNNPACK reduce fusion): a
jitted ``jnp.sum(2 * jnp.exp(0.5 * x) * jnp.expm1(0.5 * x) - jnp.expm1(x))`` over 4096 float32
values returns -49.1 instead of 0.838, which made the alpha divergence at ``alpha = 0.5`` wrong
under ``jax.jit`` at 4096 classes and more. ``benchmarks/repro_jaxlib_0_10_2_reduce.py`` is the
minimal reproduction. fdiv's packaging excludes jax/jaxlib 0.10.2; alpha = 0.5 is now computed
as ``2 (sqrt(u) - 1)^2``, which that jaxlib compiles correctly, and the test suite compares jit
against a float64 reference for every registered divergence at 50,000 classes. Importing fdiv
on jaxlib 0.10.2 warns once (:class:`RuntimeWarning`) with the fix, ``pip install
'jaxlib!=0.10.2'``, or the workaround ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-reduce``
(set by the user before JAX starts; fdiv never sets XLA flags itself). Only the version is
checked, so the warning also appears when the CPU backend is not used: checking the backend
would initialise JAX at import time.

References:
  Ali & Silvey (1966); Csiszar (1967). Nowozin, Cseke & Tomioka, "f-GAN" (2016) for conjugates.
  TensorFlow Probability, ``tfp.vi`` Csiszar functions, for the members listed by
  :func:`names` beyond docs/reference.md section 2.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from fdiv import _checks

Array = jax.Array
ArrayLike = Any

__all__ = [
    "FDivergence",
    "get",
    "names",
    "resolve",
    "from_generator",
    "dual",
]


def _warn_if_broken_jaxlib() -> None:
    import jaxlib  # pylint: disable=import-outside-toplevel

    if getattr(jaxlib, "__version__", None) == "0.10.2":
        warnings.warn(
            "jaxlib 0.10.2 miscompiles some fused reductions on CPU (wrong sums under jax.jit, e.g."
            " divergences over 4096+ classes); fix: pip install 'jaxlib!=0.10.2' (and a matching"
            " jax), or set XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-reduce before"
            " importing JAX. See benchmarks/repro_jaxlib_0_10_2_reduce.py.",
            RuntimeWarning,
            stacklevel=2,
        )


_warn_if_broken_jaxlib()

_LOG2 = math.log(2.0)
_INF = float("inf")
# Stand-in for -inf in log-probabilities of bounded divergences: exp(-_BIG) is exactly 0 and
# differences of such numbers stay finite, so the zero-probability limits need no selects.
_BIG = 1e30


# ----------------------------------------------------------------------------------------------
# Small numerically careful helpers.


_as_float = _checks.as_compute_float


def _as_float_pair(log_p: ArrayLike, log_q: ArrayLike) -> tuple[Array, Array]:
    """Both log-probabilities via `_as_float`, promoted to their common dtype."""
    log_p, log_q = _as_float(log_p), _as_float(log_q)
    dtype = jnp.result_type(log_p, log_q)
    return log_p.astype(dtype), log_q.astype(dtype)


def _expm1_over(c: float, x: Array) -> Array:
    """``expm1(c x) / c`` with its limit ``x`` at ``c = 0`` (``c`` is a static float)."""
    if c == 0.0:
        return x
    return jnp.expm1(c * x) / c


def _log1p_over(c: float, x: Array) -> Array:
    """``log1p(c x) / c`` with its limit ``x`` at ``c = 0`` (``c`` is a static float)."""
    if c == 0.0:
        return x
    return jnp.log1p(c * x) / c


def _x_exp_x(l: Array) -> Array:
    """``l e^l = u log u``, equal to 0 at ``l = -inf`` with a zero gradient there.

    For ``l <= 0`` it is ``(l e^(l/2)) e^(l/2)``: ``e^l`` alone is subnormal (flushed to 0 on
    CPUs) below -87 in float32 while the product is still a normal number.
    """
    neg_inf = jnp.isneginf(l)
    safe = jnp.where(neg_inf, 0.0, l)
    half = jnp.exp(0.5 * jnp.minimum(safe, 0.0))
    value = jnp.where(safe <= 0, (safe * half) * half, safe * jnp.exp(safe))
    return jnp.where(neg_inf, 0.0, value)


def _neg(l: Array) -> Array:
    """``-l = -log u``."""
    return -l


def _exp_times(l: Array, value: Array) -> Array:
    """``e^l * value`` for ``l >= 0`` without overflowing ``e^l`` where the product is finite."""
    half = jnp.exp(0.5 * l)
    return half * (half * value)


def _one_sided(g, log_g, log_scale, x):
    """``e^log_scale g(x)`` for ``x <= 0`` and ``log_scale >= 0`` (see `_scaled`)."""
    if log_g is None:
        return _exp_times(log_scale, g(x))
    threshold, log_fn = log_g
    far = x < -threshold
    near = _exp_times(log_scale, g(jnp.where(far, -threshold, x)))
    return jnp.where(far, jnp.exp(log_scale + log_fn(jnp.where(far, x, -2.0 * threshold))), near)


def _full_range(f_nonpos, dual_nonpos, log_f=None, log_dual=None):
    """``f(e^l)`` for any ``l`` from the one-sided forms (see the module docstring)."""

    def f(l):
        nonpos = l <= 0
        l_lo = jnp.where(nonpos, l, 0.0)
        l_hi = jnp.where(nonpos, 0.0, l)
        return jnp.where(
            nonpos,
            _one_sided(f_nonpos, log_f, 0.0, l_lo),
            _one_sided(dual_nonpos, log_dual, l_hi, -l_hi),
        )

    return f


def _f_over_u_full_range(f_nonpos, dual_nonpos, log_f=None, log_dual=None):
    """``f(e^l) / e^l`` for any ``l`` from the one-sided forms."""

    def f_over_u(l):
        nonneg = l >= 0
        l_hi = jnp.where(nonneg, l, 0.0)
        l_lo = jnp.where(nonneg, 0.0, l)
        return jnp.where(
            nonneg,
            _one_sided(dual_nonpos, log_dual, 0.0, -l_hi),
            _one_sided(f_nonpos, log_f, -l_lo, l_lo),
        )

    return f_over_u


def _log_abs_expm1(x: Array) -> Array:
    """``log |e^x - 1|`` for any ``x`` (``-inf`` at 0), without overflow."""
    return jnp.maximum(x, 0.0) + jnp.log(-jnp.expm1(-jnp.abs(x)))


def _mul_exp_tiny(l: Array, c: Array) -> Array:
    """``c e^l`` for ``l <= 0`` whose ``e^l`` alone may be subnormal (flushed to 0 on CPUs)."""
    half = jnp.exp(0.5 * l)
    return (c * half) * half


def _bisect_conjugate(
    t: Array,
    f_prime: Callable[[Array], Array],
    f: Callable[[Array], Array],
    f_at_zero: float,
    slope_at_infinity: float,
    *,
    log_u_range: float = 40.0,
    iterations: int = 64,
) -> Array:
    """Numerical convex conjugate ``f*(t) = sup_u u t - f(u)``.

    ``f'`` is non-decreasing in ``log u`` (f is convex), so the maximiser ``log u*`` solving
    ``f'(u*) = t`` is found by bisection on ``[-log_u_range, log_u_range]``. Outside the range of
    ``f'`` the supremum is at the boundary of the domain: ``+inf`` for ``t`` above the slope of f at
    infinity and ``-f(0)`` for ``t`` at or below ``f'(0+)``. The gradient with respect to ``t`` is
    ``u*`` (envelope theorem), which the final expression carries because the bisection's
    comparisons pass no gradient.
    """
    t = _as_float(t)
    lo = jnp.full(t.shape, -log_u_range, t.dtype)
    hi = jnp.full(t.shape, log_u_range, t.dtype)

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        right = f_prime(mid) < t
        return jnp.where(right, mid, lo), jnp.where(right, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iterations, body, (lo, hi))
    log_u = jax.lax.stop_gradient(0.5 * (lo + hi))
    value = jnp.exp(log_u) * t - f(log_u)
    below = t <= f_prime(jnp.full_like(t, -log_u_range))
    value = jnp.where(below, -f_at_zero, value)
    return jnp.where(t >= slope_at_infinity, _INF, value)


# ----------------------------------------------------------------------------------------------
# The dataclass.


@dataclasses.dataclass(frozen=True, eq=False)
class FDivergence:
    """An f-divergence ``D_f(P || Q) = E_Q[f(p/q)]`` with everything computed in log space.

    Instances are immutable and hashable (by name and parameters) and registered as static
    pytrees, so they can be passed as arguments to jitted functions (without retracing for an
    equal instance) or closed over. Build them with :func:`get`, :func:`from_generator` or
    :func:`dual`; the fields are implementation detail.

    Every method is elementwise, accepts any array shape, computes in at least float32
    (bfloat16/float16 inputs are upcast) and takes ``log_u = log p - log q`` (P target, Q model):

    * ``f(log_u)``: the generator ``f(u)``.
    * ``f_over_u(log_u)``: ``f(u) / u``, the integrand of ``D_f`` under samples from ``P``.
    * ``f_prime(log_u)``: ``f'(u)``; the optimal variational critic (docs/reference.md section 3).
    * ``weight(log_u)``: ``h(u) = u^2 f''(u)``, the f-distill weight (docs/reference.md section 4).
    * ``conjugate(t)``: the convex conjugate ``f*(t) = sup_{u >= 0} u t - f(u)`` (+inf outside
      its domain).
    * ``conjugate_at_derivative(log_u)``: ``f*(f'(u)) = u f'(u) - f(u)``, the Q-side integrand
      of the variational bound with a log-ratio critic; ``-(...)`` is the f-DPG pseudo-reward.
    * ``perspective(log_p, log_q)``: ``q f(p/q)`` with the limits of docs/reference.md section 1 where
      ``p = 0`` or ``q = 0``; finite gradients wherever the value is finite.
    * ``canonical_perspective(log_p, log_q)``: ``q [f(p/q) - f'(1) (p/q - 1)] >= 0``, whose sum
      over classes is the same divergence for normalised ``P, Q`` (not defined where f has a kink
      at 1: total variation, log1p-abs, user generators).

    Attributes:
      name: registry name.
      params: ``((key, value), ...)`` parameters, e.g. ``(("alpha", 0.5),)``.
      f_at_zero: ``f(0) = lim_{u->0} f(u)``, the cost per unit of model mass where ``p = 0``.
      slope_at_infinity: ``lim_{u->inf} f(u)/u``, the cost per unit of target mass where ``q =
        0``; infinite for mass-covering divergences (forward KL).
      symmetric: ``D_f(P||Q) = D_f(Q||P)`` for all P, Q.
      bounded: ``D_f`` is bounded (both limits above finite), e.g. JS, Hellinger, TV.
      mode_seeking: a model can drop target mass at finite cost (``slope_at_infinity`` finite),
        so minimising ``D_f`` over Q may ignore modes of P (reverse KL is the extreme, slope 0).
      has_weight: ``f`` is twice differentiable on ``(0, inf)`` so :meth:`weight` exists (false
        for total variation and log1p-abs, whose f has a kink at ``u = 1``).
    """

    name: str
    params: tuple[tuple[str, float], ...]
    f_nonpos: Callable[[Array], Array]
    dual_nonpos: Callable[[Array], Array]
    f_prime_fn: Callable[[Array], Array]
    weight_fn: Callable[[Array], Array] | None
    conjugate_fn: Callable[[Array], Array] | None
    conjugate_at_derivative_fn: Callable[[Array], Array]
    f_at_zero: float
    slope_at_infinity: float
    symmetric: bool
    perspective_fn: Callable[[Array, Array], Array] | None = None
    perspective_grads_fn: Callable[[Array, Array], tuple[Array, Array]] | None = None
    f_fn: Callable[[Array], Array] | None = None
    f_over_u_fn: Callable[[Array], Array] | None = None
    # (threshold, log g) for one-sided functions g that grow exponentially as l -> -inf:
    # log g(l), accurate for l <= -threshold, so that q g(log p - log q) is computed as
    # exp(log q + log g) where g alone would overflow (power-growth members).
    log_f_nonpos: tuple[float, Callable[[Array], Array]] | None = None
    log_dual_nonpos: tuple[float, Callable[[Array], Array]] | None = None
    # q [f(p/q) - f'(1) (p/q - 1)] (see `canonical_perspective`): a function, or True where the
    # perspective is already of that form (f'(1) = 0, f smooth at 1).
    canonical_perspective_fn: Callable[[Array, Array], Array] | bool | None = None
    key: Any = None
    description: str = ""

    # -- identity ------------------------------------------------------------------------------
    def _identity(self):
        return (self.name, self.params) if self.key is None else self.key

    def __eq__(self, other):
        return isinstance(other, FDivergence) and self._identity() == other._identity()

    def __hash__(self):
        return hash(self._identity())

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.params)
        return f"FDivergence({self.name}{', ' + args if args else ''})"

    # -- properties ----------------------------------------------------------------------------
    @property
    def bounded(self) -> bool:
        return math.isfinite(self.f_at_zero) and math.isfinite(self.slope_at_infinity)

    @property
    def mode_seeking(self) -> bool:
        return math.isfinite(self.slope_at_infinity)

    @property
    def has_weight(self) -> bool:
        return self.weight_fn is not None

    @property
    def has_conjugate(self) -> bool:
        return self.conjugate_fn is not None

    @property
    def has_canonical_perspective(self) -> bool:
        return self.canonical_perspective_fn not in (None, False)

    # -- functions of log u --------------------------------------------------------------------
    def f(self, log_u: ArrayLike) -> Array:
        """``f(u)`` for ``u = exp(log_u)``; ``log_u = -inf`` gives ``f(0)``."""
        if self.f_fn is not None:
            return self.f_fn(_as_float(log_u))
        return _full_range(
            self.f_nonpos, self.dual_nonpos, self.log_f_nonpos, self.log_dual_nonpos
        )(_as_float(log_u))

    def f_over_u(self, log_u: ArrayLike) -> Array:
        """``f(u) / u``; ``log_u = +inf`` gives ``lim f(u)/u`` (the slope at infinity)."""
        if self.f_over_u_fn is not None:
            return self.f_over_u_fn(_as_float(log_u))
        return _f_over_u_full_range(
            self.f_nonpos, self.dual_nonpos, self.log_f_nonpos, self.log_dual_nonpos
        )(_as_float(log_u))

    def f_prime(self, log_u: ArrayLike) -> Array:
        """``f'(u)``: for ``u = p/q`` the optimal f-GAN critic ``T*`` (docs/reference.md section 3)."""
        return self.f_prime_fn(_as_float(log_u))

    def weight(self, log_u: ArrayLike) -> Array:
        """``h(u) = u^2 f''(u)``, the f-distill score weight (docs/reference.md section 4; h = 1 is reverse KL).

        Raises:
          ValueError: when ``f`` is not twice differentiable (total variation, log1p-abs).
        """
        if self.weight_fn is None:
            raise ValueError(
                f"divergence {self.name!r} has no weight h(u) = u^2 f''(u): its generator has a kink"
                " at u = 1 (f'' is a point mass there). Choose a divergence with has_weight=True, e.g."
                f" {', '.join(n for n in _WEIGHTED_EXAMPLES)}."
            )
        return self.weight_fn(_as_float(log_u))

    def conjugate(self, t: ArrayLike) -> Array:
        """Convex conjugate ``f*(t) = sup_{u >= 0} (u t - f(u))``; ``+inf`` outside its domain."""
        if self.conjugate_fn is None:
            raise ValueError(
                f"divergence {self.name!r} has no conjugate; pass conjugate=... to from_generator or"
                " use conjugate_at_derivative, which needs none."
            )
        return self.conjugate_fn(_as_float(t))

    def conjugate_at_derivative(self, log_u: ArrayLike) -> Array:
        """``f*(f'(u)) = u f'(u) - f(u)`` without evaluating the conjugate (docs/reference.md section 3)."""
        return self.conjugate_at_derivative_fn(_as_float(log_u))

    def perspective(self, log_p: ArrayLike, log_q: ArrayLike) -> Array:
        """Elementwise ``q f(p/q)`` from log-probabilities (docs/reference.md section 1).

        Args:
          log_p: log target probabilities (or densities), any shape; ``-inf`` for ``p = 0``.
          log_q: log model probabilities, broadcastable with ``log_p``; ``-inf`` for ``q = 0``.

        Returns:
          ``q f(p/q)`` with ``p = 0`` giving ``q f(0)``, ``q = 0 < p`` giving ``p lim f(u)/u`` and
          ``p = q = 0`` giving 0. NaN inputs give NaN.
        """
        log_p, log_q = _as_float_pair(log_p, log_q)
        if self.perspective_fn is not None:
            return self.perspective_fn(log_p, log_q)
        if self.bounded:
            return _perspective_bounded(
                self.f_nonpos, self.dual_nonpos, log_p, log_q, self.symmetric_generator
            )
        return _perspective_by_branches(
            self.f_nonpos,
            self.dual_nonpos,
            log_p,
            log_q,
            self.symmetric_generator,
            self.log_f_nonpos,
            self.log_dual_nonpos,
        )

    def canonical_perspective(self, log_p: ArrayLike, log_q: ArrayLike) -> Array:
        """``q [f(p/q) - f'(1) (p/q - 1)]``, elementwise, with the limits of `perspective`.

        The generator ``f(u) - f'(1) (u - 1)`` is convex, 0 at ``u = 1`` with slope 0 there, so
        every term is ``>= 0`` and a sum over classes has no cancellation; for normalised ``P``
        and ``Q`` the affine part sums to 0 and the sum is ``D_f(P || Q)``. Where ``P`` and ``Q``
        are normalised only to rounding (``sum p = e^delta``), the sum of `perspective` moves by
        ``delta * sum_x p f'(p/q)`` (about ``delta`` for forward KL, whatever the divergence),
        that of these terms by about ``delta * D_f``: a relative error ``delta``. Sums over
        classes (``fdiv.discrete``) use this form.

        Raises:
          ValueError: for generators with a kink at ``u = 1`` (no ``f'(1)``) and user generators
            (``has_canonical_perspective`` is False).
        """
        if not self.has_canonical_perspective:
            raise ValueError(
                f"divergence {self.name!r} has no canonical perspective (its generator has a kink"
                " at u = 1 or is a user generator); use perspective."
            )
        if self.canonical_perspective_fn is True:
            return self.perspective(log_p, log_q)
        log_p, log_q = _as_float_pair(log_p, log_q)
        return self.canonical_perspective_fn(log_p, log_q)

    def perspective_grads(self, log_p: ArrayLike, log_q: ArrayLike) -> tuple[Array, Array]:
        """Both partial derivatives of ``q f(p/q)`` with respect to ``log p`` and ``log q``.

        ``d/dlog p = p f'(p/q)`` and ``d/dlog q = q f(p/q) - p f'(p/q) = -q f*(f'(p/q))``. Used by
        closed-form backward passes (``fdiv.discrete``), which avoid storing intermediates. Where
        ``p = 0`` the first is 0 (for divergences finite there); where ``q = 0 < p`` it is
        ``p lim f'(u)``.
        """
        log_p, log_q = _as_float_pair(log_p, log_q)
        if self.perspective_grads_fn is not None:
            return self.perspective_grads_fn(log_p, log_q)
        if self.log_f_nonpos is not None or self.log_dual_nonpos is not None:
            # Power growth: the closed forms below would overflow; differentiate the log-space
            # perspective elementwise in forward mode instead.
            ones = jnp.ones_like(log_p)
            grad_p = jax.jvp(lambda a: self.perspective(a, log_q), (log_p,), (ones,))[1]
            grad_q = jax.jvp(lambda b: self.perspective(log_p, b), (log_q,), (ones,))[1]
            return grad_p, grad_q
        grad_p = self._perspective_log_p_grad(log_p, log_q)
        return grad_p, self.perspective(log_p, log_q) - grad_p

    def _perspective_log_p_grad(self, log_p: Array, log_q: Array) -> Array:
        # p f'(u) = max(p, q) * (u f'(u) if p <= q else f'(u)), u f'(u) = f*(f'(u)) + f(u): each
        # factor stays finite where the other side of the ratio underflows.
        if self.bounded:
            lp, lq = jnp.maximum(log_p, -_BIG), jnp.maximum(log_q, -_BIG)
            p_le_q = lp <= lq
            x = jnp.minimum(lp, lq) - jnp.maximum(lp, lq)
            inner = jnp.where(
                p_le_q, self.conjugate_at_derivative_fn(x) + self.f_nonpos(x), self.f_prime_fn(-x)
            )
            return jnp.exp(jnp.maximum(lp, lq)) * inner
        p_zero, q_zero = jnp.isneginf(log_p), jnp.isneginf(log_q)
        p_le_q = log_p <= log_q
        diff = jnp.where(p_zero | q_zero, 0.0, log_p - log_q)
        x_lo = jnp.where(p_le_q, diff, 0.0)
        x_hi = jnp.where(p_le_q, 0.0, diff)
        inner = jnp.where(
            p_le_q,
            self.conjugate_at_derivative_fn(x_lo) + self.f_nonpos(x_lo),
            self.f_prime_fn(x_hi),
        )
        grad = jnp.exp(jnp.where(p_le_q, log_q, log_p)) * inner
        # p = 0: nothing (infinite values aside); q = 0 < p: p times the slope at infinity.
        grad = jnp.where(q_zero & ~p_zero, jnp.exp(log_p) * self.slope_at_infinity, grad)
        return jnp.where(p_zero, 0.0, grad)

    @property
    def symmetric_generator(self) -> bool:
        return self.f_nonpos is self.dual_nonpos


def _scaled(g, log_g, log_scale, x):
    """``exp(log_scale) * g(x)`` for ``x <= 0``; through ``exp(log_scale + log g(x))`` where a
    log form ``log_g = (threshold, fn)`` is given and ``x < -threshold`` (g alone may overflow
    there while the product is representable)."""
    if log_g is None:
        return jnp.exp(log_scale) * g(x)
    threshold, log_fn = log_g
    far = x < -threshold
    near = jnp.exp(log_scale) * g(jnp.where(far, -threshold, x))
    return jnp.where(far, jnp.exp(log_scale + log_fn(jnp.where(far, x, -2.0 * threshold))), near)


def _perspective_by_branches(
    f_nonpos, dual_nonpos, log_p, log_q, self_dual, log_f=None, log_dual=None
):
    both_zero = jnp.isneginf(log_p) & jnp.isneginf(log_q)
    p_le_q = log_p <= log_q
    diff = jnp.where(both_zero, 0.0, log_p - log_q)
    # x = -|log p - log q| as a selection (not abs) so the one-sided derivative at p = q is exact.
    x = jnp.where(p_le_q, diff, -diff)
    log_scale = jnp.where(p_le_q, log_q, log_p)
    if self_dual:
        inner = f_nonpos(x)
        value = _scaled(f_nonpos, log_f, log_scale, x)
    else:
        # Each branch sees a harmless input where it is not selected, so it cannot leak NaN.
        x_lo, x_hi = jnp.where(p_le_q, x, 0.0), jnp.where(p_le_q, 0.0, x)
        inner = jnp.where(p_le_q, f_nonpos(x_lo), dual_nonpos(x_hi))
        value = jnp.where(
            p_le_q,
            _scaled(f_nonpos, log_f, log_scale, x_lo),
            _scaled(dual_nonpos, log_dual, log_scale, x_hi),
        )
    # Exactly one probability is zero (x = -inf): an infinite limit (q f(0) or p lim f(u)/u) is
    # infinite however small the other probability is, even where its exp underflows to 0.
    value = jnp.where(jnp.isneginf(x) & jnp.isinf(inner), inner, value)
    return jnp.where(both_zero, 0.0, value)


def _perspective_bounded(f_nonpos, dual_nonpos, log_p, log_q, self_dual):
    """The perspective for finite ``f(0)`` and slope: ``-inf`` is replaced by ``-_BIG``.

    Every one-sided function is finite on ``[-2 _BIG, 0]`` and ``exp(-_BIG) = 0``, so zero
    probabilities give their limits with no ``isinf`` tests (selects are slow on CPU backends).
    """
    lp, lq = jnp.maximum(log_p, -_BIG), jnp.maximum(log_q, -_BIG)
    if self_dual:
        # f'(1) = 0 for a self-dual generator, so the tie-splitting derivative of max/min at
        # p = q is exact.
        larger = jnp.maximum(lp, lq)
        return jnp.exp(larger) * f_nonpos(jnp.minimum(lp, lq) - larger)
    p_le_q = lp <= lq
    x = jnp.where(p_le_q, lp - lq, lq - lp)
    inner = jnp.where(p_le_q, f_nonpos(x), dual_nonpos(x))
    return jnp.exp(jnp.where(p_le_q, lq, lp)) * inner


jax.tree_util.register_static(FDivergence)


# ----------------------------------------------------------------------------------------------
# The members. Each constructor returns an FDivergence; `_REGISTRY` maps names to them.


def _forward_kl_perspective(log_p, log_q):
    # p (log p - log q); q = 0 < p is +inf even where p underflows to 0 (0 * inf otherwise).
    p_zero = jnp.isneginf(log_p)
    safe_lp = jnp.where(p_zero, 0.0, log_p)
    value = jnp.exp(safe_lp) * (safe_lp - log_q)
    value = jnp.where(jnp.isneginf(log_q), jnp.inf, value)
    return jnp.where(p_zero, 0.0, value)


def _reverse_kl_perspective(log_p, log_q):
    return _forward_kl_perspective(log_q, log_p)


def _forward_kl_canonical(log_p, log_q):
    """``p log(p/q) - p + q = max(p, q) g(x)``, ``x = log(min/max) <= 0``, with one ``expm1``:
    ``g(x) = x e^x - expm1(x)`` where ``p <= q`` and ``expm1(x) - x`` where ``p > q``. Each
    ``g`` is ``x^2/2 + O(x^3)`` computed with absolute error ``~eps |x|`` and nothing overflows.

    ``-inf`` is replaced by ``-_BIG`` (``exp`` of it is 0): ``p = 0`` gives ``q g(-_BIG) = q``
    and ``p = q = 0`` gives 0 with no test; ``q = 0 < p`` is ``+inf`` by one select, even where
    ``p`` underflows.
    """
    lp, lq = jnp.maximum(log_p, -_BIG), jnp.maximum(log_q, -_BIG)
    larger = jnp.maximum(lp, lq)
    x = -jnp.abs(lp - lq)
    em = jnp.expm1(x)
    # x e^x - expm1(x) as x (1 + em) - em: 1 + em is exactly 0 far below 0, so p = 0 gives 1.
    g = jnp.where(lp <= lq, x * (1.0 + em) - em, em - x)
    value = jnp.exp(larger) * g
    return jnp.where(jnp.isneginf(log_q) & (log_p > -_INF), _INF, value)


def _reverse_kl_canonical(log_p, log_q):
    return _forward_kl_canonical(log_q, log_p)


def _forward_kl_grads(log_p, log_q):
    # p (log p - log q): d/dlog p = p (log p - log q + 1), d/dlog q = -p.
    p_zero = jnp.isneginf(log_p)
    safe_lp = jnp.where(p_zero, 0.0, log_p)
    p = jnp.exp(safe_lp)
    return jnp.where(p_zero, 0.0, p * (safe_lp - log_q + 1.0)), jnp.where(p_zero, 0.0, -p)


def _reverse_kl_grads(log_p, log_q):
    grad_q, grad_p = _forward_kl_grads(log_q, log_p)
    return grad_p, grad_q


def forward_kl() -> FDivergence:
    """KL(P||Q) = sum p log(p/q), f(u) = u log u; mass covering (docs/reference.md section 2)."""
    return FDivergence(
        name="forward_kl",
        params=(),
        f_nonpos=_x_exp_x,
        dual_nonpos=_neg,
        f_prime_fn=lambda l: l + 1.0,
        weight_fn=jnp.exp,
        conjugate_fn=lambda t: jnp.exp(t - 1.0),
        conjugate_at_derivative_fn=jnp.exp,
        f_at_zero=0.0,
        slope_at_infinity=_INF,
        symmetric=False,
        perspective_fn=_forward_kl_perspective,
        perspective_grads_fn=_forward_kl_grads,
        canonical_perspective_fn=_forward_kl_canonical,
        f_fn=_x_exp_x,
        f_over_u_fn=lambda l: l,
        description="KL(P||Q), f(u) = u log u",
    )


def reverse_kl() -> FDivergence:
    """KL(Q||P) = sum q log(q/p), f(u) = -log u; mode seeking, h = 1 (VSD/DMD)."""
    return FDivergence(
        name="reverse_kl",
        params=(),
        f_nonpos=_neg,
        dual_nonpos=_x_exp_x,
        f_prime_fn=lambda l: -jnp.exp(-l),
        weight_fn=jnp.ones_like,
        conjugate_fn=lambda t: jnp.where(t < 0, -1.0 - jnp.log(jnp.where(t < 0, -t, 1.0)), _INF),
        conjugate_at_derivative_fn=lambda l: l - 1.0,
        f_at_zero=_INF,
        slope_at_infinity=0.0,
        symmetric=False,
        perspective_fn=_reverse_kl_perspective,
        perspective_grads_fn=_reverse_kl_grads,
        canonical_perspective_fn=_reverse_kl_canonical,
        f_fn=_neg,
        f_over_u_fn=lambda l: _x_exp_x(-l),
        description="KL(Q||P), f(u) = -log u",
    )


def _gkl_series(s: Array) -> Array:
    """``phi(e^s)`` by its series sum_k (k-1)/k! s^k, accurate to float64 for |s| < 0.1."""
    return (
        s
        * s
        * (
            0.5
            + s
            * (1 / 3 + s * (1 / 8 + s * (1 / 30 + s * (1 / 144 + s * (1 / 840 + s * (1 / 5760))))))
        )
    )


def _gkl(s: Array) -> Array:
    """``e^s s - e^s + 1 = phi(e^s)``, phi(t) = t log t - t + 1 >= 0, accurate near s = 0.

    The series is used for |s| < 0.1, where the direct form cancels.
    """
    neg_inf = jnp.isneginf(s)
    s = jnp.where(neg_inf, 0.0, s)
    small = jnp.abs(s) < 0.1
    s_small = jnp.where(small, s, 0.0)
    s_big = jnp.where(small, 1.0, s)
    direct = jnp.exp(s_big) * (s_big - 1.0) + 1.0
    return jnp.where(neg_inf, 1.0, jnp.where(small, _gkl_series(s_small), direct))


def _js_terms(ratio_min: Array, log_ratio_min: Array) -> Array:
    """``f_JS(v)`` for ``v = e^x <= 1`` given both ``v`` and ``x = log v`` (``x > -inf``).

    f_JS(v) = m/2 [phi(v/m) + phi(1/m)], m = (1 + v)/2, phi(t) = t log t - t + 1: two non-negative
    terms, so values near v = 1 keep their relative precision. Only log1p is transcendental here.
    """
    v = ratio_min
    m = 0.5 * (1.0 + v)
    log_m = jnp.log1p(v) - _LOG2
    s1 = log_m - log_ratio_min  # log(m / v) >= 0
    s2 = log_m  # log m <= 0
    near = jnp.abs(s1) < 0.1  # then |s2| < 0.1 too
    t1, t2 = v / m, 1.0 / m
    direct = t1 * (-jnp.where(near, 1.0, s1) - 1.0) + t2 * (-jnp.where(near, 1.0, s2) - 1.0) + 2.0
    series = _gkl_series(jnp.where(near, -s1, 0.0)) + _gkl_series(jnp.where(near, -s2, 0.0))
    return 0.5 * m * jnp.where(near, series, direct)


def _js_nonpos(l: Array) -> Array:
    neg_inf = jnp.isneginf(l)
    safe = jnp.where(neg_inf, 0.0, l)
    return jnp.where(neg_inf, 0.5 * _LOG2, _js_terms(jnp.exp(safe), safe))


def _js_perspective(log_p, log_q):
    # max(p, q) f_JS(v), v = min/max = e^x: f_JS(v) = 1/2 [v x - (1 + v) log((1 + v)/2)], with
    # log((1 + v)/2) = log1p(expm1(x)/2), exact near v = 1 (log1p(v) - log 2 would lose all of
    # it there). No selects; near p = q the two terms still cancel to first order (relative
    # error ~ eps/|x| per entry, as for p log(p/q), absolute error ~ eps |x|), where `f` uses
    # the series.
    lp, lq = jnp.maximum(log_p, -_BIG), jnp.maximum(log_q, -_BIG)
    larger = jnp.maximum(lp, lq)
    # min - max as -|lp - lq| (the same number): XLA then fuses it instead of materialising it.
    x = -jnp.abs(lp - lq)
    v = jnp.exp(x)
    inner = 0.5 * (x * v - (1.0 + v) * jnp.log1p(0.5 * jnp.expm1(x)))
    return jnp.exp(larger) * inner


def _js_grads(log_p, log_q):
    # p f'(p/q) = p/2 log(2p/(p+q)) and, by symmetry, q/2 log(2q/(p+q)); no selects.
    lp, lq = jnp.maximum(log_p, -_BIG), jnp.maximum(log_q, -_BIG)
    x = lp - lq
    softplus_minus_x = jax.nn.softplus(-x)
    return (
        0.5 * jnp.exp(lp) * (_LOG2 - softplus_minus_x),
        0.5 * jnp.exp(lq) * (_LOG2 - (softplus_minus_x + x)),
    )  # softplus(x), exact at -_BIG


def jensen_shannon() -> FDivergence:
    """JSD = 1/2 KL(P||M) + 1/2 KL(Q||M), M = (P+Q)/2; bounded by log 2, symmetric."""
    return FDivergence(
        name="js",
        params=(),
        f_nonpos=_js_nonpos,
        dual_nonpos=_js_nonpos,
        # f'(u) = 1/2 log(2u/(1+u)) = 1/2 (log 2 - softplus(-l))
        f_prime_fn=lambda l: 0.5 * (_LOG2 - jax.nn.softplus(-l)),
        weight_fn=lambda l: 0.5 * jax.nn.sigmoid(l),
        conjugate_fn=lambda t: jnp.where(
            t < 0.5 * _LOG2,
            -0.5 * jnp.log(jnp.where(t < 0.5 * _LOG2, 2.0 - jnp.exp(2.0 * t), 1.0)),
            _INF,
        ),
        # u f' - f = 1/2 log((1+u)/2)
        conjugate_at_derivative_fn=lambda l: 0.5 * (jax.nn.softplus(l) - _LOG2),
        f_at_zero=0.5 * _LOG2,
        slope_at_infinity=0.5 * _LOG2,
        symmetric=True,
        canonical_perspective_fn=True,
        perspective_fn=_js_perspective,
        perspective_grads_fn=_js_grads,
        description="Jensen-Shannon, JSD <= log 2",
    )


def _hellinger_nonpos(l: Array) -> Array:
    return 0.5 * jnp.square(jnp.expm1(0.5 * l))


def _hellinger_grads(log_p, log_q):
    # p f'(p/q) = (p - sqrt(p q)) / 2 and (q - sqrt(p q)) / 2
    lp, lq = jnp.maximum(log_p, -_BIG), jnp.maximum(log_q, -_BIG)
    geometric = jnp.exp(0.5 * (lp + lq))
    return 0.5 * (jnp.exp(lp) - geometric), 0.5 * (jnp.exp(lq) - geometric)


def squared_hellinger() -> FDivergence:
    """H^2 = 1/2 sum (sqrt p - sqrt q)^2 <= 1, f(u) = 1/2 (sqrt u - 1)^2."""
    return FDivergence(
        name="squared_hellinger",
        params=(),
        f_nonpos=_hellinger_nonpos,
        dual_nonpos=_hellinger_nonpos,
        f_prime_fn=lambda l: -0.5 * jnp.expm1(-0.5 * l),
        weight_fn=lambda l: 0.25 * jnp.exp(0.5 * l),
        conjugate_fn=lambda t: jnp.where(t < 0.5, t / jnp.where(t < 0.5, 1.0 - 2.0 * t, 1.0), _INF),
        conjugate_at_derivative_fn=lambda l: 0.5 * jnp.expm1(0.5 * l),
        f_at_zero=0.5,
        slope_at_infinity=0.5,
        symmetric=True,
        canonical_perspective_fn=True,
        perspective_grads_fn=_hellinger_grads,
        description="squared Hellinger, 1/2 sum (sqrt p - sqrt q)^2",
    )


def _tv_nonpos(l: Array) -> Array:
    return -0.5 * jnp.expm1(l)


def total_variation() -> FDivergence:
    """TV = 1/2 sum |p - q| <= 1, f(u) = 1/2 |u - 1|; no f-distill weight (kink at u = 1)."""
    return FDivergence(
        name="total_variation",
        params=(),
        f_nonpos=_tv_nonpos,
        dual_nonpos=_tv_nonpos,
        f_prime_fn=lambda l: 0.5 * jnp.sign(l),
        weight_fn=None,
        conjugate_fn=lambda t: jnp.where(t > 0.5, _INF, jnp.maximum(t, -0.5)),
        conjugate_at_derivative_fn=lambda l: 0.5 * jnp.sign(l),
        f_at_zero=0.5,
        slope_at_infinity=0.5,
        symmetric=True,
        description="total variation, 1/2 sum |p - q|",
    )


def _pearson_nonpos(l):
    return jnp.square(jnp.expm1(l))


def _neyman_nonpos(l):
    # (1 - u)^2 / u = expm1(l) * (-expm1(-l)); -expm1(-l) = +inf at l = -inf (q f(0) = inf).
    return -jnp.expm1(l) * jnp.expm1(-l)


def _log_neyman_nonpos(l):
    # log((1 - u)^2 / u)
    return 2.0 * jnp.log(-jnp.expm1(l)) - l


def pearson() -> FDivergence:
    """Pearson chi^2 = sum (p - q)^2 / q, f(u) = (u - 1)^2."""
    return FDivergence(
        name="pearson",
        params=(),
        f_nonpos=_pearson_nonpos,
        dual_nonpos=_neyman_nonpos,
        f_prime_fn=lambda l: 2.0 * jnp.expm1(l),
        weight_fn=lambda l: 2.0 * jnp.exp(2.0 * l),
        conjugate_fn=lambda t: jnp.where(t >= -2.0, 0.25 * t * t + t, -1.0),
        # u f' - f = 2u(u-1) - (u-1)^2 = u^2 - 1
        conjugate_at_derivative_fn=lambda l: jnp.expm1(2.0 * l),
        f_at_zero=1.0,
        slope_at_infinity=_INF,
        symmetric=False,
        canonical_perspective_fn=True,
        log_dual_nonpos=(1.0, _log_neyman_nonpos),
        description="Pearson chi-square, sum (p-q)^2/q",
    )


def neyman() -> FDivergence:
    """Neyman chi^2 = sum (p - q)^2 / p, f(u) = (1 - u)^2 / u."""
    return FDivergence(
        name="neyman",
        params=(),
        f_nonpos=_neyman_nonpos,
        dual_nonpos=_pearson_nonpos,
        f_prime_fn=lambda l: -jnp.expm1(-2.0 * l),
        weight_fn=lambda l: 2.0 * jnp.exp(-l),
        conjugate_fn=lambda t: jnp.where(
            t <= 1.0, 2.0 - 2.0 * jnp.sqrt(jnp.where(t <= 1.0, 1.0 - t, 0.0)), _INF
        ),
        # u f' - f = u - 1/u - (u - 2 + 1/u) = 2 - 2/u
        conjugate_at_derivative_fn=lambda l: -2.0 * jnp.expm1(-l),
        f_at_zero=_INF,
        slope_at_infinity=1.0,
        symmetric=False,
        canonical_perspective_fn=True,
        log_f_nonpos=(1.0, _log_neyman_nonpos),
        description="Neyman chi-square, sum (p-q)^2/p",
    )


def _jeffreys_nonpos(l):
    # (u - 1) log u; at l = -inf: (-1)(-inf) = +inf.
    return jnp.expm1(l) * l


def _jeffreys_f_prime(l):
    return l - jnp.expm1(-l)  # log u + 1 - 1/u


def jeffreys() -> FDivergence:
    """Jeffreys = KL(P||Q) + KL(Q||P), f(u) = (u - 1) log u; symmetric, unbounded."""
    f = _full_range(_jeffreys_nonpos, _jeffreys_nonpos)
    conjugate_at_derivative = lambda l: jnp.exp(l) + l - 1.0  # u + log u - 1
    return FDivergence(
        name="jeffreys",
        params=(),
        f_nonpos=_jeffreys_nonpos,
        dual_nonpos=_jeffreys_nonpos,
        f_prime_fn=_jeffreys_f_prime,
        weight_fn=lambda l: jnp.exp(l) + 1.0,
        conjugate_fn=lambda t: _bisect_conjugate(t, _jeffreys_f_prime, f, _INF, _INF),
        conjugate_at_derivative_fn=conjugate_at_derivative,
        f_at_zero=_INF,
        slope_at_infinity=_INF,
        symmetric=True,
        canonical_perspective_fn=True,
        description="Jeffreys, KL(P||Q) + KL(Q||P)",
    )


def _softened_rkl_nonpos(l):
    # (u + 1) log((u + 1) / (2u)): log1p(expm1(-l) / 2) is exact near u = 1, and
    # softplus(-l) - log 2 has no cancellation (and no overflow) far below it.
    near = l > -1.0
    log_ratio = jnp.where(
        near, jnp.log1p(0.5 * jnp.expm1(-jnp.where(near, l, 0.0))), jax.nn.softplus(-l) - _LOG2
    )
    return (jnp.exp(l) + 1.0) * log_ratio


def _softened_rkl_dual_nonpos(l):
    # f^dagger(v) = (1 + v) log((1 + v)/2)
    return (jnp.exp(l) + 1.0) * jnp.log1p(0.5 * jnp.expm1(l))


def _softened_rkl_canonical_nonpos(l):
    # f(u) + u - 1 = 2u phi(e^r), r = log((1 + u)/(2u)) >= 0, phi(t) = t log t - t + 1: its
    # series near u = 1, else (1 + u)(r - 1) + 2u (no cancellation for r >= 0.1, +inf at u = 0).
    u = jnp.exp(l)
    near_one = l > -1.0
    r = jnp.where(
        near_one,
        jnp.log1p(0.5 * jnp.expm1(-jnp.where(near_one, l, 0.0))),
        jax.nn.softplus(-l) - _LOG2,
    )
    small = r < 0.1
    series = 2.0 * u * _gkl_series(jnp.where(small, r, 0.0))
    return jnp.where(small, series, (1.0 + u) * (jnp.where(small, 1.0, r) - 1.0) + 2.0 * u)


def _softened_rkl_canonical_dual_nonpos(l):
    # v f(1/v) + 1 - v = 2 phi(e^r), r = log((1 + v)/2) in [-log 2, 0].
    return 2.0 * _gkl(jnp.log1p(0.5 * jnp.expm1(l)))


def _softened_rkl_canonical(log_p, log_q):
    return _perspective_by_branches(
        _softened_rkl_canonical_nonpos, _softened_rkl_canonical_dual_nonpos, log_p, log_q, False
    )


def _softened_rkl_f_prime(l):
    # log((u+1)/(2u)) + 1 - (u+1)/u = softplus(-l) - log 2 - 1/u; -inf at u = 0
    value = jax.nn.softplus(-l) - _LOG2 - jnp.exp(-l)
    return jnp.where(jnp.isneginf(l), -_INF, value)


def softened_reverse_kl() -> FDivergence:
    """Softened reverse KL (f-distill), f(u) = (u + 1) log((u + 1)/(2u)), h = 1/(u + 1).

    ``D_f(P||Q) = sum (p + q) log((p + q)/(2p)) = 2 KL(M || P)`` with ``M = (P + Q)/2``: the
    reverse KL of the mixture, mode seeking like reverse KL but with a weight bounded by 1.
    """
    f = _full_range(_softened_rkl_nonpos, _softened_rkl_dual_nonpos)
    return FDivergence(
        name="softened_reverse_kl",
        params=(),
        f_nonpos=_softened_rkl_nonpos,
        dual_nonpos=_softened_rkl_dual_nonpos,
        f_prime_fn=_softened_rkl_f_prime,
        weight_fn=lambda l: jax.nn.sigmoid(-l),
        conjugate_fn=lambda t: _bisect_conjugate(t, _softened_rkl_f_prime, f, _INF, -_LOG2),
        # u f' - f = -(softplus(-l) - log 2) - 1
        conjugate_at_derivative_fn=lambda l: _LOG2 - jax.nn.softplus(-l) - 1.0,
        f_at_zero=_INF,
        slope_at_infinity=-_LOG2,
        symmetric=False,
        canonical_perspective_fn=_softened_rkl_canonical,
        description="softened reverse KL, f(u) = (u+1) log((u+1)/(2u))",
    )


# -- the alpha (Amari) family ------------------------------------------------------------------


def _alpha_nonpos(a: float):
    """``(u^a - 1 - a(u - 1)) / (a(a - 1))`` for ``l = log u <= 0``, stable for all real a.

    Two exact rewrites avoid dividing a cancelling numerator by a vanishing ``a`` or ``a - 1``:
    with ``E(c, x) = expm1(c x)/c`` (limit x at c = 0),
      a >= 1/2:  [u E(a - 1, l) - expm1(l)] / a
      a <  1/2:  [expm1(l) - E(a, l)] / (1 - a).
    """
    if a == 0.5:
        # 2 (sqrt(u) - 1)^2: a product with no cancellation. The equivalent
        # 4 (u^(1/2) expm1(l/2) - expm1(l)/2) is also miscompiled by jaxlib 0.10.2 (module
        # docstring).
        return lambda l: 2.0 * jnp.square(jnp.expm1(0.5 * l))
    if a >= 0.5:
        eps = a - 1.0

        def fn(l):
            if eps == 0.0:
                return _gkl(l)
            if eps > 0.0:
                # u expm1(eps l) / eps: both factors bounded for l <= 0.
                scaled = jnp.exp(l) * jnp.expm1(eps * l) / eps
            else:
                # u (u^eps - 1)/eps = -u^a expm1(-eps l)/eps, bounded for l <= 0 (u^eps may overflow).
                scaled = -jnp.exp(a * l) * jnp.expm1(-eps * l) / eps
            return (scaled - jnp.expm1(l)) / a
    else:

        def fn(l):
            return (jnp.expm1(l) - _expm1_over(a, l)) / (1.0 - a)

    if a == 1.0:
        return fn  # _gkl has its own series
    # Near u = 1 both rewrites cancel to first order (relative error ~ eps / |l|): use the
    # series sum_k c_k l^k / k!, c_k = 1 + a + ... + a^(k-2), converged to float64 for |a l| <=
    # 0.1 with 12 terms.
    coefficients = [sum(a**j for j in range(k - 1)) / math.factorial(k) for k in range(2, 13)]
    radius = 0.1 / max(1.0, abs(a))

    def series(l):
        acc = coefficients[-1]
        for c in reversed(coefficients[:-1]):
            acc = c + l * acc
        return l * l * acc

    def with_series(l):
        small = jnp.abs(l) < radius
        return jnp.where(small, series(jnp.where(small, l, 0.0)), fn(jnp.where(small, -radius, l)))

    return with_series


def _log_alpha_nonpos(b: float):
    """``(threshold, log F_b)`` for ``b < 0``, where ``F_b(l) = (u^b - 1 - b(u - 1))/(b(b - 1))``
    grows like ``u^b`` as ``l -> -inf``: ``log F_b = b l + log1p(-(1 - b + b u) u^-b) -
    log(b(b - 1))``, accurate for ``b l >= 30``."""
    if b >= 0:
        return None
    log_norm = math.log(b * (b - 1.0))
    return (
        30.0 / -b,
        lambda l: b * l + jnp.log1p(-(1.0 - b + b * jnp.exp(l)) * jnp.exp(-b * l)) - log_norm,
    )


def alpha(alpha: float = 0.5) -> FDivergence:  # pylint: disable=redefined-outer-name
    """Amari alpha-divergence, f(u) = (u^a - 1 - a(u - 1)) / (a(a - 1)), h = u^a.

    ``alpha -> 1`` is forward KL and ``alpha -> 0`` reverse KL (the generators become
    ``u log u - u + 1`` and ``u - 1 - log u``: the same divergences with the self-normalised
    generator); both limits and values near them are computed without cancellation. ``alpha = 2``
    is half Pearson, ``alpha = 1/2`` four times squared Hellinger; ``alpha`` and ``1 - alpha`` are
    reversed versions of each other.
    """
    a = float(alpha)
    if not math.isfinite(a):
        raise ValueError(f"alpha must be a finite number, got {alpha!r}.")
    eps = a - 1.0
    f_prime = lambda l: _expm1_over(eps, l)  # (u^(a-1) - 1)/(a - 1)

    def conjugate(t):
        # f*(t) = E(a, m), m = log1p((a-1) t)/(a-1) = log(base)/(a-1), base = 1 + (a-1) t.
        base = 1.0 + eps * t
        ok = base > 0
        m = _log1p_over(eps, jnp.where(ok, t, 0.0))
        value = _expm1_over(a, m)
        if a > 1.0:
            return jnp.where(ok, value, -1.0 / a)
        if a == 1.0:
            return value
        return jnp.where(ok, value, _INF)

    f_nonpos = _alpha_nonpos(a)
    grads = None
    if 0.05 <= a <= 0.95:
        # p f'(p/q) = (p^a q^(1-a) - p)/(a - 1) and -q f*(f'(p/q)) = (q - p^a q^(1-a))/a: bounded
        # exponentials and no selects; well conditioned away from the limits a -> 0, 1 (the
        # generic path serves those).
        def grads(log_p, log_q):
            lp, lq = jnp.maximum(log_p, -_BIG), jnp.maximum(log_q, -_BIG)
            mixed = jnp.exp(a * lp + (1.0 - a) * lq)
            return (mixed - jnp.exp(lp)) / (a - 1.0), (jnp.exp(lq) - mixed) / a

    return FDivergence(
        name="alpha",
        params=(("alpha", a),),
        f_nonpos=f_nonpos,
        dual_nonpos=f_nonpos if a == 0.5 else _alpha_nonpos(1.0 - a),
        f_prime_fn=f_prime,
        weight_fn=lambda l: jnp.exp(a * l),
        conjugate_fn=conjugate,
        conjugate_at_derivative_fn=lambda l: _expm1_over(a, l),  # (u^a - 1)/a
        f_at_zero=(1.0 / a) if a > 0 else _INF,
        slope_at_infinity=(1.0 / (1.0 - a)) if a < 1 else _INF,
        symmetric=(a == 0.5),
        canonical_perspective_fn=True,
        perspective_grads_fn=grads,
        log_f_nonpos=_log_alpha_nonpos(a),
        log_dual_nonpos=_log_alpha_nonpos(1.0 - a),
        description=f"alpha-divergence, alpha={a}",
    )


# -- TensorFlow Probability's remaining Csiszar functions -------------------------------------


def _triangular_nonpos(l):
    return jnp.square(jnp.expm1(l)) * jax.nn.sigmoid(-l)  # (u-1)^2/(u+1)


def triangular() -> FDivergence:
    """Triangular discrimination, sum (p - q)^2 / (p + q), f(u) = (u - 1)^2 / (u + 1).

    Symmetric, bounded by 2. Same as ``tfp.vi.triangular``.
    """

    def conjugate(t):
        # f'(u) = 1 - 4/(u+1)^2 = t  =>  f*(t) = 4 - t - 4 sqrt(1 - t) for -3 <= t <= 1.
        value = 4.0 - t - 4.0 * jnp.sqrt(jnp.clip(1.0 - t, 0.0, None))
        return jnp.where(t > 1.0, _INF, jnp.where(t < -3.0, -1.0, value))

    return FDivergence(
        name="triangular",
        params=(),
        f_nonpos=_triangular_nonpos,
        dual_nonpos=_triangular_nonpos,
        f_prime_fn=lambda l: 1.0 - 4.0 * jnp.square(jax.nn.sigmoid(-l)),
        weight_fn=lambda l: 8.0 * jnp.square(jax.nn.sigmoid(l)) * jax.nn.sigmoid(-l),
        conjugate_fn=conjugate,
        # u f' - f = 3 - 4(2u + 1)/(u + 1)^2 = 3 - 4 s (1 + s'), s = 1/(u+1), s' = u/(u+1)
        conjugate_at_derivative_fn=lambda l: (
            3.0 - 4.0 * jax.nn.sigmoid(-l) * (1.0 + jax.nn.sigmoid(l))
        ),
        f_at_zero=1.0,
        slope_at_infinity=1.0,
        symmetric=True,
        canonical_perspective_fn=True,
        description="triangular discrimination, sum (p-q)^2/(p+q)",
    )


def _log_cosh_half(l):
    # log cosh(y), y = |l|/2: log1p(2 sinh(y/2)^2) near 0 (no cancellation), else
    # y + log1p(e^-2y) - log 2.
    y = 0.5 * jnp.abs(l)
    small = y < 1.0
    y_small = jnp.where(small, y, 0.0)
    sinh_half = 0.5 * (jnp.expm1(0.5 * y_small) - jnp.expm1(-0.5 * y_small))
    y_big = jnp.where(small, 1.0, y)
    return jnp.where(
        small,
        jnp.log1p(2.0 * jnp.square(sinh_half)),
        y_big + jnp.log1p(jnp.exp(-2.0 * y_big)) - _LOG2,
    )


def _ag_nonpos(l):
    # (1 + u) log((1 + u)/(2 sqrt u)) = (1 + u) log cosh(l/2); at l = -inf: +inf.
    return (jnp.exp(l) + 1.0) * _log_cosh_half(l)


def _ag_f_prime(l):
    return jnp.where(jnp.isneginf(l), -_INF, _log_cosh_half(l) - 0.5 * jnp.expm1(-l))


def _ag_weight(l):
    # u^2 f'' = (u^2 + 1)/(2(u + 1)); each side written with bounded factors.
    nonpos = l <= 0
    lo, hi = jnp.minimum(l, 0.0), jnp.maximum(l, 0.0)
    below = 0.5 * (1.0 + jnp.exp(2.0 * lo)) / (1.0 + jnp.exp(lo))
    above = 0.5 * (jnp.exp(hi) + jnp.exp(-hi)) * jax.nn.sigmoid(hi)
    return jnp.where(nonpos, below, above)


def arithmetic_geometric() -> FDivergence:
    """Arithmetic-geometric divergence as in ``tfp.vi.arithmetic_geometric``.

    ``f(u) = (1 + u) log((1 + u) / (2 sqrt u))``, i.e. ``sum (p + q) log((p + q)/(2 sqrt(pq)))``:
    twice Taneja's arithmetic-geometric mean divergence. Symmetric, unbounded.
    """
    f = _full_range(_ag_nonpos, _ag_nonpos)
    return FDivergence(
        name="arithmetic_geometric",
        params=(),
        f_nonpos=_ag_nonpos,
        dual_nonpos=_ag_nonpos,
        f_prime_fn=_ag_f_prime,
        # u^2 f'' = (u^2 + 1)/(2(u + 1)) = cosh(l) sigmoid(l)
        weight_fn=_ag_weight,
        conjugate_fn=lambda t: _bisect_conjugate(t, _ag_f_prime, f, _INF, _INF),
        conjugate_at_derivative_fn=lambda l: jnp.where(
            jnp.isposinf(l), _INF, 0.5 * jnp.expm1(l) - _log_cosh_half(l)
        ),
        f_at_zero=_INF,
        slope_at_infinity=_INF,
        symmetric=True,
        canonical_perspective_fn=True,
        description="arithmetic-geometric, sum (p+q) log((p+q)/(2 sqrt(pq)))",
    )


def t_power(t: float = 2.0) -> FDivergence:
    """The t-power divergence of ``tfp.vi.t_power``, ``f(u) = s (u^t - 1)``.

    ``s = -1`` for ``0 < t < 1`` and ``+1`` otherwise (so f is convex); ``t`` in ``{0, 1}`` gives
    a zero divergence and is rejected. As a divergence it is ``|t (t - 1)|`` times the alpha
    divergence with ``alpha = t`` (the generators differ by an affine term).
    """
    tt = float(t)
    if not math.isfinite(tt) or tt in (0.0, 1.0):
        raise ValueError(
            f"t_power needs a finite t not in {{0, 1}} (those give a zero divergence), got t={t!r}."
        )
    s = -1.0 if 0.0 < tt < 1.0 else 1.0
    same_alpha, alpha_scale = alpha(tt), abs(tt * (tt - 1.0))
    f_prime = lambda l: s * tt * jnp.exp((tt - 1.0) * l)
    f = lambda l: s * jnp.expm1(tt * l)

    def f_over_u(l):
        # s (u^(t-1) - 1/u), as the bounded factor expm1(t l) (t l <= 0) or -expm1(-t l) times
        # one exponential, so the product neither overflows early nor becomes inf * 0.
        bounded_expm1 = tt * l <= 0
        lo = jnp.where(bounded_expm1, l, 0.0)
        hi = jnp.where(bounded_expm1, 0.0, l)
        return s * jnp.where(
            bounded_expm1,
            jnp.exp(-lo) * jnp.expm1(tt * lo),
            -jnp.exp((tt - 1.0) * hi) * jnp.expm1(-tt * hi),
        )

    return FDivergence(
        name="t_power",
        params=(("t", tt),),
        f_nonpos=lambda l: s * jnp.expm1(tt * l),
        # f^dagger(v) = s (v^(1-t) - v) as one exponential times a bounded expm1 (no
        # cancellation near v = 1, no inf * 0 at v = 0)
        dual_nonpos=(
            (lambda l: s * jnp.exp(l) * jnp.expm1(-tt * l))
            if tt < 0
            else (lambda l: -s * jnp.exp((1.0 - tt) * l) * jnp.expm1(tt * l))
        ),
        f_prime_fn=f_prime,
        weight_fn=lambda l: abs(tt * (tt - 1.0)) * jnp.exp(tt * l),
        conjugate_fn=lambda x: _bisect_conjugate(
            x, f_prime, f, -s if tt > 0 else _INF, _INF if tt > 1 else 0.0
        ),
        conjugate_at_derivative_fn=lambda l: s * ((tt - 1.0) * jnp.exp(tt * l) + 1.0),
        f_at_zero=(-s if tt > 0 else _INF),
        slope_at_infinity=(_INF if tt > 1 else 0.0),
        symmetric=False,
        f_fn=f,
        f_over_u_fn=f_over_u,
        # s (u^t - 1) - s t (u - 1) = |t (t - 1)| times the alpha generator at alpha = t.
        canonical_perspective_fn=lambda lp, lq: alpha_scale * same_alpha.perspective(lp, lq),
        # log(v^(1-t) - v) for t > 1 and log(u^t - 1) for t < 0: the sides that grow.
        log_dual_nonpos=(
            (30.0 / (tt - 1.0), lambda l: (1.0 - tt) * l + jnp.log(-jnp.expm1(tt * l)))
            if tt > 1
            else None
        ),
        log_f_nonpos=(
            (30.0 / -tt, lambda l: tt * l + jnp.log(-jnp.expm1(-tt * l))) if tt < 0 else None
        ),
        description=f"t-power, t={tt}",
    )


def log1p_abs() -> FDivergence:
    """The log1p-abs divergence of ``tfp.vi.log1p_abs``, ``f(u) = u^sign(u - 1) - 1``.

    ``log(1 + f(u)) = |log u|``: ``1/u - 1`` below 1 and ``u - 1`` above. The kink at ``u = 1``
    means there is no f-distill weight.
    """

    def conjugate(t):
        # f*(t) = t on [-1, 1]; 1 - 2 sqrt(-t) below -1; +inf above 1.
        below = 1.0 - 2.0 * jnp.sqrt(jnp.maximum(-t, 1.0))
        return jnp.where(t > 1.0, _INF, jnp.where(t < -1.0, below, t))

    def conjugate_at_derivative(l):
        # u > 1: u - (u - 1) = 1;  u < 1: -1/u - (1/u - 1) = 1 - 2/u.
        return jnp.where(l > 0, 1.0, 1.0 - 2.0 * jnp.exp(-jnp.minimum(l, 0.0)))

    return FDivergence(
        name="log1p_abs",
        params=(),
        f_nonpos=lambda l: jnp.expm1(-l),
        dual_nonpos=lambda l: -jnp.expm1(l),
        f_prime_fn=lambda l: jnp.where(l > 0, 1.0, -jnp.exp(-2.0 * jnp.minimum(l, 0.0))),
        weight_fn=None,
        conjugate_fn=conjugate,
        conjugate_at_derivative_fn=conjugate_at_derivative,
        f_at_zero=_INF,
        slope_at_infinity=1.0,
        symmetric=False,
        log_f_nonpos=(1.0, lambda l: jnp.log(-jnp.expm1(l)) - l),  # log(1/u - 1)
        description="log1p-abs, f(u) = u^sign(u-1) - 1",
    )


def _mgan_f_prime(l):
    # 1/(1+u) - 1/u + 1/2
    return jax.nn.sigmoid(-l) - jnp.exp(-l) + 0.5


def _expm1_minus_x(l):
    """``e^l - 1 - l >= 0``, by its series where the difference cancels."""
    small = jnp.abs(l) < 0.1
    s = jnp.where(small, l, 0.0)
    series = (
        s
        * s
        * (
            0.5
            + s
            * (
                1 / 6
                + s * (1 / 24 + s * (1 / 120 + s * (1 / 720 + s * (1 / 5040 + s * (1 / 40320)))))
            )
        )
    )
    big = jnp.where(small, 1.0, l)
    return jnp.where(small, series, jnp.expm1(big) - big)


def _mgan_nonpos(l):
    # log((1 + u)/(2u)) + (u - 1)/2 = log cosh(l/2) + (e^l - 1 - l)/2: two terms >= 0.
    return _log_cosh_half(l) + 0.5 * _expm1_minus_x(l)


def _mgan_dual_nonpos(l):
    # v log((1 + v)/2) + (1 - v)/2 = v [log cosh(l/2) + (e^-l - 1 + l)/2] near v = 1 (two
    # terms >= 0); far below it the direct form has no cancellation (and no overflow).
    near = l > -20.0
    v = jnp.exp(l)
    l_near = jnp.where(near, l, 0.0)
    bracket = _log_cosh_half(l_near) + 0.5 * _expm1_minus_x(-l_near)
    far = v * (jnp.log1p(v) - _LOG2) - 0.5 * jnp.expm1(l)
    return jnp.where(near, v * bracket, far)


def modified_gan() -> FDivergence:
    """The modified-GAN divergence, ``f(u) = log((1 + u)/(2u)) + (u - 1)/2``.

    ``tfp.vi.modified_gan(self_normalized=True)`` is ``log(1 + u) - log u + (u - 1)/2``, which
    has ``f(1) = log 2`` and so is not an f-divergence as TFP notes; subtracting ``log 2`` makes
    it one without changing gradients. ``h(u) = 1 - (u/(1 + u))^2``.
    """
    f_nonpos, dual_nonpos = _mgan_nonpos, _mgan_dual_nonpos
    f = _full_range(f_nonpos, dual_nonpos)
    return FDivergence(
        name="modified_gan",
        params=(),
        f_nonpos=f_nonpos,
        dual_nonpos=dual_nonpos,
        f_prime_fn=_mgan_f_prime,
        weight_fn=lambda l: 1.0 - jnp.square(jax.nn.sigmoid(l)),
        conjugate_fn=lambda t: _bisect_conjugate(t, _mgan_f_prime, f, _INF, 0.5),
        # u f' - f = u/(1+u) - 1 + u/2 - log((1+u)/(2u)) - (u-1)/2 = sigmoid(l) - 1/2 - (softplus(-l) - log 2)
        conjugate_at_derivative_fn=lambda l: jax.nn.sigmoid(l) - 0.5 - jax.nn.softplus(-l) + _LOG2,
        f_at_zero=_INF,
        slope_at_infinity=0.5,
        symmetric=False,
        canonical_perspective_fn=True,
        description="modified GAN, f(u) = log((1+u)/(2u)) + (u-1)/2",
    )


# ----------------------------------------------------------------------------------------------
# Derived divergences.


def dual(divergence: "FDivergence | str") -> FDivergence:
    """The reversed divergence, generator ``f^dagger(u) = u f(1/u)``: ``D(P||Q) = D_f(Q||P)``.

    As ``tfp.vi.dual_csiszar_function``. ``dual(get("forward_kl"))`` is reverse KL; the alpha
    family maps ``alpha`` to ``1 - alpha``. The weight becomes ``h^dagger(u) = u h(1/u)``.
    """
    d = resolve(divergence)
    weight = None
    if d.weight_fn is not None:
        weight = lambda l: jnp.exp(l) * d.weight_fn(-l)
    # f^dagger'(u) = f(1/u) - f'(1/u)/u = -(f*(f'))(1/u);  u f^dagger' - f^dagger = -f'(1/u).
    f_prime = lambda l: -d.conjugate_at_derivative_fn(-l)
    f_nonpos, f_at_zero, slope = d.dual_nonpos, d.slope_at_infinity, d.f_at_zero
    dual_nonpos = d.f_nonpos

    f = _full_range(f_nonpos, dual_nonpos)
    return FDivergence(
        name=f"dual({d.name})",
        params=d.params,
        f_nonpos=f_nonpos,
        dual_nonpos=dual_nonpos,
        f_prime_fn=f_prime,
        weight_fn=weight,
        conjugate_fn=lambda t: _bisect_conjugate(t, f_prime, f, f_at_zero, slope),
        conjugate_at_derivative_fn=lambda l: -d.f_prime_fn(-l),
        f_at_zero=f_at_zero,
        slope_at_infinity=slope,
        symmetric=d.symmetric,
        perspective_fn=(
            None if d.perspective_fn is None else (lambda lp, lq: d.perspective_fn(lq, lp))
        ),
        f_fn=lambda l: d.f_over_u(-l),
        f_over_u_fn=lambda l: d.f(-l),
        log_f_nonpos=d.log_dual_nonpos,
        log_dual_nonpos=d.log_f_nonpos,
        # f^dagger'(1) = -f'(1): the canonical terms of the reversed divergence are d's, swapped.
        canonical_perspective_fn=(
            d.canonical_perspective_fn
            if d.canonical_perspective_fn is None or isinstance(d.canonical_perspective_fn, bool)
            else (lambda lp, lq: d.canonical_perspective_fn(lq, lp))
        ),
        key=("dual", d._identity()),  # pylint: disable=protected-access
        description=f"reversed {d.description}",
    )


def from_generator(
    f: Callable[[Array], Array],
    *,
    name: str | None = None,
    conjugate: Callable[[Array], Array] | None = None,
    f_at_zero: float | None = None,
    slope_at_infinity: float | None = None,
    symmetric: bool = False,
    check: bool = True,
) -> FDivergence:
    """Builds a divergence from a user's generator ``f(u)`` alone.

    ``f'`` and the weight ``u^2 f''`` come from ``jax.grad``; the perspective from the
    one-sided forms of the module docstring; the conjugate, unless given, from a bisection on
    ``f'`` (accurate for ``log u*`` within ``[-40, 40]``).

    Args:
      f: elementwise convex function of ``u >= 0`` (a jnp expression) with ``f(1) = 0``; it must
        accept ``u = 0`` if ``f(0)`` is finite.
      name: a name for reprs, plots and equality (two generators with the same name and function
        object are equal); defaults to ``f.__name__`` (``"user_generator"`` for a lambda).
      conjugate: optional closed form ``f*(t)``.
      f_at_zero: ``f(0)``; evaluated from ``f(0.0)`` if not given (non-finite values are treated
        as ``+inf``).
      slope_at_infinity: ``lim f(u)/u``; if not given, ``f(u)/u`` at ``u = 1e10`` and ``1e20``:
        their common value when they agree to 1e-3, else ``+inf``.
      symmetric: whether ``D_f(P||Q) = D_f(Q||P)`` (documentation only).
      check: verify ``f(1) = 0`` and convexity on a grid, raising ValueError otherwise.

    Returns:
      An FDivergence.
    """
    if not callable(f):
        raise ValueError(f"f must be a callable f(u), got {type(f).__name__}.")
    if name is None:
        name = getattr(f, "__name__", "")
        if not name.isidentifier():
            name = "user_generator"

    def f_u(u):
        return jnp.asarray(f(u))

    def f_of_l(l):
        return f_u(jnp.exp(l))

    f_prime_u = jax.grad(lambda u: jnp.sum(f_u(u)))
    f_second_u = jax.grad(lambda u: jnp.sum(f_prime_u(u)))

    if check:
        with jax.ensure_compile_time_eval():
            at_one = float(f_u(jnp.float32(1.0)))
            grid = jnp.exp(jnp.linspace(-8.0, 8.0, 161, dtype=jnp.float32))
            curvature = f_second_u(grid)
        if not abs(at_one) < 1e-5:
            raise ValueError(
                f"f(1) must be 0 for an f-divergence, got f(1) = {at_one:.6g}; subtract"
                " the constant."
            )
        if bool(jnp.any(curvature < -1e-4 * (1.0 + jnp.abs(curvature)))):
            raise ValueError("f must be convex: f''(u) < 0 somewhere on u in [e^-8, e^8].")
    if f_at_zero is None:
        with jax.ensure_compile_time_eval():
            value = float(f_u(jnp.float32(0.0)))
        f_at_zero = value if math.isfinite(value) else _INF
    if slope_at_infinity is None:
        with jax.ensure_compile_time_eval():
            slopes = [float(f_u(jnp.float32(big))) / big for big in (1e10, 1e20)]
        # A finite limit has settled by 1e10; log-like growth (forward KL) has not.
        settled = abs(slopes[1] - slopes[0]) <= 1e-3 * (1.0 + abs(slopes[1]))
        slope_at_infinity = slopes[1] if settled and math.isfinite(slopes[1]) else _INF
    f_at_zero = float(f_at_zero)
    slope = float(slope_at_infinity)

    def f_nonpos(l):
        neg_inf = jnp.isneginf(l)
        value = f_of_l(jnp.where(neg_inf, 0.0, l))
        return jnp.where(neg_inf, f_at_zero, value)

    def dual_nonpos(l):
        # u^-1 f(u) at u = e^-l has reached its limit to ~1e-13 by u = e^60, and f(u) of the
        # user's generator may overflow beyond.
        far = l < -60.0
        safe = jnp.where(far, 0.0, l)
        return jnp.where(far, slope, jnp.exp(safe) * f_of_l(-safe))

    f_prime = lambda l: f_prime_u(jnp.exp(l))
    conj = conjugate
    if conj is None:
        conj = lambda t: _bisect_conjugate(t, f_prime, f_of_l, f_at_zero, slope)
    return FDivergence(
        name=name,
        params=(),
        f_nonpos=f_nonpos,
        dual_nonpos=dual_nonpos,
        f_prime_fn=f_prime,
        weight_fn=lambda l: jnp.exp(2.0 * l) * f_second_u(jnp.exp(l)),
        conjugate_fn=conj,
        conjugate_at_derivative_fn=lambda l: jnp.exp(l) * f_prime(l) - f_of_l(l),
        f_at_zero=f_at_zero,
        slope_at_infinity=slope,
        symmetric=symmetric,
        key=("from_generator", name, f),
        description=f"user generator {name}",
    )


# ----------------------------------------------------------------------------------------------
# The registry: a literal dict, name -> (constructor, allowed parameters).

_REGISTRY: Mapping[str, tuple[Callable[..., FDivergence], tuple[str, ...]]] = {
    "forward_kl": (forward_kl, ()),
    "reverse_kl": (reverse_kl, ()),
    "js": (jensen_shannon, ()),
    "squared_hellinger": (squared_hellinger, ()),
    "total_variation": (total_variation, ()),
    "pearson": (pearson, ()),
    "neyman": (neyman, ()),
    "jeffreys": (jeffreys, ()),
    "softened_reverse_kl": (softened_reverse_kl, ()),
    "alpha": (alpha, ("alpha",)),
    "triangular": (triangular, ()),
    "arithmetic_geometric": (arithmetic_geometric, ()),
    "t_power": (t_power, ("t",)),
    "log1p_abs": (log1p_abs, ()),
    "modified_gan": (modified_gan, ()),
}
_ALIASES: Mapping[str, str] = {
    "kl": "forward_kl",
    "jensen_shannon": "js",
    "hellinger": "squared_hellinger",
    "tv": "total_variation",
    "chi2": "pearson",
}
_WEIGHTED_EXAMPLES = ("reverse_kl", "js", "squared_hellinger", "forward_kl")


def names() -> tuple[str, ...]:
    """The registered divergence names (aliases excluded), in registry order."""
    return tuple(_REGISTRY)


def get(name: str, **params: float) -> FDivergence:
    """Returns the registered divergence ``name`` with parameters ``params``.

    Names: ``forward_kl`` (alias ``kl``), ``reverse_kl``, ``js``, ``squared_hellinger``,
    ``total_variation``, ``pearson``, ``neyman``, ``jeffreys``, ``softened_reverse_kl``,
    ``alpha`` (``alpha=``), ``triangular``, ``arithmetic_geometric``, ``t_power`` (``t=``),
    ``log1p_abs``, ``modified_gan``. docs/reference.md section 2 gives the generators and test values.

    Raises:
      ValueError: unknown name (the message lists the valid names), unknown or invalid
        parameters.
    """
    if not isinstance(name, str):
        raise ValueError(f"divergence name must be a str, got {type(name).__name__}: {name!r}.")
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise ValueError(
            f"unknown divergence {name!r}; valid names are {', '.join(_REGISTRY)} "
            f"(aliases: {', '.join(f'{a}={b}' for a, b in _ALIASES.items())})."
        )
    constructor, allowed = _REGISTRY[key]
    unexpected = sorted(set(params) - set(allowed))
    if unexpected:
        raise ValueError(
            f"divergence {key!r} takes parameters {list(allowed) or 'none'}, got unexpected"
            f" {unexpected}."
        )
    for param, value in params.items():
        if isinstance(value, (jax.Array, np.ndarray)) and np.ndim(value) != 0:
            raise ValueError(
                f"parameter {param} of {key!r} must be a scalar, got shape {np.shape(value)}."
            )
        try:
            params[param] = float(value)
        except (TypeError, jax.errors.ConcretizationTypeError) as e:
            raise ValueError(
                f"parameter {param} of {key!r} must be a concrete Python number (it selects the"
                f" formula at trace time), got {value!r}."
            ) from e
    return constructor(**params)


def resolve(divergence: "FDivergence | str") -> FDivergence:
    """Accepts a registered name or an FDivergence; returns the FDivergence."""
    if isinstance(divergence, FDivergence):
        return divergence
    if isinstance(divergence, str):
        return get(divergence)
    raise ValueError(
        "divergence must be a registered name (one of "
        f"{', '.join(_REGISTRY)}) or an FDivergence, got {type(divergence).__name__}."
    )
