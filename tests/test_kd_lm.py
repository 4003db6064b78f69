"""Tests for the pieces of experiments/kd_lm.py (the quick config runs in test_configs.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fdiv
from experiments import kd_lm


def _np_log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def test_coarse_log_probs_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 40)) * 3
    idx = np.argsort(-logits, -1)[..., :6]
    got = np.asarray(kd_lm.coarse_log_probs(jnp.asarray(logits, jnp.float32), jnp.asarray(idx)))
    logp = _np_log_softmax(logits)
    top = np.take_along_axis(logp, idx, -1)
    rest = np.log1p(-np.exp(top).sum(-1))
    np.testing.assert_allclose(got[..., :6], top, atol=1e-5)
    np.testing.assert_allclose(got[..., 6], rest, atol=1e-5)
    np.testing.assert_allclose(jax.nn.logsumexp(got, -1), 0.0, atol=1e-5)


def test_coarse_rest_is_accurate_when_the_tail_is_tiny():
    """log(1 - sum p_top) would cancel to -inf or garbage; the masked logsumexp does not."""
    logits = jnp.asarray([[30.0, 0.0, -1.0, -2.0]])
    got = kd_lm.coarse_log_probs(logits, jnp.asarray([[0]]))
    want = np.log(np.exp(_np_log_softmax(np.asarray(logits))[0, 1:]).sum())
    assert np.isfinite(got[0, 1]) and abs(float(got[0, 1]) - want) < 1e-4
    extreme = kd_lm.coarse_log_probs(jnp.asarray([[1e4, -1e4, 0.0]]), jnp.asarray([[0, 1]]))
    assert np.all(np.isfinite(np.asarray(extreme)[..., :1])) and extreme[0, 2] < -9000


@pytest.mark.parametrize("div", sorted(kd_lm.LOSSES))
def test_coarse_grained_divergence_is_at_most_the_full_one(div):
    """Data-processing inequality for f-divergences (and the mixture-based skew/GJSD ones)."""
    rng = np.random.default_rng(1)
    t_logits = jnp.asarray(rng.normal(size=(64, 30)) * 2, jnp.float32)
    s_logits = jnp.asarray(rng.normal(size=(64, 30)) * 2, jnp.float32)
    vals, idx, rest = kd_lm._teacher_topk(t_logits, 5)
    teacher = jnp.concatenate([vals, rest[..., None]], -1)
    coarse = kd_lm.LOSSES[div](teacher, kd_lm.coarse_log_probs(s_logits, idx))
    full = kd_lm.LOSSES[div](t_logits, s_logits)
    assert np.all(np.asarray(coarse) <= np.asarray(full) + 1e-5)
    assert np.all(np.asarray(coarse) > 0)
    # With all but one token kept, coarse-graining loses nothing.
    vals, idx, rest = kd_lm._teacher_topk(t_logits, 29)
    teacher = jnp.concatenate([vals, rest[..., None]], -1)
    np.testing.assert_allclose(
        kd_lm.LOSSES[div](teacher, kd_lm.coarse_log_probs(s_logits, idx)),
        full,
        rtol=1e-4,
        atol=1e-5,
    )


def test_teacher_topk_is_sorted_and_complete():
    logits = jnp.asarray(np.random.default_rng(2).normal(size=(2, 3, 50)), jnp.float32)
    vals, idx, rest = kd_lm._teacher_topk(logits, 7)
    logp = _np_log_softmax(np.asarray(logits))
    np.testing.assert_allclose(vals, np.sort(logp, -1)[..., ::-1][..., :7], atol=1e-6)
    np.testing.assert_allclose(np.take_along_axis(logp, np.asarray(idx), -1), vals, atol=1e-6)
    np.testing.assert_allclose(np.exp(vals).sum(-1) + np.exp(rest), 1.0, atol=1e-5)


def test_loss_registry():
    assert set(kd_lm.LOSSES) == {
        "forward_kl",
        "reverse_kl",
        "js",
        "total_variation",
        "skew_kl",
        "skew_reverse_kl",
        "gjsd",
    }
    rng = np.random.default_rng(3)
    p, q = (jnp.asarray(rng.normal(size=(4, 9)), jnp.float32) for _ in range(2))
    np.testing.assert_allclose(
        kd_lm.LOSSES["gjsd"](p, q), fdiv.categorical_divergence(p, q, "js"), atol=1e-6
    )
    lp, lq = _np_log_softmax(np.asarray(p)), _np_log_softmax(np.asarray(q))
    np.testing.assert_allclose(
        kd_lm.LOSSES["forward_kl"](p, q), (np.exp(lp) * (lp - lq)).sum(-1), atol=1e-5
    )


def test_distinct_n():
    samples = np.asarray([[1, 2, 1, 2], [3, 3, 3, 3]])
    assert kd_lm._distinct(samples, 1) == pytest.approx(3 / 8)
    assert kd_lm._distinct(samples, 2) == pytest.approx(3 / 6)  # (1,2), (2,1), (3,3)


def test_on_policy_schedule_fraction():
    cfg = kd_lm.KDLMConfig(mode="on_policy", on_policy_fraction=0.3)
    frac = np.mean([kd_lm._is_on_policy(cfg, s) for s in range(2000)])
    assert abs(frac - 0.3) < 0.04
    assert not any(kd_lm._is_on_policy(kd_lm.KDLMConfig(mode="off_policy"), s) for s in range(50))
