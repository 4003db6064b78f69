"""How good is each sample-based divergence estimator? Pairs with known truth, many sample sizes.

For every pair ``(P, Q)`` (P target, Q model) of the config, sample size ``n`` and seed, the
experiment computes (docs/reference.md section 3):

* ``mc``: density-based Monte Carlo, ``fdiv.mc_divergence_from_model_samples`` on n Q-samples
  with exact log-densities (KL, reverse KL, JS, squared Hellinger, Pearson);
* ``bound``: the log-ratio critic lower bound of a critic trained by
  :func:`fdiv.critic.train_critic` for that divergence (KL, JS, squared Hellinger, Pearson):
  trained on half of the n samples, early-stopped on the best validation bound on a quarter,
  and evaluated on the remaining quarter (so it is a lower bound in expectation);
* ``nwj`` and ``dv``: NWJ and Donsker-Varadhan evaluated with the trained KL critic (NWJ's
  objective is the KL log-ratio bound, so ``nwj`` equals ``bound`` for KL; DV on the same
  critic is never smaller);
* ``classifier``: a logistic classifier's plug-in ``mean_Q f(e^l)`` on held-out Q-samples
  (the same three-way split, early-stopped on the validation classifier loss);
* ``mmd2`` and ``cs``: the unbiased MMD^2 and the kernel Cauchy-Schwarz estimate with a fixed
  bandwidth ``sqrt(d)`` (so the truth is the closed form of docs/reference.md section 9).

Truth: closed forms for Gaussian pairs (section 9; JS by 2e6-sample Monte Carlo with exact
densities), and for the Gaussian-vs-mixture pair large-sample Monte Carlo with exact densities
for the f-divergences and exact Gaussian-mixture sums for MMD^2 and CS.

Outputs in ``workdir``: ``results.json`` and ``summary.json`` (bias, std and mean per pair,
estimator, quantity and size, and the truths), ``table.txt``, ``estimators_<pair>.png``
(estimate +- std against sample size, true value dashed), ``metrics.jsonl``/``curves.png``
(seconds per cell), Orbax checkpoints of the rows computed so far (resume).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import fdiv
from experiments import settings
from experiments.settings import EstimatorsConfig, PairConfig
from fdiv import critic as critic_lib
from fdiv import kernel, variational

F_DIVERGENCES = ("forward_kl", "reverse_kl", "js", "squared_hellinger", "pearson")
CRITIC_DIVERGENCES = settings.ESTIMATOR_CRITIC_DIVERGENCES
ESTIMATORS = ("mc", "bound", "nwj", "dv", "classifier", "mmd2", "cs")


# ----------------------------------------------------------------------------------------------
# Pairs: P and Q as mixtures of isotropic Gaussians (a Gaussian is a mixture of one).


class Mixture:
    """``sum_k w_k N(means[k], var_k I)`` in dimension d."""

    def __init__(self, weights, means, variances):
        self.weights = np.asarray(weights, np.float64) / np.sum(weights)
        self.means = np.asarray(means, np.float64)
        self.variances = np.asarray(variances, np.float64)
        self.dim = self.means.shape[1]

    def sample(self, key, n):
        kc, kz = jax.random.split(key)
        comp = jax.random.choice(kc, len(self.weights), (n,), p=jnp.asarray(self.weights))
        z = jax.random.normal(kz, (n, self.dim))
        means = jnp.asarray(self.means, jnp.float32)[comp]
        std = jnp.sqrt(jnp.asarray(self.variances, jnp.float32))[comp]
        return means + std[:, None] * z

    def log_prob(self, x):
        x = jnp.asarray(x, jnp.float32)
        sq = jnp.sum((x[:, None, :] - jnp.asarray(self.means, jnp.float32)[None]) ** 2, -1)
        var = jnp.asarray(self.variances, jnp.float32)
        log_comp = (
            -0.5 * sq / var
            - 0.5 * self.dim * jnp.log(2 * math.pi * var)
            + jnp.log(jnp.asarray(self.weights, jnp.float32))
        )
        return jax.nn.logsumexp(log_comp, axis=1)


def _gauss_pair(dim, shift, scale):
    """P = N(0, I), Q = N(shift / sqrt(d) * 1, scale^2 I): ||mean shift|| = shift."""
    p = Mixture([1.0], np.zeros((1, dim)), [1.0])
    q = Mixture([1.0], np.full((1, dim), shift / math.sqrt(dim)), [scale**2])
    return p, q


def _mixture_pair(dim):
    """P = two-component mixture, Q = one Gaussian of comparable spread."""
    means = np.zeros((2, dim))
    means[0, 0], means[1, 0] = -1.5, 1.5
    p = Mixture([0.6, 0.4], means, [0.5, 0.5])
    q = Mixture([1.0], np.zeros((1, dim)), [2.25])
    return p, q


def make_pair(spec: PairConfig) -> tuple[Mixture, Mixture]:
    if spec.kind == "gauss":
        return _gauss_pair(spec.dim, spec.shift, spec.scale)
    if spec.kind == "mixture":
        return _mixture_pair(spec.dim)
    raise ValueError(f"unknown pair kind {spec.kind!r}; use 'gauss' or 'mixture'.")


# ----------------------------------------------------------------------------------------------
# Truth.


def _gauss_closed_forms(m1, v1, m2, v2, d):
    """KL, reverse KL, squared Hellinger, Pearson between N(m1, v1 I) and N(m2, v2 I)."""
    dm2 = float(np.sum((m1 - m2) ** 2))

    def kl(ma, va, mb, vb):
        return 0.5 * (d * va / vb + dm2 / vb - d + d * math.log(vb / va))

    vm = 0.5 * (v1 + v2)
    hellinger = 1.0 - (v1 * v2) ** (d / 4) / vm ** (d / 2) * math.exp(-dm2 / (8 * vm))
    pearson = math.inf
    if 2 * v2 - v1 > 0:
        pearson = (
            v2**d / (v1 ** (d / 2) * (2 * v2 - v1) ** (d / 2)) * math.exp(dm2 / (2 * v2 - v1)) - 1.0
        )
    return {
        "forward_kl": kl(m1, v1, m2, v2),
        "reverse_kl": kl(m2, v2, m1, v1),
        "squared_hellinger": hellinger,
        "pearson": pearson,
    }


def _mixture_log_mean_kernel(a: Mixture, b: Mixture, s: float) -> float:
    """``log E k(x, y)``, x ~ a, y ~ b, exact (section 9 summed over component pairs)."""
    terms = []
    for wa, ma, va in zip(a.weights, a.means, a.variances):
        for wb, mb, vb in zip(b.weights, b.means, b.variances):
            cov = (va + vb) * np.eye(a.dim)
            # pylint: disable-next=protected-access
            terms.append(
                math.log(wa * wb)
                + float(
                    kernel._gauss_log_mean_kernel(
                        jnp.asarray(ma, jnp.float32),
                        jnp.asarray(cov, jnp.float32) * 0.5,
                        jnp.asarray(mb, jnp.float32),
                        jnp.asarray(cov, jnp.float32) * 0.5,
                        s,
                    )
                )
            )
    return float(jax.nn.logsumexp(jnp.asarray(terms)))


def true_values(p: Mixture, q: Mixture, bandwidth: float, truth_samples: int, seed: int) -> dict:
    key = jax.random.PRNGKey(10_000 + seed)
    x_q = q.sample(key, truth_samples)
    log_p, log_q = p.log_prob(x_q), q.log_prob(x_q)
    truth = {}
    for name in F_DIVERGENCES:
        value, _ = fdiv.mc_divergence_from_model_samples(log_p, log_q, fdiv.get(name))
        truth[name] = float(value)
    if len(p.weights) == 1 and len(q.weights) == 1:
        truth.update(
            _gauss_closed_forms(p.means[0], p.variances[0], q.means[0], q.variances[0], p.dim)
        )
    pp = _mixture_log_mean_kernel(p, p, bandwidth)
    qq = _mixture_log_mean_kernel(q, q, bandwidth)
    pq = _mixture_log_mean_kernel(p, q, bandwidth)
    truth["mmd2"] = math.exp(pp) + math.exp(qq) - 2 * math.exp(pq)
    truth["cs"] = pp + qq - 2 * pq
    return truth


# ----------------------------------------------------------------------------------------------
# One (pair, n, seed) cell.


def _critic_estimates(x_p, x_q, cfg: EstimatorsConfig, seed):
    """Critics trained on the first half of the samples, selected (early stopping) on the next
    quarter, evaluated on the last quarter."""
    out = {}
    n = x_p.shape[0]
    held = n // 4
    eval_batches = max(2, min(8, held // 32))
    common = dict(
        steps=cfg.critic_steps,
        batch_size=min(cfg.critic_batch, n - 2 * held),
        seed=seed,
        hidden=tuple(cfg.critic_hidden),
        eval_batches=eval_batches,
        holdout=held,
        validation=held,
        eval_every=cfg.critic_eval_every,
        weight_decay=cfg.critic_weight_decay,
        learning_rate=cfg.critic_lr,
    )
    hp, hq = x_p[n - held :], x_q[n - held :]
    for name in cfg.critic_divergences:
        res = critic_lib.train_critic(x_p, x_q, name, objective="bound", **common)
        out[("bound", name)] = res.estimate
        if name == "forward_kl":
            l_p, l_q = res.log_ratio(hp), res.log_ratio(hq)
            out[("nwj", name)] = float(variational.nwj(1.0 + l_p, 1.0 + l_q))
            out[("dv", name)] = float(variational.donsker_varadhan(l_p, l_q))
    res = critic_lib.train_critic(x_p, x_q, "forward_kl", objective="classifier", **common)
    l_q = res.log_ratio(hq)
    for name in F_DIVERGENCES:
        out[("classifier", name)] = float(jnp.mean(fdiv.get(name).f(l_q)))
    return out


def _cell(p, q, n, seed, cfg: EstimatorsConfig, *, with_critic, with_kernel):
    key = jax.random.PRNGKey(seed * 1_000_003 + n)
    kp, kq = jax.random.split(key)
    x_p, x_q = p.sample(kp, n), q.sample(kq, n)
    out = {}
    log_p, log_q = p.log_prob(x_q), q.log_prob(x_q)
    for name in F_DIVERGENCES:
        value, _ = fdiv.mc_divergence_from_model_samples(log_p, log_q, fdiv.get(name))
        out[("mc", name)] = float(value)
    if with_kernel:
        bw = math.sqrt(p.dim)
        out[("mmd2", "mmd2")] = float(kernel.mmd2(x_p, x_q, bandwidth=bw, block_size=cfg.block))
        out[("cs", "cs")] = float(
            kernel.cauchy_schwarz(x_p, x_q, bandwidth=bw, block_size=cfg.block)
        )
    if with_critic:
        out.update(_critic_estimates(x_p, x_q, cfg, seed))
    return out


# ----------------------------------------------------------------------------------------------
# Aggregation, table, plot.


def _aggregate(rows, truths):
    groups = {}
    for r in rows:
        groups.setdefault((r["pair"], r["estimator"], r["quantity"], r["n"]), []).append(r["value"])
    results = []
    for (pair, est, qty, n), values in sorted(groups.items()):
        v = np.asarray(values, np.float64)
        truth = truths[pair][qty]
        results.append(
            {
                "pair": pair,
                "estimator": est,
                "quantity": qty,
                "n": n,
                "seeds": len(v),
                "truth": truth,
                "mean": float(v.mean()),
                "bias": float(v.mean() - truth),
                # None (JSON null) where one seed gives no spread.
                "std": float(v.std(ddof=1)) if len(v) > 1 else None,
            }
        )
    return results


def format_table(results) -> str:
    lines = [
        f"{'pair':10s} {'quantity':18s} {'estimator':10s} {'n':>6s} {'truth':>9s} "
        f"{'bias':>9s} {'std':>9s} seeds"
    ]
    for r in results:
        lines.append(
            f"{r['pair']:10s} {r['quantity']:18s} {r['estimator']:10s} {r['n']:6d} "
            f"{r['truth']:9.4f} {r['bias']:+9.4f} "
            f"{'-' if r['std'] is None else format(r['std'], '9.4f'):>9s} {r['seeds']}"
        )
    return "\n".join(lines)


def _plot(results, pair, path):
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    rows = [r for r in results if r["pair"] == pair]
    quantities = [
        q for q in (*F_DIVERGENCES, "mmd2", "cs") if any(r["quantity"] == q for r in rows)
    ]
    fig, axes = plt.subplots(
        1, len(quantities), figsize=(3.2 * len(quantities), 3.0), squeeze=False
    )
    colours = {est: f"C{i}" for i, est in enumerate(ESTIMATORS)}
    for ax, qty in zip(axes[0], quantities):
        sel = [r for r in rows if r["quantity"] == qty]
        truth = sel[0]["truth"]
        for est in [e for e in ESTIMATORS if any(r["estimator"] == e for r in sel)]:
            pts = sorted((r["n"], r["mean"], r["std"] or 0.0) for r in sel if r["estimator"] == est)
            ns, means, stds = (np.asarray(c) for c in zip(*pts))
            ax.errorbar(
                ns,
                means,
                yerr=np.nan_to_num(stds, posinf=0.0),
                marker="o",
                ms=3,
                capsize=2,
                label=est,
                color=colours[est],
            )
        ax.axhline(truth, color="k", ls="--", lw=1, label="truth")
        # A plug-in estimate of a heavy-tailed ratio (Pearson) can still be far off: keep the
        # axis on the scale of the truth; the table has every value.
        span = 1.5 * abs(truth) + 0.02
        ax.set_ylim(truth - span, truth + span)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("samples per distribution n")
        ax.set_ylabel("estimate")
        ax.set_title(qty)
        ax.legend(fontsize=6)
    fig.suptitle(
        f"estimators on pair {pair}: mean +- std over seeds (values beyond the axes: see table.txt)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------


def read_config(config: Any, workdir: str | None = None) -> EstimatorsConfig:
    """The typed, validated config (every bad field in one `ConfigError`)."""
    return settings.read(EstimatorsConfig, config, workdir)


def train_and_evaluate(config: Any, workdir: str) -> dict:
    """Runs every (pair, size, seed) cell of `config`; writes results, tables and plots.

    `config` (a ConfigDict or `EstimatorsConfig`) is read and validated first: one
    `ConfigError` lists every bad field before any work.

    One "step" is one cell. Progress goes to ``metrics.jsonl`` (seconds per cell); every
    ``checkpoint_every`` cells the rows so far are checkpointed with Orbax
    (``fdiv.train.Checkpointer``, rows in the checkpoint's metadata), and a rerun in the same
    `workdir` resumes after the newest checkpoint.

    Returns:
      The summary (also ``summary.json``): ``results`` (bias/std/mean rows), ``truth``,
      ``num_steps``, ``seconds``.
    """
    from fdiv import train  # pylint: disable=import-outside-toplevel

    cfg = read_config(config, workdir)
    cells = cfg.cells()
    os.makedirs(workdir, exist_ok=True)
    ckpt = train.Checkpointer(workdir, every_steps=cfg.checkpoint_every, keep=2, async_save=False)
    writer = train.MetricWriter(workdir, len(cells), tensorboard=False)
    _, meta = ckpt.restore_latest({"cells_done": np.zeros((), np.int32)})
    rows = list(meta["rows"]) if meta else []
    first = int(meta["step"]) if meta else 0
    writer.truncate_after(first)
    if first:
        print(f"resuming after cell {first} of {len(cells)}", flush=True)
    start = time.time()
    truths, pairs = {}, {}
    for spec in cfg.pairs:
        p, q = make_pair(spec)
        pairs[spec.name] = (p, q)
        truths[spec.name] = true_values(p, q, math.sqrt(p.dim), cfg.truth_samples, 0)
    for step, (spec, n, seed) in enumerate(cells[first:], start=first + 1):
        p, q = pairs[spec.name]
        t0 = time.time()
        with_critic = (
            n in cfg.critic_sizes and seed < cfg.critic_seeds and spec.name in cfg.critic_pairs
        )
        with_kernel = n <= cfg.kernel_max_n or seed < cfg.kernel_large_seeds
        out = _cell(p, q, n, seed, cfg, with_critic=with_critic, with_kernel=with_kernel)
        rows.extend(
            {"pair": spec.name, "n": n, "seed": seed, "estimator": est, "quantity": qty, "value": v}
            for (est, qty), v in out.items()
        )
        print(f"pair {spec.name} n {n:6d} seed {seed} critic {int(with_critic)}", flush=True)
        writer.write(
            step,
            {
                "cell_seconds": time.time() - t0,
                "mc_forward_kl_error": out[("mc", "forward_kl")] - truths[spec.name]["forward_kl"],
            },
            wall_time=time.time() - start,
        )
        if ckpt.should_save(step) or step == len(cells):
            ckpt.save(step, {"cells_done": np.asarray(step, np.int32)}, {"rows": rows})
    ckpt.wait()
    writer.close()
    results = _aggregate(rows, truths)
    table = format_table(results)
    print(table, flush=True)
    summary = {
        "results": results,
        "truth": truths,
        "num_steps": len(cells),
        "seconds": time.time() - start,
    }
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(workdir, "table.txt"), "w") as f:
        f.write(table + "\n")
    for spec in cfg.pairs:
        _plot(results, spec.name, os.path.join(workdir, f"estimators_{spec.name}.png"))
    train.plot_curves(workdir)
    train.write_summary(workdir, summary)
    return summary
