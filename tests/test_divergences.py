"""Tests of fdiv.divergences against closed forms, docs/reference.md section 2 and independent NumPy code."""

import math

import _reference
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from fdiv import divergences as D

P = np.array([0.2, 0.5, 0.3])
Q = np.array([0.1, 0.6, 0.3])

# docs/reference.md section 2 values (nats), rounded to 6-7 significant digits there.
SPEC_VALUES = {
    ("forward_kl", ()): 0.0474687,
    ("reverse_kl", ()): 0.0400782,
    ("js", ()): 0.0107708,
    ("squared_hellinger", ()): 0.0108561,
    ("total_variation", ()): 0.1,
    ("pearson", ()): 0.1166667,
    ("neyman", ()): 0.07,
    ("jeffreys", ()): 0.0875469,
    ("softened_reverse_kl", ()): 0.0185366,
    ("alpha", (("alpha", 2.0),)): 0.0583333,
    ("alpha", (("alpha", 0.5),)): 0.0434243,
    ("alpha", (("alpha", -1.0),)): 0.035,
    ("alpha", (("alpha", 3.0),)): 0.0745370,
}


def _generator_numpy(name, params):
    return _reference.generator_numpy(name, dict(params))


def _generator_jnp(name, params):
    return _reference.generator_jnp(name, dict(params))


ALL = [
    ("forward_kl", ()),
    ("reverse_kl", ()),
    ("js", ()),
    ("squared_hellinger", ()),
    ("total_variation", ()),
    ("pearson", ()),
    ("neyman", ()),
    ("jeffreys", ()),
    ("softened_reverse_kl", ()),
    ("alpha", (("alpha", 2.0),)),
    ("alpha", (("alpha", 0.5),)),
    ("alpha", (("alpha", -1.0),)),
    ("alpha", (("alpha", 3.0),)),
    ("alpha", (("alpha", 0.3),)),
    ("alpha", (("alpha", 0.8),)),
    ("triangular", ()),
    ("arithmetic_geometric", ()),
    ("t_power", (("t", 2.5),)),
    ("t_power", (("t", 0.4),)),
    ("t_power", (("t", -0.5),)),
    ("log1p_abs", ()),
    ("modified_gan", ()),
]
IDS = [n + "".join(f"_{k}={v}" for k, v in ps) for n, ps in ALL]
SMOOTH = [(n, ps) for n, ps in ALL if n not in ("total_variation", "log1p_abs")]
SMOOTH_IDS = [n + "".join(f"_{k}={v}" for k, v in ps) for n, ps in SMOOTH]


def _get(name, params):
    return D.get(name, **dict(params))


def _numpy_divergence(name, params, p, q):
    f = _generator_numpy(name, params)
    return float(np.sum(q * f(p / q)))


class SpecTableTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_spec_table_float64(self):
        for key, expected in SPEC_VALUES.items():
            name, params = key
            d = _get(name, params)
            fn = self.variant(lambda lp, lq, d=d: jnp.sum(d.perspective(lp, lq)))
            with jax.enable_x64(True):
                value = float(fn(jnp.log(P), jnp.log(Q)))
            reference = _numpy_divergence(name, params, P, Q)
            assert value == pytest.approx(reference, rel=1e-6), key
            # The table is rounded to about 6 significant digits.
            assert value == pytest.approx(expected, rel=5e-6), key


@pytest.mark.parametrize("key", list(SPEC_VALUES), ids=[k[0] + str(k[1]) for k in SPEC_VALUES])
def test_spec_table_float32(key):
    name, params = key
    d = _get(name, params)
    value = jnp.sum(d.perspective(jnp.log(P.astype(np.float32)), jnp.log(Q.astype(np.float32))))
    assert value.dtype == jnp.float32
    assert float(value) == pytest.approx(_numpy_divergence(name, params, P, Q), rel=1e-5)


@pytest.mark.parametrize("name,params", ALL, ids=IDS)
def test_f_matches_independent_numpy_on_a_grid(name, params):
    d = _get(name, params)
    u = np.exp(np.linspace(-30.0, 30.0, 601))
    reference = _generator_numpy(name, params)(u)
    with jax.enable_x64(True):
        log_u = jnp.log(u)
        f = np.asarray(d.f(log_u))
        f_over_u = np.asarray(d.f_over_u(log_u))
    np.testing.assert_allclose(f, reference, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(f_over_u, reference / u, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name,params", ALL, ids=IDS)
def test_edge_limits(name, params):
    d = _get(name, params)
    f = _generator_numpy(name, params)
    # f(0) and lim f(u)/u agree with the independent generator far out.
    with np.errstate(all="ignore"):
        near_zero, far = f(np.float64(1e-300)), f(np.float64(1e100)) / 1e100
    if math.isinf(d.f_at_zero):
        assert near_zero > 1e2
    else:
        assert d.f_at_zero == pytest.approx(near_zero, rel=1e-6, abs=1e-9)
    if math.isinf(d.slope_at_infinity):
        assert far > 1e2 or not np.isfinite(far)
    else:
        assert d.slope_at_infinity == pytest.approx(far, rel=1e-4, abs=1e-9)
    with jax.enable_x64(True):
        # The perspective at zero probabilities is given by these limits (docs/reference.md section 1).
        lp = jnp.array([-jnp.inf, np.log(0.3), -jnp.inf])
        lq = jnp.array([np.log(0.3), -jnp.inf, -jnp.inf])
        value = np.asarray(d.perspective(lp, lq))
    np.testing.assert_allclose(value[0], 0.3 * d.f_at_zero, rtol=1e-12)
    np.testing.assert_allclose(value[1], 0.3 * d.slope_at_infinity, rtol=1e-12)
    assert value[2] == 0.0


@pytest.mark.parametrize("name,params", ALL, ids=IDS)
def test_perspective_is_q_f_and_p_f_over_u(name, params):
    d = _get(name, params)
    rng = np.random.default_rng(0)
    lp = rng.normal(size=200) * 4
    lq = rng.normal(size=200) * 4
    with jax.enable_x64(True):
        persp = np.asarray(d.perspective(lp, lq))
        via_q = np.exp(lq) * np.asarray(d.f(lp - lq))
        via_p = np.exp(lp) * np.asarray(d.f_over_u(lp - lq))
    np.testing.assert_allclose(persp, via_q, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(persp, via_p, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name,params", SMOOTH, ids=SMOOTH_IDS)
def test_derivatives_against_autodiff_of_independent_generator(name, params):
    d = _get(name, params)
    g = _generator_jnp(name, params)
    with jax.enable_x64(True):
        u = jnp.exp(jnp.linspace(-6.0, 6.0, 97))
        f1 = jax.vmap(jax.grad(g))(u)
        f2 = jax.vmap(jax.grad(jax.grad(g)))(u)
        log_u = jnp.log(u)
        np.testing.assert_allclose(d.f_prime(log_u), f1, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(d.weight(log_u), u * u * f2, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(
            d.conjugate_at_derivative(log_u), u * f1 - g(u), rtol=1e-8, atol=1e-10
        )


def test_nonsmooth_divergences_have_no_weight_and_say_so():
    for name in ("total_variation", "log1p_abs"):
        d = D.get(name)
        assert not d.has_weight
        with pytest.raises(ValueError, match="has no weight"):
            d.weight(jnp.zeros(3))
    # Their a.e. derivative and conjugate_at_derivative are still right away from u = 1.
    with jax.enable_x64(True):
        l = jnp.array([-2.0, 1.5])
        np.testing.assert_allclose(D.get("total_variation").f_prime(l), [-0.5, 0.5])
        np.testing.assert_allclose(D.get("log1p_abs").f_prime(l), [-np.exp(4.0), 1.0])


def _numerical_supremum(f, t):
    """sup_{u >= 0} u t - f(u) by a dense log grid refined with a bounded scalar search."""
    with np.errstate(all="ignore"):
        log_u = np.linspace(-25.0, 25.0, 200001)
        values = np.exp(log_u) * t - f(np.exp(log_u))
        values = np.where(np.isfinite(values), values, -np.inf)
        i = int(np.argmax(values))
        best = values[i]
        at_zero = -f(np.float64(0.0)) if np.isfinite(f(np.float64(0.0))) else -np.inf
        if 0 < i < len(log_u) - 1:
            res = optimize.minimize_scalar(
                lambda l: -(np.exp(l) * t - f(np.exp(l))),
                bounds=(log_u[i - 1], log_u[i + 1]),
                method="bounded",
                options={"xatol": 1e-12},
            )
            best = max(best, -res.fun)
        return max(best, at_zero), i


@pytest.mark.parametrize("name,params", ALL, ids=IDS)
def test_conjugate_against_numerical_supremum(name, params):
    d = _get(name, params)
    f = _generator_numpy(name, params)
    # t inside the domain: the range of f' on a moderate window.
    with jax.enable_x64(True):
        ts = np.asarray(d.f_prime(jnp.linspace(-4.0, 4.0, 9)))
        ts = np.unique(np.round(ts, 12))
        conj = np.asarray(d.conjugate(jnp.asarray(ts)))
    for t, c in zip(ts, conj):
        reference, _ = _numerical_supremum(f, t)
        assert c == pytest.approx(reference, rel=1e-6, abs=1e-8), (t, c, reference)


@pytest.mark.parametrize("name,params", ALL, ids=IDS)
def test_fenchel_young(name, params):
    d = _get(name, params)
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        log_u = jnp.asarray(rng.uniform(-5, 5, size=64))
        u = jnp.exp(log_u)
        t = d.f_prime(jnp.asarray(rng.uniform(-5, 5, size=64)))  # inside the conjugate's domain
        gap = d.f(log_u)[:, None] + d.conjugate(t)[None, :] - u[:, None] * t[None, :]
        assert float(jnp.min(gap)) >= -1e-9
        # Equality at t = f'(u), where f*(f'(u)) = u f'(u) - f(u).
        t_star = d.f_prime(log_u)
        np.testing.assert_allclose(
            d.conjugate(t_star), d.conjugate_at_derivative(log_u), rtol=1e-6, atol=1e-9
        )


def test_conjugates_outside_domain():
    assert float(D.get("reverse_kl").conjugate(0.5)) == np.inf
    assert float(D.get("js").conjugate(1.0)) == np.inf
    assert float(D.get("squared_hellinger").conjugate(0.5)) == np.inf
    assert float(D.get("total_variation").conjugate(0.7)) == np.inf
    assert float(D.get("total_variation").conjugate(-3.0)) == -0.5  # sup at u = 0
    assert float(D.get("pearson").conjugate(-5.0)) == -1.0
    assert float(D.get("alpha", alpha=2.0).conjugate(-3.0)) == pytest.approx(-0.5)
    assert float(D.get("alpha", alpha=0.5).conjugate(2.5)) == np.inf


def test_spec_conjugate_closed_forms_with_lambert_w():
    from scipy.special import lambertw

    with jax.enable_x64(True):
        t = np.array([-3.0, -1.0, 0.0, 0.5, 2.0])
        w = np.real(lambertw(np.exp(1 - t)))
        np.testing.assert_allclose(
            D.get("jeffreys").conjugate(t), w + 1 / w + t - 2, rtol=1e-9, atol=1e-12
        )
        t = np.array([-4.0, -2.0, -1.0, -0.75])
        w = np.real(lambertw(-2 * np.exp(t - 1), k=-1))
        np.testing.assert_allclose(D.get("softened_reverse_kl").conjugate(t), -t + w, rtol=1e-9)


def test_identities_between_members():
    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.ones(7), size=50)
    q = rng.dirichlet(np.ones(7), size=50)
    value = lambda d, a, b: np.asarray(jnp.sum(d.perspective(jnp.log(a), jnp.log(b)), -1))
    with jax.enable_x64(True):
        fwd, rev = D.get("forward_kl"), D.get("reverse_kl")
        np.testing.assert_allclose(
            value(D.get("jeffreys"), p, q), value(fwd, p, q) + value(rev, p, q), rtol=1e-12
        )
        np.testing.assert_allclose(
            value(D.get("alpha", alpha=2.0), p, q), 0.5 * value(D.get("pearson"), p, q), rtol=1e-12
        )
        np.testing.assert_allclose(
            value(D.get("alpha", alpha=0.5), p, q),
            4 * value(D.get("squared_hellinger"), p, q),
            rtol=1e-12,
        )
        for a in (1.0, 1 - 1e-9, 1 + 1e-9, 1 - 1e-4):
            np.testing.assert_allclose(
                value(D.get("alpha", alpha=a), p, q),
                value(fwd, p, q),
                rtol=1e-3 if a == 1 - 1e-4 else 1e-7,
            )
        for a in (0.0, 1e-9, -1e-9, 1e-4):
            np.testing.assert_allclose(
                value(D.get("alpha", alpha=a), p, q),
                value(rev, p, q),
                rtol=1e-3 if a == 1e-4 else 1e-7,
            )
        # t-power is |t(t-1)| times the alpha divergence with alpha = t.
        np.testing.assert_allclose(
            value(D.get("t_power", t=2.5), p, q),
            2.5 * 1.5 * value(D.get("alpha", alpha=2.5), p, q),
            rtol=1e-10,
        )
        # Reversal: dual swaps the arguments; alpha maps to 1 - alpha.
        np.testing.assert_allclose(value(D.dual(fwd), p, q), value(rev, p, q), rtol=1e-12)
        np.testing.assert_allclose(
            value(D.dual(D.get("alpha", alpha=0.3)), p, q),
            value(D.get("alpha", alpha=0.7), p, q),
            rtol=1e-10,
        )
        np.testing.assert_allclose(
            value(D.dual(D.get("pearson")), p, q), value(D.get("neyman"), p, q), rtol=1e-12
        )
        for name, params in ALL:
            d = _get(name, params)
            d_pq, d_qp = value(d, p, q), value(d, q, p)
            assert np.all(d_pq >= -1e-15), name
            np.testing.assert_allclose(value(d, p, p), 0.0, atol=1e-15)
            if d.symmetric:
                np.testing.assert_allclose(d_pq, d_qp, rtol=1e-12)
            else:
                assert np.max(np.abs(d_pq - d_qp)) > 1e-6, name


def test_alpha_near_limits_is_continuous_pointwise():
    with jax.enable_x64(True):
        l = jnp.linspace(-30.0, 30.0, 121)
        for a0, a in ((1.0, 1.0 + 1e-7), (1.0, 1.0 - 1e-7), (0.0, 1e-7), (0.0, -1e-7)):
            exact, near = D.get("alpha", alpha=a0), D.get("alpha", alpha=a)
            for method in ("f", "f_over_u", "f_prime", "weight", "conjugate_at_derivative"):
                np.testing.assert_allclose(
                    getattr(near, method)(l),
                    getattr(exact, method)(l),
                    rtol=1e-5,
                    atol=1e-12,
                    err_msg=f"{a} {method}",
                )
        # Near the limits the float32 values have no NaN and no loss of precision from division.
    l32 = jnp.linspace(-80.0, 80.0, 161, dtype=jnp.float32)
    for a in (1.0, 1 + 1e-6, 1 - 1e-6, 0.0, 1e-6, -1e-6):
        d = D.get("alpha", alpha=a)
        assert not np.any(np.isnan(np.asarray(d.f(l32)))), a


@pytest.mark.parametrize("name,params", ALL, ids=IDS)
def test_perspective_finite_gradients_at_extreme_logits(name, params):
    d = _get(name, params)
    lp = jnp.array([-jnp.inf, -1.0, -jnp.inf, -3.0, -1e4, 0.0, -2.0, -1e4, -5.0])
    lq = jnp.array([-1.0, -jnp.inf, -jnp.inf, -3.0, 0.0, -1e4, -2.5, -1e4, -5.0 + 1e-3])
    value = d.perspective(lp, lq)
    finite = np.isfinite(np.asarray(value))
    # Gradient of each element separately (the perspective is elementwise).
    gp, gq = jax.vmap(jax.grad(lambda a, b: d.perspective(a, b), argnums=(0, 1)))(lp, lq)
    assert np.all(np.isfinite(np.asarray(gp))[finite]), (name, gp)
    assert np.all(np.isfinite(np.asarray(gq))[finite]), (name, gq)
    assert not np.any(np.isnan(np.asarray(value)))


@pytest.mark.parametrize("name,params", ALL, ids=IDS)
def test_perspective_gradient_matches_finite_differences(name, params):
    d = _get(name, params)
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        lp = jnp.asarray(rng.normal(size=16) * 2)
        lq = jnp.asarray(rng.normal(size=16) * 2)
        lq = lq.at[0].set(lp[0])  # exactly p = q: one-sided derivatives must be the true one
        gp, gq = jax.vmap(jax.grad(d.perspective, argnums=(0, 1)))(lp, lq)
        h = 1e-6
        fd_p = (d.perspective(lp + h, lq) - d.perspective(lp - h, lq)) / (2 * h)
        fd_q = (d.perspective(lp, lq + h) - d.perspective(lp, lq - h)) / (2 * h)
    kink = name in ("total_variation", "log1p_abs")
    sl = slice(1, None) if kink else slice(None)
    np.testing.assert_allclose(gp[sl], fd_p[sl], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(gq[sl], fd_q[sl], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_inputs_compute_in_float32(dtype):
    rng = np.random.default_rng(4)
    lp = jnp.asarray(np.log(rng.dirichlet(np.ones(50))), dtype)
    lq = jnp.asarray(np.log(rng.dirichlet(np.ones(50))), dtype)
    for name in ("forward_kl", "js", "squared_hellinger", "pearson"):
        d = D.get(name)
        value = jnp.sum(d.perspective(lp, lq))
        assert value.dtype == jnp.float32
        reference = _numpy_divergence(
            name, (), np.exp(np.asarray(lp, np.float64)), np.exp(np.asarray(lq, np.float64))
        )
        assert float(value) == pytest.approx(reference, rel=1e-5)


def test_registry_names_aliases_and_errors():
    assert set(D.names()) >= {
        "forward_kl",
        "reverse_kl",
        "js",
        "squared_hellinger",
        "total_variation",
        "pearson",
        "neyman",
        "jeffreys",
        "softened_reverse_kl",
        "alpha",
        "triangular",
        "arithmetic_geometric",
        "t_power",
        "log1p_abs",
        "modified_gan",
    }
    assert D.get("kl") == D.get("forward_kl")
    with pytest.raises(ValueError, match="unknown divergence 'kll'.*forward_kl.*reverse_kl"):
        D.get("kll")
    with pytest.raises(ValueError, match="takes parameters \\['alpha'\\].*beta"):
        D.get("alpha", beta=1.0)
    with pytest.raises(ValueError, match="takes parameters none"):
        D.get("js", alpha=1.0)
    with pytest.raises(ValueError, match="finite"):
        D.get("alpha", alpha=float("nan"))
    with pytest.raises(ValueError, match="not in \\{0, 1\\}"):
        D.get("t_power", t=1.0)
    with pytest.raises(ValueError, match="registered name"):
        D.resolve(3)
    assert D.resolve("js") is not None and D.resolve(D.get("js")) == D.get("js")


def test_hashable_static_and_no_retrace():
    traces = []

    @jax.jit
    def total(divergence, lp, lq):
        traces.append(1)
        return jnp.sum(divergence.perspective(lp, lq))

    lp = jnp.log(jnp.asarray(P, jnp.float32))
    lq = jnp.log(jnp.asarray(Q, jnp.float32))
    total(D.get("js"), lp, lq)
    total(D.get("js"), lp, lq)
    total(D.get("alpha", alpha=0.5), lp, lq)
    total(D.get("alpha", alpha=0.5), lp, lq)
    assert len(traces) == 2
    assert hash(D.get("alpha", alpha=2)) == hash(D.get("alpha", alpha=2.0))
    assert D.get("alpha", alpha=2.0) != D.get("alpha", alpha=3.0)
    with pytest.raises(Exception):
        D.get("js").name = "other"  # frozen
    # A divergence closed over by vmap/grad works like any function.
    d = D.get("squared_hellinger")
    grads = jax.vmap(jax.grad(lambda a: jnp.sum(d.perspective(a, lq))))(jnp.stack([lp, lq]))
    assert grads.shape == (2, 3) and np.allclose(grads[1], 0.0, atol=1e-7)


def test_properties():
    assert D.get("reverse_kl").mode_seeking and not D.get("forward_kl").mode_seeking
    assert D.get("js").bounded and D.get("squared_hellinger").bounded
    assert D.get("total_variation").bounded and not D.get("forward_kl").bounded
    assert D.get("js").symmetric and D.get("jeffreys").symmetric
    assert not D.get("pearson").symmetric
    assert D.get("alpha", alpha=0.5).symmetric


def test_from_generator_matches_builtins():
    js_user = D.from_generator(
        lambda u: 0.5 * (jax.scipy.special.xlogy(u, u) - (u + 1) * jnp.log((u + 1) / 2)),
        name="my_js",
    )
    builtin = D.get("js")
    assert js_user.f_at_zero == pytest.approx(builtin.f_at_zero, rel=1e-6)
    assert js_user.slope_at_infinity == pytest.approx(builtin.slope_at_infinity, rel=1e-3)
    with jax.enable_x64(True):
        l = jnp.linspace(-5.0, 5.0, 41)
        for method in ("f", "f_over_u", "f_prime", "weight", "conjugate_at_derivative"):
            np.testing.assert_allclose(
                getattr(js_user, method)(l),
                getattr(builtin, method)(l),
                rtol=1e-6,
                atol=1e-9,
                err_msg=method,
            )
        t = builtin.f_prime(jnp.linspace(-3.0, 3.0, 7))
        np.testing.assert_allclose(js_user.conjugate(t), builtin.conjugate(t), rtol=1e-6, atol=1e-9)
        value = jnp.sum(js_user.perspective(jnp.log(P), jnp.log(Q)))
        assert float(value) == pytest.approx(0.0107708, rel=5e-6)
        value = js_user.perspective(jnp.array([-jnp.inf, 0.0]), jnp.array([0.0, -jnp.inf]))
        np.testing.assert_allclose(value, [0.5 * np.log(2)] * 2, rtol=1e-3)
    kl_generator = lambda u: jax.scipy.special.xlogy(u, u)
    kl_user = D.from_generator(kl_generator, name="my_kl")
    assert math.isinf(kl_user.slope_at_infinity) and kl_user.f_at_zero == 0.0
    assert kl_user == D.from_generator(kl_generator, name="my_kl")
    assert kl_user != D.from_generator(lambda u: jax.scipy.special.xlogy(u, u), name="my_kl")


def test_from_generator_validates():
    with pytest.raises(ValueError, match="f\\(1\\) must be 0"):
        D.from_generator(lambda u: u * jnp.log(u) + 1.0, name="bad")
    with pytest.raises(ValueError, match="convex"):
        D.from_generator(lambda u: -((u - 1) ** 2), name="concave")
    with pytest.raises(ValueError, match="callable"):
        D.from_generator(3.0, name="x")


def test_nan_propagates():
    for name in ("forward_kl", "js", "pearson", "alpha"):
        d = D.get(name)
        value = d.perspective(jnp.array([jnp.nan, -1.0]), jnp.array([-1.0, jnp.nan]))
        assert np.all(np.isnan(np.asarray(value))), name


@pytest.mark.parametrize("name,params", ALL, ids=IDS)
def test_perspective_grads_are_the_derivatives(name, params):
    d = _get(name, params)
    rng = np.random.default_rng(5)
    with jax.enable_x64(True):
        lp = jnp.concatenate(
            [jnp.asarray(rng.normal(size=32) * 3), jnp.array([-1.0, -2.0, -jnp.inf, -jnp.inf])]
        )
        lq = jnp.concatenate(
            [jnp.asarray(rng.normal(size=32) * 3), jnp.array([-1.0, -jnp.inf, -1.5, -jnp.inf])]
        )
        closed_p, closed_q = d.perspective_grads(lp, lq)
        auto_p, auto_q = jax.vmap(jax.grad(d.perspective, argnums=(0, 1)))(lp, lq)
        finite = np.isfinite(np.asarray(d.perspective(lp, lq)))
    kink = name in ("total_variation", "log1p_abs")
    sl = finite & ((np.arange(len(lp)) != 32) if kink else True)  # index 32 is p = q
    np.testing.assert_allclose(closed_p[sl], auto_p[sl], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(closed_q[sl], auto_q[sl], rtol=1e-9, atol=1e-12)
    if d.bounded:
        # p = 0 contributes nothing to d/dlog p; q = 0 < p nothing to d/dlog q.
        g_p, g_q = d.perspective_grads(
            jnp.array([-jnp.inf, -1.0, -jnp.inf]), jnp.array([-1.0, -jnp.inf, -jnp.inf])
        )
        np.testing.assert_allclose(g_p, [0.0, np.exp(-1.0) * d.slope_at_infinity, 0.0], atol=1e-30)
        np.testing.assert_allclose(g_q[1:], [0.0, 0.0], atol=1e-30)


# ----------------------------------------------------------------------------------------------
# Generator edges against mpmath: f and f/u exact where representable, +-inf where they
# overflow, 0 where they underflow; f', u^2 f'' and f*(f') free of NaN at the extremes.

_EDGE_L = np.array(_reference.EDGE_LOG_U)


@pytest.mark.parametrize(
    "name,params", _reference.ALL_CASES, ids=[_reference.case_id(*c) for c in _reference.ALL_CASES]
)
def test_generator_edges_against_mpmath(name, params):
    d = D.get(name, **params)
    for method in ("f", "f_over_u"):
        exact = _reference.edge_values(name, params, method, _EDGE_L)
        for dtype, rtol in (("float32", 1e-5), ("float64", 1e-9)):
            representable = np.array(
                [abs(x) <= np.finfo(dtype).max or math.isinf(x) for x in _EDGE_L]
            )
            l = _EDGE_L[representable]
            expected = _reference.to_dtype([v for v, k in zip(exact, representable) if k], dtype)
            with jax.enable_x64(dtype == "float64"):
                got = np.asarray(getattr(d, method)(jnp.asarray(l, dtype)), np.float64)
            tiny = np.finfo(dtype).tiny
            for x, g, e in zip(l, got, expected):
                if np.isinf(e):
                    assert g == e, (method, dtype, x, g, e)
                else:
                    assert np.isfinite(g) and abs(g - e) <= rtol * abs(e) + 2 * tiny, (
                        method,
                        dtype,
                        x,
                        g,
                        e,
                    )
    for method in ("f_prime", "weight", "conjugate_at_derivative"):
        if method == "weight" and not d.has_weight:
            continue
        for dtype in ("float32", "float64"):
            with jax.enable_x64(dtype == "float64"):
                got = np.asarray(getattr(d, method)(jnp.asarray(_EDGE_L, dtype)))
            assert not np.any(np.isnan(got)), (method, dtype, _EDGE_L[np.isnan(got)])


@pytest.mark.parametrize(
    "name,params", _reference.ALL_CASES, ids=[_reference.case_id(*c) for c in _reference.ALL_CASES]
)
def test_perspective_against_reference_at_extreme_log_probabilities(name, params):
    # |log p - log q| up to 2e4: power-growth members give the representable q f(p/q) (or
    # +inf where it overflows), never NaN.
    d = D.get(name, **params)
    rng = np.random.default_rng(8)
    lp = np.concatenate([-np.abs(rng.normal(size=40)) * 3e3, [-1e-300, -5.0, -np.inf, -3.0]])
    lq = np.concatenate([-np.abs(rng.normal(size=40)) * 3e3, [-700.0, -np.inf, -2.0, -3.0]])
    expected = _reference.perspective(name, params, lp, lq).astype(np.float64)
    with jax.enable_x64(True):
        got = np.asarray(d.perspective(lp, lq))
        grads = d.perspective_grads(lp, lq)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-300, err_msg=name)
    finite = np.isfinite(expected)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g))[finite]), name


@pytest.mark.parametrize(
    "name,params", _reference.ALL_CASES, ids=[_reference.case_id(*c) for c in _reference.ALL_CASES]
)
def test_canonical_perspective_is_the_perspective_less_its_affine_part(name, params):
    # q [f(u) - f'(1)(u - 1)] >= 0, with f'(1) from autodiff of the independent generator and
    # the perspective from the extended-precision reference; near-equal and far-apart pairs
    # and the zero-probability limits.
    d = D.get(name, **params)
    if name in ("total_variation", "log1p_abs"):  # kink at u = 1: no f'(1)
        assert not d.has_canonical_perspective
        with pytest.raises(ValueError, match="no canonical perspective"):
            d.canonical_perspective(0.0, 0.0)
        return
    rng = np.random.default_rng(9)
    lp = -np.abs(rng.normal(size=24)) * 4.0
    lq = np.concatenate([lp[:12] + 0.3 * rng.normal(size=12), lp[12:] - 8 * rng.normal(size=12)])
    lp = np.concatenate([lp, [-np.inf, -2.0, -np.inf]])
    lq = np.concatenate([np.minimum(lq, 0.0), [-2.0, -np.inf, -np.inf]])
    with jax.enable_x64(True):
        slope = float(jax.grad(_reference.generator_jnp(name, params))(jnp.float64(1.0)))
        got = np.asarray(d.canonical_perspective(lp, lq))
        reversed_terms = np.asarray(D.dual(d).canonical_perspective(lq, lp))
    lp_ld, lq_ld = lp.astype(_reference.LD), lq.astype(_reference.LD)
    with np.errstate(invalid="ignore"):
        expected = _reference.perspective(name, params, lp_ld, lq_ld) - _reference.LD(slope) * (
            np.exp(lp_ld) - np.exp(lq_ld)
        )
    np.testing.assert_allclose(got, expected.astype(np.float64), rtol=1e-8, err_msg=name)
    np.testing.assert_array_equal(reversed_terms, got)
    assert np.all(got >= 0), name


def test_from_generator_without_a_name():
    def half_pearson(u):
        return 0.5 * (u - 1.0) ** 2

    d = D.from_generator(half_pearson)
    assert d.name == "half_pearson"
    assert not d.has_canonical_perspective
    anonymous = D.from_generator(lambda u: (u - 1.0) ** 2)
    assert anonymous.name == "user_generator"
    with jax.enable_x64(True):
        value = jnp.sum(d.perspective(jnp.log(P), jnp.log(Q)))
    assert float(value) == pytest.approx(0.5 * 0.1166667, rel=1e-5)


def test_jaxlib_0_10_2_warning_names_the_fix(monkeypatch):
    import warnings

    import jaxlib

    monkeypatch.setattr(jaxlib, "__version__", "0.10.2")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        D._warn_if_broken_jaxlib()  # pylint: disable=protected-access
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "pip install 'jaxlib!=0.10.2'" in message
    assert "--xla_cpu_experimental_ynn_fusion_type=-reduce" in message
    monkeypatch.setattr(jaxlib, "__version__", "0.10.1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        D._warn_if_broken_jaxlib()  # pylint: disable=protected-access
    assert not caught
