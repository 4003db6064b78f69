"""Optimal-transport divergences through ott-jax: Sinkhorn divergence and SinKD's batch loss.

Every transport problem here is solved by ott-jax's Sinkhorn solver (no hand-written Sinkhorn
loop). P is the target (data, teacher), Q the model (generator, student).

* :func:`sinkhorn_divergence`: the debiased entropic OT cost between two weighted point
  clouds, ``S_eps(P, Q) = OT_eps(P, Q) - (OT_eps(P, P) + OT_eps(Q, Q)) / 2`` (ott-jax's
  ``sinkhorn_divergence``), >= 0, = 0 iff P = Q, differentiable (implicit differentiation).
* :func:`histogram_sinkhorn_divergence`: the same between two histograms on one support with
  a given cost matrix.
* :func:`sinkd`: SinKD's batch-wise distillation loss, exactly the authors' algorithm run
  through ott-jax (see its docstring for the correspondence).

Inputs in bfloat16/float16 are computed in float32. docs/reference.md section 3.

References:
  Cuturi, "Sinkhorn distances", NeurIPS 2013; Genevay, Peyre & Cuturi, "Learning generative
  models with Sinkhorn divergences", AISTATS 2018; Feydy et al., "Interpolating between optimal
  transport and MMD using Sinkhorn divergences", AISTATS 2019.
  Cui et al., "Sinkhorn distance minimization for knowledge distillation", COLING 2024, and
  their released code (github.com/2018cx/SinKD, ``loss.py``).
  Cuturi et al., "Optimal Transport Tools (OTT)", 2022.
"""

from __future__ import annotations

import functools
import math
import numbers

import jax
import jax.numpy as jnp
from ott.geometry import costs, geometry, pointcloud
from ott.solvers import linear
from ott.tools import sinkhorn_divergence as _ott_sinkhorn_divergence

from fdiv import _checks

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = ["histogram_sinkhorn_divergence", "sinkd", "sinkhorn_divergence"]

_COSTS = {
    "sqeuclidean": costs.SqEuclidean,
    "euclidean": costs.Euclidean,
}


_is_concrete = _checks.is_concrete

_floating = _checks.floating_input


def _check_finite(x: Array, name: str) -> None:
    if _is_concrete(x) and not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError(f"{name} contains non-finite values (NaN or inf); remove or fix them.")


def _check_positive(value, name: str) -> None:
    if isinstance(value, numbers.Real) or (_is_concrete(value) and jnp.ndim(value) == 0):
        v = float(value)
        if not (v > 0 and math.isfinite(v)):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}.")
    elif jnp.ndim(value) != 0:
        raise ValueError(f"{name} must be a scalar, got shape {jnp.shape(value)}.")


def _weights(w, n: int, name: str, dtype) -> Array:
    """Uniform when ``w`` is None; else checked (``[n]``, >= 0, positive sum) and normalised."""
    if w is None:
        return jnp.full((n,), 1.0 / n, dtype)
    w = _floating(w, name).astype(dtype)
    if w.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), one weight per sample, got {w.shape}.")
    if _is_concrete(w):
        if not bool(jnp.all(jnp.isfinite(w) & (w >= 0))):
            raise ValueError(f"{name} must be finite and non-negative.")
        if not float(jnp.sum(w)) > 0:
            raise ValueError(f"{name} sums to 0; at least one sample needs positive weight.")
    return w / jnp.sum(w)


def _cost_fn(cost):
    if isinstance(cost, costs.CostFn):
        return cost
    if cost not in _COSTS:
        raise ValueError(
            f"cost must be one of {sorted(_COSTS)} or an ott.geometry.costs.CostFn, got {cost!r}."
        )
    return _COSTS[cost]()


def sinkhorn_divergence(
    x_p: ArrayLike,
    x_q: ArrayLike,
    *,
    epsilon: float,
    cost: str | costs.CostFn = "sqeuclidean",
    weights_p: ArrayLike | None = None,
    weights_q: ArrayLike | None = None,
    threshold: float = 1e-3,
    max_iterations: int = 2000,
) -> Array:
    """Sinkhorn divergence between two (weighted) point clouds, through ott-jax.

    ``S_eps(P, Q) = OT_eps(P, Q) - OT_eps(P, P)/2 - OT_eps(Q, Q)/2`` with ``OT_eps`` the
    entropy-regularised transport cost (``ott.tools.sinkhorn_divergence.sinkhorn_divergence``
    with ``PointCloud`` geometries): symmetric, >= 0, 0 for identical clouds, interpolating
    between OT (``eps -> 0``) and an MMD (``eps -> inf``). A plug-in estimate of the divergence
    between the underlying distributions, biased (``O(n^-1/2)`` for small ``eps``); not a
    bound. Differentiable in the points and weights (ott-jax's implicit differentiation).

    Args:
      x_p: ``[n_p, d]`` points of P (target).
      x_q: ``[n_q, d]`` points of Q (model).
      epsilon: absolute entropic regularisation, > 0, in units of the cost.
      cost: ``"sqeuclidean"`` (``||x - y||^2``, ott-jax's default), ``"euclidean"`` or an
        ``ott.geometry.costs.CostFn``.
      weights_p: optional ``[n_p]`` non-negative weights (normalised to sum 1; uniform if
        None).
      weights_q: optional ``[n_q]`` weights.
      threshold: Sinkhorn stopping tolerance on the marginal error (ott-jax's ``threshold``).
      max_iterations: Sinkhorn iteration cap.

    Returns:
      Scalar.

    Raises:
      ValueError: empty sets, mismatched dimensions, non-finite points or weights (concrete
        inputs), ``epsilon <= 0``, an unknown cost.

    Examples:
      >>> import jax
      >>> from fdiv.transport import sinkhorn_divergence
      >>> x = jax.random.normal(jax.random.key(1), (500, 2))
      >>> y = jax.random.normal(jax.random.key(2), (500, 2)) + 1.0
      >>> same = float(sinkhorn_divergence(x, x, epsilon=0.1))
      >>> apart = float(sinkhorn_divergence(x, y, epsilon=0.1))
      >>> abs(same) < 1e-3 < apart
      True
    """
    x_p, x_q = _floating(x_p, "x_p"), _floating(x_q, "x_q")
    for name, x in (("x_p", x_p), ("x_q", x_q)):
        if x.ndim != 2:
            raise ValueError(f"{name} must be a [n, d] array of points, got shape {x.shape}.")
        if x.shape[0] == 0:
            raise ValueError(f"{name} is empty: the Sinkhorn divergence needs at least one point.")
        _check_finite(x, name)
    if x_p.shape[1] != x_q.shape[1]:
        raise ValueError(
            f"x_p and x_q must have the same dimension, got x_p.shape={x_p.shape} "
            f"and x_q.shape={x_q.shape}."
        )
    _check_positive(epsilon, "epsilon")
    cost_fn = _cost_fn(cost)
    dtype = jnp.result_type(x_p, x_q)
    x_p, x_q = x_p.astype(dtype), x_q.astype(dtype)
    a = _weights(weights_p, x_p.shape[0], "weights_p", dtype)
    b = _weights(weights_q, x_q.shape[0], "weights_q", dtype)
    return _point_cloud_divergence(
        x_p, x_q, a, b, jnp.asarray(epsilon, dtype), cost_fn, float(threshold), int(max_iterations)
    )


# Compiled once per shape and cost: ott-jax's loops called eagerly would recompile every call.
@functools.partial(jax.jit, static_argnums=(6, 7))
def _point_cloud_divergence(x_p, x_q, a, b, epsilon, cost_fn, threshold, max_iterations):
    value, _ = _ott_sinkhorn_divergence.sinkhorn_divergence(
        pointcloud.PointCloud,
        x_p,
        x_q,
        cost_fn=cost_fn,
        epsilon=epsilon,
        a=a,
        b=b,
        solve_kwargs={"threshold": threshold, "max_iterations": max_iterations},
    )
    return value


@functools.partial(jax.jit, static_argnums=(4, 5))
def _histogram_divergence(a, b, cost_matrix, epsilon, threshold, max_iterations):
    value, _ = _ott_sinkhorn_divergence.sinkhorn_divergence(
        geometry.Geometry,
        cost_matrix=(cost_matrix, cost_matrix, cost_matrix),
        epsilon=epsilon,
        a=a,
        b=b,
        solve_kwargs={"threshold": threshold, "max_iterations": max_iterations},
    )
    return value


@functools.partial(jax.jit, static_argnums=(4,))
def _sinkd(t, s, temperature, epsilon, num_iters):
    p_t = jax.nn.softmax(t / temperature, axis=-1)
    p_s = jax.nn.softmax(s / temperature, axis=-1)
    batch = t.shape[0]
    cost = jnp.sum(jnp.abs(p_s[:, None, :] - p_t[None, :, :]), axis=-1)  # [i student, j teacher]
    geom = geometry.Geometry(cost_matrix=cost.T, epsilon=epsilon)
    uniform = jnp.full((batch,), 1.0 / batch, t.dtype)
    out = linear.solve(
        geom,
        a=uniform,
        b=uniform,
        lse_mode=True,
        min_iterations=num_iters,
        max_iterations=num_iters,
        inner_iterations=num_iters,
        implicit_diff=None,
        use_danskin=False,
    )
    return batch * jnp.sum(out.matrix * cost.T)


def histogram_sinkhorn_divergence(
    a: ArrayLike,
    b: ArrayLike,
    cost_matrix: ArrayLike,
    *,
    epsilon: float,
    threshold: float = 1e-3,
    max_iterations: int = 2000,
) -> Array:
    """Sinkhorn divergence between two histograms on a common support of ``n`` points.

    ``S_eps(a, b) = OT_eps(a, b) - OT_eps(a, a)/2 - OT_eps(b, b)/2`` with the one ``[n, n]``
    ground cost used for all three problems (ott-jax's ``sinkhorn_divergence`` with a
    ``Geometry``). For a symmetric cost with zero diagonal: >= 0 and 0 iff ``a = b``.

    Args:
      a: ``[n]`` non-negative histogram (P, target), normalised to sum 1.
      b: ``[n]`` histogram (Q, model).
      cost_matrix: ``[n, n]`` ground cost between support points.
      epsilon: absolute entropic regularisation, > 0.
      threshold: Sinkhorn stopping tolerance.
      max_iterations: Sinkhorn iteration cap.

    Returns:
      Scalar.
    """
    a, b = _floating(a, "a"), _floating(b, "b")
    cost_matrix = _floating(cost_matrix, "cost_matrix")
    if a.ndim != 1 or a.shape[0] == 0:
        raise ValueError(f"a must be a non-empty 1-D histogram, got shape {a.shape}.")
    n = a.shape[0]
    if b.shape != (n,):
        raise ValueError(f"b must have the shape of a, ({n},), got {b.shape}.")
    if cost_matrix.shape != (n, n):
        raise ValueError(
            f"cost_matrix must be [n, n] = ({n}, {n}) for histograms of length {n}, "
            f"got {cost_matrix.shape}."
        )
    _check_finite(cost_matrix, "cost_matrix")
    _check_positive(epsilon, "epsilon")
    dtype = jnp.result_type(a, b, cost_matrix)
    a = _weights(a, n, "a", dtype)
    b = _weights(b, n, "b", dtype)
    cost_matrix = cost_matrix.astype(dtype)
    return _histogram_divergence(
        a, b, cost_matrix, jnp.asarray(epsilon, dtype), float(threshold), int(max_iterations)
    )


def sinkd(
    teacher_logits: ArrayLike,
    student_logits: ArrayLike,
    *,
    temperature: float = 2.0,
    epsilon: float = 0.1,
    num_iters: int = 20,
) -> Array:
    """SinKD's batch-wise Sinkhorn distillation loss (no loss weight inside).

    With ``t_j = softmax(teacher_logits[j] / temperature)`` and ``s_i = softmax(student_logits[i]
    / temperature)`` (teacher = P, student = Q), the ``[B, B]`` cost is ``C[i, j] = ||s_i -
    t_j||_1``. The authors' released code (``loss.py``: ``sinkhorn_loss``/``sinkhorn_normalized``)
    starts from ``K = exp(-C / epsilon)`` and runs ``num_iters`` iterations of "divide each row
    by its sum, then each column by its sum", with no convergence test, and returns
    ``sum_ij P_ij C_ij``. Their plan therefore has unit column sums (and row sums -> 1): its
    total mass is ``B``, so **the value is B times the transport cost of a plan of total mass
    1**; this function returns the same value.

    It is computed by ott-jax's Sinkhorn solver, exactly the same iteration: uniform marginals
    ``1/B`` (the iterates are the authors' divided by ``B``, hence the factor ``B``), the
    transposed cost ``C^T`` (ott-jax updates the column potential first, the authors' rows first),
    ``min_iterations = max_iterations = inner_iterations = num_iters`` (a fixed count, no
    early stop), log-domain updates, and ``implicit_diff=None`` so that gradients unroll through
    the iterations as the authors' autograd does. The only difference is rounding (log-domain
    vs kernel-domain arithmetic); the tests compare with a NumPy transcription of their code.

    Args:
      teacher_logits: ``[B, C]`` teacher logits (P).
      student_logits: ``[B, C]`` student logits (Q); gradients flow here (and to the teacher
        logits unless the caller stops them).
      temperature: softmax temperature, > 0 (the authors use 2).
      epsilon: entropic regularisation of ``K = exp(-C / epsilon)``, > 0 (theirs 0.1).
      num_iters: Sinkhorn iterations, >= 1 (theirs 20).

    Returns:
      Scalar loss (float32 for half-precision inputs). The authors multiply it by a loss weight
      (1e-3 to 2e-3 in their scripts) outside.

    Raises:
      ValueError: for mismatched or non-2-D logits, an empty batch, non-finite logits (concrete
        inputs), ``temperature <= 0``, ``epsilon <= 0`` or ``num_iters < 1``.
    """
    t = _floating(teacher_logits, "teacher_logits")
    s = _floating(student_logits, "student_logits")
    if t.ndim != 2 or s.shape != t.shape:
        raise ValueError(
            f"teacher_logits and student_logits must both be [B, C] with the same "
            f"shape, got {t.shape} and {s.shape}."
        )
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(
            f"the logits are empty (shape {t.shape}); SinKD needs B >= 1 rows of C >= 1 classes."
        )
    _check_finite(t, "teacher_logits")
    _check_finite(s, "student_logits")
    _check_positive(temperature, "temperature")
    _check_positive(epsilon, "epsilon")
    if not isinstance(num_iters, numbers.Integral) or num_iters < 1:
        raise ValueError(f"num_iters must be a positive integer, got {num_iters!r}.")
    dtype = jnp.result_type(t, s)
    t, s = t.astype(dtype), s.astype(dtype)
    return _sinkd(
        t, s, jnp.asarray(temperature, dtype), jnp.asarray(epsilon, dtype), int(num_iters)
    )
