"""Tests of fdiv.critic.train_critic's model selection: a small sample in moderate dimension,
where a critic trained to convergence overfits and its held-out bound is -inf."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from fdiv import critic, variational

# P = N(0, I_8), Q = N(m, 1.2^2 I_8) with ||m|| = 0.5; 256 samples of each.
DIM, N, SCALE = 8, 256, 1.2
MEAN_Q = np.full(DIM, 0.5 / math.sqrt(DIM))
KL = 0.5 * (DIM / SCALE**2 + 0.25 / SCALE**2 - DIM + DIM * math.log(SCALE**2))
COMMON = dict(steps=600, batch_size=128, eval_batches=4, learning_rate=2e-3)


def _samples(seed, n=N):
    rng = np.random.default_rng(seed)
    x_p = rng.normal(size=(n, DIM)).astype(np.float32)
    x_q = (MEAN_Q + SCALE * rng.normal(size=(n, DIM))).astype(np.float32)
    return x_p, x_q


def _fresh_bound(result, divergence, seed):
    """The bound of the returned critic on 20000 independent samples, and its standard error."""
    x_p, x_q = _samples(1000 + seed, n=20000)
    l_p, l_q = result.log_ratio(x_p), result.log_ratio(x_q)
    d = variational._divergences.resolve(divergence)  # pylint: disable=protected-access
    t_p, c_q = (
        np.asarray(d.f_prime(l_p), np.float64),
        np.asarray(d.conjugate_at_derivative(l_q), np.float64),
    )
    se = math.sqrt(t_p.var(ddof=1) / len(t_p) + c_q.var(ddof=1) / len(c_q))
    return float(variational.lower_bound(l_p, l_q, divergence)), se


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # std of the -inf run
@pytest.mark.parametrize("seed", [0, 1])
def test_small_sample_bound_is_finite_and_below_the_truth(seed):
    x_p, x_q = _samples(seed)
    result = critic.train_critic(x_p, x_q, "forward_kl", seed=seed, **COMMON)
    se = result.standard_error
    assert np.isfinite(result.estimate) and np.isfinite(se), (result.estimate, se)
    assert result.estimate < KL + 3 * se, (result.estimate, KL, se)
    # Not wildly off either: the fresh critic (bound exactly 0) is a candidate of the selection.
    assert result.estimate > -4 * se - 0.1, (result.estimate, se)
    # Model selection, checked independently: the first candidate is the fresh critic (l = 0,
    # bound 0), the returned critic has the best validation value, and recomputing the bound on
    # the validation rows (rows [N - 128, N - 64) by default) with it gives that value.
    assert result.validation_steps[0] == 0 and result.validation_values[0] == 0.0
    np.testing.assert_array_equal(
        result.validation_steps[1:], np.arange(25, COMMON["steps"] + 1, 25)
    )
    assert result.validation_value == pytest.approx(float(np.max(result.validation_values)))
    assert result.best_step in set(result.validation_steps.tolist())
    val_p, val_q = x_p[N - 128 : N - 64], x_q[N - 128 : N - 64]
    recomputed = variational.lower_bound(
        result.critic(jnp.asarray(val_p)), result.critic(jnp.asarray(val_q)), "forward_kl"
    )
    np.testing.assert_allclose(float(recomputed), result.validation_value, rtol=1e-4, atol=1e-5)
    # Fenchel-Young: the selected critic's bound on independent samples is below KL.
    fresh, fresh_se = _fresh_bound(result, "forward_kl", seed)
    assert np.isfinite(fresh) and fresh < KL + 3 * fresh_se, (fresh, KL, fresh_se)
    # The last parameters (no early stopping) are the overfitted critic: far worse held out.
    last = critic.train_critic(x_p, x_q, "forward_kl", seed=seed, early_stopping=False, **COMMON)
    assert last.best_step == COMMON["steps"] and np.isnan(last.validation_value)
    assert not last.estimate > result.estimate - 1.0, (last.estimate, result.estimate)


def test_small_sample_classifier_plug_in_is_sensible():
    x_p, x_q = _samples(0)
    result = critic.train_critic(x_p, x_q, "forward_kl", objective="classifier", seed=0, **COMMON)
    # The plug-in is no bound (biased either way), but an early-stopped classifier is not off
    # by orders of magnitude (the last parameters give ~1e7 here).
    assert np.isfinite(result.estimate) and abs(result.estimate - KL) < 0.5, result.estimate
    # Clipping the log-ratio at c caps every ratio at e^c.
    clipped = critic.train_critic(
        x_p, x_q, "pearson", objective="classifier", seed=0, log_ratio_clip=1.0, **COMMON
    )
    l_q = np.asarray(clipped.log_ratio(x_q))
    assert np.all(np.abs(l_q) <= 1.0) and clipped.log_ratio_clip == 1.0
    assert np.isfinite(clipped.estimate) and clipped.estimate <= math.e**2 - 1.0


def test_clipped_bound_and_weight_decay_stay_lower_bounds():
    x_p, x_q = _samples(2)
    result = critic.train_critic(
        x_p, x_q, "js", seed=2, log_ratio_clip=2.0, weight_decay=1e-2, **COMMON
    )
    js_upper = math.log(2.0)  # JSD <= log 2; the exact JS is not in closed form
    assert np.isfinite(result.estimate) and result.estimate < js_upper
    fresh, fresh_se = _fresh_bound(result, "js", 2)
    # A clipped network is still a critic: on independent samples its bound is below that of
    # the exact log-ratio (the maximiser, whose bound is JS itself), up to noise.
    x_fp, x_fq = _samples(1002, n=20000)

    def exact_log_ratio(x):
        return (
            -0.5 * np.sum(x**2, 1)
            + 0.5 * np.sum((x - MEAN_Q) ** 2, 1) / SCALE**2
            + DIM * math.log(SCALE)
        ).astype(np.float32)

    best = float(variational.lower_bound(exact_log_ratio(x_fp), exact_log_ratio(x_fq), "js"))
    assert fresh < best + 3 * fresh_se, (fresh, best, fresh_se)
    # Decoupled weight decay shrinks the weights (last parameters, same seed and batches).
    plain = critic.train_critic(
        x_p, x_q, "js", seed=2, early_stopping=False, steps=100, batch_size=128, eval_batches=4
    )
    decayed = critic.train_critic(
        x_p,
        x_q,
        "js",
        seed=2,
        early_stopping=False,
        steps=100,
        batch_size=128,
        eval_batches=4,
        weight_decay=1.0,
    )
    norm = lambda r: sum(float(jnp.sum(layer.kernel[...] ** 2)) for layer in r.critic.layers)
    assert norm(decayed) < norm(plain)


def test_bad_split_and_regulariser_arguments():
    x_p, x_q = _samples(0, n=16)
    with pytest.raises(ValueError, match="validation"):
        critic.train_critic(x_p, x_q, validation=0, steps=1)
    with pytest.raises(ValueError, match="weight_decay"):
        critic.train_critic(x_p, x_q, weight_decay=-1.0, steps=1)
    with pytest.raises(ValueError, match="log_ratio_clip"):
        critic.train_critic(x_p, x_q, log_ratio_clip=0.0, steps=1)
    with pytest.raises(ValueError, match="eval_every"):
        critic.train_critic(x_p, x_q, eval_every=0, steps=1)
    with pytest.raises(ValueError, match="held out"):
        critic.train_critic(x_p, x_q, holdout=8, validation=8, steps=1)
