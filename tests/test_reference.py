"""docs/reference.md, checked: every table value against the library and an independent computation.

Tables are parsed from the Markdown (``<!-- table: NAME -->`` followed by a pipe table). Each
value is compared with the library (under ``jax.jit`` and without it where the function is a
jittable array function) and with a computation that shares no code with the library: mpmath
for generators, derivatives and sums, a numerical supremum for conjugates, SciPy / grid
quadrature and finite differences for the f-distill gradient, Monte Carlo with exact densities
for the Gaussian closed forms, a NumPy Sinkhorn for SinKD.
"""

from __future__ import annotations

import math
import os
import re

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest
from scipy import integrate, optimize, special, stats

import fdiv
from fdiv import data, diffusion, distill, metrics

REFERENCE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "reference.md"
)


def _text() -> str:
    with open(REFERENCE, encoding="utf-8") as fh:
        return fh.read()


# ------------------------------------------------------------------------------- table parsing


def _read_tables(path: str) -> dict[str, list[dict[str, str]]]:
    tables: dict[str, list[dict[str, str]]] = {}
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    i = 0
    while i < len(lines):
        m = re.fullmatch(r"<!-- table: (\w+) -->", lines[i].strip())
        if not m:
            i += 1
            continue
        header = [c.strip() for c in lines[i + 1].strip().strip("|").split("|")]
        assert set(lines[i + 2].replace("|", "").strip()) <= {"-"}, lines[i + 2]
        rows, i = [], i + 3
        while i < len(lines) and lines[i].startswith("|"):
            cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
            assert len(cells) == len(header), lines[i]
            rows.append(dict(zip(header, cells)))
            i += 1
        assert m.group(1) not in tables, f"table {m.group(1)} twice"
        tables[m.group(1)] = rows
    return tables


TABLES = _read_tables(REFERENCE)


def _num(s: str) -> float:
    return {"inf": math.inf, "-inf": -math.inf}[s] if s in ("inf", "-inf") else float(s)


def _params(s: str) -> dict[str, float]:
    if s == "-":
        return {}
    return {k.strip(): float(v) for k, v in (kv.split("=") for kv in s.split(","))}


def _vec(s: str) -> list[str]:
    return [v.strip() for v in s.split(",")]


def _close(got, want, rtol, atol=0.0):
    if math.isinf(want):
        return got == want
    return abs(got - want) <= atol + rtol * abs(want)


def test_sections_are_numbered_one_to_ten_and_every_table_is_present():
    text = _text()
    numbers = [int(n) for n in re.findall(r"^## (\d+)\. ", text, flags=re.MULTILINE)]
    assert numbers == list(range(1, 11))
    expected = {
        "divergence_values",
        "generator_values",
        "generator_limits",
        "conjugate_values",
        "non_f_values",
        "fdistill_gradient",
        "edm_preconditioning",
        "karras_levels",
        "kd_values",
        "toy_targets",
        "energy_distance_1d",
        "gaussian_closed_forms",
        "pseudo_rewards",
    }
    assert expected <= set(TABLES)
    assert all(TABLES[name] for name in expected)


# ------------------------------------------------- independent generators (mpmath, no fdiv code)

mp.mp.dps = 30


def _generator(name: str, params: dict[str, float]):
    a = mp.mpf(params.get("alpha", 0.5))
    t = mp.mpf(params.get("t", 2.0))
    s = -1 if 0 < t < 1 else 1
    return {
        "forward_kl": lambda u: u * mp.log(u),
        "reverse_kl": lambda u: -mp.log(u),
        "js": lambda u: (u * mp.log(u) - (u + 1) * mp.log((u + 1) / 2)) / 2,
        "squared_hellinger": lambda u: (mp.sqrt(u) - 1) ** 2 / 2,
        "total_variation": lambda u: abs(u - 1) / 2,
        "pearson": lambda u: (u - 1) ** 2,
        "neyman": lambda u: (1 - u) ** 2 / u,
        "jeffreys": lambda u: (u - 1) * mp.log(u),
        "softened_reverse_kl": lambda u: (u + 1) * mp.log((u + 1) / (2 * u)),
        "alpha": lambda u: (u**a - 1 - a * (u - 1)) / (a * (a - 1)),
        "triangular": lambda u: (u - 1) ** 2 / (u + 1),
        "arithmetic_geometric": lambda u: (1 + u) * mp.log((1 + u) / (2 * mp.sqrt(u))),
        "t_power": lambda u: s * (u**t - 1),
        "log1p_abs": lambda u: (u if u >= 1 else 1 / u) - 1,
        "modified_gan": lambda u: mp.log((1 + u) / (2 * u)) + (u - 1) / 2,
    }[name]


def _limit(g) -> mp.mpf:
    """lim_{v -> 0+} g(v), or +-inf when g(v) keeps growing as v shrinks."""
    a, b = g(mp.mpf(10) ** -40), g(mp.mpf(10) ** -80)
    if abs(a - b) < 1e-12:
        return b
    assert abs(b) > abs(a) > 10, "neither converging nor diverging"
    return mp.inf if b > 0 else -mp.inf


def _limits(name, params):
    f = _generator(name, params)
    return _limit(f), _limit(lambda v: v * f(1 / v))


def _divergence(name, params, p, q):
    f = _generator(name, params)
    f0, slope = _limits(name, params)
    total = mp.mpf(0)
    for pi, qi in zip(p, q):
        pi, qi = mp.mpf(pi), mp.mpf(qi)
        if pi == 0 and qi == 0:
            continue
        total += qi * f0 if pi == 0 else (pi * slope if qi == 0 else qi * f(pi / qi))
    return total


def _log(x: list[str]) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(np.asarray([float(v) for v in x]))


def _get(name, params):
    return fdiv.get(name, **params)


# ------------------------------------------------------------------------ section 2: the table


def _groups(table: str) -> list[tuple[str, str, list[dict[str, str]]]]:
    """The rows of `table` grouped by (name, params), so each divergence compiles once."""
    groups: dict[tuple[str, str], list[dict[str, str]]] = {}
    for row in TABLES[table]:
        groups.setdefault((row["name"], row["params"]), []).append(row)
    return [(name, params, rows) for (name, params), rows in groups.items()]


def _group_id(group):
    return f"{group[0]}({group[1]})"


def _assert_all_close(got, want, rtol, atol, what):
    got = np.asarray(got, np.float64)
    for g, w in zip(got, want):
        assert _close(float(g), w, rtol, atol), (what, got, want)


@pytest.mark.parametrize("group", _groups("divergence_values"), ids=_group_id)
def test_divergence_values(group):
    name, params, rows = group
    params = _params(params)
    want = [_num(r["value"]) for r in rows]
    for r, w in zip(rows, want):
        independent = float(_divergence(name, params, _vec(r["p"]), _vec(r["q"])))
        assert _close(independent, w, 1e-10), (r, independent)
    d = _get(name, params)
    lp = np.stack([_log(_vec(r["p"])) for r in rows])
    lq = np.stack([_log(_vec(r["q"])) for r in rows])
    fn = lambda a, b: fdiv.categorical_divergence(a, b, d)
    with jax.enable_x64(True):
        for f in (fn, jax.jit(fn)):
            _assert_all_close(f(jnp.asarray(lp), jnp.asarray(lq)), want, 1e-9, 1e-12, "float64")
    got = jax.jit(fn)(jnp.asarray(lp, jnp.float32), jnp.asarray(lq, jnp.float32))
    _assert_all_close(got, want, 2e-5, 1e-7, "float32")


@pytest.mark.parametrize("group", _groups("generator_values"), ids=_group_id)
def test_generator_values(group):
    name, params, rows = group
    params = _params(params)
    f = _generator(name, params)
    us = [mp.mpf(r["u"]) for r in rows]
    want_f = [_num(r["f(u)"]) for r in rows]
    want_df = [_num(r["f'(u)"]) for r in rows]
    for u, wf, wdf in zip(us, want_f, want_df):
        assert _close(float(f(u)), wf, 1e-11, 1e-12)
        assert _close(float(mp.diff(f, u)), wdf, 1e-10, 1e-12)
    d = _get(name, params)
    with jax.enable_x64(True):
        log_u = jnp.log(jnp.asarray([float(u) for u in us]))
        for fn in (d.f, jax.jit(d.f)):
            _assert_all_close(fn(log_u), want_f, 1e-10, 1e-12, "f")
        _assert_all_close(jax.jit(d.f_prime)(log_u), want_df, 1e-10, 1e-12, "f'")
        if rows[0]["h(u)"] == "none":
            assert all(r["h(u)"] == "none" for r in rows) and not d.has_weight
            with pytest.raises(ValueError, match="no weight"):
                d.weight(log_u)
            return
        want_h = [_num(r["h(u)"]) for r in rows]
        for u, wh in zip(us, want_h):
            assert _close(float(u**2 * mp.diff(f, u, 2)), wh, 1e-9, 1e-12)
        _assert_all_close(jax.jit(d.weight)(log_u), want_h, 1e-10, 1e-12, "h")


@pytest.mark.parametrize(
    "row", TABLES["generator_limits"], ids=lambda r: f"{r['name']}({r['params']})"
)
def test_generator_limits(row):
    params = _params(row["params"])
    f0, slope = _limits(row["name"], params)
    assert _close(float(f0), _num(row["f(0)"]), 1e-10, 1e-12)
    assert _close(float(slope), _num(row["lim f(u)/u"]), 1e-10, 1e-12)
    d = _get(row["name"], params)
    assert _close(d.f_at_zero, _num(row["f(0)"]), 1e-12, 1e-15)
    assert _close(d.slope_at_infinity, _num(row["lim f(u)/u"]), 1e-12, 1e-15)
    assert d.bounded == (math.isfinite(f0) and math.isfinite(slope))


def _numerical_conjugate(name, params, t):
    """sup_{u >= 0} u t - f(u) by a bounded scalar search over log u, with the u = 0 endpoint."""
    f = _generator(name, params)
    f0, slope = _limits(name, params)
    if t > slope + 1e-12:
        return math.inf
    g = lambda lu: -float(mp.exp(lu) * t - f(mp.exp(mp.mpf(lu))))
    best = max(
        -float(f0),
        max(
            -optimize.minimize_scalar(
                g, bounds=(lo, lo + 20), method="bounded", options={"xatol": 1e-12}
            ).fun
            for lo in (-30.0, -10.0, 10.0)
        ),
    )
    return best


_CLOSED_CONJUGATES = {
    "forward_kl": lambda t: math.exp(t - 1),
    "reverse_kl": lambda t: -1 - math.log(-t) if t < 0 else math.inf,
    "js": lambda t: -0.5 * math.log(2 - math.exp(2 * t)) if t < math.log(2) / 2 else math.inf,
    "squared_hellinger": lambda t: t / (1 - 2 * t) if t < 0.5 else math.inf,
    "total_variation": lambda t: max(t, -0.5) if t <= 0.5 else math.inf,
    "pearson": lambda t: t + t * t / 4 if t >= -2 else -1.0,
    "neyman": lambda t: 2 - 2 * math.sqrt(1 - t) if t < 1 else math.inf,
    "jeffreys": lambda t: float(
        special.lambertw(math.exp(1 - t)).real + 1 / special.lambertw(math.exp(1 - t)).real + t - 2
    ),
    "softened_reverse_kl": lambda t: (
        -t + float(special.lambertw(-2 * math.exp(t - 1), -1).real)
        if t < -math.log(2)
        else math.inf
    ),
    "triangular": lambda t: (
        math.inf if t > 1 else (-1.0 if t < -3 else 4 - t - 4 * math.sqrt(1 - t))
    ),
    "log1p_abs": lambda t: math.inf if t > 1 else (t if t >= -1 else 1 - 2 * math.sqrt(-t)),
}


def _alpha_conjugate(a, t):
    base = 1 + (a - 1) * t
    if base <= 0:
        return -1 / a if a > 1 else math.inf
    return base ** (a / (a - 1)) / a - 1 / a


@pytest.mark.parametrize("group", _groups("conjugate_values"), ids=_group_id)
def test_conjugate_values(group):
    name, params, rows = group
    params = _params(params)
    ts = [float(r["t"]) for r in rows]
    want = [_num(r["f*(t)"]) for r in rows]
    for t, w in zip(ts, want):
        numerical = _numerical_conjugate(name, params, t)
        assert _close(numerical, w, 1e-8, 1e-9), (t, numerical, w)
        if name in _CLOSED_CONJUGATES:
            assert _close(_CLOSED_CONJUGATES[name](t), w, 1e-9, 1e-10)
        if name == "alpha":
            assert _close(_alpha_conjugate(params["alpha"], t), w, 1e-9, 1e-10)
    d = _get(name, params)
    with jax.enable_x64(True):
        for fn in (d.conjugate, jax.jit(d.conjugate)):
            _assert_all_close(fn(jnp.asarray(ts)), want, 1e-7, 1e-8, "f*")


@pytest.mark.parametrize(
    "name,params", sorted({(r["name"], r["params"]) for r in TABLES["generator_values"]})
)
def test_fenchel_young_and_conjugate_at_derivative(name, params):
    d = _get(name, _params(params))

    @jax.jit
    def quantities(log_u, ts):
        u = jnp.exp(log_u)
        f, df = d.f(log_u), d.f_prime(log_u)
        gap = f[:, None] + d.conjugate(ts)[None, :] - u[:, None] * ts[None, :]
        return u, f, df, d.conjugate_at_derivative(log_u), gap, d.conjugate(df)

    with jax.enable_x64(True):
        u, f, df, at_derivative, gap, conj_df = quantities(
            jnp.linspace(-3.0, 3.0, 13, dtype=jnp.float64),
            jnp.linspace(-2.0, 0.45, 11, dtype=jnp.float64),
        )
    np.testing.assert_allclose(at_derivative, u * df - f, rtol=1e-9, atol=1e-12)
    # f(u) + f*(t) >= u t for every pair, with equality on the diagonal t = f'(u).
    assert bool(np.all(np.asarray(gap) >= -1e-9))
    if name not in ("total_variation", "log1p_abs"):
        np.testing.assert_allclose(conj_df, u * df - f, rtol=1e-7, atol=1e-9)


def test_identities_of_section_2():
    p, q = _log(["0.2", "0.5", "0.3"]), _log(["0.1", "0.6", "0.3"])
    with jax.enable_x64(True):
        p, q = jnp.asarray(p), jnp.asarray(q)
        cd = lambda name, **kw: float(fdiv.categorical_divergence(p, q, fdiv.get(name, **kw)))
        rev = lambda name, **kw: float(fdiv.categorical_divergence(q, p, fdiv.get(name, **kw)))
        assert cd("alpha", alpha=1 - 1e-7) == pytest.approx(cd("forward_kl"), rel=1e-6)
        assert cd("alpha", alpha=1e-7) == pytest.approx(cd("reverse_kl"), rel=1e-6)
        assert cd("alpha", alpha=2.0) == pytest.approx(cd("pearson") / 2, rel=1e-12)
        assert cd("alpha", alpha=0.5) == pytest.approx(4 * cd("squared_hellinger"), rel=1e-12)
        assert cd("t_power", t=2.0) == pytest.approx(cd("pearson"), rel=1e-12)
        assert cd("t_power", t=0.5) == pytest.approx(cd("squared_hellinger"), rel=1e-12)
        assert cd("jeffreys") == pytest.approx(cd("forward_kl") + cd("reverse_kl"), rel=1e-12)
        assert cd("reverse_kl") == pytest.approx(rev("forward_kl"), rel=1e-12)
        for name in (
            "js",
            "squared_hellinger",
            "total_variation",
            "triangular",
            "arithmetic_geometric",
        ):
            assert cd(name) == pytest.approx(rev(name), rel=1e-12)
        for name in fdiv.names():
            kw = {"alpha": 0.3} if name == "alpha" else ({"t": 3.0} if name == "t_power" else {})
            d = fdiv.get(name, **kw)
            assert float(fdiv.categorical_divergence(p, p, d)) == pytest.approx(0.0, abs=1e-14)
            assert cd(name, **kw) > 0
            # Reversal (section 1): D_{f^dagger}(P || Q) = D_f(Q || P).
            assert float(fdiv.categorical_divergence(p, q, fdiv.dual(d))) == pytest.approx(
                rev(name, **kw), rel=1e-10
            )
        # The affine term c (u - 1) changes nothing for normalised P, Q.
        shifted = fdiv.from_generator(lambda u: u * jnp.log(u) + 3.0 * (u - 1.0), name="kl+3")
        assert float(fdiv.categorical_divergence(p, q, shifted)) == pytest.approx(
            cd("forward_kl"), rel=1e-9
        )


@pytest.mark.parametrize("row", TABLES["non_f_values"], ids=lambda r: r["name"] + r["params"])
def test_non_f_values(row):
    P = [mp.mpf(v) for v in ("0.2", "0.5", "0.3")]
    Q = [mp.mpf(v) for v in ("0.1", "0.6", "0.3")]
    kl = lambda A, B: mp.fsum(a * mp.log(a / b) for a, b in zip(A, B))
    mix = lambda w, A, B: [w * a + (1 - w) * b for a, b in zip(A, B)]
    params, want = _params(row["params"]), _num(row["value"])
    name = row["name"]
    if name == "skew_kl":
        independent = kl(P, mix(params["alpha"], P, Q))
    elif name == "skew_reverse_kl":
        independent = kl(Q, mix(1 - params["alpha"], P, Q))
    elif name == "generalized_jsd":
        b = mp.mpf(params["beta"])
        M = mix(b, P, Q)
        independent = b * kl(P, M) + (1 - b) * kl(Q, M)
    else:
        dot = lambda A, B: mp.fsum(a * b for a, b in zip(A, B))
        independent = -mp.log(dot(P, Q) ** 2 / (dot(P, P) * dot(Q, Q)))
    assert _close(float(independent), want, 1e-10)
    fn = getattr(fdiv, name)
    lp, lq = _log(["0.2", "0.5", "0.3"]), _log(["0.1", "0.6", "0.3"])
    with jax.enable_x64(True):
        call = lambda a, b: fn(a, b, **params)
        for f in (call, jax.jit(call)):
            assert _close(float(f(jnp.asarray(lp), jnp.asarray(lq))), want, 1e-9)


# ----------------------------------------------------------------------- section 3: estimators

_GRID = np.linspace(-16.0, 16.0, 32001)


def _integrate(values):
    return np.trapezoid(values, _GRID)


def _gauss_pair():
    lp = stats.norm.logpdf(_GRID)
    lq = stats.norm.logpdf(_GRID, 0.7, 1.3)
    return lp, lq


def test_variational_bound_is_tight_at_the_log_ratio_critic():
    lp, lq = _gauss_pair()
    p, q = np.exp(lp), np.exp(lq)
    u = np.exp(lp - lq)
    independent = {  # integral q f(p/q) with NumPy generators
        "forward_kl": _integrate(p * (lp - lq)),
        "js": _integrate(0.5 * (p * np.log(2 * p / (p + q)) + q * np.log(2 * q / (p + q)))),
        "squared_hellinger": _integrate(0.5 * (np.sqrt(p) - np.sqrt(q)) ** 2),
        "pearson": _integrate((p - q) ** 2 / q),
    }
    with jax.enable_x64(True):
        for name, value in independent.items():
            d = fdiv.get(name)

            def bound(log_critic):
                lc = jnp.asarray(log_critic)
                return _integrate(
                    p * np.asarray(d.f_prime(lc)) - q * np.asarray(d.conjugate_at_derivative(lc))
                )

            exact = bound(lp - lq)
            assert exact == pytest.approx(value, rel=1e-8)
            for perturbation in (0.3 * np.sin(_GRID), -0.2 + 0 * _GRID):
                assert bound(lp - lq + perturbation) < value - 1e-4
    kl = independent["forward_kl"]
    nwj = lambda T: _integrate(p * T) - _integrate(q * np.exp(T - 1))
    dv = lambda T: _integrate(p * T) - math.log(_integrate(q * np.exp(T)))
    assert nwj(1 + lp - lq) == pytest.approx(kl, rel=1e-9)
    assert dv(lp - lq + 5.0) == pytest.approx(kl, rel=1e-9)
    off = lp - lq + 0.3 * np.cos(_GRID)
    assert nwj(off) < dv(off) < kl
    assert _integrate(u * q) == pytest.approx(1.0, rel=1e-10)


def test_classifier_optimum_is_the_prior_corrected_log_ratio():
    n_p, n_q = 3.0, 1.0
    softplus = lambda x: np.logaddexp(0.0, x)
    for x in (-1.0, 0.2, 1.7):
        p, q = stats.norm.pdf(x), stats.norm.pdf(x, 0.7, 1.3)
        res = optimize.minimize_scalar(
            lambda l: n_p * p * softplus(-l) + n_q * q * softplus(l),
            bounds=(-20, 20),
            method="bounded",
            options={"xatol": 1e-10},
        )
        assert res.x == pytest.approx(math.log(p / q) + math.log(n_p / n_q), abs=1e-6)
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=7), rng.normal(size=5)
    got = distill.discriminator_loss(jnp.asarray(real), jnp.asarray(fake))
    assert float(got) == pytest.approx(softplus(fake).mean() + softplus(-real).mean(), rel=1e-6)
    assert float(distill.generator_gan_loss(jnp.asarray(fake))) == pytest.approx(
        softplus(-fake).mean(), rel=1e-6
    )


# ------------------------------------------------------------- section 4: the f-distill gradient

_FDISTILL_NUMPY = {  # NumPy generators and their h, independent of the library
    "forward_kl": (lambda u: u * np.log(u), lambda u: u),
    "reverse_kl": (lambda u: -np.log(u), lambda u: np.ones_like(u)),
    "js": (
        lambda u: 0.5 * (u * np.log(u) - (u + 1) * np.log((u + 1) / 2)),
        lambda u: u / (2 * (u + 1)),
    ),
    "squared_hellinger": (lambda u: 0.5 * (np.sqrt(u) - 1) ** 2, lambda u: np.sqrt(u) / 4),
    "pearson": (lambda u: (u - 1) ** 2, lambda u: 2 * u**2),
    "jeffreys": (lambda u: (u - 1) * np.log(u), lambda u: u + 1),
    "softened_reverse_kl": (lambda u: (u + 1) * np.log((u + 1) / (2 * u)), lambda u: 1 / (u + 1)),
}


def _fdistill_numpy(name, params):
    if name == "alpha":
        a = params["alpha"]
        return (lambda u: (u**a - 1 - a * (u - 1)) / (a * (a - 1))), (lambda u: u**a)
    return _FDISTILL_NUMPY[name]


@pytest.mark.parametrize(
    "row", TABLES["fdistill_gradient"], ids=lambda r: f"{r['name']}({r['params']})"
)
def test_fdistill_gradient(row):
    params = _params(row["params"])
    f, h = _fdistill_numpy(row["name"], params)
    mu, sigma = 0.7, 1.3

    def value(m, s):
        lp, lq = stats.norm.logpdf(_GRID), stats.norm.logpdf(_GRID, m, s)
        return _integrate(np.exp(lq) * f(np.exp(lp - lq)))

    eps = 2e-5
    fd = (
        (value(mu + eps, sigma) - value(mu - eps, sigma)) / (2 * eps),
        (value(mu, sigma + eps) - value(mu, sigma - eps)) / (2 * eps),
    )
    assert value(mu, sigma) == pytest.approx(float(row["value"]), rel=1e-8)
    assert fd[0] == pytest.approx(float(row["d/dmu"]), rel=1e-6, abs=1e-8)
    assert fd[1] == pytest.approx(float(row["d/dsigma"]), rel=1e-6, abs=1e-8)

    # Library: the gradient of the surrogate at Gauss-Hermite nodes z_k, weighted by w_k.
    z, w = special.roots_hermitenorm(160)
    w = w / w.sum()
    d = fdiv.get(row["name"], **params)
    with jax.enable_x64(True):
        z, w = jnp.asarray(z), jnp.asarray(w)

        def node_loss(theta, zk):
            x = (theta[0] + theta[1] * zk)[None, None]
            xs = jax.lax.stop_gradient(x)
            s_p, s_q = -xs, -(xs - theta[0]) / theta[1] ** 2
            log_r = (
                jax.scipy.stats.norm.logpdf(xs)
                - jax.scipy.stats.norm.logpdf(xs, theta[0], theta[1])
            )[:, 0]
            return distill.score_weighted_loss(
                x, s_p, jax.lax.stop_gradient(s_q), jax.lax.stop_gradient(log_r), d
            )

        theta = jnp.asarray([mu, sigma])
        per_node = jax.vmap(jax.grad(node_loss), in_axes=(None, 0))(theta, z)
        grad = np.asarray(jnp.sum(w[:, None] * per_node, axis=0))
    np.testing.assert_allclose(
        grad, [float(row["d/dmu"]), float(row["d/dsigma"])], rtol=1e-6, atol=1e-8
    )
    # The independent score-weighted integral with the NumPy h.
    zz, ww = special.roots_hermitenorm(160)
    ww = ww / ww.sum()
    x = mu + sigma * zz
    r = np.exp(stats.norm.logpdf(x) - stats.norm.logpdf(x, mu, sigma))
    diff = -(x - mu) / sigma**2 + x
    np.testing.assert_allclose(
        [np.sum(ww * h(r) * diff), np.sum(ww * h(r) * diff * zz)], fd, rtol=1e-6, atol=1e-8
    )


def test_denoiser_form_of_the_fdistill_loss_matches_the_score_form():
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        x_t, x0_fake, x0_teacher = (jnp.asarray(rng.normal(size=(6, 3))) for _ in range(3))
        sigma = jnp.asarray(rng.uniform(0.3, 2.0, size=6))
        log_r = jnp.asarray(rng.normal(size=6))
        s_q = diffusion.score_from_denoiser(x0_fake, x_t, sigma)
        s_p = diffusion.score_from_denoiser(x0_teacher, x_t, sigma)
        a = jax.grad(
            lambda x: distill.fdistill_loss(
                x,
                sigma,
                x0_fake,
                x0_teacher,
                log_r,
                "js",
                normalize=False,
                logit_clip=None,
                ratio_clip=None,
            )
        )(x_t)
        b = jax.grad(lambda x: distill.score_weighted_loss(x, s_p, s_q, log_r, "js"))(x_t)
        np.testing.assert_allclose(a, b, rtol=1e-10)
        # The surrogate's gradient in x is g / batch, g = h (s_q - s_p).
        h = np.asarray(fdiv.get("js").weight(log_r))[:, None]
        np.testing.assert_allclose(b, h * np.asarray(s_q - s_p) / 6, rtol=1e-10)
        # Practical weights: clip the logit and the ratio, then divide by the batch mean.
        wts = distill.weights(jnp.asarray([-30.0, -1.0, 0.0, 2.0, 12.0]), "forward_kl")
        r = np.clip(np.exp(np.clip([-30.0, -1.0, 0.0, 2.0, 12.0], -10, 10)), 0.1, 20.0)
        np.testing.assert_allclose(wts, r / (r.mean() + 1e-6), rtol=1e-9)


# ------------------------------------------------------------------ section 5: f-DPG gradient


@pytest.mark.parametrize(
    "name", ["forward_kl", "reverse_kl", "js", "squared_hellinger", "pearson", "total_variation"]
)
def test_score_function_gradient_identity(name):
    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.ones(5))
    theta = rng.normal(size=5)
    pi = np.exp(theta - special.logsumexp(theta))
    f = _generator(name, {})
    u = p / pi
    phi = np.asarray([float(f(mp.mpf(v)) - mp.mpf(v) * mp.diff(f, mp.mpf(v))) for v in u])
    grad_log_pi = np.eye(5) - pi[None, :]  # row x: d log pi(x) / d theta
    score_fn = (pi * phi) @ grad_log_pi
    with jax.enable_x64(True):
        lib = jax.grad(lambda t: fdiv.categorical_divergence(jnp.log(jnp.asarray(p)), t, name))(
            jnp.asarray(theta)
        )
    np.testing.assert_allclose(lib, score_fn, rtol=1e-8, atol=1e-12)
    # A baseline (any constant added to the reward) changes nothing: E_pi grad log pi = 0.
    np.testing.assert_allclose((pi * (phi + 7.0)) @ grad_log_pi, score_fn, atol=1e-12)
    # The model-first convention: the pseudo-reward -(f^dagger)'(pi/p) equals -(f(u) - u f'(u)).
    dagger = lambda v: v * f(1 / v)
    np.testing.assert_allclose([float(mp.diff(dagger, mp.mpf(1 / v))) for v in u], phi, rtol=1e-10)


# ---------------------------------------------------------------------------- section 6: EDM


@pytest.mark.parametrize("row", TABLES["edm_preconditioning"], ids=lambda r: r["sigma"])
def test_edm_preconditioning(row):
    s, sd = mp.mpf(row["sigma"]), mp.mpf(row["sigma_data"])
    independent = {
        "c_skip": sd**2 / (s**2 + sd**2),
        "c_out": s * sd / mp.sqrt(s**2 + sd**2),
        "c_in": 1 / mp.sqrt(s**2 + sd**2),
        "c_noise": mp.log(s) / 4,
    }
    independent["lambda"] = 1 / independent["c_out"] ** 2
    for key, v in independent.items():
        assert float(v) == pytest.approx(float(row[key]), rel=1e-10)
    with jax.enable_x64(True):
        sig = jnp.float64(float(row["sigma"]))
        got = jax.jit(diffusion.preconditioning, static_argnums=1)(sig, float(row["sigma_data"]))
        for key, v in zip(("c_skip", "c_out", "c_in", "c_noise"), got):
            assert float(v) == pytest.approx(float(row[key]), rel=1e-10)


def test_karras_levels_and_evaluation_count():
    rows = TABLES["karras_levels"]
    n, smin, smax, rho = (float(rows[0][k]) for k in ("num_steps", "sigma_min", "sigma_max", "rho"))
    n = int(n)
    want = np.asarray([float(r["sigma_i"]) for r in rows])
    i = np.arange(n)
    independent = (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    np.testing.assert_allclose(np.append(independent, 0.0), want, rtol=1e-10)
    with jax.enable_x64(True):
        np.testing.assert_allclose(diffusion.karras_sigmas(n, smin, smax, rho), want, rtol=1e-10)
    assert diffusion.num_evaluations(18) == 35 and diffusion.num_evaluations(18, "euler") == 18


def test_tweedie_score_and_heun_flow_on_gaussian_data():
    m, s = 0.4, 0.6
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=(5, 1)) * 2)
        sigma = jnp.asarray(rng.uniform(0.1, 3.0, size=5))
        exact_denoiser = lambda y, sg: m + s**2 / (s**2 + sg[:, None] ** 2) * (y - m)
        score = diffusion.score_from_denoiser(exact_denoiser(x, sigma), x, sigma)
        np.testing.assert_allclose(score, -(x - m) / (s**2 + sigma[:, None] ** 2), rtol=1e-12)
        # Heun on the probability-flow ODE of N(0, s^2) data: the library against a NumPy
        # transcription of the steps at N = 18, and against the exact flow map at N = 200 (at
        # N = 18 the discretisation error of this ODE is about 5%).
        zero_mean = lambda y, sg: s**2 / (s**2 + sg[:, None] ** 2) * y
        x_init = jnp.asarray(rng.normal(size=(4, 1))) * 80.0
        exact = np.asarray(x_init) * s / math.sqrt(s**2 + 80.0**2)
        for n, rtol in ((18, None), (200, 1e-3)):
            levels = np.asarray(diffusion.karras_sigmas(n))
            out = diffusion.heun_sampler(zero_mean, x_init, jnp.asarray(levels))
            ref = np.asarray(x_init)
            direction = lambda y, sg: (y - s**2 / (s**2 + sg**2) * y) / sg
            for i in range(n - 1):
                step = levels[i + 1] - levels[i]
                d0 = direction(ref, levels[i])
                d1 = direction(ref + step * d0, levels[i + 1])
                ref = ref + step * 0.5 * (d0 + d1)
            ref = ref - levels[n - 1] * direction(ref, levels[n - 1])
            np.testing.assert_allclose(out, ref, rtol=1e-10)
            if rtol:
                np.testing.assert_allclose(out, exact, rtol=rtol)
        # The toy mixtures' exact denoisers satisfy the same identity.
        ring = data.ring8()
        y = jnp.asarray(rng.normal(size=(7, 2)))
        np.testing.assert_allclose(
            diffusion.score_from_denoiser(ring.denoiser(y, 0.5), y, 0.5),
            ring.score(y, 0.5),
            rtol=1e-9,
            atol=1e-12,
        )


def test_edm_denoiser_training_loss_and_noise_levels():
    rng = np.random.default_rng(7)
    sd = 0.5
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=(4, 3)))
        sigma = jnp.asarray([0.01, 0.3, 1.0, 20.0])
        raw = lambda x_in, c_noise: jnp.sin(x_in) + c_noise[:, None]  # any raw network F
        got = diffusion.denoiser(raw, x, sigma, sd)
        s = np.asarray(sigma)[:, None]
        c_in = 1 / np.sqrt(s**2 + sd**2)
        want = sd**2 / (s**2 + sd**2) * np.asarray(x) + s * sd / np.sqrt(s**2 + sd**2) * (
            np.sin(c_in * np.asarray(x)) + np.log(s) / 4
        )
        np.testing.assert_allclose(got, want, rtol=1e-12)
        # lambda(sigma) = 1 / c_out^2 times the mean squared denoising error.
        noise = jnp.asarray(rng.normal(size=(4, 3)))
        denoise = lambda y, sg: 0.8 * y
        loss = diffusion.dsm_loss_per_sample(denoise, x, sigma, noise, sd)
        err = (0.8 * (np.asarray(x) + s * np.asarray(noise)) - np.asarray(x)) ** 2
        lam = (s**2 + sd**2) / (s * sd) ** 2
        np.testing.assert_allclose(loss, (lam * err).mean(1), rtol=1e-12)
        # Euler steps on dx/dsigma = (x - D) / sigma, transcribed in NumPy.
        levels = np.asarray(diffusion.karras_sigmas(6, 0.002, 5.0))
        zero_mean = lambda y, sg: 0.36 / (0.36 + sg[:, None] ** 2) * y
        ref = np.asarray(x)
        for i in range(6):
            ref = (
                ref
                + (levels[i + 1] - levels[i])
                * (ref - 0.36 / (0.36 + levels[i] ** 2) * ref)
                / levels[i]
            )
        np.testing.assert_allclose(
            diffusion.euler_sampler(zero_mean, x, jnp.asarray(levels)), ref, rtol=1e-10
        )
    # Training noise levels: log sigma ~ N(-1.2, 1.2^2).
    log_sigma = np.log(np.asarray(diffusion.sample_sigma(jax.random.key(0), (20000,))))
    assert abs(log_sigma.mean() + 1.2) < 4 * 1.2 / math.sqrt(20000)
    assert abs(log_sigma.std() - 1.2) < 0.03


# ------------------------------------------------------------------------------- section 7: KD

_ZT = np.asarray([2.0, 0.5, -1.0, 0.0])
_ZS = np.asarray([1.0, 1.2, -0.5, 0.3])
_SINKD_T = np.asarray([[2.0, 0.5, -1.0, 0.0], [0.1, 1.5, 0.3, -0.7], [-1.0, 0.0, 2.5, 0.4]])
_SINKD_S = np.asarray([[1.0, 1.2, -0.5, 0.3], [0.4, 0.9, 0.2, -0.2], [-0.5, 0.6, 1.8, 0.1]])


def _kd_row(name):
    return {r["params"]: float(r["value"]) for r in TABLES["kd_values"] if r["loss"] == name}


def test_kd_values():
    text = _text()
    assert "`z_t = [2.0, 0.5, -1.0, 0.0]`, `z_s = [1.0, 1.2, -0.5, 0.3]`, `y = 0`" in text
    sm = lambda z, tau=1.0: special.softmax(np.asarray(z) / tau)
    kl = lambda a, b: float(np.sum(a * np.log(a / b)))
    with jax.enable_x64(True):
        for params, want in _kd_row("kd").items():
            tau = _params(params)["tau"]
            assert tau**2 * kl(sm(_ZT, tau), sm(_ZS, tau)) == pytest.approx(want, rel=1e-10)
            lib = tau**2 * fdiv.categorical_divergence(
                jnp.asarray(_ZT), jnp.asarray(_ZS), "forward_kl", temperature=tau
            )
            assert float(lib) == pytest.approx(want, rel=1e-10)
        w = _params(next(iter(_kd_row("bdkd"))))["w"]
        bd = w * fdiv.categorical_divergence(jnp.asarray(_ZT), jnp.asarray(_ZS), "forward_kl") + (
            1 - w
        ) * fdiv.categorical_divergence(jnp.asarray(_ZT), jnp.asarray(_ZS), "reverse_kl")
        assert float(bd) == pytest.approx(next(iter(_kd_row("bdkd").values())), rel=1e-10)
    y = 0
    for params, want in _kd_row("nkd").items():
        tau, gamma = _params(params)["tau"], _params(params)["gamma"]
        pt, ps = sm(_ZT), sm(_ZS)
        target = -pt[y] * math.log(ps[y])
        # Renormalisation over k != y, two ways: dropping the class, and a -inf target logit.
        keep = np.arange(4) != y
        T, S = sm(_ZT[keep], tau), sm(_ZS[keep], tau)
        masked = lambda z: special.softmax(np.where(keep, z / tau, -np.inf))[keep]
        np.testing.assert_allclose(masked(_ZT), T, rtol=1e-14)
        np.testing.assert_allclose(masked(_ZS), S, rtol=1e-14)
        nkd = target - gamma * tau**2 * float(np.sum(T * np.log(S)))
        assert nkd == pytest.approx(want, rel=1e-10)
        assert nkd - math.log(ps[y]) == pytest.approx(_kd_row("nkd_total")[params], rel=1e-10)


def _numpy_sinkhorn_cost(C, eps, iters=3000):
    b = C.shape[0]
    log_a = np.full(b, -math.log(b))
    f, g = np.zeros(b), np.zeros(b)
    for _ in range(iters):
        f = -eps * special.logsumexp((g[None, :] - C) / eps + log_a[None, :], axis=1)
        g = -eps * special.logsumexp((f[:, None] - C) / eps + log_a[:, None], axis=0)
    plan = np.exp((f[:, None] + g[None, :] - C) / eps + log_a[:, None] + log_a[None, :])
    np.testing.assert_allclose(plan.sum(0), 1 / b, rtol=1e-10)
    np.testing.assert_allclose(plan.sum(1), 1 / b, rtol=1e-10)
    return float(np.sum(plan * C))


def test_sinkd_value_against_numpy_sinkhorn_and_ott():
    ((params, want),) = _kd_row("sinkd").items()
    tau, eps = _params(params)["tau"], _params(params)["epsilon"]
    pt, ps = special.softmax(_SINKD_T / tau, -1), special.softmax(_SINKD_S / tau, -1)
    cost = np.abs(pt[:, None, :] - ps[None, :, :]).sum(-1)
    assert _numpy_sinkhorn_cost(cost, eps) == pytest.approx(want, rel=1e-9)
    from ott.geometry import geometry
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn

    with jax.enable_x64(True):
        geom = geometry.Geometry(cost_matrix=jnp.asarray(cost), epsilon=eps)
        out = sinkhorn.Sinkhorn(threshold=1e-12, max_iterations=5000)(
            linear_problem.LinearProblem(geom)
        )
        assert float(jnp.sum(out.matrix * cost)) == pytest.approx(want, rel=1e-8)


# ------------------------------------------------------------------------ section 8: toy targets


@pytest.mark.parametrize("row", TABLES["toy_targets"], ids=lambda r: r["name"])
def test_toy_targets(row):
    target = data.toy_target(row["name"])
    if row["name"] == "ring8":
        angles = 2 * np.pi * np.arange(8) / 8
        centres = np.stack([2 * np.cos(angles), 2 * np.sin(angles)], 1)
        w = np.asarray([4, 1, 3, 1, 4, 2, 1, 2], float)
    else:
        centres = np.asarray([(a, b) for a in range(-2, 3) for b in range(-2, 3)], float)
        w = 1.0 + np.arange(25) % 4
    w = w / w.sum()
    np.testing.assert_allclose(np.asarray(target.centres), centres, atol=1e-12)
    np.testing.assert_allclose(target.weights, w, rtol=1e-12)
    mean = w @ centres
    sigma_data = math.sqrt(w @ np.sum((centres - mean) ** 2, 1) / 2 + float(row["std"]) ** 2)
    assert target.num_modes == int(row["modes"]) and target.std == float(row["std"])
    assert target.near_radius == pytest.approx(float(row["near_radius"]), rel=1e-12)
    assert w.min() == pytest.approx(float(row["min_weight"]), rel=1e-10)
    assert w.max() == pytest.approx(float(row["max_weight"]), rel=1e-10)
    assert sigma_data == pytest.approx(float(row["sigma_data"]), rel=1e-10)
    assert target.sigma_data == pytest.approx(float(row["sigma_data"]), rel=1e-10)

    # Metrics on exact target samples: precision ~ 1 - exp(-9/2), all modes, small weight error.
    n = 4000
    x = target.sample(jax.random.key(0), n)
    m = metrics.mixture_metrics(x, target.centres_array, target.weights_array, target.std)
    near = 1 - math.exp(-4.5)
    assert abs(float(m["precision"]) - near) < 4 * math.sqrt(near * (1 - near) / n)
    assert int(m["modes_recovered"]) == target.num_modes
    assert float(m["weight_error"]) < 4 * np.sum(np.sqrt(w * (1 - w) / n))


def test_energy_distance_closed_form_and_library():
    def mean_abs(mu, var):
        sd = math.sqrt(var)
        return sd * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * var)) + mu * (
            1 - 2 * stats.norm.cdf(-mu / sd)
        )

    rng = np.random.default_rng(4)
    for row in TABLES["energy_distance_1d"]:
        m, want = float(row["m"]), float(row["value"])
        assert 2 * mean_abs(m, 2.0) - 2 * mean_abs(0.0, 2.0) == pytest.approx(want, rel=1e-10)
        # Independent check of E|N(mu, v)| by quadrature.
        quad = integrate.quad(
            lambda v: abs(v) * stats.norm.pdf(v, m, math.sqrt(2.0)),
            -30,
            30,
            points=[0.0],
            epsabs=1e-13,
        )[0]
        assert quad == pytest.approx(mean_abs(m, 2.0), rel=1e-10)
        x, y = rng.normal(size=(2000, 1)), rng.normal(m, 1.0, size=(2000, 1))
        assert float(metrics.energy_distance(jnp.asarray(x), jnp.asarray(y))) == pytest.approx(
            want, abs=0.05
        )


# --------------------------------------------------------------- section 9: Gaussian closed forms

_M1, _S1 = np.asarray([0.5, -0.3]), np.asarray([[1.0, 0.3], [0.3, 0.8]])
_M2, _S2 = np.asarray([0.0, 0.2]), np.asarray([[1.5, -0.2], [-0.2, 1.3]])
_BANDWIDTH = 0.7


def _gaussian_values():
    return {r["quantity"]: float(r["value"]) for r in TABLES["gaussian_closed_forms"]}


def _closed_forms():
    det, inv, d = np.linalg.det, np.linalg.inv, 2
    dm = _M1 - _M2

    def kl(ma, sa, mb, sb):
        e = mb - ma
        return 0.5 * (np.trace(inv(sb) @ sa) + e @ inv(sb) @ e - d + math.log(det(sb) / det(sa)))

    sm = (_S1 + _S2) / 2
    a = 2 * _S2 - _S1
    eye = np.eye(d) * _BANDWIDTH**2

    def kmean(ma, sa, mb, sb):
        return (2 * math.pi * _BANDWIDTH**2) ** (d / 2) * stats.multivariate_normal(
            np.zeros(d), sa + sb + eye
        ).pdf(ma - mb)

    log_n = lambda x, c: stats.multivariate_normal(np.zeros(d), c).logpdf(x)
    out = {
        "forward_kl": kl(_M1, _S1, _M2, _S2),
        "reverse_kl": kl(_M2, _S2, _M1, _S1),
        "squared_hellinger": 1
        - det(_S1) ** 0.25 * det(_S2) ** 0.25 / det(sm) ** 0.5 * math.exp(-dm @ inv(sm) @ dm / 8),
        "pearson": det(_S2) / (det(_S1) ** 0.5 * det(a) ** 0.5) * math.exp(dm @ inv(a) @ dm) - 1,
        "kernel_mean_pq": kmean(_M1, _S1, _M2, _S2),
        "kernel_mean_pp": kmean(_M1, _S1, _M1, _S1),
        "kernel_mean_qq": kmean(_M2, _S2, _M2, _S2),
        "cauchy_schwarz": -2 * log_n(dm, _S1 + _S2 + eye)
        + log_n(np.zeros(d), 2 * _S1 + eye)
        + log_n(np.zeros(d), 2 * _S2 + eye),
    }
    out["mmd2"] = out["kernel_mean_pp"] + out["kernel_mean_qq"] - 2 * out["kernel_mean_pq"]
    return out


def test_gaussian_closed_forms_match_the_table_and_quadrature():
    text = _text()
    assert (
        "`m1 = (0.5, -0.3)`, `S1 = [[1.0, 0.3], [0.3, 0.8]]`,\n`m2 = (0.0, 0.2)`, "
        "`S2 = [[1.5, -0.2], [-0.2, 1.3]]`, bandwidth `s = 0.7`"
    ) in text
    table, closed = _gaussian_values(), _closed_forms()
    assert set(table) == set(closed)
    for k, v in closed.items():
        assert v == pytest.approx(table[k], rel=1e-10), k
    # Quadrature on a 2-D grid for the f-divergences.
    g = np.linspace(-10, 10, 801)
    xx = np.stack(np.meshgrid(g, g, indexing="ij"), -1)
    lp = stats.multivariate_normal(_M1, _S1).logpdf(xx)
    lq = stats.multivariate_normal(_M2, _S2).logpdf(xx)
    p, q = np.exp(lp), np.exp(lq)
    quad = lambda v: np.trapezoid(np.trapezoid(v, g, axis=1), g)
    assert quad(p * (lp - lq)) == pytest.approx(table["forward_kl"], rel=1e-7)
    assert quad(q * (lq - lp)) == pytest.approx(table["reverse_kl"], rel=1e-7)
    assert quad(0.5 * (np.sqrt(p) - np.sqrt(q)) ** 2) == pytest.approx(
        table["squared_hellinger"], rel=1e-7
    )
    assert quad(p * p / q) - 1 == pytest.approx(table["pearson"], rel=1e-7)


def test_monte_carlo_estimators_against_gaussian_closed_forms():
    table = _gaussian_values()
    n = 100_000
    rng = np.random.default_rng(5)
    P, Q = stats.multivariate_normal(_M1, _S1), stats.multivariate_normal(_M2, _S2)
    xq, xp = Q.rvs(n, random_state=rng), P.rvs(n, random_state=rng)
    with jax.enable_x64(True):
        lpq, lqq = jnp.asarray(P.logpdf(xq)), jnp.asarray(Q.logpdf(xq))
        lpp, lqp = jnp.asarray(P.logpdf(xp)), jnp.asarray(Q.logpdf(xp))
        for name in ("forward_kl", "reverse_kl", "pearson", "squared_hellinger"):
            est, se = jax.jit(fdiv.mc_divergence_from_model_samples, static_argnums=2)(
                lpq, lqq, name
            )
            assert abs(float(est) - table[name]) < 5 * float(se), (name, est, se)
            assert float(se) < 0.05 * table[name]
        for name in ("forward_kl", "squared_hellinger"):
            est, se = fdiv.mc_divergence_from_target_samples(lpp, lqp, name)
            assert abs(float(est) - table[name]) < 5 * float(se), (name, est, se)
            # Both sample sets pooled as a mixture (section 3): the same closed forms.
            est, se = fdiv.mc_divergence_from_both_samples(lpp, lqp, lpq, lqq, name)
            assert abs(float(est) - table[name]) < 5 * float(se), (name, est, se)
        # An unnormalised target: log Z is recovered and the self-normalised estimate converges.
        log_z, se_z = fdiv.mc_log_normalizer(lpq + 3.0, lqq)
        assert abs(float(log_z) - 3.0) < 5 * float(se_z)
        est, se = fdiv.mc_divergence_self_normalized(lpq + 3.0, lqq, "squared_hellinger")
        assert abs(float(est) - table["squared_hellinger"]) < 5 * float(se) + 1e-3


def test_kernel_estimators_against_gaussian_closed_forms():
    table = _gaussian_values()
    rng = np.random.default_rng(6)
    n = 1500
    xp = rng.multivariate_normal(_M1, _S1, size=n)
    xq = rng.multivariate_normal(_M2, _S2, size=n)
    with jax.enable_x64(True):
        got = float(metrics.mmd2(jnp.asarray(xp), jnp.asarray(xq), bandwidth=_BANDWIDTH))
    assert got == pytest.approx(table["mmd2"], abs=0.01)

    def gram(a, b):
        d2 = np.sum((a[:, None, :] - b[None, :, :]) ** 2, -1)
        return np.exp(-d2 / (2 * _BANDWIDTH**2))

    off = lambda k: (k.sum() - np.trace(k)) / (n * (n - 1))
    kpp, kqq, kpq = off(gram(xp, xp)), off(gram(xq, xq)), gram(xp, xq).mean()
    assert kpq == pytest.approx(table["kernel_mean_pq"], rel=0.05)
    assert kpp == pytest.approx(table["kernel_mean_pp"], rel=0.05)
    cs = math.log(kpp) + math.log(kqq) - 2 * math.log(kpq)
    assert cs == pytest.approx(table["cauchy_schwarz"], abs=0.04)


# --------------------------------------------------------------- section 10: f-DPG pseudo-rewards

_CLOSED_REWARDS = {
    "forward_kl": lambda u: u,
    "reverse_kl": lambda u: math.log(u) - 1,
    "js": lambda u: 0.5 * math.log((u + 1) / 2),
    "total_variation": lambda u: 0.5 if u > 1 else -0.5,
    "pearson": lambda u: u * u - 1,
    "squared_hellinger": lambda u: 0.5 * (math.sqrt(u) - 1),
}


@pytest.mark.parametrize("group", _groups("pseudo_rewards"), ids=_group_id)
def test_pseudo_rewards(group):
    name, params, rows = group
    params = _params(params)
    f = _generator(name, params)
    us = [mp.mpf(r["u"]) for r in rows]
    want = [float(r["R"]) for r in rows]
    for u, w in zip(us, want):
        assert float(-(f(u) - u * mp.diff(f, u))) == pytest.approx(w, rel=1e-10, abs=1e-12)
        if name in _CLOSED_REWARDS:
            assert _CLOSED_REWARDS[name](float(u)) == pytest.approx(w, rel=1e-10)
        if name == "alpha":
            a = params["alpha"]
            assert (float(u) ** a - 1) / a == pytest.approx(w, rel=1e-10)
    d = _get(name, params)
    with jax.enable_x64(True):
        got = jax.jit(d.conjugate_at_derivative)(jnp.log(jnp.asarray([float(u) for u in us])))
        _assert_all_close(got, want, 1e-10, 1e-12, "R")
