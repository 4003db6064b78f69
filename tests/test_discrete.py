"""Tests for fdiv.discrete: docs/reference.md section 2 values, an independent reference, gradients, masks."""

import functools

import _reference
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.spatial.distance
import scipy.special

from benchmarks import repro_jaxlib_0_10_2_reduce
from fdiv import discrete
from fdiv.divergences import get, names

P_SPEC = np.array([0.2, 0.5, 0.3])
Q_SPEC = np.array([0.1, 0.6, 0.3])

# docs/reference.md section 2 (nats), P target, Q model.
SPEC_F_TABLE = [
    (("forward_kl", {}), 0.0474687),
    (("reverse_kl", {}), 0.0400782),
    (("js", {}), 0.0107708),
    (("squared_hellinger", {}), 0.0108561),
    (("total_variation", {}), 0.1),
    (("pearson", {}), 0.1166667),
    (("neyman", {}), 0.07),
    (("jeffreys", {}), 0.0875469),
    (("softened_reverse_kl", {}), 0.0185366),
    (("alpha", {"alpha": 2.0}), 0.0583333),
    (("alpha", {"alpha": 0.5}), 0.0434243),
    (("alpha", {"alpha": -1.0}), 0.035),
    (("alpha", {"alpha": 3.0}), 0.0745370),
]
SPEC_NON_F_TABLE = [
    ("skew_kl", {"alpha": 0.1}, 0.0368102),
    ("skew_reverse_kl", {"alpha": 0.1}, 0.0333260),
    ("generalized_jsd", {"beta": 0.1}, 0.0041789),
    ("generalized_jsd", {"beta": 0.5}, 0.0107708),
    ("generalized_jsd", {"beta": 0.9}, 0.0036542),
    ("cauchy_schwarz", {}, 0.0390834),
]
ALL_F = (
    [(name, {}) for name in names() if name not in ("alpha", "t_power")]
    + [("alpha", {"alpha": a}) for a in (2.0, 0.5, -1.0, 3.0, 0.25)]
    + [("t_power", {"t": t}) for t in (2.0, 0.5, -0.5)]
)
ALL_F_IDS = [n + "".join(f"_{v}" for v in kw.values()) for n, kw in ALL_F]


# Independent reference: tests/_reference.py (the definitions in np.longdouble, in log
# space, shared with the other divergence tests and the fuzz grid).
_ref_divergence = _reference.divergence
_ref_non_f = _reference.non_f


def _non_f_fn(name):
    return getattr(discrete, name)


@functools.partial(jax.jit, static_argnums=(2,), static_argnames=("temperature",))
def _jit_divergence(target_logits, model_logits, divergence, temperature=1.0):
    # One compiled function per (divergence, shapes, dtype), shared by the tests below: eager
    # dispatch of the same float64 computations took most of their time.
    return discrete.categorical_divergence(
        target_logits, model_logits, divergence, temperature=temperature
    )


def _random_logits(seed, shape, spread, *, neg_inf_fraction=0.0):
    rng = np.random.default_rng(seed)
    t = spread * rng.standard_normal(shape)
    m = spread * rng.standard_normal(shape)
    if neg_inf_fraction:
        for x in (t, m):
            x[rng.random(shape) < neg_inf_fraction] = -np.inf
            x[..., 0] = np.where(np.isneginf(x[..., 0]), 0.0, x[..., 0])
    return t, m


# ---------------------------------------------------------------------------
# docs/reference.md section 2 test vectors.
# ---------------------------------------------------------------------------


def _spec_values(target_logits, model_logits):
    f_values = [
        discrete.categorical_divergence(target_logits, model_logits, get(name, **params))
        for (name, params), _ in SPEC_F_TABLE
    ]
    non_f_values = [
        _non_f_fn(name)(target_logits, model_logits, **params)
        for name, params, _ in SPEC_NON_F_TABLE
    ]
    return f_values, non_f_values


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-6), ("float32", 1e-5)])
def test_spec_table(dtype, rtol):
    fn = _spec_values  # jit and no jit: JitVariantsTest.test_spec_values
    with jax.enable_x64(dtype == "float64"):
        t = jnp.log(jnp.asarray(P_SPEC, dtype))
        m = jnp.log(jnp.asarray(Q_SPEC, dtype))
        f_values, non_f_values = fn(t, m)
        for ((name, params), expected), got in zip(SPEC_F_TABLE, f_values):
            assert got.dtype == jnp.dtype(dtype)
            # The table prints 6-7 digits: compare to its precision, and the
            # float64 reference to the requested tolerance.
            np.testing.assert_allclose(
                float(got), expected, rtol=1e-5, atol=5e-8, err_msg=f"{name} {params}"
            )
            ref = _ref_divergence(name, params, np.log(P_SPEC), np.log(Q_SPEC))
            np.testing.assert_allclose(float(got), ref, rtol=rtol, err_msg=name)
        for (name, params, expected), got in zip(SPEC_NON_F_TABLE, non_f_values):
            assert got.dtype == jnp.dtype(dtype)
            np.testing.assert_allclose(
                float(got), expected, rtol=1e-5, atol=5e-8, err_msg=f"{name} {params}"
            )
            ref = _ref_non_f(name, params, np.log(P_SPEC), np.log(Q_SPEC))
            np.testing.assert_allclose(float(got), ref, rtol=rtol, err_msg=name)


# ---------------------------------------------------------------------------
# Agreement with the independent reference on many random distributions.
# ---------------------------------------------------------------------------

# Cases are padded to a common class count with -inf logits in both P and Q
# (p = q = 0 contributes exactly 0), so each batch is one array shape and
# eager dispatch compiles each primitive once.
REGULAR_CASES = {
    # name: (rows, classes, logit spread, fraction of -inf logits)
    "small": (24, 3, 2.0, 0.0),
    "medium": (16, 257, 3.0, 0.0),
    "zeros": (24, 9, 2.0, 0.3),
}
PEAKED_CASES = {
    "peaked": (32, 6, 1e3, 0.0),
    "peaked_zeros": (32, 9, 1e3, 0.3),
}
VOCAB = 50_000


def _padded_batch(cases, seed, width=257):
    targets, models = [], []
    for i, (rows, classes, spread, frac) in enumerate(cases.values()):
        t, m = _random_logits(seed + i, (rows, classes), spread, neg_inf_fraction=frac)
        pad = np.full((rows, width - classes), -np.inf)
        targets.append(np.concatenate([t, pad], -1))
        models.append(np.concatenate([m, pad], -1))
    return np.concatenate(targets), np.concatenate(models)


@pytest.fixture(scope="module")
def regular_inputs():
    return [_padded_batch(REGULAR_CASES, 0), _random_logits(9, (2, VOCAB), 4.0)]


@pytest.fixture(scope="module")
def peaked_inputs():
    return _padded_batch(PEAKED_CASES, 20)


def _assert_matches_reference(fn, ref_fn, inputs, tag):
    with jax.enable_x64(True):
        for t, m in inputs:
            got = np.asarray(fn(t, m))
            np.testing.assert_allclose(got, ref_fn(t, m), rtol=1e-9, atol=1e-12, err_msg=tag)


@pytest.mark.parametrize("name,params", ALL_F, ids=ALL_F_IDS)
def test_matches_reference(name, params, regular_inputs):
    d = get(name, **params)
    _assert_matches_reference(
        lambda t, m: discrete.categorical_divergence(t, m, d),
        lambda t, m: _ref_divergence(name, params, t, m),
        regular_inputs,
        name,
    )


@pytest.mark.parametrize("name,params", ALL_F, ids=ALL_F_IDS)
def test_matches_reference_peaked(name, params, peaked_inputs):
    # Power-growth members included: q f(p/q) is computed in log space where f(p/q) overflows.
    d = get(name, **params)
    _assert_matches_reference(
        lambda t, m: discrete.categorical_divergence(t, m, d),
        lambda t, m: _ref_divergence(name, params, t, m),
        [peaked_inputs],
        name,
    )


NON_F_CASES = [(n, p) for n, p, _ in SPEC_NON_F_TABLE] + [
    ("skew_kl", {"alpha": 0.0}),
    ("skew_reverse_kl", {"alpha": 1.0}),
]
NON_F_IDS = [n + "".join(f"_{v}" for v in kw.values()) for n, kw in NON_F_CASES]


@pytest.mark.parametrize("name,params", NON_F_CASES, ids=NON_F_IDS)
def test_non_f_matches_reference(name, params, regular_inputs):
    _assert_matches_reference(
        lambda t, m: _non_f_fn(name)(t, m, **params),
        lambda t, m: _ref_non_f(name, params, t, m),
        regular_inputs,
        name,
    )


@pytest.mark.parametrize(
    "name,params", [pytest.param(n, p, id=i) for (n, p), i in zip(NON_F_CASES, NON_F_IDS)]
)
def test_non_f_matches_reference_peaked(name, params, peaked_inputs):
    _assert_matches_reference(
        lambda t, m: _non_f_fn(name)(t, m, **params),
        lambda t, m: _ref_non_f(name, params, t, m),
        [peaked_inputs],
        name,
    )


def test_matches_scipy():
    t, m = _random_logits(11, (20, 12), 2.0, neg_inf_fraction=0.2)
    p = scipy.special.softmax(t, axis=-1)
    q = scipy.special.softmax(m, axis=-1)
    kl = scipy.special.rel_entr(p, q).sum(-1)
    rkl = scipy.special.rel_entr(q, p).sum(-1)
    jsd = scipy.spatial.distance.jensenshannon(p, q, axis=-1) ** 2
    with jax.enable_x64(True):
        cd = functools.partial(discrete.categorical_divergence, t, m)
        np.testing.assert_allclose(cd("forward_kl"), kl, rtol=1e-10)
        np.testing.assert_allclose(cd("reverse_kl"), rkl, rtol=1e-10)
        np.testing.assert_allclose(cd("js"), jsd, rtol=1e-9, atol=1e-14)
        np.testing.assert_allclose(
            discrete.generalized_jsd(t, m, beta=0.5), jsd, rtol=1e-9, atol=1e-14
        )
        np.testing.assert_allclose(cd("jeffreys"), kl + rkl, rtol=1e-10)


def test_different_supports():
    # q = 0 < p in class 0 and p = 0 < q in class 2.
    t = np.array([0.0, 0.0, -np.inf, 1.0])
    m = np.array([-np.inf, 0.5, 0.0, 1.0])
    with jax.enable_x64(True):
        cd = functools.partial(discrete.categorical_divergence, t, m)
        assert np.isposinf(cd("forward_kl"))
        assert np.isposinf(cd("reverse_kl"))
        assert np.isposinf(cd("pearson"))
        assert np.isposinf(cd("neyman"))
        for name in ("js", "total_variation", "squared_hellinger", "triangular"):
            value = float(cd(name))
            assert np.isfinite(value) and value > 0, name
            np.testing.assert_allclose(value, _ref_divergence(name, {}, t, m), rtol=1e-12)
        # docs/reference.md section 1: disjoint supports give the maxima of the bounded ones.
        t2, m2 = np.array([0.0, -np.inf]), np.array([-np.inf, 0.0])
        cd2 = functools.partial(discrete.categorical_divergence, t2, m2)
        np.testing.assert_allclose(cd2("js"), np.log(2), rtol=1e-12)
        np.testing.assert_allclose(cd2("total_variation"), 1.0, rtol=1e-12)
        np.testing.assert_allclose(cd2("squared_hellinger"), 1.0, rtol=1e-12)
        np.testing.assert_allclose(discrete.skew_kl(t2, m2, alpha=0.1), -np.log(0.1), rtol=1e-12)
        assert np.isposinf(discrete.cauchy_schwarz(t2, m2))


# ---------------------------------------------------------------------------
# Finite values and gradients at extreme logits; finite differences.
# ---------------------------------------------------------------------------

# Divergences whose value stays representable for logits in [-1e4, 1e4]:
# bounded ones and those growing like |log p - log q|. (Pearson, Neyman,
# alpha outside [0, 1], log1p-abs grow like exp(|log p - log q|) and overflow.)
LOG_GROWTH = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("js", {}),
    ("squared_hellinger", {}),
    ("total_variation", {}),
    ("jeffreys", {}),
    ("softened_reverse_kl", {}),
    ("alpha", {"alpha": 0.5}),
    ("alpha", {"alpha": 0.25}),
    ("triangular", {}),
    ("arithmetic_geometric", {}),
    ("t_power", {"t": 0.5}),
    ("modified_gan", {}),
]
LOG_GROWTH_IDS = [n + "".join(f"_{v}" for v in kw.values()) for n, kw in LOG_GROWTH]


def _neg_inf_pattern(d, shape, seed):
    """-inf masks for target and model that keep ``d`` finite."""
    rng = np.random.default_rng(seed)
    zeros_t = rng.random(shape) < 0.3
    zeros_m = rng.random(shape) < 0.3
    zeros_t[..., 0] = zeros_m[..., 0] = False
    if not np.isfinite(d.slope_at_infinity):  # q = 0 < p is infinite
        zeros_m &= zeros_t
    if not np.isfinite(d.f_at_zero):  # p = 0 < q is infinite
        zeros_t &= zeros_m
    return zeros_t, zeros_m


def _value_and_grads(d):
    def loss(t, m):
        return jnp.sum(
            jnp.sin(jnp.arange(t.shape[0]) + 1.0) * discrete.categorical_divergence(t, m, d)
        )

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


@pytest.mark.parametrize("name,params", LOG_GROWTH, ids=LOG_GROWTH_IDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_finite_at_extreme_logits(name, params, dtype):
    d = get(name, **params)
    rng = np.random.default_rng(3)
    shape = (3, 5)  # the shape of the finite-difference tests: shared compilations
    t = rng.uniform(-1e4, 1e4, shape)
    m = rng.uniform(-1e4, 1e4, shape)
    # A row of ties and a row where each side's top logit leads by 1e4.
    t[0], m[0] = 0.0, 0.0
    t[1, 0], m[1, 1] = 1e4, 1e4
    zeros_t, zeros_m = _neg_inf_pattern(d, shape, 4)
    t_inf = np.where(zeros_t, -np.inf, t)
    m_inf = np.where(zeros_m, -np.inf, m)
    with jax.enable_x64(dtype == "float64"):
        # Rows 0-2 without, rows 3-5 with -inf logits.
        tt = jnp.asarray(np.concatenate([t, t_inf]), dtype)
        mm = jnp.asarray(np.concatenate([m, m_inf]), dtype)
        values, (gt, gm) = _value_and_grads(d)(tt, mm)
        values = np.asarray(discrete.categorical_divergence(tt, mm, d))
        assert np.all(np.isfinite(values)), values
        assert np.all(values >= -1e-6 * (1 + np.abs(values))), values
        assert np.all(np.isfinite(gt)) and np.all(np.isfinite(gm)), (gt, gm)


def _fd_check(value_fn, t, m, *, eps=1e-6, rtol=1e-6, atol=1e-8):
    """Central finite differences, all perturbations evaluated in one batch."""
    t = np.asarray(t, np.float64)
    m = np.asarray(m, np.float64)
    weights = np.sin(np.arange(t.shape[0]) + 1.0)

    def loss(tt, mm):
        return jnp.sum(weights * value_fn(tt, mm), axis=-1)

    # Jitted: eager dispatch of the float64 custom-VJP graph dominated these tests' time.
    _, (gt, gm) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(t, m)
    finite = np.flatnonzero(np.isfinite(np.concatenate([t.ravel(), m.ravel()])))
    base = np.concatenate([t.ravel(), m.ravel()])
    plus = np.repeat(base[None], len(finite), axis=0)
    minus = plus.copy()
    plus[np.arange(len(finite)), finite] += eps
    minus[np.arange(len(finite)), finite] -= eps
    k = t.size

    @jax.jit
    def batched(x):
        return loss(x[:, :k].reshape((-1,) + t.shape), x[:, k:].reshape((-1,) + m.shape))

    fd = (np.asarray(batched(plus)) - np.asarray(batched(minus))) / (2 * eps)
    analytic = np.concatenate([np.ravel(gt), np.ravel(gm)])
    assert np.all(np.isfinite(analytic))
    # Gradients at -inf logits are exactly zero in the limit.
    np.testing.assert_allclose(
        analytic[np.setdiff1d(np.arange(base.size), finite)], 0.0, atol=1e-12
    )
    np.testing.assert_allclose(analytic[finite], fd, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name,params", ALL_F, ids=ALL_F_IDS)
def test_gradient_finite_differences(name, params):
    d = get(name, **params)
    t, m = _random_logits(5, (3, 5), 1.0)
    with jax.enable_x64(True):
        fn = lambda tt, mm: discrete.categorical_divergence(tt, mm, d, temperature=1.5)
        # Rows 0-2 without, rows 3-5 with -inf logits, in one batch.
        zeros_t, zeros_m = _neg_inf_pattern(d, t.shape, 6)
        _fd_check(
            fn,
            np.concatenate([t, np.where(zeros_t, -np.inf, t)]),
            np.concatenate([m, np.where(zeros_m, -np.inf, m)]),
        )


@pytest.mark.parametrize(
    "name,params",
    [
        ("skew_kl", {"alpha": 0.1}),
        ("skew_reverse_kl", {"alpha": 0.3}),
        ("generalized_jsd", {"beta": 0.2}),
        ("cauchy_schwarz", {}),
    ],
)
def test_non_f_gradient_finite_differences(name, params):
    t, m = _random_logits(7, (3, 5), 1.0)
    zeros_t, zeros_m = _neg_inf_pattern(get("js"), t.shape, 8)
    with jax.enable_x64(True):
        fn = lambda tt, mm: _non_f_fn(name)(tt, mm, temperature=0.7, **params)
        _fd_check(
            fn,
            np.concatenate([t, np.where(zeros_t, -np.inf, t)]),
            np.concatenate([m, np.where(zeros_m, -np.inf, m)]),
        )
        # Extreme logits: finite values and gradients.
        rng = np.random.default_rng(9)
        te, me = rng.uniform(-1e4, 1e4, (2, 2 * t.shape[0], t.shape[1]))
        value, grads = jax.value_and_grad(lambda a, b: jnp.sum(fn(a, b)), argnums=(0, 1))(te, me)
        if name != "cauchy_schwarz":  # CS of near-disjoint supports is ~1e4
            assert np.isfinite(value)
        assert all(np.all(np.isfinite(g)) for g in grads)


# ---------------------------------------------------------------------------
# Identities (docs/reference.md section 2).
# ---------------------------------------------------------------------------


def test_identities():
    t, m = _random_logits(12, (40, 6), 1.5)
    with jax.enable_x64(True):
        cd = lambda name, a=t, b=m, **kw: np.asarray(_jit_divergence(a, b, get(name, **kw)))
        for (name, params), tag in zip(ALL_F, ALL_F_IDS):
            np.testing.assert_allclose(cd(name, t, t, **params), 0.0, atol=1e-13, err_msg=tag)
            assert np.all(cd(name, **params) > 0), tag
        for name in (
            "js",
            "squared_hellinger",
            "total_variation",
            "jeffreys",
            "triangular",
            "arithmetic_geometric",
        ):
            np.testing.assert_allclose(cd(name), cd(name, m, t), rtol=1e-12, err_msg=name)
        np.testing.assert_allclose(cd("alpha", alpha=0.5), cd("alpha", m, t, alpha=0.5), rtol=1e-12)
        np.testing.assert_allclose(cd("jeffreys"), cd("forward_kl") + cd("reverse_kl"), rtol=1e-12)
        np.testing.assert_allclose(cd("alpha", alpha=2.0), 0.5 * cd("pearson"), rtol=1e-12)
        np.testing.assert_allclose(cd("alpha", alpha=0.5), 4 * cd("squared_hellinger"), rtol=1e-12)
        np.testing.assert_allclose(cd("alpha", alpha=1 - 1e-7), cd("forward_kl"), rtol=1e-5)
        np.testing.assert_allclose(cd("alpha", alpha=1e-7), cd("reverse_kl"), rtol=1e-5)
        # Reversal: D_f(P||Q) = D_{f dagger}(Q||P); alpha maps to 1 - alpha.
        np.testing.assert_allclose(
            cd("alpha", alpha=3.0), cd("alpha", m, t, alpha=-2.0), rtol=1e-12
        )
        np.testing.assert_allclose(cd("neyman"), cd("pearson", m, t), rtol=1e-12)
        # Non-f members and their special cases.
        np.testing.assert_allclose(discrete.generalized_jsd(t, m), cd("js"), rtol=1e-12)
        np.testing.assert_allclose(
            discrete.generalized_jsd(t, m, beta=0.3),
            discrete.generalized_jsd(m, t, beta=0.7),
            rtol=1e-12,
        )
        np.testing.assert_allclose(discrete.skew_kl(t, m, alpha=0.0), cd("forward_kl"), rtol=1e-12)
        np.testing.assert_allclose(
            discrete.skew_reverse_kl(t, m, alpha=0.0), cd("reverse_kl"), rtol=1e-12
        )
        np.testing.assert_allclose(discrete.skew_kl(t, m, alpha=1.0), 0.0, atol=1e-15)
        np.testing.assert_allclose(
            discrete.skew_reverse_kl(t, m, alpha=0.3), discrete.skew_kl(m, t, alpha=0.3), rtol=1e-12
        )
        np.testing.assert_allclose(
            discrete.cauchy_schwarz(t, m), discrete.cauchy_schwarz(m, t), rtol=1e-12
        )
        np.testing.assert_allclose(discrete.cauchy_schwarz(t, t), 0.0, atol=1e-13)
        skl = np.asarray(discrete.skew_kl(t, m, alpha=0.1))
        assert np.all((skl > 0) & (skl <= -np.log(0.1)))


# ---------------------------------------------------------------------------
# jit, vmap, grad, retracing, dtypes.
# ---------------------------------------------------------------------------


def test_no_retrace_and_static_divergence():
    traces = []

    def fn(t, m, d):
        traces.append(1)
        return discrete.categorical_divergence(t, m, d, temperature=2.0)

    jitted = jax.jit(fn)
    rng = np.random.default_rng(0)
    for _ in range(3):
        t, m = rng.standard_normal((2, 4, 8)).astype(np.float32)
        # A fresh, equal FDivergence each call: equal static pytrees do not retrace.
        got = jitted(t, m, get("js"))
        np.testing.assert_allclose(got, _ref_divergence("js", {}, t, m, 2.0), rtol=1e-5)
    assert len(traces) == 1
    jitted(t, m, get("alpha", alpha=0.5))
    assert len(traces) == 2

    skew_traces = []

    def skew(t, m, alpha):
        skew_traces.append(1)
        return discrete.skew_kl(t, m, alpha=alpha)

    jitted_skew = jax.jit(skew, static_argnames=("alpha",))
    for _ in range(3):
        t, m = rng.standard_normal((2, 4, 8)).astype(np.float32)
        jitted_skew(t, m, alpha=0.2)
    assert len(skew_traces) == 1


def test_traced_temperature_and_params():
    t, m = _random_logits(1, (4, 6), 1.0)
    with jax.enable_x64(True):
        f = jax.jit(lambda a, b, tau: discrete.categorical_divergence(a, b, "js", temperature=tau))
        for tau in (0.5, 3.0):
            np.testing.assert_allclose(
                f(t, m, tau), _ref_divergence("js", {}, t, m, tau), rtol=1e-10
            )
        g = jax.jit(lambda a, b, al: discrete.skew_kl(a, b, alpha=al))
        np.testing.assert_allclose(g(t, m, 0.2), discrete.skew_kl(t, m, alpha=0.2), rtol=1e-12)


def test_vmap_axis_and_grad():
    t, m = _random_logits(2, (3, 5, 7), 1.0)
    with jax.enable_x64(True):
        direct = discrete.categorical_divergence(t, m, "reverse_kl")
        assert direct.shape == (3, 5)
        mapped = jax.jit(
            jax.vmap(lambda a, b: discrete.categorical_divergence(a, b, "reverse_kl"))
        )(t, m)
        np.testing.assert_allclose(mapped, direct, rtol=1e-13)
        moved = jax.jit(lambda a, b: discrete.categorical_divergence(a, b, "reverse_kl", axis=0))(
            np.moveaxis(t, -1, 0), np.moveaxis(m, -1, 0)
        )
        np.testing.assert_allclose(moved, direct, rtol=1e-13)
        middle = jax.jit(lambda a, b: discrete.cauchy_schwarz(a, b, axis=1))(
            np.moveaxis(t, -1, 1), np.moveaxis(m, -1, 1)
        )
        np.testing.assert_allclose(middle, jax.jit(discrete.cauchy_schwarz)(t, m), rtol=1e-13)
        # Gradient w.r.t. model logits of forward KL is softmax(m) - softmax(t).
        grad = jax.jit(jax.grad(lambda b: jnp.sum(discrete.categorical_divergence(t, b, "kl"))))(m)
        np.testing.assert_allclose(
            grad, scipy.special.softmax(m, -1) - scipy.special.softmax(t, -1), atol=1e-13
        )


@pytest.mark.parametrize("low", ["bfloat16", "float16"])
def test_half_precision_inputs(low):
    t, m = _random_logits(3, (6, 5), 2.0)
    t_low, m_low = jnp.asarray(t, low), jnp.asarray(m, low)
    # The exact answer for the rounded logits.
    t_r, m_r = np.asarray(t_low, np.float64), np.asarray(m_low, np.float64)
    for name in ("forward_kl", "reverse_kl", "js", "squared_hellinger"):
        got = discrete.categorical_divergence(t_low, m_low, name)
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(
            got, _ref_divergence(name, {}, t_r, m_r), rtol=1e-5, err_msg=name
        )
    got = discrete.generalized_jsd(t_low, m_low, beta=0.3)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(
        got, _ref_non_f("generalized_jsd", {"beta": 0.3}, t_r, m_r), rtol=1e-5
    )
    # Mixed precisions promote; float64 stays float64.
    assert discrete.cauchy_schwarz(t_low, jnp.asarray(m, jnp.float32)).dtype == jnp.float32
    with jax.enable_x64(True):
        assert discrete.categorical_divergence(t, m, "js").dtype == jnp.float64
        assert discrete.categorical_divergence(t_low, m, "js").dtype == jnp.float64


# ---------------------------------------------------------------------------
# where masks.
# ---------------------------------------------------------------------------


WHERE_FNS = {
    "js": lambda a, b, **kw: discrete.categorical_divergence(a, b, "js", **kw),
    "alpha": lambda a, b, **kw: discrete.categorical_divergence(
        a, b, get("alpha", alpha=2.0), temperature=2.0, **kw
    ),
    "skew_kl": discrete.skew_kl,
    "skew_reverse_kl": discrete.skew_reverse_kl,
    "generalized_jsd": discrete.generalized_jsd,
    "cauchy_schwarz": discrete.cauchy_schwarz,
}


@pytest.mark.parametrize("name", list(WHERE_FNS))
def test_where_equals_slicing_and_blocks_gradients(name):
    fn = WHERE_FNS[name]
    t, m = _random_logits(4, (6, 5), 1.0)
    mask = np.array([True, False, True, True, False, True])
    # Masked rows hold NaN and inf: neither may reach values or gradients.
    t_bad = np.where(mask[..., None], t, np.nan)
    m_bad = np.where(mask[..., None], m, np.inf)

    def value_and_grads(a, b):
        values = fn(a, b, where=mask)
        grads = jax.grad(lambda x, y: jnp.sum(fn(x, y, where=mask)), argnums=(0, 1))(a, b)
        return values, grads

    runs = [value_and_grads]
    if name == "skew_kl":
        runs.append(jax.jit(value_and_grads))
    with jax.enable_x64(True):
        sliced = np.asarray(fn(t[mask], m[mask]))
        for run in runs:
            values, grads = run(t_bad, m_bad)
            values = np.asarray(values)
            assert np.all(values[~mask] == 0.0)
            np.testing.assert_allclose(values[mask], sliced, rtol=1e-13)
            for grad in grads:
                assert np.all(np.isfinite(grad))
                assert np.all(grad[~mask] == 0.0)
                assert np.any(grad[mask] != 0.0)


def test_where_broadcasts_over_positions():
    t, m = _random_logits(4, (4, 5, 6), 1.0)
    row_mask = np.array([True, False, True, False])[:, None]
    with jax.enable_x64(True):
        # Class axis first; the mask [4, 1] broadcasts to the positions [4, 5].
        out = discrete.categorical_divergence(
            np.moveaxis(t, -1, 0), np.moveaxis(m, -1, 0), "js", where=row_mask, axis=0
        )
        full = discrete.categorical_divergence(t, m, "js")
        np.testing.assert_allclose(out, np.where(row_mask, full, 0.0), rtol=1e-13)
        # A mask over the last position axis only, broadcast over the first.
        col_mask = np.array([True, False, True, True, False])
        out = discrete.categorical_divergence(
            np.moveaxis(t, -1, 0), np.moveaxis(m, -1, 0), "js", where=col_mask, axis=0
        )
        np.testing.assert_allclose(out, np.where(col_mask, full, 0.0), rtol=1e-13)


def test_nan_propagates():
    t, m = _random_logits(5, (3, 4), 1.0)
    t[1, 2] = np.nan
    out = np.asarray(discrete.categorical_divergence(t, m, "forward_kl"))
    assert np.isnan(out[1]) and np.all(np.isfinite(out[[0, 2]]))
    assert np.isnan(discrete.skew_kl(t, m)[1])


def test_matches_optax_forward_kl():
    t, m = _random_logits(6, (16, 100), 3.0)
    t[:, :5] = -np.inf  # p = 0 is finite for optax as well
    t, m = t.astype(np.float32), m.astype(np.float32)
    expected = optax.kl_divergence(jax.nn.log_softmax(m), jax.nn.softmax(t))
    got = jax.jit(lambda a, b: discrete.categorical_divergence(a, b, "forward_kl"))(t, m)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# Argument errors.
# ---------------------------------------------------------------------------


def test_errors():
    x = jnp.zeros((2, 3))
    cd = discrete.categorical_divergence
    with pytest.raises(ValueError, match=r"same shape.*\(2, 3\).*\(2, 4\)"):
        cd(x, jnp.zeros((2, 4)), "kl")
    with pytest.raises(
        ValueError,
        match=r"target_logits must be floating point, got int32; cast with "
        r"\.astype\(jnp\.float32\)",
    ):
        cd(jnp.zeros((2, 3), jnp.int32), x, "kl")
    with pytest.raises(ValueError, match="model_logits must be floating point"):
        discrete.cauchy_schwarz(x, jnp.zeros((2, 3), jnp.int32))
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature must be > 0"):
            cd(x, x, "kl", temperature=bad)
    with pytest.raises(ValueError, match=r"where must be broadcastable.*\(2,\).*\(3,\)"):
        cd(x, x, "kl", where=jnp.ones((3,), bool))
    with pytest.raises(ValueError, match="where must be a boolean mask"):
        cd(x, x, "kl", where=jnp.ones((2,)))
    with pytest.raises(ValueError, match="unknown divergence 'klx'.*forward_kl.*reverse_kl"):
        cd(x, x, "klx")
    with pytest.raises(ValueError, match="divergence must be a registered name"):
        cd(x, x, 3)
    with pytest.raises(ValueError, match="axis must be an integer"):
        cd(x, x, "kl", axis=2)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got 1.5"):
        discrete.skew_kl(x, x, alpha=1.5)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got -0.1"):
        discrete.skew_reverse_kl(x, x, alpha=-0.1)
    for beta in (0.0, 1.0, 2.0):
        with pytest.raises(ValueError, match=r"beta must be in \(0, 1\)"):
            discrete.generalized_jsd(x, x, beta=beta)
    # Checked at trace time, inside jit as well.
    with pytest.raises(ValueError, match="same shape"):
        jax.jit(lambda a, b: cd(a, b, "js"))(x, jnp.zeros((3, 2)))


# ---------------------------------------------------------------------------
# Numerics of the normalisation and the whole family (issue: silent wrong
# numbers). The reference is tests/_reference.py (extended precision, log
# space).
# ---------------------------------------------------------------------------


def test_jaxlib_reduce_miscompile_reproduction():
    # Fails on jaxlib 0.10.2 (CPU): the fused reduction that broke alpha = 0.5.
    x = np.linspace(-0.05, 0.0, 4096, dtype=np.float32)
    x64 = x.astype(np.float64)
    expected = np.sum(2 * np.exp(0.5 * x64) * np.expm1(0.5 * x64) - np.expm1(x64))
    got = float(jax.jit(repro_jaxlib_0_10_2_reduce.expression)(jnp.asarray(x)))
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def _vocab_logits(classes, seed):
    rng = np.random.default_rng(seed)
    t = rng.standard_normal((2, classes)).astype(np.float32)
    near = (t + 0.05 * rng.standard_normal((2, classes))).astype(np.float32)
    far = (2.0 * rng.standard_normal((2, classes))).astype(np.float32)
    return np.concatenate([t, t]), np.concatenate([near, far])


@pytest.fixture(scope="module")
def vocab_logits():
    return _vocab_logits(50_000, 30)


@pytest.fixture(scope="module")
def vocab_values(vocab_logits):
    # Every case in one jitted function: one compilation instead of one per case.
    divergences = [get(name, **params) for name, params in _reference.ALL_CASES]
    every_case = jax.jit(
        lambda a, b: [discrete.categorical_divergence(a, b, d) for d in divergences]
    )
    values = every_case(*vocab_logits)
    return {_reference.case_id(*c): np.asarray(v) for c, v in zip(_reference.ALL_CASES, values)}


@pytest.mark.parametrize(
    "name,params", _reference.ALL_CASES, ids=[_reference.case_id(*c) for c in _reference.ALL_CASES]
)
def test_jit_matches_float64_reference_at_50000_classes(name, params, vocab_logits, vocab_values):
    # Every registered divergence, jitted in float32 over 50,000 classes, against the
    # extended-precision reference: catches miscompiled reductions (jaxlib 0.10.2 gave
    # 0.305 for 0.903 for alpha) and float32 normalisation errors.
    t, m = vocab_logits
    got = vocab_values[_reference.case_id(name, params)]
    expected = _reference.divergence(name, params, t, m)
    np.testing.assert_allclose(got, expected, rtol=2e-4, err_msg=name)


def test_every_registered_name_is_covered():
    assert {n for n, _ in _reference.ALL_CASES} == set(names())


def test_exact_shift_invariance_and_bounds_with_large_logits():
    rng = np.random.default_rng(31)
    # Multiples of 2^-10 below 16 in magnitude: x + 1e4 is exact in float32, so the
    # shifted logits are the same numbers and every divergence must be exactly 0.
    x = (np.round(rng.standard_normal((3, 1000)) * 1024) / 1024).astype(np.float32)
    assert np.all((x + np.float32(1e4)) - np.float32(1e4) == x)
    every_name = [get(name, **({"t": 2.0} if name == "t_power" else {})) for name in names()]
    values = jax.jit(lambda a, b: [discrete.categorical_divergence(a, b, d) for d in every_name])(
        x + np.float32(1e4), x
    )
    for name, value in zip(names(), values):
        value = np.asarray(value)
        assert np.all(value == 0.0), (name, value)
    np.testing.assert_array_equal(
        discrete.categorical_divergence(x + np.float32(1e4), x, "js"),
        discrete.categorical_divergence(x, x, "js"),
    )
    # Spread 1e4 over 50,000 classes: bounded divergences stay within their bounds and
    # match the reference to float32 accuracy.
    t = (1e4 * rng.standard_normal((2, 50_000))).astype(np.float32)
    m = (1e4 * rng.standard_normal((2, 50_000))).astype(np.float32)
    for name, bound in (
        ("total_variation", 1.0),
        ("js", np.log(2)),
        ("squared_hellinger", 1.0),
        ("triangular", 2.0),
    ):
        got = np.asarray(_jit_divergence(t, m, get(name)))
        assert np.all(got <= np.float32(bound)), (name, got)
        np.testing.assert_allclose(
            got, _reference.divergence(name, {}, t, m), rtol=1e-6, err_msg=name
        )
    # A small temperature scales the logits up by 100: still float32-accurate.
    tt, mm = (3.0 * rng.standard_normal((2, 2, 300))).astype(np.float32)
    for name in ("forward_kl", "js", "total_variation"):
        got = np.asarray(_jit_divergence(tt, mm, get(name), temperature=0.01))
        np.testing.assert_allclose(
            got, _reference.divergence(name, {}, tt, mm, 0.01), rtol=1e-5, err_msg=name
        )


def _near_equal_logits(rng, rows, classes, spread, noise=0.1):
    t = (spread * rng.standard_normal((rows, classes))).astype(np.float32)
    return t, (t + noise * rng.standard_normal((rows, classes))).astype(np.float32)


_NEAR_EQUAL_CASES = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("t_power", {"t": 2.0}),
    ("t_power", {"t": 0.5}),
    ("softened_reverse_kl", {}),
    ("js", {}),
]


@pytest.fixture(scope="module")
def near_equal_values():
    # (rows, classes, spread, noise) cells; every case in one compiled function per cell.
    rng = np.random.default_rng(34)
    divergences = [get(name, **params) for name, params in _NEAR_EQUAL_CASES]
    every_case = jax.jit(
        lambda a, b: [discrete.categorical_divergence(a, b, d) for d in divergences]
    )
    cells = []
    for rows, classes, spread, noise in (
        (3, 50_000, 1.0, 0.1),
        (2, 50_000, 10.0, 0.3),
        (32, 2, 1.0, 0.1),
        (32, 10, 3.0, 0.1),
    ):
        t, m = _near_equal_logits(rng, rows, classes, spread, noise)
        cells.append((t, m, [np.asarray(v, np.float64) for v in every_case(t, m)]))
    return cells


@pytest.mark.parametrize(
    "case", range(len(_NEAR_EQUAL_CASES)), ids=[_reference.case_id(*c) for c in _NEAR_EQUAL_CASES]
)
def test_float32_near_equal_distributions_are_relatively_accurate(case, near_equal_values):
    # The normalisers' rounding shifts every float32 log p of a row by the same ~1e-7, which
    # moved sum q f(p/q) by ~1e-7 absolute: 8e-5 to 1.7e-4 relative for these divergences of
    # near-equal distributions over 50,000 classes. Canonical terms keep it near 1e-6.
    name, params = _NEAR_EQUAL_CASES[case]
    checked = 0
    for t, m, values in near_equal_values:
        expected = _reference.divergence(name, params, t, m)
        got = values[case]
        keep = expected > 1e-3
        checked += np.sum(keep)
        np.testing.assert_allclose(got[keep], expected[keep], rtol=1e-5, err_msg=f"{t.shape}")
    assert checked >= 12, checked


def test_one_dominant_class_keeps_relative_accuracy():
    # log(1 + e^-140) must not round to 0: the divergence of two peaked
    # distributions is ~1e-12 and its float64 value must be right to 1e-10.
    t = np.array([[105.31158, 177.64912]])
    m = np.array([[28.99576, 55.126713]])
    with jax.enable_x64(True):
        for name in ("forward_kl", "reverse_kl", "total_variation", "js"):
            got = float(discrete.categorical_divergence(t, m, name)[0])
            np.testing.assert_allclose(
                got, _reference.divergence(name, {}, t, m)[0], rtol=1e-10, err_msg=name
            )


def test_fuzz_slice():
    # A slice of benchmarks/fuzz_categorical.py's grid (run that for the full table): every
    # divergence, float32 and float64, spreads 1 to 1e4, -inf entries.
    stats = _reference.fuzz_table(classes=(5,), spreads=(1.0, 100.0, 1e4), rows=6)
    for key, s in stats.items():
        for dt, tol in (("float32", 3e-5), ("float64", 1e-10)):
            assert s[dt]["nan"] == 0 and s[dt]["inf_mismatch"] == 0, (key, dt, s[dt])
            assert s[dt]["worst_rel"] <= tol, (key, dt, s[dt])


@pytest.mark.parametrize(
    "name,params", _reference.ALL_CASES, ids=[_reference.case_id(*c) for c in _reference.ALL_CASES]
)
def test_temperature_gradient_with_neg_inf_logits(name, params):
    d = get(name, **params)
    t, m = _random_logits(40, (2, 6), 1.0)
    zeros_t, zeros_m = _neg_inf_pattern(d, t.shape, 41)
    t, m = np.where(zeros_t, -np.inf, t), np.where(zeros_m, -np.inf, m)
    with jax.enable_x64(True):
        loss = jax.jit(
            lambda tau: jnp.sum(discrete.categorical_divergence(t, m, d, temperature=tau))
        )
        grad = float(jax.jit(jax.grad(loss))(1.5))
        h = 1e-6
        fd = (float(loss(1.5 + h)) - float(loss(1.5 - h))) / (2 * h)
    assert np.isfinite(grad), name
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-8)


def test_input_errors_for_empty_axis_and_array_temperature():
    x = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="empty class axis"):
        discrete.categorical_divergence(jnp.zeros((2, 0)), jnp.zeros((2, 0)), "kl")
    with pytest.raises(ValueError, match="empty class axis"):
        discrete.skew_kl(jnp.zeros((0, 4)), jnp.zeros((0, 4)), axis=0)
    for bad in (
        jnp.array(0.0),
        jnp.array(-2.0),
        jnp.array(jnp.inf),
        np.float32(np.inf),
        float("inf"),
    ):
        with pytest.raises(ValueError, match="temperature must be > 0 and finite"):
            discrete.categorical_divergence(x, x, "kl", temperature=bad)
    # A traced temperature cannot be checked (documented) and is accepted.
    jax.jit(lambda tau: discrete.categorical_divergence(x, x, "kl", temperature=tau))(2.0)


class JitVariantsTest(chex.TestCase):
    """The same computations with and without jit (chex variants)."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_power_members_at_peaked_logits(self):
        # The former strict xfails: q f(p/q) representable while f(p/q) overflows.
        t, m = _padded_batch(PEAKED_CASES, 20)
        with jax.enable_x64(True):
            for name, params in [
                ("pearson", {}),
                ("neyman", {}),
                ("log1p_abs", {}),
                ("alpha", {"alpha": 3.0}),
                ("t_power", {"t": -0.5}),
            ]:
                d = get(name, **params)
                fn = self.variant(lambda a, b, d=d: discrete.categorical_divergence(a, b, d))
                np.testing.assert_allclose(
                    fn(t, m),
                    _reference.divergence(name, params, t, m),
                    rtol=1e-9,
                    atol=1e-12,
                    err_msg=name,
                )

    @chex.variants(with_jit=True, without_jit=True)
    def test_spec_values(self):
        with jax.enable_x64(True):
            t, m = jnp.log(jnp.asarray(P_SPEC)), jnp.log(jnp.asarray(Q_SPEC))
            f_values, non_f_values = self.variant(_spec_values)(t, m)
            for ((name, params), expected), got in zip(SPEC_F_TABLE, f_values):
                np.testing.assert_allclose(float(got), expected, rtol=1e-5, atol=5e-8, err_msg=name)
                np.testing.assert_allclose(
                    float(got), _ref_divergence(name, params, t, m), rtol=1e-9
                )
            for (name, params, expected), got in zip(SPEC_NON_F_TABLE, non_f_values):
                np.testing.assert_allclose(float(got), expected, rtol=1e-5, atol=5e-8, err_msg=name)
                np.testing.assert_allclose(float(got), _ref_non_f(name, params, t, m), rtol=1e-9)
