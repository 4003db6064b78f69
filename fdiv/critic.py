"""Training a log-ratio critic (Flax NNX MLP, Optax) for the variational estimators.

:func:`train_critic` fits a network ``l(x) ~ log(p(x)/q(x))`` by maximising one of the objectives
of :mod:`fdiv.variational` on fresh minibatches from P (target) and Q (model), and reports the
estimate and its standard error on held-out batches. This is the only estimator module that
touches a network; everything it optimises is a pure function of critic outputs.

Model selection. A flexible critic trained on a small sample overfits: it learns huge log-ratios
on the training points, and on fresh samples ``e^l`` explodes, so the held-out bound goes to
``-inf`` and a classifier's plug-in estimate to ``+inf``. :func:`train_critic` therefore keeps a
validation set apart, evaluates the objective on it every ``eval_every`` steps inside the jitted
training scan, and returns the parameters with the best validation value (early stopping; the
fresh critic ``l = 0``, whose bound is exactly 0, is the first candidate). The reported estimate
is computed on a third set used neither for training nor for selection, so for the bound
objectives it is an unbiased estimate of the bound of the selected critic, which is below the
divergence (Fenchel-Young). Decoupled weight decay (``optax.adamw``) is available as a second
regulariser. References: Prechelt, "Early stopping - but when?", 1998; Song & Ermon,
"Understanding the limitations of variational mutual information estimators", ICLR 2020
(variance of the bounds, clipped critics); Loshchilov & Hutter, "Decoupled weight decay
regularization", ICLR 2019.

Objectives (docs/reference.md section 3):

* ``"bound"``: :func:`fdiv.variational.lower_bound` with the log-ratio parametrization, for any
  divergence. The held-out value is a lower bound in expectation (biased low by the critic's
  misfit).
* ``"nwj"``, ``"dv"``: :func:`~fdiv.variational.nwj` with ``T = 1 + l`` and
  :func:`~fdiv.variational.donsker_varadhan` with ``T = l``; forward KL only.
* ``"classifier"``: minimises :func:`~fdiv.variational.classifier_loss`; the estimate is the
  plug-in ``mean_Q f(e^l)`` over held-out Q-samples (not a bound; biased either way).

Training runs as one jitted ``lax.scan`` over all steps (split/merge of the NNX module, see
the design notes: cheaper than ``nnx.jit`` per step on CPU); the validation check runs under
``lax.cond`` every ``eval_every`` steps and the best parameters ride along in the scan carry.
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
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])]
        )
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
      best_step: the training step whose parameters the critic holds (0: the initial critic;
        ``steps`` when early stopping is off).
      validation_value: the validation objective of the returned critic (for
        ``"classifier"``: minus the classifier loss); NaN when early stopping is off.
      validation_steps: ``[checks]`` steps at which the validation objective was computed
        (0, then every ``eval_every`` steps and the last step).
      validation_values: ``[checks]`` the validation objective at those steps (``-inf`` where
        it was not finite).
      log_ratio_clip: the clip ``c`` applied to the critic's output (``None``: none); see
        :func:`train_critic`.
    """

    estimate: float
    standard_error: float
    critic: nnx.Module
    log_ratio_offset: float
    losses: np.ndarray
    objective: str
    best_step: int = 0
    validation_value: float = float("nan")
    validation_steps: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros((0,), np.int64)
    )
    validation_values: np.ndarray = dataclasses.field(
        default_factory=lambda: np.zeros((0,), np.float32)
    )
    log_ratio_clip: float | None = None

    def log_ratio(self, x: Array) -> Array:
        """``log(p(x)/q(x))`` estimated by the trained critic, ``[n, d] -> [n]``.

        The critic's output clipped to ``[-log_ratio_clip, log_ratio_clip]`` when a clip was
        set (the function every estimate of :func:`train_critic` used), plus the offset.
        """
        return (
            _clip(self.critic(jnp.asarray(x, jnp.float32)), self.log_ratio_clip)
            + self.log_ratio_offset
        )


def _clip(l: Array, clip: float | None) -> Array:
    return l if clip is None else jnp.clip(l, -clip, clip)


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
def _adam(learning_rate: float, weight_decay: float) -> optax.GradientTransformation:
    if weight_decay > 0.0:
        return optax.adamw(learning_rate, weight_decay=weight_decay)
    return optax.adam(learning_rate)


def _as_source(sample, name: str, holdout: int, validation: int):
    """``(draw, train_data, validation_or_None, held_out_or_None, dim)``.

    A fixed ``[n, d]`` sample is split by rows into ``[training | validation | held out]``; a
    sampler gives ``None`` for both sets (they are drawn fresh).
    """
    if callable(sample):
        return _sampler_draw(sample), jnp.zeros((1, 1), jnp.float32), None, None, None
    data = jnp.asarray(sample)
    if data.ndim != 2 or not jnp.issubdtype(data.dtype, jnp.floating):
        raise ValueError(
            f"{name} must be a sampler (key, n) -> [n, d] or a floating [n, d] "
            f"array, got {type(sample).__name__} with shape {np.shape(sample)}."
        )
    data = data.astype(jnp.float32)
    if not bool(jnp.all(jnp.isfinite(data))):
        raise ValueError(f"{name} contains non-finite values; remove or fix those samples.")
    n = data.shape[0]
    if n < holdout + validation + 1:
        raise ValueError(
            f"{name} has {n} samples, but {holdout} are held out for evaluation, "
            f"{validation} for validation, and at least 1 is needed for training; "
            "pass more samples or a smaller holdout / validation."
        )
    train_end = n - holdout - validation
    return (
        _draw_rows,
        data[:train_end],
        data[train_end : n - holdout],
        data[n - holdout :],
        data.shape[1],
    )


# Module-level and keyed by static arguments, so repeated calls (seeds, sample sizes of an
# experiment) reuse one compilation instead of tracing a fresh closure each time.
@functools.partial(
    jax.jit,
    static_argnames=(
        "graphdef",
        "objective",
        "divergence",
        "batch_size",
        "steps",
        "tx",
        "draw_p",
        "draw_q",
        "eval_every",
        "early_stopping",
        "clip",
    ),
)
def _train(
    state,
    opt_state,
    key,
    data_p,
    data_q,
    val_p,
    val_q,
    *,
    graphdef,
    objective,
    divergence,
    batch_size,
    steps,
    tx,
    draw_p,
    draw_q,
    eval_every,
    early_stopping,
    clip,
):
    def objective_at(state, x_p, x_q):
        model = nnx.merge(graphdef, state)
        return _objective_value(
            objective, divergence, _clip(model(x_p), clip), _clip(model(x_q), clip)
        )

    def validate(state):
        value = objective_at(state, val_p, val_q)
        # A non-finite validation value (an exploded critic) is the worst possible one.
        return jnp.where(jnp.isfinite(value), value, -jnp.inf)

    def step(carry, inputs):
        index, step_key = inputs
        state, opt_state, best = carry
        kp, kq = jax.random.split(step_key)
        x_p = draw_p(kp, batch_size, data_p).astype(jnp.float32)
        x_q = draw_q(kq, batch_size, data_q).astype(jnp.float32)
        loss, grads = jax.value_and_grad(lambda s: -objective_at(s, x_p, x_q))(state)
        updates, opt_state = tx.update(grads, opt_state, state)
        state = optax.apply_updates(state, updates)
        if not early_stopping:
            return (state, opt_state, best), (loss, jnp.float32(jnp.nan))
        done = index + 1

        def check(best):
            best_state, best_value, best_step = best
            value = validate(state)
            better = value > best_value
            best_state = jax.tree.map(
                lambda new, old: jnp.where(better, new, old), state, best_state
            )
            return (
                (
                    best_state,
                    jnp.where(better, value, best_value),
                    jnp.where(better, done, best_step),
                ),
                value,
            )

        def skip(best):
            return best, jnp.float32(jnp.nan)

        is_check = (done % eval_every == 0) | (done == steps)
        best, value = jax.lax.cond(is_check, check, skip, best)
        return (state, opt_state, best), (loss, value)

    best = (
        state,
        validate(state).astype(jnp.float32) if early_stopping else jnp.float32(0.0),
        jnp.int32(0),
    )
    initial_value = best[1]
    (state, _, best), (losses, values) = jax.lax.scan(
        step, (state, opt_state, best), (jnp.arange(steps), jax.random.split(key, steps))
    )
    if early_stopping:
        state = best[0]
    return state, losses, best[1], best[2], initial_value, values


@functools.partial(
    jax.jit, static_argnames=("graphdef", "objective", "divergence", "eval_batches", "clip")
)
def _evaluate(state, x_p, x_q, *, graphdef, objective, divergence, eval_batches, clip):
    model = nnx.merge(graphdef, state)
    l_p = _clip(model(x_p.astype(jnp.float32)), clip)
    l_q = _clip(model(x_q.astype(jnp.float32)), clip)
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
    validation: int | None = None,
    early_stopping: bool = True,
    eval_every: int = 25,
    weight_decay: float = 0.0,
    log_ratio_clip: float | None = None,
) -> CriticResult:
    """Trains a log-ratio critic between P (target) and Q (model) and estimates the divergence.

    Three disjoint sets are used: training minibatches, a validation set on which the
    objective is tracked for early stopping (model selection), and a held-out set on which the
    returned estimate and its standard error are computed.

    Args:
      sample_p: a jax-traceable sampler ``(key, n) -> [n, d]`` of P, or a fixed ``[n_p, d]``
        sample of P. A fixed sample is split by rows into ``[training | validation |
        held out]``: its last ``holdout`` rows give the estimate, the ``validation`` rows before
        them select the parameters, and training minibatches are drawn with replacement from
        the rest. A sampler gives a fresh validation draw and fresh held-out batches.
      sample_q: the same for Q.
      divergence: the f-divergence of the ``"bound"`` and ``"classifier"`` objectives (an
        :class:`fdiv.FDivergence` or a registered name); ``"nwj"`` and ``"dv"`` need
        forward KL.
      critic: an NNX module ``[n, d] -> [n]`` to train (updated in place); default a fresh
        :class:`CriticMLP` with ``hidden`` widths.
      steps: optimisation steps (one minibatch of each distribution per step).
      batch_size: minibatch size per distribution.
      seed: seeds initialisation, minibatches, the validation draw and held-out batches.
      objective: ``"bound"``, ``"nwj"``, ``"dv"`` or ``"classifier"`` (module docstring).
      learning_rate: Adam learning rate (ignored when ``optimizer`` is given).
      optimizer: an Optax transformation; default ``optax.adam(learning_rate)``, or
        ``optax.adamw(learning_rate, weight_decay=weight_decay)`` when ``weight_decay > 0``.
      hidden: hidden widths of the default critic.
      eval_batches: number of held-out batches the standard error is computed from. For
        samplers each is a fresh batch of ``batch_size``; for fixed samples the held-out rows
        are cut into ``eval_batches`` equal chunks.
      holdout: held-out rows of a fixed sample (default ``eval_batches * batch_size``,
        capped at a quarter of the sample).
      validation: validation rows (default for a fixed sample ``eval_batches * batch_size``
        capped at a quarter of the sample, for samplers a fresh draw of ``4 * batch_size``);
        0 is allowed only with ``early_stopping=False``.
      early_stopping: return the parameters with the best validation objective, checked at
        step 0 (the fresh critic) and every ``eval_every`` steps inside the training scan;
        ``False`` returns the last parameters.
      eval_every: steps between validation checks.
      weight_decay: decoupled weight decay of the default optimizer (``optax.adamw``).
      log_ratio_clip: ``c > 0`` clips the critic's output to ``[-c, c]`` everywhere (training,
        validation, estimate, :meth:`CriticResult.log_ratio`). For the bound objectives the
        clipped network is still a critic, so the estimate stays a valid lower bound (of the
        best clipped critic); for the ``"classifier"`` plug-in ``mean_Q f(e^l)`` it is a
        deliberate bias-variance choice: it caps the density ratio at ``e^c``, bounding the
        variance and biasing the estimate down wherever the true ratio exceeds ``e^c``.
        Default ``None`` (no clip).

    Returns:
      :class:`CriticResult` with the held-out estimate, its standard error, the trained
      critic and the validation curve. The estimate is biased: a ``"bound"`` is below the
      truth in expectation by the critic's misfit; ``"dv"`` on finite held-out samples is
      biased upward by Jensen; the classifier plug-in either way.

    Raises:
      ValueError: bad objective, divergence/objective mismatch, non-positive sizes, fixed
        samples too small for the split or with non-finite values, mismatched dimensions, a
        negative weight decay or non-positive clip.
    """
    if objective not in _OBJECTIVES:
        raise ValueError(f"objective must be one of {_OBJECTIVES}, got {objective!r}.")
    d = _divergences.resolve(divergence)
    if objective in ("nwj", "dv") and d.name != "forward_kl":
        raise ValueError(
            f"objective {objective!r} estimates forward KL only, got divergence "
            f"{d.name!r}; use objective='bound' for other divergences."
        )
    for name, value in (
        ("steps", steps),
        ("batch_size", batch_size),
        ("eval_batches", eval_batches),
        ("eval_every", eval_every),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    for name, value in (("holdout", holdout), ("validation", validation)):
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ValueError(f"{name} must be None or a non-negative integer, got {value!r}.")
    if early_stopping and validation == 0:
        raise ValueError(
            "validation=0 leaves nothing to select the critic on; pass "
            "validation > 0 or early_stopping=False."
        )
    if not (
        isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay) and weight_decay >= 0
    ):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}.")
    if log_ratio_clip is not None and not (
        isinstance(log_ratio_clip, (int, float)) and 0 < log_ratio_clip < math.inf
    ):
        raise ValueError(
            f"log_ratio_clip must be None or a finite number > 0, got {log_ratio_clip!r}."
        )
    if objective == "dv" and batch_size < 2:
        raise ValueError("objective 'dv' needs batch_size >= 2.")
    clip = None if log_ratio_clip is None else float(log_ratio_clip)

    def split_for(sample):
        if callable(sample):
            return 0, 0
        n = int(np.shape(sample)[0]) if np.ndim(sample) >= 1 else 0
        cap = min(eval_batches * batch_size, n // 4)
        held = holdout if holdout is not None else cap
        val = validation if validation is not None else (cap if early_stopping else 0)
        return held, val

    draw_p, data_p, val_p, held_p, dim_p = _as_source(sample_p, "sample_p", *split_for(sample_p))
    draw_q, data_q, val_q, held_q, dim_q = _as_source(sample_q, "sample_q", *split_for(sample_q))
    key = jax.random.PRNGKey(seed)
    key_init, key_train, key_eval, key_val = jax.random.split(key, 4)
    # The dimension of a sampler is read off one draw (traced only for its shape).
    if dim_p is None:
        dim_p = jax.eval_shape(lambda k: sample_p(k, 2), key_eval).shape[-1]
    if dim_q is None:
        dim_q = jax.eval_shape(lambda k: sample_q(k, 2), key_eval).shape[-1]
    if dim_p != dim_q:
        raise ValueError(f"P and Q samples must have the same dimension, got {dim_p} and {dim_q}.")
    kvp, kvq = jax.random.split(key_val)
    n_val = validation if validation is not None else 4 * batch_size
    if val_p is None:
        val_p = sample_p(kvp, n_val) if early_stopping else jnp.zeros((1, dim_p))
    if val_q is None:
        val_q = sample_q(kvq, n_val) if early_stopping else jnp.zeros((1, dim_q))
    if early_stopping and min(val_p.shape[0], val_q.shape[0]) < 1:
        raise ValueError(
            "the validation sets are empty; pass validation > 0 or early_stopping=False."
        )
    if critic is None:
        seed_init = int(jax.random.randint(key_init, (), 0, 2**31 - 1))
        critic = CriticMLP(dim_p, hidden=hidden, rngs=nnx.Rngs(seed_init))
    tx = optimizer if optimizer is not None else _adam(float(learning_rate), float(weight_decay))

    graphdef, state = nnx.split(critic)
    state, losses, best_value, best_step, initial_value, values = _train(
        state,
        tx.init(state),
        key_train,
        data_p,
        data_q,
        jnp.asarray(val_p, jnp.float32),
        jnp.asarray(val_q, jnp.float32),
        graphdef=graphdef,
        objective=objective,
        divergence=d,
        batch_size=batch_size,
        steps=steps,
        tx=tx,
        draw_p=draw_p,
        draw_q=draw_q,
        eval_every=eval_every,
        early_stopping=early_stopping,
        clip=clip,
    )
    nnx.update(critic, state)
    if early_stopping:
        values = np.asarray(values)
        checked = np.flatnonzero(~np.isnan(values))
        validation_steps = np.concatenate([[0], checked + 1]).astype(np.int64)
        validation_values = np.concatenate([[float(initial_value)], values[checked]])
        validation_values = validation_values.astype(np.float32)
        best_step, best_value = int(best_step), float(best_value)
    else:
        validation_steps = np.zeros((0,), np.int64)
        validation_values = np.zeros((0,), np.float32)
        best_step, best_value = steps, float("nan")

    kp, kq = jax.random.split(key_eval)
    if held_p is None:
        held_p = sample_p(kp, eval_batches * batch_size)
    if held_q is None:
        held_q = sample_q(kq, eval_batches * batch_size)
    if min(held_p.shape[0], held_q.shape[0]) < eval_batches:
        raise ValueError(
            f"the held-out samples ({held_p.shape[0]} of P, {held_q.shape[0]} of "
            f"Q) cannot be cut into eval_batches={eval_batches} batches; lower "
            "eval_batches or hold out more samples."
        )
    total, per_batch, offset = _evaluate(
        state,
        held_p,
        held_q,
        graphdef=graphdef,
        objective=objective,
        divergence=d,
        eval_batches=eval_batches,
        clip=clip,
    )
    per_batch = np.asarray(per_batch, np.float64)
    se = (
        float(np.std(per_batch, ddof=1) / math.sqrt(eval_batches))
        if eval_batches > 1
        else float("nan")
    )
    return CriticResult(
        estimate=float(total),
        standard_error=se,
        critic=critic,
        log_ratio_offset=float(offset) if objective == "dv" else 0.0,
        losses=np.asarray(losses),
        objective=objective,
        best_step=best_step,
        validation_value=best_value,
        validation_steps=validation_steps,
        validation_values=validation_values,
        log_ratio_clip=clip,
    )
