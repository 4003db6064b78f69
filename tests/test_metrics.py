"""Tests for fdiv.metrics (docs/reference.md section 8)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from fdiv import metrics

JIT = [False, True]

_ANG = 2 * np.pi * np.arange(8) / 8
RING_CENTERS = np.stack([2 * np.cos(_ANG), 2 * np.sin(_ANG)], 1)
RING_WEIGHTS = np.array([4, 1, 3, 1, 4, 2, 1, 2], float) / 18
RING_STD = 0.08


def _fn(f, use_jit, **kw):
    return jax.jit(f, **kw) if use_jit else f


@pytest.mark.parametrize("use_jit", JIT)
def test_mixture_metrics_known_counts(use_jit):
    n = 3600
    counts = (RING_WEIGHTS * n).astype(int)  # exactly proportional: 800, 200, 600, ...
    offsets = np.array([[0.5, -0.5]]) * RING_STD  # within 3 std of the centre
    pts = [np.repeat(RING_CENTERS[k : k + 1] + offsets, c, axis=0) for k, c in enumerate(counts)]
    x = np.concatenate(pts)
    fn = _fn(
        lambda x: metrics.mixture_metrics(x, RING_CENTERS, RING_WEIGHTS * 18, RING_STD), use_jit
    )
    m = fn(jnp.asarray(x, jnp.float32))
    assert float(m["precision"]) == 1.0
    assert int(m["modes_recovered"]) == 8
    np.testing.assert_allclose(m["weight_error"], 0.0, atol=1e-6)
    np.testing.assert_allclose(m["mode_recall"], 1.0, rtol=1e-6)

    # Move mode 0's samples to the origin (far from every centre) and 10% of mode 2's to
    # 3.5 std from its centre: precision drops by exactly those counts, mode 0 is lost and
    # the weights among near samples are renormalised.
    y = x.copy()
    y[: counts[0]] = 0.0
    start2 = counts[:2].sum()
    moved = counts[2] // 10
    y[start2 : start2 + moved] = RING_CENTERS[2] + np.array([3.5 * RING_STD, 0.0])
    m = fn(jnp.asarray(y, jnp.float32))
    near = counts.copy()
    near[0] = 0
    near[2] -= moved
    np.testing.assert_allclose(m["precision"], near.sum() / n, rtol=1e-6)
    assert int(m["modes_recovered"]) == 7 and not bool(m["recovered"][0])
    freqs = near / near.sum()
    np.testing.assert_allclose(m["weight_error"], np.abs(freqs - RING_WEIGHTS).sum(), rtol=1e-5)

    # The 20% threshold: a mode with 19% of its expected share is not recovered, 21% is.
    for share, ok in [(0.19, False), (0.21, True)]:
        z = x.copy()
        keep = int(share * counts[1])
        start1 = counts[0]
        z[start1 + keep : start1 + counts[1]] = RING_CENTERS[0]
        assert bool(fn(jnp.asarray(z, jnp.float32))["recovered"][1]) == ok


def test_mixture_metrics_of_true_samples():
    rng = np.random.default_rng(0)
    n = 4000
    idx = rng.choice(8, size=n, p=RING_WEIGHTS)
    x = RING_CENTERS[idx] + RING_STD * rng.normal(size=(n, 2))
    m = metrics.mixture_metrics(x, RING_CENTERS, RING_WEIGHTS, RING_STD)
    # P(|N(0, I_2)| <= 3) = 1 - exp(-9/2) = 0.98889 (chi distribution with 2 dof).
    np.testing.assert_allclose(m["precision"], 1 - np.exp(-4.5), atol=4 * np.sqrt(0.011 / n))
    assert int(m["modes_recovered"]) == 8
    assert float(m["weight_error"]) < 0.1
    with pytest.raises(ValueError, match=r"\(8,\).*\(8, 2\).*\(7,\)"):
        metrics.mixture_metrics(x, RING_CENTERS, RING_WEIGHTS[:7], RING_STD)


@pytest.mark.parametrize("use_jit", JIT)
def test_energy_distance(use_jit):
    fn = _fn(metrics.energy_distance, use_jit, static_argnames="unbiased")
    rng = np.random.default_rng(1)
    u, v = rng.normal(size=300), 0.5 + 1.5 * rng.normal(size=200)
    with jax.enable_x64(True):
        # V-statistic version: scipy.stats.energy_distance is its square root in 1-D.
        got = fn(u[:, None], v[:, None], unbiased=False)
        np.testing.assert_allclose(np.sqrt(got), scipy.stats.energy_distance(u, v), rtol=1e-10)
        # Two point masses a distance 3 apart: 2 * 3 - 0 - 0.
        a, b = np.zeros((5, 2)), np.tile([[3.0, 0.0]], (4, 1))
        np.testing.assert_allclose(fn(a, b), 6.0, rtol=1e-12)

    # Population value for 1-D Gaussians N(0,1) vs N(mu, s^2): E|X - Y| with X - Y ~ N(m, t^2)
    # is t sqrt(2/pi) exp(-m^2/2t^2) + m (1 - 2 Phi(-m/t)).
    def e_abs(m, t):
        return t * np.sqrt(2 / np.pi) * np.exp(-(m**2) / (2 * t**2)) + m * (
            1 - 2 * scipy.stats.norm.cdf(-m / t)
        )

    mu, s, n = 0.8, 1.5, 2000
    want = 2 * e_abs(mu, np.sqrt(1 + s**2)) - e_abs(0, np.sqrt(2)) - e_abs(0, np.sqrt(2) * s)
    x = rng.normal(size=(n, 1))
    y = mu + s * rng.normal(size=(n, 1))
    np.testing.assert_allclose(
        fn(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)), want, atol=0.03
    )


@pytest.mark.parametrize("use_jit", JIT)
def test_energy_distance_blocked_matches_direct_sums(use_jit):
    fn = _fn(metrics.energy_distance, use_jit, static_argnames=("unbiased", "block_size"))
    rng = np.random.default_rng(3)
    # Sizes that are not multiples of the block: padded rows must not count.
    x, y = rng.normal(size=(1037, 2)), 0.2 + rng.normal(size=(731, 2))
    d = lambda a, b: np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))  # noqa: E731
    n, m = len(x), len(y)
    want_u = 2 * d(x, y).mean() - d(x, x).sum() / (n * (n - 1)) - d(y, y).sum() / (m * (m - 1))
    want_v = 2 * d(x, y).mean() - d(x, x).mean() - d(y, y).mean()
    with jax.enable_x64(True):
        for block in (64, 500, 4096):
            np.testing.assert_allclose(fn(x, y, block_size=block), want_u, rtol=1e-10)
            np.testing.assert_allclose(
                fn(x, y, unbiased=False, block_size=block), want_v, rtol=1e-10
            )
    # float32 sums over 4e6 pairs stay accurate to the size of the estimate's sampling noise.
    big = fn(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), block_size=128)
    np.testing.assert_allclose(big, want_u, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(1037, 2\).*\(731, 3\)"):
        metrics.energy_distance(x, rng.normal(size=(731, 3)))
    with pytest.raises(ValueError, match="at least 2 samples"):
        metrics.energy_distance(x[:1], y)


@pytest.mark.parametrize("use_jit", JIT)
def test_mmd2(use_jit):
    fn = _fn(metrics.mmd2, use_jit)
    rng = np.random.default_rng(2)
    n, l = 2000, 1.0

    # E k(X, Y) for X ~ N(a, s1^2), Y ~ N(b, s2^2), k = exp(-(x-y)^2 / 2 l^2) in 1-D.
    def ek(a, s1, b, s2):
        v = l**2 + s1**2 + s2**2
        return l / np.sqrt(v) * np.exp(-((a - b) ** 2) / (2 * v))

    want = ek(0, 1, 0, 1) + ek(1, 0.5, 1, 0.5) - 2 * ek(0, 1, 1, 0.5)
    x, y = rng.normal(size=(n, 1)), 1 + 0.5 * rng.normal(size=(n, 1))
    # Standard deviation of the estimate at n = 2000 is 0.016 (measured over 20 repeats).
    np.testing.assert_allclose(
        fn(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), l), want, atol=0.065
    )
    # Same distribution: unbiased estimate is centred at 0.
    x2 = rng.normal(size=(n, 1))
    assert abs(float(fn(jnp.asarray(x, jnp.float32), jnp.asarray(x2, jnp.float32), l))) < 0.005
    # A sum of kernels is the sum of MMDs.
    bw = (0.5, 2.0)
    np.testing.assert_allclose(fn(x, y, bw), fn(x, y, bw[0]) + fn(x, y, bw[1]), rtol=1e-5)


@pytest.mark.parametrize("use_jit", JIT)
def test_frechet_distance(use_jit):
    fn = _fn(metrics.frechet_distance, use_jit)
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        # Diagonal covariances: sum (sqrt a - sqrt b)^2 + |mu1 - mu2|^2.
        a, b = rng.uniform(0.1, 2, 4), rng.uniform(0.1, 2, 4)
        mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
        want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
        np.testing.assert_allclose(fn(mu1, np.diag(a), mu2, np.diag(b)), want, rtol=1e-10)
        # General (non-commuting) covariances against scipy's sqrtm of C1 C2.
        m1, m2 = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
        c1, c2 = m1 @ m1.T + 0.1 * np.eye(6), m2 @ m2.T
        cross = np.real(np.trace(scipy.linalg.sqrtm(c1 @ c2)))
        want = np.trace(c1) + np.trace(c2) - 2 * cross
        np.testing.assert_allclose(fn(np.zeros(6), c1, np.zeros(6), c2), want, rtol=1e-8)
        # Same Gaussian: 0; symmetric in its arguments.
        np.testing.assert_allclose(fn(mu1[:2], c1[:2, :2], mu1[:2], c1[:2, :2]), 0.0, atol=1e-10)
        np.testing.assert_allclose(
            fn(mu2[:3], c2[:3, :3], mu1[:3], c1[:3, :3]),
            fn(mu1[:3], c1[:3, :3], mu2[:3], c2[:3, :3]),
            rtol=1e-8,
        )
        # From features: the Gaussian fit uses the unbiased covariance.
        f1, f2 = rng.normal(size=(50, 3)), rng.normal(size=(40, 3)) * 2 + 1
        got = metrics.frechet_distance_from_features(f1, f2)
        want = metrics.frechet_distance(f1.mean(0), np.cov(f1.T), f2.mean(0), np.cov(f2.T))
        np.testing.assert_allclose(got, want, rtol=1e-10)
    with pytest.raises(ValueError, match="cov2"):
        metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(3))


@pytest.mark.parametrize("use_jit", JIT)
def test_knn_precision_recall(use_jit):
    fn = _fn(metrics.knn_precision_recall, use_jit, static_argnames="k")
    # Real samples: 10 points on a line with spacing 1, so every 3-NN radius is known.
    real = np.stack([np.arange(10.0), np.zeros(10)], 1)
    # Identical sets: everything inside.
    r = fn(real, real, k=3)
    assert float(r["precision"]) == 1.0 and float(r["recall"]) == 1.0
    # Fake: half on the real points, half far away (outside every real ball).
    fake = np.concatenate([real[:5], real[:5] + np.array([0.0, 100.0])])
    r = fn(real, fake, k=3)
    assert float(r["precision"]) == 0.5
    # Recall: the five fake points near the origin, with 3-NN radius 3 among fakes on the
    # line (their nearest fakes on the line are 1, 2, 3 apart; far ones are 100 away), cover
    # real points within distance 3 of some fake ball: x = 0..4 plus those within each
    # point's own radius: point 4's radius is 3 -> reaches 7.
    radii = np.array([3, 2, 2, 2, 3], float)  # 3rd-NN distance among {0,...,4}
    covered = [any(abs(x - c) <= rc for c, rc in zip(range(5), radii)) for x in range(10)]
    np.testing.assert_allclose(r["recall"], np.mean(covered))
    with pytest.raises(ValueError, match="k = 3"):
        metrics.knn_precision_recall(real[:3], real, k=3)
