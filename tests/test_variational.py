"""Tests of fdiv.variational and fdiv.critic: optimal critics from exact densities, bounds,
classifier ratios, InfoNCE, a trained critic."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdiv
from fdiv import variational

# P = N(0.5, 0.9^2), Q = N(0, 1): every chi^2-type term has finite variance.
MEAN_P, STD_P = 0.5, 0.9
N = 20000


def _log_normal(x, mean, std):
    return -0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)


def _log_ratio(x):
    return _log_normal(x, MEAN_P, STD_P) - _log_normal(x, 0.0, 1.0)


def _divergences():
    out = []
    for name in fdiv.names():
        params = {"alpha": {"alpha": 0.5}, "t_power": {"t": 2.0}}.get(name, {})
        out.append(fdiv.get(name, **params))
    return out


def _quadrature_truth(d):
    """``int q f(p/q)`` on a fine grid (float64 weights; fdiv's f in float32)."""
    x = np.linspace(-14.0, 14.0, 280001)
    q = np.exp(_log_normal(x, 0.0, 1.0))
    f = np.asarray(d.f(jnp.asarray(_log_ratio(x), jnp.float32)), np.float64)
    return float(np.sum(q * f) * (x[1] - x[0]))


def _samples(seed, n=N):
    rng = np.random.default_rng(seed)
    return (MEAN_P + STD_P * rng.normal(size=n)).astype(np.float32), rng.normal(size=n).astype(
        np.float32
    )


def _bound_se(t_p, conj_q):
    t_p, conj_q = np.asarray(t_p, np.float64), np.asarray(conj_q, np.float64)
    return math.sqrt(t_p.var(ddof=1) / len(t_p) + conj_q.var(ddof=1) / len(conj_q))


@pytest.mark.parametrize("divergence", _divergences(), ids=lambda d: d.name)
def test_optimal_critic_gives_the_divergence(divergence):
    d = divergence
    x_p, x_q = _samples(0)
    l_p, l_q = _log_ratio(x_p), _log_ratio(x_q)
    truth = _quadrature_truth(d)
    se = _bound_se(d.f_prime(l_p), d.conjugate_at_derivative(l_q))
    log_ratio_value = float(variational.lower_bound(l_p, l_q, d))
    assert abs(log_ratio_value - truth) < 4 * se, (log_ratio_value, truth, se)
    act = variational.fgan_activation(d)
    v_p, v_q = act.inverse(d.f_prime(l_p)), act.inverse(d.f_prime(l_q))
    np.testing.assert_allclose(
        np.asarray(act.activation(v_q)), np.asarray(d.f_prime(l_q)), rtol=1e-4, atol=1e-5
    )
    fgan_value = float(variational.lower_bound(v_p, v_q, d, parametrization="fgan"))
    np.testing.assert_allclose(fgan_value, log_ratio_value, rtol=2e-3, atol=2e-4)
    # A perturbed critic gives a smaller value on the same samples (paired difference > 3 SE).
    # Shifts, because total variation's critic sign(u - 1)/2 ignores any sign-preserving change.
    for shift in (0.4, -0.4):
        wrong_p, wrong = l_p + shift, l_q + shift
        gap_terms_p = np.asarray(d.f_prime(l_p)) - np.asarray(d.f_prime(wrong_p))
        gap_terms_q = np.asarray(d.conjugate_at_derivative(l_q)) - np.asarray(
            d.conjugate_at_derivative(wrong)
        )
        gap = log_ratio_value - float(variational.lower_bound(wrong_p, wrong, d))
        assert gap > 3 * _bound_se(gap_terms_p, gap_terms_q), (gap, d.name)


def test_nwj_and_dv_at_their_optima_equal_kl():
    x_p, x_q = _samples(1)
    l_p, l_q = _log_ratio(x_p), _log_ratio(x_q)
    kl = 0.5 * (STD_P**2 + MEAN_P**2 - 1.0) - math.log(STD_P)  # KL(N(m, s^2) || N(0, 1))
    se = _bound_se(l_p, np.exp(l_q))
    assert abs(float(variational.nwj(1.0 + l_p, 1.0 + l_q)) - kl) < 4 * se
    dv = float(variational.donsker_varadhan(l_p, l_q))
    assert abs(dv - kl) < 4 * se
    # DV is invariant to a constant shift of the critic; NWJ is not (and drops).
    np.testing.assert_allclose(
        float(variational.donsker_varadhan(l_p + 5.0, l_q + 5.0)), dv, rtol=1e-5
    )
    assert float(variational.nwj(l_p + 2.0, l_q + 2.0)) < kl - 0.3
    # DV >= NWJ for every critic.
    t_p, t_q = 0.5 * l_p, 0.5 * l_q
    assert float(variational.donsker_varadhan(t_p, t_q)) >= float(variational.nwj(t_p, t_q))


def test_log_space_for_large_critic_outputs():
    big = jnp.asarray([-80.0, 0.0, 80.0], jnp.float32)
    for name in ("forward_kl", "js", "squared_hellinger", "reverse_kl"):
        value = variational.lower_bound(big, big, name)
        assert np.isfinite(float(value)), name
    assert np.isfinite(float(variational.donsker_varadhan(big * 100, big * 100)))


def test_classifier_loss_and_prior_correction():
    x_p, x_q = _samples(2)
    l_p, l_q = _log_ratio(x_p), _log_ratio(x_q)
    js = _quadrature_truth(fdiv.get("js"))
    terms_p, terms_q = np.asarray(jax.nn.softplus(-l_p)), np.asarray(jax.nn.softplus(l_q))
    loss = float(variational.classifier_loss(l_p, l_q))
    assert abs(loss - (math.log(4.0) - 2.0 * js)) < 4 * _bound_se(terms_p, terms_q)
    # The log-ratio minimises the loss: shifting or scaling it raises the loss.
    assert float(variational.classifier_loss(l_p + 0.5, l_q + 0.5)) > loss
    assert float(variational.classifier_loss(1.5 * l_p, 1.5 * l_q)) > loss
    logits = jnp.asarray([0.0, 1.0, -2.0])
    np.testing.assert_allclose(
        np.asarray(variational.log_ratio_from_logits(logits, 300, 100)),
        np.asarray(logits) - math.log(3.0),
        rtol=1e-6,
    )
    # Pooled, unbalanced training set: the optimal logit of the summed loss is
    # log(n_p p / (n_q q)); the correction recovers log(p/q).
    n_p, n_q = 3.0, 1.0
    pooled_optimum = _log_ratio(x_q[:5]) + math.log(n_p / n_q)
    np.testing.assert_allclose(
        np.asarray(variational.log_ratio_from_logits(pooled_optimum, n_p, n_q)),
        _log_ratio(x_q[:5]),
        rtol=1e-5,
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="n_p"):
        variational.log_ratio_from_logits(logits, 0, 1)


def test_info_nce_for_correlated_gaussians():
    rho, n = 0.5, 256
    mi = -0.5 * math.log(1 - rho**2)
    rng = np.random.default_rng(3)
    values = []
    for _ in range(8):
        x = rng.normal(size=n)
        y = rho * x + math.sqrt(1 - rho**2) * rng.normal(size=n)
        # Optimal critic log p(y | x) / p(y), up to terms in x alone.
        scores = -((y[None, :] - rho * x[:, None]) ** 2) / (2 * (1 - rho**2)) + y[None, :] ** 2 / 2
        values.append(float(variational.info_nce(scores.astype(np.float32))))
    assert abs(np.mean(values) - mi) < 0.03, (np.mean(values), mi)
    # The log n ceiling: a perfect critic on a tiny batch cannot exceed log n.
    assert float(variational.info_nce(100.0 * np.eye(4, dtype=np.float32))) == pytest.approx(
        math.log(4.0), abs=1e-5
    )
    assert float(variational.info_nce(np.zeros((5, 5), np.float32))) == pytest.approx(0.0, abs=1e-6)


def test_jit_grad_vmap_bfloat16():
    x_p, x_q = _samples(4, n=64)
    l_p, l_q = jnp.asarray(_log_ratio(x_p)), jnp.asarray(_log_ratio(x_q))
    f = lambda a, b: variational.lower_bound(a, b, "js")
    np.testing.assert_allclose(float(jax.jit(f)(l_p, l_q)), float(f(l_p, l_q)), rtol=1e-6)
    g_p, g_q = jax.grad(f, argnums=(0, 1))(l_p, l_q)
    # d/dl_p of mean f'(e^l) is u f''(u) / n, and f'' of JS is 1 / (2u(1+u)).
    np.testing.assert_allclose(
        np.asarray(g_p), np.asarray(0.5 * jax.nn.sigmoid(-l_p)) / 64, rtol=1e-5
    )
    assert np.all(np.isfinite(np.asarray(g_q)))
    stacked = jax.vmap(f)(jnp.stack([l_p, l_q]), jnp.stack([l_q, l_p]))
    np.testing.assert_allclose(float(stacked[0]), float(f(l_p, l_q)), rtol=1e-6)
    for fn in (variational.nwj, variational.donsker_varadhan, variational.classifier_loss):
        vb = fn(l_p.astype(jnp.bfloat16), l_q.astype(jnp.bfloat16))
        assert vb.dtype == jnp.float32
        ref = fn(
            l_p.astype(jnp.bfloat16).astype(jnp.float32),
            l_q.astype(jnp.bfloat16).astype(jnp.float32),
        )
        np.testing.assert_allclose(float(vb), float(ref), rtol=1e-6)


def test_bad_input():
    a = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="empty"):
        variational.lower_bound(a[:0], a, "kl")
    with pytest.raises(ValueError, match="1-D"):
        variational.nwj(a[:, None], a)
    with pytest.raises(ValueError, match="NaN"):
        variational.donsker_varadhan(np.array([np.nan], np.float32), a)
    with pytest.raises(ValueError, match="parametrization"):
        variational.lower_bound(a, a, "kl", parametrization="exp")
    with pytest.raises(ValueError, match="floating"):
        variational.classifier_loss(np.zeros(3, np.int32), a)
    with pytest.raises(ValueError, match="square"):
        variational.info_nce(np.zeros((3, 4), np.float32))


def test_trained_critic_recovers_log_ratio_and_divergence():
    sample_p = lambda k, n: MEAN_P + STD_P * jax.random.normal(k, (n, 1))
    sample_q = lambda k, n: jax.random.normal(k, (n, 1))
    grid = np.linspace(-2.0, 2.0, 41, dtype=np.float32)
    for name in ("forward_kl", "js"):
        d = fdiv.get(name)
        result = variational.train_critic(
            sample_p, sample_q, d, steps=1500, batch_size=512, seed=0, eval_batches=16
        )
        truth = _quadrature_truth(d)
        assert abs(result.estimate - truth) < 3 * result.standard_error, (
            name,
            result.estimate,
            truth,
            result.standard_error,
        )
        error = np.abs(np.asarray(result.log_ratio(grid[:, None])) - _log_ratio(grid))
        # Stated tolerance on [-2, 2]: mean |error| < 0.1, max < 0.3 (the edges see few samples).
        assert error.mean() < 0.1 and error.max() < 0.3, (name, error.mean(), error.max())
    with pytest.raises(ValueError, match="forward KL"):
        variational.train_critic(sample_p, sample_q, "js", objective="dv", steps=1)
