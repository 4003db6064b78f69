"""Tests for fdiv.montecarlo: agreement with exact values, calibrated standard errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

from fdiv import discrete
from fdiv import montecarlo as mc
from fdiv.divergences import get

DIVERGENCES = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("js", {}),
    ("squared_hellinger", {}),
    ("total_variation", {}),
    ("pearson", {}),
    ("alpha", {"alpha": 0.5}),
]
IDS = [n + "".join(f"_{v}" for v in kw.values()) for n, kw in DIVERGENCES]


def _categorical_problem(num_classes=8, seed=0):
    rng = np.random.default_rng(seed)
    target_logits = rng.standard_normal(num_classes)
    model_logits = rng.standard_normal(num_classes)
    return (scipy.special.log_softmax(target_logits), scipy.special.log_softmax(model_logits))


def _sample(key, log_probs, shape):
    return np.asarray(jax.random.categorical(key, jnp.asarray(log_probs), shape=shape))


def _exact_moments(d, log_p, log_q, under):
    """Exact mean and std of the estimator's per-sample term under P or Q."""
    log_u = log_p - log_q
    with jax.enable_x64(True):
        if under == "model":
            terms, weights = np.asarray(d.f(log_u)), np.exp(log_q)
        else:
            terms, weights = np.asarray(d.f_over_u(log_u)), np.exp(log_p)
    mean = np.sum(weights * terms)
    return mean, np.sqrt(np.sum(weights * (terms - mean) ** 2))


@pytest.mark.parametrize("name,params", DIVERGENCES, ids=IDS)
def test_categorical_agrees_with_exact(name, params):
    d = get(name, **params)
    log_p, log_q = _categorical_problem()
    n = 4000
    key_q, key_p = jax.random.split(jax.random.key(1))
    x_q = _sample(key_q, log_q, (n,))
    x_p = _sample(key_p, log_p, (n,))
    with jax.enable_x64(True):
        exact = float(discrete.categorical_divergence(log_p, log_q, d))
        for under, fn, x in (
            ("model", mc.mc_divergence_from_model_samples, x_q),
            ("target", mc.mc_divergence_from_target_samples, x_p),
        ):
            estimate, se = fn(log_p[x], log_q[x], d)
            assert abs(float(estimate) - exact) < 4 * float(se), (under, estimate, exact, se)
            # The standard error estimates the exact std of the term over sqrt(n).
            mean, std = _exact_moments(d, log_p, log_q, under)
            np.testing.assert_allclose(mean, exact, rtol=1e-10)
            np.testing.assert_allclose(float(se) * np.sqrt(n), std, rtol=0.1)


class JitVariantsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_batched_axis(self):
        d = get("js")
        log_p, log_q = _categorical_problem(seed=3)
        x = _sample(jax.random.key(2), log_q, (5, 1000))
        with jax.enable_x64(True):
            lp, lq = log_p[x], log_q[x]
            fn = self.variant(mc.mc_divergence_from_model_samples, static_argnames="axis")
            est, se = fn(lp, lq, d, axis=1)
            assert est.shape == se.shape == (5,)
            for i in range(5):
                e_i, s_i = mc.mc_divergence_from_model_samples(lp[i], lq[i], d)
                np.testing.assert_allclose([est[i], se[i]], [e_i, s_i], rtol=1e-12)
            # vmap over the leading axis is the same computation.
            v_est, v_se = jax.vmap(lambda a, b: mc.mc_divergence_from_model_samples(a, b, d))(
                lp, lq
            )
            np.testing.assert_allclose(v_est, est, rtol=1e-12)
            np.testing.assert_allclose(v_se, se, rtol=1e-12)
            # Reducing both axes pools the samples.
            pooled, _ = mc.mc_divergence_from_model_samples(lp, lq, d)
            np.testing.assert_allclose(pooled, np.mean(est), rtol=1e-12)


# P = N(0, 1) target, Q = N(0.7, 1.3^2) model (the docs/reference.md section 4 check pair).
MU_P, SD_P, MU_Q, SD_Q = 0.0, 1.0, 0.7, 1.3


def _kl_normal(mu_a, sd_a, mu_b, sd_b):
    return np.log(sd_b / sd_a) + (sd_a**2 + (mu_a - mu_b) ** 2) / (2 * sd_b**2) - 0.5


def _gaussian_log_densities(x):
    return (scipy.stats.norm.logpdf(x, MU_P, SD_P), scipy.stats.norm.logpdf(x, MU_Q, SD_Q))


def test_gaussian_kl_closed_form():
    n = 20_000
    key_q, key_p = jax.random.split(jax.random.key(4))
    with jax.enable_x64(True):
        x_q = MU_Q + SD_Q * np.asarray(jax.random.normal(key_q, (n,), jnp.float64))
        x_p = MU_P + SD_P * np.asarray(jax.random.normal(key_p, (n,), jnp.float64))
        forward = _kl_normal(MU_P, SD_P, MU_Q, SD_Q)
        reverse = _kl_normal(MU_Q, SD_Q, MU_P, SD_P)
        for x, fn in (
            (x_q, mc.mc_divergence_from_model_samples),
            (x_p, mc.mc_divergence_from_target_samples),
        ):
            lp, lq = _gaussian_log_densities(x)
            for name, exact in (("forward_kl", forward), ("reverse_kl", reverse)):
                estimate, se = fn(lp, lq, name)
                assert abs(float(estimate) - exact) < 4 * float(se), (fn, name, estimate, exact)
        # Self-normalised with the target known up to exp(3.7).
        lp, lq = _gaussian_log_densities(x_q)
        estimate, se = mc.mc_divergence_self_normalized(lp + 3.7, lq, "forward_kl")
        assert abs(float(estimate) - forward) < 4 * float(se)
        log_z, se_z = mc.mc_log_normalizer(lp + 3.7, lq)
        assert abs(float(log_z) - 3.7) < 4 * float(se_z)


@pytest.mark.parametrize("name", ["forward_kl", "js", "pearson"])
def test_self_normalized_converges_and_se_is_calibrated(name):
    d = get(name)
    log_p, log_q = _categorical_problem(seed=5)
    log_p_unnormalized = log_p - 2.5
    reps = 400
    with jax.enable_x64(True):
        exact = float(discrete.categorical_divergence(log_p, log_q, d))
        # One draw of 400 x 500 samples: rows are independent replications at
        # n = 500, all of them pooled are one run at n = 200,000.
        x = _sample(jax.random.key(6), log_q, (reps, 500))
        lp_x, lq_x = log_p_unnormalized[x], log_q[x]
        est, se = mc.mc_divergence_self_normalized(lp_x, lq_x, d)
        assert abs(float(est) - exact) < 4 * float(se), (est, exact, se)
        # At large n the delta-method standard error approaches the exact
        # asymptotic one, sqrt(Var_Q[f(u) - c (u - 1)] / n), c = E_Q[u f'(u)].
        u, q = np.exp(log_p - log_q), np.exp(log_q)
        f_u, f_prime = np.asarray(d.f(log_p - log_q)), np.asarray(d.f_prime(log_p - log_q))
        influence = f_u - exact - np.sum(q * u * f_prime) * (u - 1)
        np.testing.assert_allclose(
            float(se) * np.sqrt(x.size), np.sqrt(np.sum(q * influence**2)), rtol=0.05
        )
        # Across the replications the delta-method standard error matches the
        # spread of the estimates, and the bias is O(1/n).
        n = x.shape[1]
        est, se = mc.mc_divergence_self_normalized(lp_x, lq_x, d, axis=-1)
        spread = np.std(np.asarray(est), ddof=1)
        np.testing.assert_allclose(np.mean(se), spread, rtol=0.15)
        assert abs(np.mean(est) - exact) < 4 * spread / np.sqrt(reps) + 5.0 / n
        log_z, se_z = mc.mc_log_normalizer(lp_x, lq_x, axis=-1)
        np.testing.assert_allclose(np.mean(se_z), np.std(np.asarray(log_z), ddof=1), rtol=0.15)
        assert abs(np.mean(log_z) + 2.5) < 4 * np.std(log_z) / np.sqrt(reps) + 5.0 / n


def test_plain_standard_error_is_calibrated():
    d = get("forward_kl")
    log_p, log_q = _categorical_problem(seed=7)
    reps, n = 400, 200
    x = _sample(jax.random.key(8), log_q, (reps, n))
    with jax.enable_x64(True):
        exact = float(discrete.categorical_divergence(log_p, log_q, d))
        est, se = mc.mc_divergence_from_model_samples(log_p[x], log_q[x], d, axis=1)
        spread = np.std(np.asarray(est), ddof=1)
        np.testing.assert_allclose(np.mean(se), spread, rtol=0.1)
        # Unbiased: the mean of the replications is within its own standard error.
        assert abs(np.mean(est) - exact) < 4 * spread / np.sqrt(reps)


@pytest.mark.parametrize(
    "fn",
    [
        mc.mc_divergence_from_model_samples,
        mc.mc_divergence_from_target_samples,
        mc.mc_divergence_self_normalized,
    ],
)
def test_where_equals_slicing_and_blocks_gradients(fn):
    rng = np.random.default_rng(9)
    lp = rng.standard_normal(12) - 2.0
    lq = rng.standard_normal(12) - 2.0
    mask = rng.random(12) < 0.6
    lp_bad = np.where(mask, lp, np.nan)
    lq_bad = np.where(mask, lq, -np.inf)
    with jax.enable_x64(True):
        expected = fn(lp[mask], lq[mask], "js")
        runs = [fn]
        if fn is mc.mc_divergence_self_normalized:
            runs.append(jax.jit(fn, static_argnums=2))
        for run in runs:
            got = run(lp_bad, lq_bad, "js", where=mask)
            np.testing.assert_allclose(got, expected, rtol=1e-12)
        grads = jax.grad(lambda a, b: sum(fn(a, b, "js", where=mask)), argnums=(0, 1))(
            lp_bad, lq_bad
        )
        for g in grads:
            assert np.all(np.isfinite(g)) and np.all(g[~mask] == 0.0) and np.any(g[mask] != 0)


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(10)
    lp = rng.standard_normal(6)
    lq = rng.standard_normal(6)
    eps = 1e-6
    with jax.enable_x64(True):
        for fn in (mc.mc_divergence_from_model_samples, mc.mc_divergence_self_normalized):
            loss = lambda a, b: fn(a, b, "squared_hellinger")[0]
            grads = jax.grad(loss, argnums=(0, 1))(lp, lq)
            for arg, g in enumerate(grads):
                for i in range(6):
                    plus = [lp.copy(), lq.copy()]
                    minus = [lp.copy(), lq.copy()]
                    plus[arg][i] += eps
                    minus[arg][i] -= eps
                    fd = (float(loss(*plus)) - float(loss(*minus))) / (2 * eps)
                    np.testing.assert_allclose(g[i], fd, rtol=1e-6, atol=1e-9)


def test_dtypes_and_infinite_terms():
    rng = np.random.default_rng(11)
    lp = jnp.asarray(rng.standard_normal(64), jnp.bfloat16)
    lq = jnp.asarray(rng.standard_normal(64), jnp.bfloat16)
    est, se = mc.mc_divergence_from_model_samples(lp, lq, "js")
    assert est.dtype == se.dtype == jnp.float32
    ref = get("js").f(np.asarray(lp, np.float64) - np.asarray(lq, np.float64))
    np.testing.assert_allclose(est, np.mean(ref), rtol=1e-5)
    # A model sample where p = 0 has f(0) = inf for reverse KL.
    est, se = mc.mc_divergence_from_model_samples(
        np.array([-np.inf, 0.0, -1.0]), np.array([0.0, 0.0, 0.0]), "reverse_kl"
    )
    assert np.isposinf(est) and np.isnan(se)


def test_errors():
    x = np.zeros(5)
    with pytest.raises(ValueError, match=r"same shape.*\(5,\).*\(4,\)"):
        mc.mc_divergence_from_model_samples(x, np.zeros(4), "kl")
    with pytest.raises(ValueError, match="log_q must be floating point, got int32"):
        mc.mc_divergence_from_target_samples(x, np.zeros(5, np.int32), "kl")
    with pytest.raises(ValueError, match="log_p_unnormalized must be floating point"):
        mc.mc_divergence_self_normalized(np.zeros(5, np.int32), x, "kl")
    with pytest.raises(ValueError, match="at least 2 samples"):
        mc.mc_divergence_from_model_samples(np.zeros((3, 1)), np.zeros((3, 1)), "kl", axis=1)
    with pytest.raises(ValueError, match=r"where must be broadcastable.*\(5,\).*\(3,\)"):
        mc.mc_log_normalizer(x, x, where=np.ones(3, bool))
    with pytest.raises(ValueError, match="where must be a boolean mask"):
        mc.mc_log_normalizer(x, x, where=np.ones(5))
    with pytest.raises(ValueError, match="axis must be None"):
        mc.mc_divergence_from_model_samples(x, x, "kl", axis=1)
    with pytest.raises(ValueError, match="unknown divergence 'nope'"):
        mc.mc_divergence_from_model_samples(x, x, "nope")


@pytest.mark.parametrize("dtype,extreme", [("float32", 100.0), ("float64", 1000.0)])
def test_one_extreme_sample_keeps_estimates_finite(dtype, extreme):
    # log u = +-extreme is beyond exp's range; the terms are -log u (reverse KL under Q)
    # and log u (forward KL under P), so the estimates stay finite and exact.
    rng = np.random.default_rng(12)
    lq = rng.standard_normal(8)
    lp = lq + rng.standard_normal(8)
    lp_hi, lp_lo = lp.copy(), lp.copy()
    lp_hi[3] = lq[3] + extreme
    lp_lo[3] = lq[3] - extreme
    with jax.enable_x64(dtype == "float64"):
        cast = lambda x: jnp.asarray(x, dtype)
        est, se = mc.mc_divergence_from_model_samples(cast(lp_hi), cast(lq), "reverse_kl")
        np.testing.assert_allclose(est, np.mean(-(lp_hi - lq)), rtol=1e-5)
        assert np.isfinite(se)
        est, se = mc.mc_divergence_from_target_samples(cast(lp_lo), cast(lq), "forward_kl")
        np.testing.assert_allclose(est, np.mean(lp_lo - lq), rtol=1e-5)
        assert np.isfinite(se)
        for name in ("reverse_kl", "js", "alpha"):
            est, se = mc.mc_divergence_self_normalized(cast(lp_hi), cast(lq), name)
            assert np.isfinite(est) and np.isfinite(se), (name, est, se)


def _exact_mixture_moments(d, log_p, log_q, a):
    """Exact means and stds under P and Q of the balance-heuristic term f(u) / (a u + 1 - a)."""
    u = np.exp(log_p - log_q)
    with jax.enable_x64(True):
        terms = np.asarray(d.f(log_p - log_q)) / (a * u + 1 - a)
    out = []
    for log_w in (log_p, log_q):
        w = np.exp(log_w)
        mean = np.sum(w * terms)
        out.append((mean, np.sqrt(np.sum(w * (terms - mean) ** 2))))
    return out


@pytest.mark.parametrize("name,params", DIVERGENCES, ids=IDS)
def test_both_samples_agrees_with_exact(name, params):
    d = get(name, **params)
    log_p, log_q = _categorical_problem(num_classes=30, seed=4)
    n_p, n_q = 3000, 5000  # unequal strata: a = 3/8
    key_p, key_q = jax.random.split(jax.random.key(5))
    x_p, x_q = _sample(key_p, log_p, (n_p,)), _sample(key_q, log_q, (n_q,))
    with jax.enable_x64(True):
        exact = float(discrete.categorical_divergence(log_p, log_q, d))
        est, se = mc.mc_divergence_from_both_samples(
            log_p[x_p], log_q[x_p], log_p[x_q], log_q[x_q], d
        )
    assert abs(float(est) - exact) < 4 * float(se), (est, exact, se)
    # Unbiased: a E_P[g] + (1 - a) E_Q[g] is the divergence exactly; the standard error is the
    # stratified one.
    a = n_p / (n_p + n_q)
    (mean_p, std_p), (mean_q, std_q) = _exact_mixture_moments(d, log_p, log_q, a)
    np.testing.assert_allclose(a * mean_p + (1 - a) * mean_q, exact, rtol=1e-10)
    exact_se = np.sqrt(n_p * std_p**2 + n_q * std_q**2) / (n_p + n_q)
    np.testing.assert_allclose(float(se), exact_se, rtol=0.1)


class BothSamplesVariantsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_disjoint_supports_and_masks(self):
        # Q puts mass 1e-30 where P lives: a model-only estimate of TV from 1000 samples sees
        # no P mass (and JS's log 2 only by accident of f(0)); with P's samples every term is
        # exact. TV = 1 - 1e-30 and JS = log 2 to float32.
        fn = self.variant(
            mc.mc_divergence_from_both_samples,
            static_argnames=("divergence",),
        )
        log_p_at_p = jnp.full((500,), -np.log(500.0))
        log_q_at_p = log_p_at_p - 69.0  # u = e^69 ~ 1e30
        log_p_at_q = jnp.full((1000,), -jnp.inf)
        log_q_at_q = jnp.zeros((1000,))
        for name, exact in (("total_variation", 1.0), ("js", np.log(2.0))):
            est, se = fn(log_p_at_p, log_q_at_p, log_p_at_q, log_q_at_q, divergence=name)
            np.testing.assert_allclose(float(est), exact, rtol=1e-6)
            assert float(se) < 1e-6
        # Forward KL: the target samples carry it all (f(0) = 0), mean log u = 69.
        est, _ = fn(log_p_at_p, log_q_at_p, log_p_at_q, log_q_at_q, divergence="forward_kl")
        np.testing.assert_allclose(float(est), 69.0, rtol=1e-5)
        # A mask equals slicing, and masked (NaN) entries reach neither value nor gradient.
        bad = log_q_at_p.at[:100].set(jnp.nan)
        where_p = jnp.arange(500) >= 100

        def value(lq):
            return fn(log_p_at_p, lq, log_p_at_q, log_q_at_q, divergence="js", where_p=where_p)[0]

        sliced, _ = fn(log_p_at_p[100:], log_q_at_p[100:], log_p_at_q, log_q_at_q, divergence="js")
        np.testing.assert_allclose(float(value(bad)), float(sliced), rtol=1e-6)
        g = jax.grad(value)(bad)
        assert np.all(np.isfinite(np.asarray(g)))
        assert np.all(np.asarray(g)[:100] == 0.0)


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "js", "total_variation", "pearson"])
def test_both_samples_gradient_matches_finite_differences(name):
    d = get(name)
    log_p, log_q = _categorical_problem(num_classes=6, seed=7)
    x_p = _sample(jax.random.key(8), log_p, (50,))
    x_q = _sample(jax.random.key(9), log_q, (70,))
    with jax.enable_x64(True):
        shift = jnp.linspace(-1.0, 1.0, 50)

        def value(t):
            return mc.mc_divergence_from_both_samples(
                log_p[x_p], log_q[x_p] + t * shift, log_p[x_q], log_q[x_q], d
            )[0]

        h = 1e-6
        fd = (value(h) - value(-h)) / (2 * h)
        np.testing.assert_allclose(float(jax.grad(value)(0.0)), float(fd), rtol=1e-6, atol=1e-10)


def test_both_samples_errors():
    x = jnp.zeros((4,))
    with pytest.raises(ValueError, match="log_p_at_q and log_q_at_q must have the same shape"):
        mc.mc_divergence_from_both_samples(x, x, x, jnp.zeros((3,)), "js")
    with pytest.raises(ValueError, match="at least 2 samples"):
        mc.mc_divergence_from_both_samples(x, x, x[:1], x[:1], "js")
