"""The estimators experiment's truths: closed forms against Monte Carlo and the kernel module."""

import math

import jax
import numpy as np
import pytest

import configs
import fdiv
from experiments import estimators, settings
from fdiv import kernel
from fdiv.train.config import ConfigError


def test_gaussian_closed_forms_agree_with_monte_carlo():
    p, q = estimators._gauss_pair(4, 0.5, 1.2)
    closed = estimators._gauss_closed_forms(
        p.means[0], p.variances[0], q.means[0], q.variances[0], 4
    )
    x_q = q.sample(jax.random.PRNGKey(0), 400_000)
    log_p, log_q = p.log_prob(x_q), q.log_prob(x_q)
    for name, value in closed.items():
        est, se = fdiv.mc_divergence_from_model_samples(log_p, log_q, fdiv.get(name))
        assert abs(float(est) - value) < 4 * float(se) + 1e-4, (name, float(est), value, float(se))


def test_mixture_kernel_truth_reduces_to_gaussian_closed_forms():
    p, q = estimators._gauss_pair(3, 0.8, 1.5)
    s = math.sqrt(3)
    pp = estimators._mixture_log_mean_kernel(p, p, s)
    qq = estimators._mixture_log_mean_kernel(q, q, s)
    pq = estimators._mixture_log_mean_kernel(p, q, s)
    args = (p.means[0], p.variances[0] * np.eye(3), q.means[0], q.variances[0] * np.eye(3))
    np.testing.assert_allclose(
        pp + qq - 2 * pq, float(kernel.gaussian_cauchy_schwarz(*args, bandwidth=s)), rtol=1e-5
    )
    np.testing.assert_allclose(
        math.exp(pp) + math.exp(qq) - 2 * math.exp(pq),
        float(kernel.gaussian_mmd2(*args, bandwidth=s)),
        rtol=1e-4,
    )


def test_config_is_typed_and_every_bad_field_is_reported_before_any_work(tmp_path):
    quick = configs.get_config("estimators_gauss", "quick")
    cfg = estimators.read_config(quick)
    assert cfg.pairs == (settings.PairConfig("gauss_d1", "gauss", 1, 0.5, 1.2),)
    assert cfg.num_steps == len(cfg.cells()) == 4 and cfg.critic_hidden == (16,)
    c = configs.get_config("estimators_gauss", "quick")
    c.pairs[0].kind = "cauchy"
    c.pairs[0].dimm = 2
    c.sizes = (256, 1)
    c.critic_pairs = ("gauss_d2",)
    c.critic_divergences = ("total_variation",)
    c.critic_lr = 0.0
    run = tmp_path / "run"
    with pytest.raises(ConfigError) as e:
        estimators.train_and_evaluate(c, str(run))
    msgs = e.value.problems
    assert any(
        m.startswith("config.pairs[0].dimm is not a field (did you mean 'dim'") for m in msgs
    )
    del c.pairs[0]["dimm"]
    with pytest.raises(ConfigError) as e:
        estimators.train_and_evaluate(c, str(run))
    fields = sorted(m.split("=")[0].split(" ")[0] for m in e.value.problems)
    assert fields == [
        "config.critic_divergences",
        "config.critic_lr",
        "config.critic_pairs",
        "config.pairs[0].kind",
        "config.sizes",
    ], e.value.problems
    assert "\n" not in str(e.value)
    assert not (run / "metrics.jsonl").exists()  # nothing ran
    # Cells and steps must agree; the message gives the count to set.
    c = configs.get_config("estimators_gauss", "quick")
    c.seeds = 3
    with pytest.raises(ConfigError, match=r"config.num_steps=4 .* 6 \(set --config.num_steps=6\)"):
        estimators.read_config(c)
    c.pairs = ("gauss_d1",)
    with pytest.raises(ConfigError, match=r"config.pairs\[0\]='gauss_d1' must be a config"):
        estimators.read_config(c)


def test_nan_inside_a_pair_is_reported():
    c = configs.get_config("estimators_gauss", "quick")
    c.pairs[0].shift = float("nan")
    with pytest.raises(ConfigError, match=r"config.pairs\[0\].shift is NaN"):
        estimators.read_config(c)
