"""Tests for fdiv.distill (docs/reference.md section 4)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from fdiv import distill
from fdiv.divergences import get

JIT = [False, True]


# Independent numpy generators f(u) (docs/reference.md section 2), written from log u for stable tails.
def _np_f(name, log_u):
    u = np.exp(log_u)
    if name == "reverse_kl":
        return -log_u
    if name == "forward_kl":
        return u * log_u
    if name == "jeffreys":
        return (u - 1) * log_u
    if name == "js":
        return 0.5 * (u * log_u - (u + 1) * (np.logaddexp(0.0, log_u) - np.log(2)))
    if name == "squared_hellinger":
        return 0.5 * (np.exp(0.5 * log_u) - 1) ** 2
    if name == "softened_reverse_kl":
        return (u + 1) * (np.logaddexp(0.0, log_u) - np.log(2) - log_u)
    raise KeyError(name)


# h(u) = u^2 f''(u), docs/reference.md section 2 table.
_NP_H = {
    "forward_kl": lambda u: u,
    "reverse_kl": lambda u: np.ones_like(u),
    "js": lambda u: u / (2 * (u + 1)),
    "squared_hellinger": lambda u: np.sqrt(u) / 4,
    "pearson": lambda u: 2 * u**2,
    "neyman": lambda u: 2 / u,
    "jeffreys": lambda u: u + 1,
    "softened_reverse_kl": lambda u: 1 / (u + 1),
}


def _log_normal(x, mu, s):
    return -0.5 * ((x - mu) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)


def _exact_divergence(name, mu, s):
    """D_f(P || Q) for p = N(0, 1), q = N(mu, s^2) by quadrature."""

    def integrand(x):
        log_q = _log_normal(x, mu, s)
        return np.exp(log_q) * _np_f(name, _log_normal(x, 0.0, 1.0) - log_q)

    lo, hi = min(-12.0, mu - 12 * s), max(12.0, mu + 12 * s)
    val, _ = integrate.quad(integrand, lo, hi, epsabs=1e-13, epsrel=1e-12, limit=200)
    return val


def _fd_gradient(name, mu, s, eps=1e-4):
    d = functools.partial(_exact_divergence, name)
    return np.array(
        [
            (d(mu + eps, s) - d(mu - eps, s)) / (2 * eps),
            (d(mu, s + eps) - d(mu, s - eps)) / (2 * eps),
        ]
    )


def _estimator_gradient(divergence, z, theta):
    """Gradient of the surrogate w.r.t. theta = (mu, s) for x = mu + s z, exact scores/ratios."""

    def loss(theta):
        mu, s = theta[0], theta[1]
        x = (mu + s * z)[:, None]
        mu_c, s_c = jax.lax.stop_gradient(mu), jax.lax.stop_gradient(s)
        xc = jax.lax.stop_gradient(x)
        target_score = -xc
        model_score = -(xc - mu_c) / s_c**2
        log_ratio = (-0.5 * xc[:, 0] ** 2) - (-0.5 * ((xc[:, 0] - mu_c) / s_c) ** 2 - jnp.log(s_c))
        return distill.score_weighted_loss(x, target_score, model_score, log_ratio, divergence)

    return jax.grad(loss)(theta)


@pytest.mark.parametrize("use_jit", JIT)
@pytest.mark.parametrize("mu,s", [(0.7, 1.3), (-0.5, 0.85)])
def test_score_weighted_gradient_matches_divergence_gradient(use_jit, mu, s):
    """THE key identity: the surrogate's gradient is grad_theta D_f(P || Q_theta)."""
    n = 200_000
    names = [
        "reverse_kl",
        "softened_reverse_kl",
        "js",
        "squared_hellinger",
        "forward_kl",
        "jeffreys",
    ]
    with jax.enable_x64(True):
        z = jax.random.normal(jax.random.PRNGKey(0), (n,), jnp.float64)
        theta = jnp.array([mu, s], jnp.float64)
        zn = np.asarray(z)
        x = mu + s * zn
        u_log = _log_normal(x, 0, 1) - _log_normal(x, mu, s)
        for name in names:
            d = get(name)
            fn = jax.jit(_estimator_gradient, static_argnums=0) if use_jit else _estimator_gradient
            got = np.asarray(fn(d, z, theta))
            want = _fd_gradient(name, mu, s)
            # Monte Carlo standard error of each component from the per-sample terms
            # g_i dx_i/dtheta, g = h(r)(s_q - s_p), dx/dmu = 1, dx/ds = z.
            g = _NP_H[name](np.exp(u_log)) * (-(x - mu) / s**2 + x)
            se = np.array([g.std(), (g * zn).std()]) / np.sqrt(n)
            assert np.all(np.abs(got - want) < 5 * se + 1e-6), (name, got, want, se)
            # The test has power: the gradient is far from zero relative to the error.
            assert np.max(np.abs(want) / se) > 20, (name, want, se)


@pytest.mark.parametrize("use_jit", JIT)
def test_weights_match_closed_forms(use_jit):
    log_u = np.linspace(-4.0, 4.0, 17)
    for name, h in _NP_H.items():
        fn = functools.partial(
            distill.weights, divergence=name, logit_clip=None, ratio_clip=None, normalize=False
        )
        fn = jax.jit(fn) if use_jit else fn
        np.testing.assert_allclose(
            fn(jnp.asarray(log_u, jnp.float32)), h(np.exp(log_u)), rtol=2e-5, err_msg=name
        )


@pytest.mark.parametrize("use_jit", JIT)
def test_weights_clipping_and_normalisation(use_jit):
    log_r = jnp.array([-20.0, -5.0, np.log(0.05), 0.0, np.log(3.0), np.log(30.0), 15.0])
    raw = functools.partial(distill.weights, divergence="forward_kl", normalize=False)
    norm = functools.partial(distill.weights, divergence="forward_kl")
    if use_jit:
        raw, norm = jax.jit(raw), jax.jit(norm)
    # forward KL: h(r) = r, so the clipped weights are the clipped ratios.
    want = np.array([0.1, 0.1, 0.1, 1.0, 3.0, 20.0, 20.0])
    np.testing.assert_allclose(raw(log_r), want, rtol=1e-5)
    np.testing.assert_allclose(norm(log_r), want / (want.mean() + 1e-6), rtol=1e-5)
    # Logit clip alone: exp(clip(l, -10, 10)).
    only_logit = distill.weights(log_r, "forward_kl", ratio_clip=None, normalize=False)
    np.testing.assert_allclose(only_logit, np.exp(np.clip(np.asarray(log_r), -10, 10)), rtol=1e-5)
    # Reverse KL has h = 1: normalised weights are 1 (up to the 1e-6 guard).
    np.testing.assert_allclose(distill.weights(log_r, "reverse_kl"), 1 / (1 + 1e-6), rtol=1e-6)
    # Weights are constants of the generator update.
    grad = jax.grad(lambda l: jnp.sum(distill.weights(l, "js") * l))(log_r)
    np.testing.assert_allclose(grad, distill.weights(log_r, "js"), rtol=1e-6)
    # A divergence instance works like its name.
    np.testing.assert_allclose(distill.weights(log_r, get("js")), distill.weights(log_r, "js"))


def test_weights_global_mean_over_devices_via_axis_name():
    # vmap with an axis name emulates devices: the normalisation must use the mean over all
    # of them, i.e. equal the weights of the concatenated batch.
    log_r = jax.random.normal(jax.random.PRNGKey(1), (4, 8)) * 2
    per_device = jax.vmap(
        lambda l: distill.weights(l, "jeffreys", axis_name="data"), axis_name="data"
    )(log_r)
    global_ = distill.weights(log_r.reshape(-1), "jeffreys").reshape(4, 8)
    np.testing.assert_allclose(per_device, global_, rtol=1e-5)
    local = jax.vmap(lambda l: distill.weights(l, "jeffreys"))(log_r)
    assert not np.allclose(local, global_)


def test_divergence_without_weight_raises():
    with pytest.raises(ValueError, match="total_variation.*weight"):
        distill.weights(jnp.zeros(3), "total_variation")
    x = jnp.zeros((3, 2))
    with pytest.raises(ValueError, match="total_variation"):
        distill.score_weighted_loss(x, x, x, jnp.zeros(3), get("total_variation"))


def test_shape_errors_name_both_shapes():
    x = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(4, 2\)"):
        distill.score_weighted_loss(x, jnp.zeros((4, 3)), x, jnp.zeros(4), "js")
    with pytest.raises(ValueError, match=r"\(4,\).*\(4, 2\).*\(4, 1\)"):
        distill.score_weighted_loss(x, x, x, jnp.zeros((4, 1)), "js")
    with pytest.raises(ValueError, match=r"sigma.*\(4,\).*\(3,\)"):
        distill.fdistill_loss(x, jnp.ones(3), x, x, jnp.zeros(4), "js")
    with pytest.raises(ValueError, match="ratio_clip"):
        distill.weights(jnp.zeros(3), "js", ratio_clip=(2.0, 1.0))


@pytest.mark.parametrize("use_jit", JIT)
def test_fdistill_loss_gradient(use_jit):
    # x = a * base with a scalar parameter a: the gradient is mean_b g_b . base_b.
    key = jax.random.PRNGKey(2)
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    b = 16
    base = jax.random.normal(k1, (b, 3, 2))
    eps = jax.random.normal(k2, (b, 3, 2))
    sigma = jnp.exp(jax.random.normal(k3, (b,)))
    x0_fake = jax.random.normal(k4, (b, 3, 2))
    x0_teacher = jax.random.normal(k5, (b, 3, 2))
    log_r = jnp.linspace(-3.0, 3.0, b)
    a0 = 1.3

    def loss(a, use_x):
        x = a * base
        x_t = x + sigma[:, None, None] * eps
        return distill.fdistill_loss(
            x_t, sigma, x0_fake, x0_teacher, log_r, "js", x=x if use_x else None
        )

    grad = jax.grad(loss)
    grad = jax.jit(grad, static_argnums=1) if use_jit else grad
    h = np.asarray(distill.weights(log_r, "js"))[:, None, None]
    diff = np.asarray(x0_fake - x0_teacher)
    g_sigma = h * diff / np.asarray(sigma)[:, None, None] ** 2
    want = np.mean(np.sum(g_sigma * np.asarray(base), axis=(1, 2)))
    np.testing.assert_allclose(grad(a0, False), want, rtol=1e-5)
    # DMD normalisation: 1 / (mean |x - x0_teacher| + 1e-6) per sample instead of 1/sigma^2.
    dist = np.mean(np.abs(a0 * np.asarray(base) - np.asarray(x0_teacher)), axis=(1, 2))
    g_dmd = h * diff / (dist[:, None, None] + 1e-6)
    want = np.mean(np.sum(g_dmd * np.asarray(base), axis=(1, 2)))
    np.testing.assert_allclose(grad(a0, True), want, rtol=1e-5)


def test_fdistill_loss_is_score_weighted_loss_in_denoiser_space():
    # s_q - s_p = (x0_fake - x0_teacher) / sigma^2 with scores (x0 - x_t) / sigma^2.
    key = jax.random.PRNGKey(5)
    k1, k2, k3 = jax.random.split(key, 3)
    x_t = jax.random.normal(k1, (8, 4))
    x0_fake = jax.random.normal(k2, (8, 4))
    x0_teacher = jax.random.normal(k3, (8, 4))
    sigma = jnp.linspace(0.1, 3.0, 8)
    log_r = jnp.linspace(-1.0, 2.0, 8)
    s = sigma[:, None] ** 2

    def a(x):
        return distill.fdistill_loss(
            x,
            sigma,
            x0_fake,
            x0_teacher,
            log_r,
            "squared_hellinger",
            normalize=False,
            logit_clip=None,
            ratio_clip=None,
        )

    def b(x):
        return distill.score_weighted_loss(
            x, (x0_teacher - x_t) / s, (x0_fake - x_t) / s, log_r, "squared_hellinger"
        )

    np.testing.assert_allclose(jax.grad(a)(x_t), jax.grad(b)(x_t), rtol=1e-5, atol=1e-6)


def _softplus(x):
    return np.logaddexp(0.0, x)


@pytest.mark.parametrize("use_jit", JIT)
def test_discriminator_and_gan_losses(use_jit):
    lr = np.array([-2.0, 0.0, 3.0])
    lf = np.array([1.0, -1.0, 0.5, 4.0])
    disc = jax.jit(distill.discriminator_loss) if use_jit else distill.discriminator_loss
    gan = jax.jit(distill.generator_gan_loss) if use_jit else distill.generator_gan_loss
    np.testing.assert_allclose(
        disc(lr, lf), _softplus(lf).mean() + _softplus(-lr).mean(), rtol=1e-6
    )
    np.testing.assert_allclose(gan(lf), _softplus(-lf).mean(), rtol=1e-6)


def test_discriminator_optimum_is_log_ratio():
    # The population loss at l = log p/q equals 2 log 2 - 2 JSD(P, Q) and is stationary:
    # shifting or scaling the logit increases it. p = N(0, 1), q = N(1, 0.7^2), by quadrature.
    mu, s = 1.0, 0.7

    def population_loss(scale, shift):
        def integrand(x):
            l = scale * (_log_normal(x, 0, 1) - _log_normal(x, mu, s)) + shift
            return np.exp(_log_normal(x, mu, s)) * _softplus(l) + np.exp(
                _log_normal(x, 0, 1)
            ) * _softplus(-l)

        return integrate.quad(integrand, -12, 12, epsabs=1e-12, limit=200)[0]

    jsd = _exact_divergence("js", mu, s)
    np.testing.assert_allclose(population_loss(1.0, 0.0), 2 * np.log(2) - 2 * jsd, rtol=1e-8)
    best = population_loss(1.0, 0.0)
    for scale, shift in [(1.1, 0.0), (0.9, 0.0), (1.0, 0.1), (1.0, -0.1)]:
        assert population_loss(scale, shift) > best
    # The library loss on samples agrees with the quadrature (Monte Carlo).
    n = 200_000
    rng = np.random.default_rng(0)
    xp, xq = rng.normal(size=n), mu + s * rng.normal(size=n)
    lp = _log_normal(xp, 0, 1) - _log_normal(xp, mu, s)
    lq = _log_normal(xq, 0, 1) - _log_normal(xq, mu, s)
    np.testing.assert_allclose(float(distill.discriminator_loss(lp, lq)), best, atol=0.01)
