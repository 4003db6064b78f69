"""Training a log-ratio critic (Flax NNX MLP, Optax) for the variational estimators.

:func:`train_critic` fits a network ``l(x) ~ log(p(x)/q(x))`` by maximising one of the objectives
of :mod:`fdiv.variational` on fresh minibatches from P (target) and Q (model), and reports the
estimate and its standard error on held-out batches. This is the only estimator module that
touches a network; everything it optimises is a pure function of critic outputs.

Objectives (docs/reference.md section 3):

* ``"bound"``: :func:`fdiv.variational.lower_bound` with the log-ratio parametrization, for any
  divergence. The held-out value is a lower bound in expectation (biased low by the critic's
  misfit).
* ``"nwj"``, ``"dv"``: :func:`~fdiv.variational.nwj` with ``T = 1 + l`` and
  :func:`~fdiv.variational.donsker_varadhan` with ``T = l``; forward KL only.
* ``"classifier"``: minimises :func:`~fdiv.variational.classifier_loss`; the estimate is the
  plug-in ``mean_Q f(e^l)`` over held-out Q-samples (not a bound; biased either way).

Training runs as one jitted ``lax.scan`` over all steps (split/merge of the NNX module, see
the design notes: cheaper than ``nnx.jit`` per step on CPU).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from fdiv import divergences as _divergences
from fdiv import variational as _variational

Array = jax.Array
Sampler = Callable[[Array, int], Array]

__all__ = ["CriticMLP", "CriticResult", "train_critic"]

_OBJECTIVES = ("bound", "nwj", "dv", "classifier")


class CriticMLP(nnx.Module):
    """A scalar MLP critic ``l(x)``: ``[n, dim] -> [n]``, SiLU hidden layers.

    The output layer starts at zero, so a fresh critic says ``p = q`` (``l = 0``) and every
    objective starts finite.

    Args:
      dim: input dimension.
      hidden: widths of the hidden layers.
      rngs: `nnx.Rngs` for initialisation.
    """

    def __init__(self, dim: int, *, hidden: Sequence[int] = (64, 64), rngs: nnx.Rngs):
        self.dim = int(dim)
        widths = [self.dim, *[int(h) for h in hidden]]
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs)
                                for a, b in zip(widths[:-1], widths[1:])])
        self.out = nnx.Linear(widths[-1], 1, kernel_init=nnx.initializers.zeros, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        if x.ndim != 2 or x.shape[-1] != self.dim:
            raise ValueError(f"critic input must have shape [n, {self.dim}], got {x.shape}.")
        h = x
        for layer in self.layers:
            h = nnx.silu(layer(h))
        return self.out(h)[:, 0]


@dataclasses.dataclass(frozen=True)
class CriticResult:
    """What :func:`train_critic` returns.

    Attributes:
      estimate: the objective's estimate on all held-out samples (a Python float).
      standard_error: standard error of the estimate from the spread of the per-batch
        held-out values (``std / sqrt(eval_batches)``).
      critic: the trained network (``[n, d] -> [n]``).
      log_ratio_offset: add to ``critic(x)`` to get the log-ratio estimate (zero except for
        ``"dv"``, whose critic is defined up to a constant: the offset normalises
        ``mean_Q e^l`` to 1 on the held-out Q-samples).
      losses: ``[steps]`` training losses (the negated objective, or the classifier loss).
      objective: the objective trained.
    """

    estimate: float
    standard_error: float
    critic: nnx.Module
    log_ratio_offset: float
    losses: np.ndarray
    objective: str

    def log_ratio(self, x: Array) -> Array:
        """``log(p(x)/q(x))`` estimated by the trained critic, ``[n, d] -> [n]``."""
        return self.critic(jnp.asarray(x, jnp.float32)) + self.log_ratio_offset


def _objective_value(objective: str, divergence, l_p: Array, l_q: Array) -> Array:
    """The quantity maximised in training (for ``"classifier"``: minus the loss)."""
    if objective == "bound":
        return _variational.lower_bound(l_p, l_q, divergence)
    if objective == "nwj":
        return _variational.nwj(l_p + 1.0, l_q + 1.0)
    if objective == "dv":
        return _variational.donsker_varadhan(l_p, l_q)
    return -_variational.classifier_loss(l_p, l_q)


def _estimate(objective: str, divergence, l_p: Array, l_q: Array) -> Array:
    if objective == "classifier":
        return jnp.mean(divergence.f(l_q))
    return _objective_value(objective, divergence, l_p, l_q)


def _draw_rows(key: Array, n: int, data: Array) -> Array:
    """``n`` rows of ``data`` drawn uniformly with replacement."""
    return data[jax.random.randint(key, (n,), 0, data.shape[0])]


@functools.lru_cache(maxsize=64)
def _sampler_draw(sampler: Sampler):
    """``(key, n, data) -> sampler(key, n)``, one object per sampler so compilations are reused."""
    return lambda key, n, data: sampler(key, n)


@functools.lru_cache(maxsize=16)
def _adam(learning_rate: float) -> optax.GradientTransformation:
    return optax.adam(learning_rate)


def _as_source(sample, name: str, holdout: int):
    """``(draw(key, n, data), train_data, held_out_or_None, dim)`` for a sampler or an array."""
    if callable(sample):
        return _sampler_draw(sample), jnp.zeros((1, 1), jnp.float32), None, None
    data = jnp.asarray(sample)
    if data.ndim != 2 or not jnp.issubdtype(data.dtype, jnp.floating):
        raise ValueError(f"{name} must be a sampler (key, n) -> [n, d] or a floating [n, d] "
                         f"array, got {type(sample).__name__} with shape {np.shape(sample)}.")
    data = data.astype(jnp.float32)
    if not bool(jnp.all(jnp.isfinite(data))):
        raise ValueError(f"{name} contains non-finite values; remove or fix those samples.")
    n = data.shape[0]
    if n < holdout + 1:
        raise ValueError(f"{name} has {n} samples, but {holdout} are held out for evaluation "
                         "and at least 1 is needed for training; pass more samples or a "
                         "smaller eval_batches * batch_size (or holdout).")
    return _draw_rows, data[: n - holdout], data[n - holdout:], data.shape[1]


# Module-level and keyed by static arguments, so repeated calls (seeds, sample sizes of an
# experiment) reuse one compilation instead of tracing a fresh closure each time.
@functools.partial(jax.jit, static_argnames=(
    "graphdef", "objective", "divergence", "batch_size", "steps", "tx", "draw_p", "draw_q"))
def _train(state, opt_state, key, data_p, data_q, *, graphdef, objective, divergence,
           batch_size, steps, tx, draw_p, draw_q):
    def loss_fn(state, x_p, x_q):
        model = nnx.merge(graphdef, state)
        return -_objective_value(objective, divergence, model(x_p), model(x_q))

    def step(carry, step_key):
        state, opt_state = carry
        kp, kq = jax.random.split(step_key)
        x_p = draw_p(kp, batch_size, data_p).astype(jnp.float32)
        x_q = draw_q(kq, batch_size, data_q).astype(jnp.float32)
        loss, grads = jax.value_and_grad(loss_fn)(state, x_p, x_q)
        updates, opt_state = tx.update(grads, opt_state, state)
        return (optax.apply_updates(state, updates), opt_state), loss

    (state, _), losses = jax.lax.scan(step, (state, opt_state), jax.random.split(key, steps))
    return state, losses


@functools.partial(jax.jit, static_argnames=("graphdef", "objective", "divergence",
                                             "eval_batches"))
def _evaluate(state, x_p, x_q, *, graphdef, objective, divergence, eval_batches):
    model = nnx.merge(graphdef, state)
    l_p, l_q = model(x_p.astype(jnp.float32)), model(x_q.astype(jnp.float32))
    total = _estimate(objective, divergence, l_p, l_q)
    chunks_p = l_p[: (l_p.shape[0] // eval_batches) * eval_batches].reshape(eval_batches, -1)
    chunks_q = l_q[: (l_q.shape[0] // eval_batches) * eval_batches].reshape(eval_batches, -1)
    per_batch = jax.vmap(lambda a, b: _estimate(objective, divergence, a, b))(chunks_p, chunks_q)
    offset = -(jax.nn.logsumexp(l_q) - jnp.log(l_q.shape[0]))
    return total, per_batch, offset


def train_critic(
    sample_p: Sampler | Array,
    sample_q: Sampler | Array,
    divergence: _divergences.FDivergence | str = "forward_kl",
    *,
    critic: nnx.Module | None = None,
    steps: int = 2000,
    batch_size: int = 256,
    seed: int = 0,
    objective: str = "bound",
    learning_rate: float = 1e-3,
    optimizer: optax.GradientTransformation | None = None,
    hidden: Sequence[int] = (64, 64),
    eval_batches: int = 16,
    holdout: int | None = None,
) -> CriticResult:
    """Trains a log-ratio critic between P (target) and Q (model) and estimates the divergence.

    Args:
      sample_p: a jax-traceable sampler ``(key, n) -> [n, d]`` of P, or a fixed ``[n_p, d]``
        sample of P. A sample is split: its last ``holdout`` rows are held out for evaluation
        and training minibatches are drawn with replacement from the rest.
      sample_q: the same for Q.
      divergence: the f-divergence of the ``"bound"`` and ``"classifier"`` objectives (an
        :class:`fdiv.FDivergence` or a registered name); ``"nwj"`` and ``"dv"`` need
        forward KL.
      critic: an NNX module ``[n, d] -> [n]`` to train (updated in place); default a fresh
        :class:`CriticMLP` with ``hidden`` widths.
      steps: optimisation steps (one minibatch of each distribution per step).
      batch_size: minibatch size per distribution.
      seed: seeds initialisation, minibatches and held-out batches.
      objective: ``"bound"``, ``"nwj"``, ``"dv"`` or ``"classifier"`` (module docstring).
      learning_rate: Adam learning rate (ignored when ``optimizer`` is given).
      optimizer: an Optax transformation; default ``optax.adam(learning_rate)``.
      hidden: hidden widths of the default critic.
      eval_batches: number of held-out batches the standard error is computed from. For
        samplers each is a fresh batch of ``batch_size``; for fixed samples the held-out rows
        are cut into ``eval_batches`` equal chunks.
      holdout: held-out rows of a fixed sample (default ``eval_batches * batch_size``,
        capped at half the sample).

    Returns:
      :class:`CriticResult` with the held-out estimate, its standard error and the trained
      critic. The estimate is biased: a ``"bound"`` is below the truth in expectation by the
      critic's misfit; ``"dv"`` on finite held-out samples is biased upward by Jensen.

    Raises:
      ValueError: bad objective, divergence/objective mismatch, non-positive sizes, fixed
        samples with non-finite values, mismatched dimensions.
    """
    if objective not in _OBJECTIVES:
        raise ValueError(f"objective must be one of {_OBJECTIVES}, got {objective!r}.")
    d = _divergences.resolve(divergence)
    if objective in ("nwj", "dv") and d.name != "forward_kl":
        raise ValueError(f"objective {objective!r} estimates forward KL only, got divergence "
                         f"{d.name!r}; use objective='bound' for other divergences.")
    for name, value in (("steps", steps), ("batch_size", batch_size),
                        ("eval_batches", eval_batches)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if objective == "dv" and batch_size < 2:
        raise ValueError("objective 'dv' needs batch_size >= 2.")

    def holdout_for(sample):
        if callable(sample):
            return 0
        n = int(np.shape(sample)[0]) if np.ndim(sample) >= 1 else 0
        return holdout if holdout is not None else min(eval_batches * batch_size, n // 2)

    draw_p, data_p, held_p, dim_p = _as_source(sample_p, "sample_p", holdout_for(sample_p))
    draw_q, data_q, held_q, dim_q = _as_source(sample_q, "sample_q", holdout_for(sample_q))
    key = jax.random.PRNGKey(seed)
    key_init, key_train, key_eval = jax.random.split(key, 3)
    # The dimension of a sampler is read off one draw (traced only for its shape).
    if dim_p is None:
        dim_p = jax.eval_shape(lambda k: sample_p(k, 2), key_eval).shape[-1]
    if dim_q is None:
        dim_q = jax.eval_shape(lambda k: sample_q(k, 2), key_eval).shape[-1]
    if dim_p != dim_q:
        raise ValueError(f"P and Q samples must have the same dimension, got {dim_p} and "
                         f"{dim_q}.")
    if critic is None:
        seed_init = int(jax.random.randint(key_init, (), 0, 2**31 - 1))
        critic = CriticMLP(dim_p, hidden=hidden, rngs=nnx.Rngs(seed_init))
    tx = optimizer if optimizer is not None else _adam(float(learning_rate))

    graphdef, state = nnx.split(critic)
    state, losses = _train(state, tx.init(state), key_train, data_p, data_q, graphdef=graphdef,
                           objective=objective, divergence=d, batch_size=batch_size,
                           steps=steps, tx=tx, draw_p=draw_p, draw_q=draw_q)
    nnx.update(critic, state)

    kp, kq = jax.random.split(key_eval)
    if held_p is None:
        held_p = sample_p(kp, eval_batches * batch_size)
    if held_q is None:
        held_q = sample_q(kq, eval_batches * batch_size)
    if min(held_p.shape[0], held_q.shape[0]) < eval_batches:
        raise ValueError(f"the held-out samples ({held_p.shape[0]} of P, {held_q.shape[0]} of "
                         f"Q) cannot be cut into eval_batches={eval_batches} batches; lower "
                         "eval_batches or hold out more samples.")
    total, per_batch, offset = _evaluate(state, held_p, held_q, graphdef=graphdef,
                                         objective=objective, divergence=d,
                                         eval_batches=eval_batches)
    per_batch = np.asarray(per_batch, np.float64)
    se = float(np.std(per_batch, ddof=1) / math.sqrt(eval_batches)) if eval_batches > 1 else \
        float("nan")
    return CriticResult(
        estimate=float(total),
        standard_error=se,
        critic=critic,
        log_ratio_offset=float(offset) if objective == "dv" else 0.0,
        losses=np.asarray(losses),
        objective=objective,
    )
