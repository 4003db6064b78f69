"""Independent reference implementations shared by the divergence tests and the fuzz grid.

Written from the definitions (docs/reference.md sections 1 and 2), not from fdiv's code:

* ``generator_numpy`` / ``generator_jnp``: the generators ``f(u)`` as plain float64 NumPy and
  jnp expressions of ``u`` (the latter for autodiff references of f' and f'').
* ``generator_mp``: ``f(e^l)`` in mpmath at 60 digits, for any real ``l`` (edges of the
  generators: ratios far beyond float64's range).
* ``log_softmax`` / ``divergence`` / ``non_f``: categorical divergences from logits in
  ``np.longdouble`` (x87 extended precision: 64-bit mantissa, exponent range e^+-11356), each
  per-class term ``q f(p/q)`` written in log space so that it is accurate wherever its value
  is representable, with the limits of section 1 at zero probabilities.
* ``fuzz_table``: the fuzz grid of every registered divergence against ``divergence``.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import mpmath
import numpy as np

LD = np.longdouble
_LOG2 = np.log(LD(2))

# Parameters used wherever "every divergence" is tested: the defaults of the registry plus
# members on both sides of the alpha / t-power regimes.
ALL_CASES = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("js", {}),
    ("squared_hellinger", {}),
    ("total_variation", {}),
    ("pearson", {}),
    ("neyman", {}),
    ("jeffreys", {}),
    ("softened_reverse_kl", {}),
    ("alpha", {"alpha": 0.5}),
    ("alpha", {"alpha": 2.0}),
    ("alpha", {"alpha": -1.0}),
    ("alpha", {"alpha": 3.0}),
    ("alpha", {"alpha": 0.25}),
    ("alpha", {"alpha": 0.8}),
    ("triangular", {}),
    ("arithmetic_geometric", {}),
    ("t_power", {"t": 2.0}),
    ("t_power", {"t": 0.5}),
    ("t_power", {"t": -0.5}),
    ("log1p_abs", {}),
    ("modified_gan", {}),
]


def case_id(name, params):
    return name + "".join(f"_{v}" for v in params.values())


# ----------------------------------------------------------------------------------------------
# Generators as functions of u.


def generator_numpy(name, params):
    """``f(u)`` in float64 NumPy for ``u`` in a moderate range."""
    a = params.get("alpha", 0.5)
    t = params.get("t", 2.0)
    s = -1.0 if 0 < t < 1 else 1.0
    table = {
        "forward_kl": lambda u: u * np.log(u),
        "reverse_kl": lambda u: -np.log(u),
        "js": lambda u: 0.5 * (u * np.log(u) - (u + 1) * np.log((u + 1) / 2)),
        "squared_hellinger": lambda u: 0.5 * (np.sqrt(u) - 1) ** 2,
        "total_variation": lambda u: 0.5 * np.abs(u - 1),
        "pearson": lambda u: (u - 1) ** 2,
        "neyman": lambda u: (1 - u) ** 2 / u,
        "jeffreys": lambda u: (u - 1) * np.log(u),
        "softened_reverse_kl": lambda u: (u + 1) * np.log((u + 1) / (2 * u)),
        "alpha": lambda u: (u**a - 1 - a * (u - 1)) / (a * (a - 1)),
        "triangular": lambda u: (u - 1) ** 2 / (u + 1),
        "arithmetic_geometric": lambda u: (1 + u) * np.log((1 + u) / (2 * np.sqrt(u))),
        "t_power": lambda u: s * (u**t - 1),
        "log1p_abs": lambda u: u ** np.sign(u - 1) - 1,
        "modified_gan": lambda u: np.log((1 + u) / (2 * u)) + 0.5 * (u - 1),
    }

    def f(u):
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return table[name](u)

    return f


def generator_jnp(name, params):
    """The same generators as jnp expressions of ``u``."""
    a = params.get("alpha", 0.5)
    t = params.get("t", 2.0)
    s = -1.0 if 0 < t < 1 else 1.0
    return {
        "forward_kl": lambda u: u * jnp.log(u),
        "reverse_kl": lambda u: -jnp.log(u),
        "js": lambda u: 0.5 * (u * jnp.log(u) - (u + 1) * jnp.log((u + 1) / 2)),
        "squared_hellinger": lambda u: 0.5 * (jnp.sqrt(u) - 1) ** 2,
        "total_variation": lambda u: 0.5 * jnp.abs(u - 1),
        "pearson": lambda u: (u - 1) ** 2,
        "neyman": lambda u: (1 - u) ** 2 / u,
        "jeffreys": lambda u: (u - 1) * jnp.log(u),
        "softened_reverse_kl": lambda u: (u + 1) * jnp.log((u + 1) / (2 * u)),
        "alpha": lambda u: (u**a - 1 - a * (u - 1)) / (a * (a - 1)),
        "triangular": lambda u: (u - 1) ** 2 / (u + 1),
        "arithmetic_geometric": lambda u: (1 + u) * jnp.log((1 + u) / (2 * jnp.sqrt(u))),
        "t_power": lambda u: s * (u**t - 1),
        "log1p_abs": lambda u: u ** jnp.sign(u - 1) - 1,
        "modified_gan": lambda u: jnp.log((1 + u) / (2 * u)) + 0.5 * (u - 1),
    }[name]


def generator_mp(name, params):
    """``f(e^l)`` as an mpmath function of ``l`` (an mpf, possibly +-inf)."""
    mp = mpmath.mp
    a = mp.mpf(params.get("alpha", 0.5))
    t = mp.mpf(params.get("t", 2.0))
    s = -1 if 0 < t < 1 else 1
    half = mp.mpf(1) / 2
    table = {
        "forward_kl": lambda u, l: u * l,
        "reverse_kl": lambda u, l: -l,
        "js": lambda u, l: half * (u * l - (u + 1) * mp.log((u + 1) / 2)),
        "squared_hellinger": lambda u, l: half * (mp.sqrt(u) - 1) ** 2,
        "total_variation": lambda u, l: half * abs(u - 1),
        "pearson": lambda u, l: (u - 1) ** 2,
        "neyman": lambda u, l: (1 - u) ** 2 / u,
        "jeffreys": lambda u, l: (u - 1) * l,
        "softened_reverse_kl": lambda u, l: (u + 1) * (mp.log(u + 1) - mp.log(2) - l),
        "alpha": lambda u, l: (mp.exp(a * l) - 1 - a * (u - 1)) / (a * (a - 1)),
        "triangular": lambda u, l: (u - 1) ** 2 / (u + 1),
        "arithmetic_geometric": lambda u, l: (1 + u) * (mp.log(1 + u) - mp.log(2) - l / 2),
        "t_power": lambda u, l: s * (mp.exp(t * l) - 1),
        "log1p_abs": lambda u, l: (u - 1) if l > 0 else (1 / u - 1),
        "modified_gan": lambda u, l: mp.log(1 + u) - mp.log(2) - l + half * (u - 1),
    }

    def f(l):
        return table[name](mp.exp(l), l)

    return f


# ----------------------------------------------------------------------------------------------
# Categorical divergences in extended precision, in log space.


def log_softmax(logits, temperature=1.0):
    """Log-probabilities in longdouble along the last axis, from the (exact) input values."""
    z = np.asarray(logits).astype(LD) / LD(temperature)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = z - np.max(z, axis=-1, keepdims=True)
        # log(1 + sum of the others): log1p keeps a normaliser near 0 (one dominant class).
        at_max = z == 0
        rest = np.sum(np.where(at_max, LD(0), np.exp(z)), axis=-1, keepdims=True)
        return z - np.log1p(rest + (np.sum(at_max, axis=-1, keepdims=True) - 1))


def _limits(name, params):
    """``(f(0), lim f(u)/u)`` from the definitions (section 1)."""
    inf = math.inf
    a = params.get("alpha", 0.5)
    t = params.get("t", 2.0)
    return {
        "forward_kl": (0.0, inf),
        "reverse_kl": (inf, 0.0),
        "js": (0.5 * math.log(2), 0.5 * math.log(2)),
        "squared_hellinger": (0.5, 0.5),
        "total_variation": (0.5, 0.5),
        "pearson": (1.0, inf),
        "neyman": (inf, 1.0),
        "jeffreys": (inf, inf),
        "softened_reverse_kl": (inf, -math.log(2)),
        "alpha": (1 / a if a > 0 else inf, 1 / (1 - a) if a < 1 else inf),
        "triangular": (1.0, 1.0),
        "arithmetic_geometric": (inf, inf),
        "t_power": ((-1.0 if t > 1 else 1.0) if t > 0 else inf, inf if t > 1 else 0.0),
        "log1p_abs": (inf, 1.0),
        "modified_gan": (inf, 0.5),
    }[name]


def _log_abs_diff(lp, lq):
    """``log |p - q|`` from ``log p``, ``log q`` (``-inf`` where ``p = q``)."""
    d = np.abs(lp - lq)
    with np.errstate(divide="ignore"):
        return np.maximum(lp, lq) + np.log(-np.expm1(-d))


def _gkl(s):
    """``phi(e^s) = e^s s - e^s + 1 >= 0`` (phi(t) = t log t - t + 1), series near 0."""
    small = np.abs(s) < 1e-3
    series = s * s * (LD(1) / 2 + s * (LD(1) / 3 + s * (LD(1) / 8 + s * (LD(1) / 30))))
    return np.where(small, series, np.exp(s) * (s - 1) + 1)


def _expm1_minus_x(d):
    small = np.abs(d) < 1e-3
    series = d * d * (LD(1) / 2 + d * (LD(1) / 6 + d * (LD(1) / 24 + d * (LD(1) / 120))))
    return np.where(small, series, np.expm1(d) - d)


def _log_cosh(y):
    y = np.abs(y)
    small = y < 1
    return np.where(
        small,
        np.log1p(2 * np.sinh(np.minimum(y, 1) / 2) ** 2),
        y - _LOG2 + np.log1p(np.exp(-2 * y)),
    )


def terms(name, params, lp, lq):
    """Per-class ``q f(p/q)`` in longdouble for finite ``lp``, ``lq`` (arrays)."""
    lp, lq = np.asarray(lp, LD), np.asarray(lq, LD)
    d = lp - lq
    p, q = np.exp(lp), np.exp(lq)
    near = np.abs(d) <= 1
    with np.errstate(all="ignore"):
        if name == "forward_kl":
            return p * d
        if name == "reverse_kl":
            return -q * d
        if name == "js":
            # 1/2 [p log(p/m) + q log(q/m)] = m/2 [phi(p/m) + phi(q/m)], m = (p + q)/2: terms >= 0.
            lm = np.logaddexp(lp, lq) - _LOG2
            return 0.5 * np.exp(lm) * (_gkl(lp - lm) + _gkl(lq - lm))
        if name == "squared_hellinger":
            return 0.5 * np.exp(np.maximum(lp, lq) + 2 * np.log(-np.expm1(-np.abs(d) / 2)))
        if name == "total_variation":
            return 0.5 * np.exp(_log_abs_diff(lp, lq))
        if name == "pearson":
            return np.exp(2 * _log_abs_diff(lp, lq) - lq)
        if name == "neyman":
            return np.exp(2 * _log_abs_diff(lp, lq) - lp)
        if name == "jeffreys":
            return np.exp(_log_abs_diff(lp, lq)) * np.abs(d)
        if name == "softened_reverse_kl":
            # (p + q) log((p + q)/(2p)) = (p + q) log1p(expm1(-d)/2)
            log_ratio = np.where(
                d > -1, np.log1p(np.expm1(-np.maximum(d, -1)) / 2), np.logaddexp(0, -d) - _LOG2
            )
            return np.exp(np.logaddexp(lp, lq)) * log_ratio
        if name == "alpha":
            a = LD(params["alpha"])
            if a == 1:
                return p * d - p + q
            if a == 0:
                return -q * d + p - q
            tiny = np.abs(d) < 1e-4
            ds = np.where(tiny, d, 0)
            series = ds * ds * (LD(1) / 2 + ds * (1 + a) / 6 + ds * ds * (1 + a + a * a) / 24)
            near_value = q * np.where(
                tiny, series, (np.expm1(a * d) - a * np.expm1(d)) / (a * (a - 1))
            )
            far_value = (np.exp(a * lp + (1 - a) * lq) - q - a * (p - q)) / (a * (a - 1))
            return np.where(near, near_value, far_value)
        if name == "triangular":
            return np.exp(2 * _log_abs_diff(lp, lq) - np.logaddexp(lp, lq))
        if name == "arithmetic_geometric":
            return np.exp(np.logaddexp(lp, lq)) * _log_cosh(d / 2)
        if name == "t_power":
            t = LD(params["t"])
            s = -1 if 0 < t < 1 else 1
            return np.where(near, s * q * np.expm1(t * d), s * (np.exp(t * lp + (1 - t) * lq) - q))
        if name == "log1p_abs":
            # p > q: p - q;  p <= q: q^2/p - q = q expm1(-d).
            below = np.where(d >= -1, q * np.expm1(-d), np.exp(lq - d + np.log1p(-np.exp(d))))
            return np.where(d > 0, np.exp(_log_abs_diff(lp, lq)), below)
        if name == "modified_gan":
            # q [log((1 + u)/(2u)) + (u - 1)/2] = q [log cosh(d/2) + (e^d - 1 - d)/2]: terms >= 0.
            dn = np.clip(d, -1, 1)
            near_value = q * (_log_cosh(dn / 2) + 0.5 * _expm1_minus_x(dn))
            far_value = q * (np.logaddexp(0, -d) - _LOG2) + 0.5 * (p - q)
            return np.where(near, near_value, far_value)
    raise AssertionError(name)


def perspective(name, params, lp, lq):
    """``q f(p/q)`` with the limits at ``p = 0`` and/or ``q = 0`` (longdouble)."""
    lp, lq = np.broadcast_arrays(np.asarray(lp, LD), np.asarray(lq, LD))
    p_zero, q_zero = np.isneginf(lp), np.isneginf(lq)
    safe_p = np.where(p_zero | q_zero, LD(0), lp)
    safe_q = np.where(p_zero | q_zero, LD(0), lq)
    value = terms(name, params, safe_p, safe_q)
    f_zero, slope = _limits(name, params)
    with np.errstate(all="ignore"):
        at_p_zero = LD(f_zero) * np.exp(lq) if math.isfinite(f_zero) else LD(np.inf)
        at_q_zero = LD(slope) * np.exp(lp) if math.isfinite(slope) else LD(np.inf)
    value = np.where(p_zero & ~q_zero, at_p_zero, value)
    value = np.where(q_zero & ~p_zero, at_q_zero, value)
    value = np.where(p_zero & q_zero, LD(0), value)
    return np.where(np.isnan(lp) | np.isnan(lq), LD(np.nan), value)


def divergence(name, params, target_logits, model_logits, temperature=1.0):
    """``sum_x q f(p/q)`` over the last axis, from logits; float64 result."""
    lp = log_softmax(target_logits, temperature)
    lq = log_softmax(model_logits, temperature)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.sum(perspective(name, params, lp, lq), axis=-1).astype(np.float64)


def _kl(lp, lq):
    with np.errstate(all="ignore"):
        return np.sum(perspective("forward_kl", {}, lp, lq), axis=-1)


def _log_mix(la, lb, w):
    with np.errstate(divide="ignore"):
        return np.logaddexp(la + np.log(LD(w)), lb + np.log1p(-LD(w)))


def non_f(name, params, target_logits, model_logits, temperature=1.0):
    """The non-f members of discrete.py, from their definitions; float64 result."""
    lp = log_softmax(target_logits, temperature)
    lq = log_softmax(model_logits, temperature)
    with np.errstate(all="ignore"):
        if name == "skew_kl":
            out = _kl(lp, _log_mix(lp, lq, params["alpha"]))
        elif name == "skew_reverse_kl":
            out = _kl(lq, _log_mix(lq, lp, params["alpha"]))
        elif name == "generalized_jsd":
            b = LD(params["beta"])
            lm = _log_mix(lp, lq, b)
            out = b * _kl(lp, lm) + (1 - b) * _kl(lq, lm)
        elif name == "cauchy_schwarz":
            p, q = np.exp(lp), np.exp(lq)
            pq, pp, qq = (np.sum(x * y, axis=-1) for x, y in ((p, q), (p, p), (q, q)))
            out = -np.log(pq * pq / (pp * qq))
        else:
            raise AssertionError(name)
    return out.astype(np.float64)


# ----------------------------------------------------------------------------------------------
# The fuzz grid.

FUZZ_CLASSES = (2, 10, 1000, 50_000)
FUZZ_SPREADS = (1.0, 10.0, 100.0, 1e3, 1e4)
FUZZ_ZEROS = ("none", "shared", "independent")


def fuzz_logits(seed, rows, classes, spread, zeros):
    """float32-representable target and model logits for one cell of the grid."""
    rng = np.random.default_rng(seed)
    t = (spread * rng.standard_normal((rows, classes))).astype(np.float32)
    m = (spread * rng.standard_normal((rows, classes))).astype(np.float32)
    if zeros != "none" and classes > 2:
        zt = rng.random((rows, classes)) < 0.2
        zm = zt if zeros == "shared" else rng.random((rows, classes)) < 0.2
        zt[:, 0] = zm[:, 0] = False
        t[zt], m[zm] = -np.inf, -np.inf
    return t, m


def fuzz_table(
    cases=ALL_CASES,
    classes=FUZZ_CLASSES,
    spreads=FUZZ_SPREADS,
    zeros=FUZZ_ZEROS,
    dtypes=("float32", "float64"),
    rows=4,
    float32_floor=1e-3,
):
    """Runs ``categorical_divergence`` (jitted) over the grid; returns ``{case_id: stats}``.

    ``stats[dtype]`` holds ``worst_rel`` (largest relative error where both values are finite;
    for float32 only where the reference exceeds ``float32_floor`` in magnitude), ``nan`` (NaN
    where the reference is not NaN), ``inf_mismatch`` (finite where the reference is infinite
    or the reverse) and ``rows``.
    """
    from fdiv import discrete  # pylint: disable=import-outside-toplevel
    from fdiv.divergences import get  # pylint: disable=import-outside-toplevel

    grid = list(itertools.product(classes, spreads, zeros))
    inputs = [fuzz_logits(i, rows, *cell) for i, cell in enumerate(grid)]
    divergences = [get(name, **params) for name, params in cases]
    # One compiled function for every case (per shape and dtype): compiling each divergence on
    # its own took most of the time of small grids.
    every_case = jax.jit(
        lambda t, m: [discrete.categorical_divergence(t, m, d) for d in divergences]
    )
    outputs = {}
    for i, (t, m) in enumerate(inputs):
        for dt in dtypes:
            with jax.enable_x64(dt == "float64"):
                got = every_case(jnp.asarray(t, dt), jnp.asarray(m, dt))
                outputs[i, dt] = [np.asarray(g, np.float64) for g in got]
    out = {}
    for k, (name, params) in enumerate(cases):
        stats = {dt: {"worst_rel": 0.0, "nan": 0, "inf_mismatch": 0, "rows": 0} for dt in dtypes}
        for i, ((t, m), cell) in enumerate(zip(inputs, grid)):
            ref64 = divergence(name, params, t, m)
            for dt in dtypes:
                ref = ref64
                got = outputs[i, dt][k]
                s = stats[dt]
                if dt == "float32":
                    with np.errstate(over="ignore"):
                        ref = ref.astype(np.float32).astype(
                            np.float64
                        )  # overflow is +-inf in float32
                s["rows"] += got.size
                s["nan"] += int(np.sum(np.isnan(got) & ~np.isnan(ref)))
                s["inf_mismatch"] += int(
                    np.sum(np.isinf(ref) != np.isinf(got)) - np.sum(np.isnan(got) & np.isinf(ref))
                )
                both = np.isfinite(ref) & np.isfinite(got)
                if dt == "float32":
                    both &= np.abs(ref) > float32_floor
                if np.any(both):
                    rel = np.abs(got[both] - ref[both]) / np.maximum(np.abs(ref[both]), 1e-300)
                    if rel.max() > s["worst_rel"]:
                        s["worst_rel"] = float(rel.max())
                        s["worst_cell"] = {"classes": cell[0], "spread": cell[1], "zeros": cell[2]}
        out[case_id(name, params)] = stats
    return out


def format_table(stats):
    lines = [
        "| divergence | f32 worst rel | f64 worst rel | NaN f32/f64 | inf mismatch f32/f64 |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, s in stats.items():
        f32, f64 = s["float32"], s["float64"]
        lines.append(
            f"| {key} | {f32['worst_rel']:.1e} | {f64['worst_rel']:.1e} | "
            f"{f32['nan']}/{f64['nan']} | {f32['inf_mismatch']}/{f64['inf_mismatch']} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Generator edges: f, f/u, f', u^2 f'' and u f' - f at extreme log u, in mpmath.

EDGE_LOG_U = (
    -math.inf,
    -1e4,
    -800.0,
    -745.0,
    -709.5,
    -200.0,
    -100.0,
    -89.0,
    -88.0,
    -87.5,
    -87.0,
    -50.0,
    -20.0,
    -1.0,
    -1e-3,
    0.0,
    1e-3,
    1.0,
    20.0,
    50.0,
    87.0,
    87.5,
    88.0,
    89.0,
    100.0,
    200.0,
    709.5,
    745.0,
    800.0,
    1e4,
    math.inf,
)


def edge_values(name, params, method, log_u):
    """``method`` (``f``, ``f_over_u``, ``f_prime``, ``weight``, ``conjugate_at_derivative``) at
    each ``log_u`` in mpmath (60 digits); infinite ``log_u`` gives the limit. Returns mpf values
    (``mpmath.inf`` allowed) or None where the quantity is undefined (a kink at u = 1)."""
    mp = mpmath.mp
    out = []
    with mpmath.workdps(60):
        g = generator_mp(name, params)

        def at(l):
            l = mp.mpf(l)
            if method == "f":
                return g(l)
            if method == "f_over_u":
                return g(l) / mp.exp(l)
            d1 = mp.diff(g, l)  # d/dl f(e^l) = u f'(u)
            if method == "f_prime":
                return d1 / mp.exp(l)
            if method == "conjugate_at_derivative":
                return d1 - g(l)
            if method == "weight":  # u^2 f'' = d2 - d1
                return mp.diff(g, l, 2) - d1
            raise AssertionError(method)

        for l in log_u:
            if math.isinf(l):
                # Limits: evaluate far out and let the value settle (or diverge).
                far = [at(math.copysign(x, l)) for x in (2e5, 4e5)]
                a, b = far
                if abs(b) > mp.mpf(10) ** 4000:
                    out.append(mp.inf * mp.sign(b))
                elif abs(b - a) <= mp.mpf(10) ** -30 * (1 + abs(b)):
                    out.append(b)
                else:
                    out.append(mp.inf * mp.sign(b))
            else:
                out.append(at(l))
    return out


def to_dtype(values, dtype):
    """mpf values rounded to ``dtype`` as a float64 array: overflow to +-inf, underflow to 0."""
    info = np.finfo(dtype)
    res = []
    for v in values:
        if v is None:
            res.append(np.nan)
        elif mpmath.isinf(v) or abs(v) > mpmath.mpf(float(info.max)):
            res.append(math.copysign(math.inf, float(mpmath.sign(v))))
        elif abs(v) < mpmath.mpf(float(info.smallest_subnormal)):
            res.append(0.0)
        else:
            res.append(float(v))
    return np.asarray(res, np.float64)
