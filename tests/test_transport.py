"""Tests of fdiv.transport: ott-jax agreement, identities, gradients, SinKD vs the authors' code."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ott.geometry import pointcloud
from ott.tools import sinkhorn_divergence as ott_sd

from fdiv import transport


def _authors_sinkd(teacher, student, temperature=2.0, epsilon=0.1, n_iters=20):
    """NumPy float64 transcription of SinKD's released ``sinkhorn_loss`` (github 2018cx/SinKD)."""

    def softmax(z):
        z = z / temperature
        z = z - z.max(-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(-1, keepdims=True)

    p_s, p_t = softmax(np.asarray(student, np.float64)), softmax(np.asarray(teacher, np.float64))
    wxy = np.abs(p_s[:, None, :] - p_t[None, :, :]).sum(-1)  # torch.cdist(p_s, p_t, p=1)
    plan = np.exp(-wxy / epsilon)
    for _ in range(n_iters):
        plan = plan / plan.sum(1, keepdims=True)
        plan = plan / plan.sum(0, keepdims=True)
    return (plan * wxy).sum()


def _logits(seed, batch=8, classes=5, scale=2.0):
    rng = np.random.default_rng(seed)
    return (
        (rng.normal(size=(batch, classes)) * scale).astype(np.float32),
        (rng.normal(size=(batch, classes)) * scale).astype(np.float32),
    )


@pytest.mark.parametrize("num_iters", [1, 3, 20])
@pytest.mark.parametrize("temperature,epsilon", [(2.0, 0.1), (1.0, 0.5)])
def test_sinkd_equals_authors_algorithm(num_iters, temperature, epsilon):
    t, s = _logits(num_iters)
    ref = _authors_sinkd(t, s, temperature, epsilon, num_iters)
    got = transport.sinkd(t, s, temperature=temperature, epsilon=epsilon, num_iters=num_iters)
    jitted = jax.jit(
        lambda a, b: transport.sinkd(
            a, b, temperature=temperature, epsilon=epsilon, num_iters=num_iters
        )
    )(t, s)
    np.testing.assert_allclose(float(got), ref, rtol=2e-6)
    np.testing.assert_allclose(float(jitted), ref, rtol=2e-6)


def test_sinkd_gradient_matches_finite_differences_of_authors_code():
    t, s = _logits(1, batch=6, classes=4)
    grad = np.asarray(jax.grad(lambda z: transport.sinkd(t, z))(s))
    s64, h = s.astype(np.float64), 1e-4
    fd = np.zeros_like(s64)
    for i in range(s.shape[0]):
        for j in range(s.shape[1]):
            e = np.zeros_like(s64)
            e[i, j] = h
            fd[i, j] = (_authors_sinkd(t, s64 + e) - _authors_sinkd(t, s64 - e)) / (2 * h)
    np.testing.assert_allclose(grad, fd, atol=2e-5)


def test_sinkd_bfloat16_and_vmap():
    t, s = _logits(2)
    ref = _authors_sinkd(t, s)
    tb, sb = jnp.asarray(t, jnp.bfloat16), jnp.asarray(s, jnp.bfloat16)
    got = transport.sinkd(tb, sb)
    assert got.dtype == jnp.float32
    # bf16 rounding of the logits (rel. 4e-3) is the only difference.
    np.testing.assert_allclose(
        float(got),
        _authors_sinkd(np.asarray(tb, np.float32), np.asarray(sb, np.float32)),
        rtol=2e-6,
    )
    assert abs(float(got) - ref) < 0.05 * ref
    batched = jax.vmap(transport.sinkd)(jnp.stack([t, s]), jnp.stack([s, t]))
    np.testing.assert_allclose(np.asarray(batched), [ref, _authors_sinkd(s, t)], rtol=2e-6)


def test_sinkd_bad_input():
    t, s = _logits(0)
    with pytest.raises(ValueError, match="epsilon"):
        transport.sinkd(t, s, epsilon=0.0)
    with pytest.raises(ValueError, match="temperature"):
        transport.sinkd(t, s, temperature=-1.0)
    with pytest.raises(ValueError, match="num_iters"):
        transport.sinkd(t, s, num_iters=0)
    with pytest.raises(ValueError, match="same shape"):
        transport.sinkd(t, s[:, :3])
    with pytest.raises(ValueError, match="non-finite"):
        transport.sinkd(t, np.where(s > 1, np.nan, s))


def _clouds(seed, n=40, d=2, shift=1.0):
    # One shape for every Sinkhorn-divergence test: each new shape compiles ott-jax's loops.
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(n, d)).astype(np.float32),
        (rng.normal(size=(n, d)) + shift).astype(np.float32),
    )


@jax.jit
def _ott_reference(x, y, a, b):
    value, _ = ott_sd.sinkhorn_divergence(pointcloud.PointCloud, x, y, epsilon=0.1, a=a, b=b)
    return value


def test_sinkhorn_divergence_identities_and_ott_agreement():
    x, y = _clouds(0)
    same = transport.sinkhorn_divergence(x, x, epsilon=0.1)
    diff = transport.sinkhorn_divergence(x, y, epsilon=0.1)
    assert abs(float(same)) < 1e-4
    assert float(diff) > 0.5  # the clouds differ by a mean shift of sqrt(2)
    w = np.random.default_rng(0).random(len(x)).astype(np.float32)
    uniform = np.full(len(y), 1.0 / len(y), np.float32)
    np.testing.assert_allclose(
        float(diff), float(_ott_reference(x, y, uniform, uniform)), rtol=1e-6
    )
    weighted = transport.sinkhorn_divergence(x, y, epsilon=0.1, weights_p=3.0 * w)
    np.testing.assert_allclose(
        float(weighted), float(_ott_reference(x, y, w / w.sum(), uniform)), rtol=1e-5
    )
    # Translating both clouds leaves every transport cost unchanged.
    np.testing.assert_allclose(
        float(transport.sinkhorn_divergence(x + 3.0, y + 3.0, epsilon=0.1)), float(diff), rtol=1e-3
    )


def test_sinkhorn_divergence_gradients_jit_bfloat16():
    x, y = _clouds(2)
    fn = lambda a: transport.sinkhorn_divergence(a, y, epsilon=0.1)
    g = jax.grad(fn)(x)
    assert np.all(np.isfinite(np.asarray(g)))
    # Moving P towards Q along -grad lowers the divergence.
    assert float(fn(x - 0.5 * g)) < float(fn(x))
    np.testing.assert_allclose(float(jax.jit(fn)(x)), float(fn(x)), rtol=1e-5)
    xb = jnp.asarray(x, jnp.bfloat16)
    vb = transport.sinkhorn_divergence(xb, y, epsilon=0.1)
    assert vb.dtype == jnp.float32
    np.testing.assert_allclose(float(vb), float(fn(np.asarray(xb, np.float32))), rtol=1e-5)


def test_histogram_sinkhorn_divergence():
    rng = np.random.default_rng(3)
    a, b = rng.random(7), rng.random(7)
    support = np.arange(7.0)
    cost = np.abs(support[:, None] - support[None, :]).astype(np.float32)
    assert abs(float(transport.histogram_sinkhorn_divergence(a, a, cost, epsilon=0.05))) < 1e-4
    value = transport.histogram_sinkhorn_divergence(a, b, cost, epsilon=0.05)
    # A point cloud on the support with the histogram as weights is the same problem
    # (euclidean cost on the line is |i - j|).
    ref = transport.sinkhorn_divergence(
        support[:, None].astype(np.float32),
        support[:, None].astype(np.float32),
        epsilon=0.05,
        weights_p=a,
        weights_q=b,
        cost="euclidean",
    )
    np.testing.assert_allclose(float(value), float(ref), rtol=1e-4)
    assert float(value) > 0
    g = jax.grad(lambda h: transport.histogram_sinkhorn_divergence(h, b, cost, epsilon=0.05))(
        jnp.asarray(a / a.sum(), jnp.float32)
    )
    assert np.all(np.isfinite(np.asarray(g)))


def test_sinkhorn_divergence_bad_input():
    x, y = _clouds(0)
    with pytest.raises(ValueError, match="epsilon"):
        transport.sinkhorn_divergence(x, y, epsilon=0.0)
    with pytest.raises(ValueError, match="empty"):
        transport.sinkhorn_divergence(x[:0], y, epsilon=0.1)
    with pytest.raises(ValueError, match="same dimension"):
        transport.sinkhorn_divergence(x, y[:, :1], epsilon=0.1)
    with pytest.raises(ValueError, match="non-finite"):
        transport.sinkhorn_divergence(np.where(x > 1, np.inf, x), y, epsilon=0.1)
    with pytest.raises(ValueError, match="cost"):
        transport.sinkhorn_divergence(x, y, epsilon=0.1, cost="l1")
    with pytest.raises(ValueError, match="weights_p"):
        transport.sinkhorn_divergence(x, y, epsilon=0.1, weights_p=-np.ones(len(x)))
