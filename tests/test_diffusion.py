"""Tests for fdiv.diffusion (docs/reference.md section 6)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import io_callback

from fdiv import diffusion

JIT = [False, True]


def _maybe_jit(fn, use_jit, **kw):
    return jax.jit(fn, **kw) if use_jit else fn


def _gaussian_denoiser(m, s):
    """Exact denoiser for data N(m, s^2 I): E[x | x + sigma eps] = m + s^2/(s^2+sigma^2)(x-m)."""

    def d(x, sigma):
        sig = sigma.reshape((-1,) + (1,) * (x.ndim - 1))
        return m + s**2 / (s**2 + sig**2) * (x - m)

    return d


def test_preconditioning_closed_forms():
    sigma = np.array([0.002, 0.1, 0.5, 1.0, 3.0, 80.0])
    sd = 0.5
    cs, co, ci, cn = diffusion.preconditioning(jnp.asarray(sigma), sd)
    np.testing.assert_allclose(cs, sd**2 / (sigma**2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(co, sigma * sd / np.sqrt(sigma**2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(ci, 1 / np.sqrt(sigma**2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(cn, np.log(sigma) / 4, rtol=1e-6, atol=1e-7)
    # EDM appendix B.6: c_out is the standard deviation of the effective training target.
    np.testing.assert_allclose(co**2, (1 - cs) ** 2 * sd**2 + cs**2 * sigma**2, rtol=1e-5)
    # c_in gives unit-variance network inputs.
    np.testing.assert_allclose(ci**2 * (sigma**2 + sd**2), 1.0, rtol=1e-6)


@pytest.mark.parametrize("use_jit", JIT)
def test_denoiser_wraps_raw_network(use_jit):
    # The raw network that makes D equal to a target denoiser is F = (D - c_skip x) / c_out
    # evaluated at x = x_in / c_in; recover sigma from c_noise = log(sigma)/4.
    sd, m, s = 0.7, 0.3, 0.9
    exact = _gaussian_denoiser(m, s)

    def net_fn(x_in, cn):
        sigma = jnp.exp(4 * cn)[:, None]
        x = x_in / diffusion.c_in(sigma, sd)
        return (exact(x, sigma[:, 0]) - diffusion.c_skip(sigma, sd) * x) / diffusion.c_out(
            sigma, sd
        )

    x = jax.random.normal(jax.random.PRNGKey(0), (5, 3))
    sigma = jnp.array([0.01, 0.3, 1.0, 5.0, 40.0])
    fn = _maybe_jit(lambda x, s: diffusion.denoiser(net_fn, x, s, sd), use_jit)
    np.testing.assert_allclose(fn(x, sigma), exact(x, sigma), rtol=1e-4, atol=1e-5)
    # A scalar sigma broadcasts over the batch.
    np.testing.assert_allclose(
        fn(x, jnp.float32(2.0)), exact(x, jnp.full((5,), 2.0)), rtol=1e-4, atol=1e-5
    )


def test_shape_errors_name_both_shapes():
    x = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match=r"\(4,\).*\(4, 2\).*\(3,\)"):
        diffusion.score_from_denoiser(x, x, jnp.ones((3,)))
    with pytest.raises(ValueError, match=r"\(4, 2\).*\(4, 3\)"):
        diffusion.score_from_denoiser(x, jnp.zeros((4, 3)), 1.0)
    with pytest.raises(ValueError, match="num_steps"):
        diffusion.karras_sigmas(0)
    with pytest.raises(ValueError, match="method"):
        diffusion.sample(lambda x, s: x, jax.random.PRNGKey(0), (2, 2), method="rk4")


@pytest.mark.parametrize("use_jit", JIT)
def test_score_denoiser_round_trip_and_tweedie(use_jit):
    # For data N(m, s^2), p_sigma = N(m, s^2 + sigma^2): the score is -(x - m)/(s^2 + sigma^2).
    m, s = -0.4, 1.3
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.PRNGKey(1), (6, 2), jnp.float64) * 3
        sigma = jnp.linspace(0.05, 10.0, 6)
        d = _gaussian_denoiser(m, s)(x, sigma)
        score_fn = _maybe_jit(diffusion.score_from_denoiser, use_jit)
        score = score_fn(d, x, sigma)
        assert score.dtype == jnp.float64
        np.testing.assert_allclose(score, -(x - m) / (s**2 + sigma[:, None] ** 2), rtol=1e-12)
        np.testing.assert_allclose(diffusion.denoiser_from_score(score, x, sigma), d, rtol=1e-12)


def test_karras_sigmas_formula():
    n, smin, smax, rho = 18, 0.002, 80.0, 7.0
    got = np.asarray(diffusion.karras_sigmas(n, smin, smax, rho))
    i = np.arange(n)
    want = (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    assert got.shape == (n + 1,)
    np.testing.assert_allclose(got[:-1], want, rtol=1e-5)
    assert got[-1] == 0.0
    np.testing.assert_allclose([got[0], got[-2]], [smax, smin], rtol=1e-5)
    assert np.all(np.diff(got) < 0)
    np.testing.assert_allclose(
        np.asarray(diffusion.karras_sigmas(1, smin, smax)), [smax, 0.0], rtol=1e-6
    )


@pytest.mark.parametrize("method,num_steps", [("heun", 18), ("heun", 1), ("heun", 4), ("euler", 5)])
def test_number_of_network_evaluations(method, num_steps):
    calls = []

    def count(x):
        calls.append(x.shape[0])
        return np.zeros((), np.int32)

    def d(x, sigma):
        io_callback(count, jax.ShapeDtypeStruct((), jnp.int32), x, ordered=True)
        return 0.5 * x

    fn = jax.jit(
        lambda key: diffusion.sample(
            d, key, (3, 2), num_steps=num_steps, sigma_max=5.0, method=method
        )
    )
    jax.block_until_ready(fn(jax.random.PRNGKey(0)))
    assert len(calls) == diffusion.num_evaluations(num_steps, method)
    assert diffusion.num_evaluations(18, "heun") == 35


@pytest.mark.parametrize("use_jit", JIT)
def test_heun_maps_noise_to_gaussian_exactly(use_jit):
    # With the exact denoiser of N(m, s^2) the probability-flow ODE is linear:
    #   x(sigma) = m + sqrt((s^2 + sigma^2) / (s^2 + sigma_max^2)) (x(sigma_max) - m),
    # so each sample's endpoint is known in closed form.
    m, s, smax = 1.5, 0.5, 80.0
    exact = _gaussian_denoiser(m, s)
    key = jax.random.PRNGKey(3)
    n = 2048

    def run(key, method, steps):
        return diffusion.sample(exact, key, (n, 2), num_steps=steps, sigma_max=smax, method=method)

    fn = _maybe_jit(run, use_jit, static_argnums=(1, 2))
    x_init = smax * jax.random.normal(key, (n, 2))
    want = m + np.sqrt(s**2 / (s**2 + smax**2)) * (np.asarray(x_init) - m)

    def err(method, steps):
        return np.max(np.abs(np.asarray(fn(key, method, steps)) - want)) / s

    # Converges to the exact map ...
    assert err("heun", 256) < 2e-3
    # ... at second order for Heun (halving the step divides the error by ~4) and first
    # order for Euler (~2).
    h18, h36 = err("heun", 18), err("heun", 36)
    e18, e36 = err("euler", 18), err("euler", 36)
    assert h36 / h18 < 0.3, (h18, h36)
    assert 0.4 < e36 / e18 < 0.6, (e18, e36)
    assert h18 < e18 / 2
    # The usual 35-evaluation sampler reaches N(m, s^2): the EDM steps at rho = 7 leave a ~5%
    # scale error on a Gaussian this narrow relative to sigma_max (checked against 1000 steps).
    got = np.asarray(fn(key, "heun", 18))
    np.testing.assert_allclose(got.mean(0), m, atol=4 * s / np.sqrt(n))
    np.testing.assert_allclose(got.std(0) / np.std(want, axis=0), 1.0, atol=0.08)


@pytest.mark.parametrize("use_jit", JIT)
def test_dsm_loss_of_exact_denoiser(use_jit):
    # For data N(m, s^2) the exact denoiser's error has variance s^2 sigma^2/(s^2+sigma^2),
    # which is exactly c_out^2 when sigma_data = s: the expected weighted loss is 1 at
    # every noise level.
    m, s = 0.2, 0.6
    key_x, key_l = jax.random.split(jax.random.PRNGKey(7))
    n = 20000
    x = m + s * jax.random.normal(key_x, (n, 2))
    exact = _gaussian_denoiser(m, s)

    def loss(a, b, key):
        # Perturbed family around the exact denoiser; (a, b) = (0, 0) is exact.
        def d(xn, sigma):
            sig = sigma[:, None]
            return m + b + (1 + a) * s**2 / (s**2 + sig**2) * (xn - m)

        return diffusion.dsm_loss(d, x, key, s, p_mean=-1.2, p_std=1.2)

    fn = _maybe_jit(loss, use_jit)
    l0 = float(fn(0.0, 0.0, key_l))
    assert abs(l0 - 1.0) < 0.03, l0
    # Same noise (common random numbers): every perturbation increases the loss.
    for a, b in [(0.1, 0.0), (-0.1, 0.0), (0.0, 0.1), (0.0, -0.1)]:
        assert float(fn(a, b, key_l)) > l0
    # Per-sample losses have the batch shape.
    sigma = jnp.full((n,), 0.3)
    per = diffusion.dsm_loss_per_sample(exact, x, sigma, jnp.zeros_like(x), s)
    assert per.shape == (n,)
