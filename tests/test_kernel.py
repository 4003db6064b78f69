"""Tests of fdiv.kernel: NumPy loops, unbiasedness, Gaussian closed forms, blockwise = dense."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fdiv import kernel


def _np_kernel(a, b, bandwidths):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    out = np.zeros((len(a), len(b)))
    for i in range(len(a)):
        for j in range(len(b)):
            sq = np.sum((a[i] - b[j]) ** 2)
            out[i, j] = sum(np.exp(-sq / (2 * s * s)) for s in bandwidths)
    return out


def _np_mmd2(x, y, bandwidths):
    kxx, kyy, kxy = (
        _np_kernel(x, x, bandwidths),
        _np_kernel(y, y, bandwidths),
        _np_kernel(x, y, bandwidths),
    )
    n, m = len(x), len(y)
    return (
        (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
        + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        - 2 * kxy.mean()
    )


def _np_cs(x, y, bandwidths):
    kxx, kyy, kxy = (
        _np_kernel(x, x, bandwidths),
        _np_kernel(y, y, bandwidths),
        _np_kernel(x, y, bandwidths),
    )
    n, m = len(x), len(y)
    return (
        np.log((kxx.sum() - np.trace(kxx)) / (n * (n - 1)))
        + np.log((kyy.sum() - np.trace(kyy)) / (m * (m - 1)))
        - 2 * np.log(kxy.mean())
    )


def _samples(seed, n=23, m=17, d=3):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(n, d)).astype(np.float32),
        (1.3 * rng.normal(size=(m, d)) + 0.4).astype(np.float32),
    )


@pytest.mark.parametrize("bandwidth", [1.0, [0.5, 2.0]])
def test_mmd2_and_cauchy_schwarz_equal_numpy_double_loop(bandwidth):
    x, y = _samples(0)
    bws = np.atleast_1d(bandwidth)
    np.testing.assert_allclose(
        float(kernel.mmd2(x, y, bandwidth=bandwidth)), _np_mmd2(x, y, bws), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
        float(kernel.cauchy_schwarz(x, y, bandwidth=bandwidth)),
        _np_cs(x, y, bws),
        rtol=1e-4,
        atol=1e-6,
    )


def test_blockwise_equals_dense():
    x, y = _samples(1, n=50, m=37)
    for fn in (kernel.mmd2, kernel.cauchy_schwarz):
        dense = fn(x, y, bandwidth=[0.7, 1.5], block_size=4096)
        for block in (1, 16):
            np.testing.assert_allclose(
                float(fn(x, y, bandwidth=[0.7, 1.5], block_size=block)),
                float(dense),
                rtol=1e-5,
                atol=2e-6,
            )
    np.testing.assert_allclose(
        float(kernel.median_bandwidth(x, y, block_size=7)),
        float(kernel.median_bandwidth(x, y)),
        rtol=1e-6,
    )


def test_median_bandwidth_equals_numpy_median():
    x, y = _samples(2, n=40, m=31)
    z = np.concatenate([x, y]).astype(np.float64)
    dist = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))[np.triu_indices(len(z), 1)]
    lower_median = np.sort(dist)[(len(dist) - 1) // 2]
    np.testing.assert_allclose(float(kernel.median_bandwidth(x, y)), lower_median, rtol=1e-5)


def test_mmd2_is_unbiased_for_identical_distributions():
    # 200 independent pairs of samples from the same distribution: mean within 3 SE of 0.
    keys = jax.random.split(jax.random.PRNGKey(0), 200)
    draw = jax.vmap(lambda k: jax.random.normal(k, (2, 20, 2)))(keys)
    values = np.asarray(
        jax.vmap(lambda s: kernel.mmd2(s[0], s[1], bandwidth=1.0))(draw), np.float64
    )
    se = values.std(ddof=1) / np.sqrt(len(values))
    assert abs(values.mean()) < 3 * se
    # The biased V-statistic (self pairs kept) is clearly positive on the same draws.
    assert values.mean() + 2.0 / 20 > 10 * se


def test_mmd2_matches_gaussian_closed_form():
    mean_q, var_q = np.array([0.5, 0.0]), 1.5
    keys = jax.random.split(jax.random.PRNGKey(1), 40)

    def one(k):
        kp, kq = jax.random.split(k)
        xp = jax.random.normal(kp, (200, 2))
        xq = mean_q + np.sqrt(var_q) * jax.random.normal(kq, (200, 2))
        return kernel.mmd2(xp, xq, bandwidth=1.0)

    values = np.asarray(jax.vmap(one)(keys), np.float64)
    truth = float(
        kernel.gaussian_mmd2(np.zeros(2), np.eye(2), mean_q, var_q * np.eye(2), bandwidth=1.0)
    )
    se = values.std(ddof=1) / np.sqrt(len(values))
    assert abs(values.mean() - truth) < 3.5 * se, (values.mean(), truth, se)


def test_cauchy_schwarz_converges_to_gaussian_closed_form():
    mean_q, var_q, s = np.array([0.7]), 2.0, 0.8
    truth = float(
        kernel.gaussian_cauchy_schwarz(
            np.zeros(1), np.eye(1), mean_q, var_q * np.eye(1), bandwidth=s
        )
    )
    errors = []
    for n in (100, 1600):

        def one(k, n=n):
            kp, kq = jax.random.split(k)
            xp = jax.random.normal(kp, (n, 1))
            xq = mean_q + np.sqrt(var_q) * jax.random.normal(kq, (n, 1))
            return kernel.cauchy_schwarz(xp, xq, bandwidth=s, block_size=512)

        values = np.asarray(jax.lax.map(one, jax.random.split(jax.random.PRNGKey(n), 8)))
        errors.append(abs(values.mean() - truth))
        se = values.std(ddof=1) / np.sqrt(len(values))
    # O(n^-1/2) fluctuations: the error shrinks with n, and at n = 1600 the mean of 8 runs is
    # within 5 (noisily estimated) SE and 0.025 of the closed form 0.1739.
    assert errors[-1] < errors[0], errors
    assert errors[-1] < 5 * se and errors[-1] < 0.025, (errors, truth, se)


def test_cauchy_schwarz_log_space_when_kernels_underflow():
    x = np.zeros((5, 1), np.float32)
    y = np.full((5, 1), 30.0, np.float32) + np.arange(5, dtype=np.float32)[:, None] * 0.01
    x = x + np.arange(5, dtype=np.float32)[:, None] * 0.01
    # exp(-900 / 0.5) underflows; the log-space value is the exact 2 * 900 / (2 * 0.25) scale.
    value = float(kernel.cauchy_schwarz(x, y, bandwidth=0.5))
    assert np.isfinite(value) and value > 3000


def test_jit_grad_vmap_bfloat16():
    x, y = _samples(3)
    f = lambda a: kernel.mmd2(a, y, bandwidth=1.0)
    np.testing.assert_allclose(float(jax.jit(f)(x)), float(f(x)), rtol=1e-6)
    g = jax.grad(f)(x)
    h, e = 1e-2, np.zeros_like(x)
    e[0, 0] = h
    fd = (float(f(x + e)) - float(f(x - e))) / (2 * h)
    np.testing.assert_allclose(float(g[0, 0]), fd, rtol=1e-2, atol=1e-5)
    gb = jax.grad(lambda s: kernel.cauchy_schwarz(x, y, bandwidth=s))(1.0)
    assert np.isfinite(float(gb))
    stacked = jax.vmap(lambda a: kernel.cauchy_schwarz(a, y, bandwidth=1.0))(jnp.stack([x, x + 1]))
    np.testing.assert_allclose(
        float(stacked[0]), float(kernel.cauchy_schwarz(x, y, bandwidth=1.0)), rtol=1e-5
    )
    xb = jnp.asarray(x, jnp.bfloat16)
    vb = kernel.mmd2(xb, y, bandwidth=1.0)
    assert vb.dtype == jnp.float32
    np.testing.assert_allclose(
        float(vb), _np_mmd2(np.asarray(xb, np.float32), y, [1.0]), rtol=1e-4, atol=1e-6
    )


def test_bad_input():
    x, y = _samples(4)
    with pytest.raises(ValueError, match="bandwidth"):
        kernel.mmd2(x, y, bandwidth=0.0)
    with pytest.raises(ValueError, match="bandwidth"):
        kernel.cauchy_schwarz(x, y, bandwidth=[1.0, -1.0])
    with pytest.raises(ValueError, match="at least 2"):
        kernel.mmd2(x[:1], y, bandwidth=1.0)
    with pytest.raises(ValueError, match="at least 2"):
        kernel.mmd2(x[:0], y, bandwidth=1.0)
    with pytest.raises(ValueError, match="same feature dimension"):
        kernel.cauchy_schwarz(x, y[:, :2], bandwidth=1.0)
    with pytest.raises(ValueError, match="non-finite"):
        kernel.mmd2(np.where(x > 1, np.nan, x), y, bandwidth=1.0)
    with pytest.raises(ValueError, match="same feature dimension"):
        kernel.median_bandwidth(x, y[:, :1])
