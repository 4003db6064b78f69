"""Tests for the pieces of experiments/kd_lm.py (the quick config runs in test_configs.py)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import kd_lm, settings
from fdiv import kd
from fdiv.train.config import ConfigError


def _np_log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _np_kl(p, q):
    return np.sum(np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0), -1)


# Independent NumPy forms of the seven divergences of probability vectors (P teacher, Q student).
NUMPY = {
    "forward_kl": lambda p, q: _np_kl(p, q),
    "reverse_kl": lambda p, q: _np_kl(q, p),
    "js": lambda p, q: 0.5 * _np_kl(p, (p + q) / 2) + 0.5 * _np_kl(q, (p + q) / 2),
    "total_variation": lambda p, q: 0.5 * np.abs(p - q).sum(-1),
    "skew_kl": lambda p, q: _np_kl(p, 0.1 * p + 0.9 * q),
    "skew_reverse_kl": lambda p, q: _np_kl(q, 0.9 * p + 0.1 * q),
    "gjsd": lambda p, q: 0.5 * _np_kl(p, (p + q) / 2) + 0.5 * _np_kl(q, (p + q) / 2),
}


def test_divergence_registry_is_the_typed_configs_list():
    assert tuple(kd_lm.DIVERGENCES) == settings.KD_LM_DIVERGENCES == tuple(NUMPY)


def _pair(seed, shape=(3, 5, 30)):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) * 2).astype(np.float32), (rng.normal(size=shape) * 2).astype(
        np.float32
    )


@pytest.mark.parametrize("div", settings.KD_LM_DIVERGENCES)
def test_off_policy_loss_is_the_coarse_grained_divergence(div):
    """The off-policy loss (fdiv.kd.topk_divergence_loss on the cached top-k) equals the
    divergence of the teacher and student bucketed into top-k + tail, computed in NumPy from the
    full teacher; it is at most the full-vocabulary divergence (data processing) and equal to
    it when only one class is left in the tail."""
    t_logits, s_logits = _pair(1)
    full = np.asarray(kd.divergence_loss(t_logits, s_logits, kd_lm.DIVERGENCES[div]))
    lp, lq = _np_log_softmax(t_logits), _np_log_softmax(s_logits)
    np.testing.assert_allclose(full, NUMPY[div](np.exp(lp), np.exp(lq)), rtol=1e-4, atol=1e-6)
    loss = jax.jit(kd_lm.off_policy_loss(div))
    for k in (5, 29):
        logp, idx = kd_lm._teacher_topk(jnp.asarray(t_logits), k)
        values, where = loss(jnp.asarray(s_logits), {"logp": logp, "idx": idx})
        assert where is None
        idx = np.asarray(idx)
        p_top = np.exp(np.take_along_axis(lp, idx, -1))
        q_top = np.exp(np.take_along_axis(lq, idx, -1))
        p = np.concatenate([p_top, 1 - p_top.sum(-1, keepdims=True)], -1)
        q = np.concatenate([q_top, 1 - q_top.sum(-1, keepdims=True)], -1)
        # The teacher's tail is 1 - sum(top-k) of float32 log-probabilities: known to ~1e-7
        # absolutely, a relative error of ~1e-4 where the tail is small (reverse KL weighs it
        # by the student's tail mass).
        np.testing.assert_allclose(values, NUMPY[div](p, q), rtol=1e-3, atol=1e-5)
        assert np.all(np.asarray(values) <= full * (1 + 1e-3) + 1e-5)
        assert np.all(np.asarray(values) > 0)
        if k == 29:
            np.testing.assert_allclose(values, full, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("div", ["forward_kl", "reverse_kl", "skew_reverse_kl", "gjsd"])
def test_on_policy_loss_averages_only_the_sampled_positions(div):
    """reduce(divergence_loss(...), where) is the mean over positions prompt_len-1 .. T-2 of
    the full-vocabulary divergence; the other positions (NaN logits included) do not count,
    nor do they reach the gradient."""
    t_logits, s_logits = _pair(2, (2, 6, 11))
    tokens = jnp.zeros((2, 6), jnp.int32)
    lp, lq = _np_log_softmax(t_logits), _np_log_softmax(s_logits)
    want = NUMPY[div](np.exp(lp), np.exp(lq))[:, 2:5].mean()
    s_bad = s_logits.copy()
    s_bad[:, 0] = np.nan
    s_bad[:, 5] = np.nan
    loss = kd_lm.on_policy_loss(div, prompt_len=3)

    def mean(s):
        values, where = loss(s, {"tokens": tokens, "teacher_logits": jnp.asarray(t_logits)})
        return kd.reduce(values, where)

    for fn in (mean, jax.jit(mean)):
        assert float(fn(jnp.asarray(s_bad))) == pytest.approx(want, rel=1e-4)
    grad = np.asarray(jax.grad(mean)(jnp.asarray(s_bad)))
    assert np.all(grad[:, [0, 5]] == 0) and np.all(np.isfinite(grad))
    assert np.abs(grad[:, 2:5]).sum() > 0


def test_teacher_topk_is_sorted_full_softmax():
    logits = jnp.asarray(np.random.default_rng(2).normal(size=(2, 3, 50)), jnp.float32)
    vals, idx = kd_lm._teacher_topk(logits, 7)
    logp = _np_log_softmax(np.asarray(logits))
    np.testing.assert_allclose(vals, np.sort(logp, -1)[..., ::-1][..., :7], atol=1e-6)
    np.testing.assert_allclose(np.take_along_axis(logp, np.asarray(idx), -1), vals, atol=1e-6)
    assert idx.dtype == jnp.int32


def test_batched_pads_the_last_batch_and_trims_it():
    windows = np.arange(7 * 3).reshape(7, 3)
    shapes = []

    def fn(x):
        shapes.append(x.shape)
        return x * 2, x[:, 0]

    parts = kd_lm._batched(fn, windows, 3)
    assert shapes == [(3, 3)] * 3
    np.testing.assert_array_equal(np.concatenate([a for a, _ in parts]), windows * 2)
    np.testing.assert_array_equal(np.concatenate([b for _, b in parts]), windows[:, 0])


def test_cached_computes_once(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"a": np.arange(3)}

    for ext in ("npz", "json"):
        path = str(tmp_path / f"x.{ext}")
        c = (lambda: {"a": [1, 2]}) if ext == "json" else compute
        first = kd_lm._cached(path, c, print_fn=lambda s: None)
        again = kd_lm._cached(path, lambda: pytest.fail("recomputed"), print_fn=lambda s: None)
        np.testing.assert_array_equal(np.asarray(first["a"]), np.asarray(again["a"]))
    assert len(calls) == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "x.npz"]


def test_distinct_n():
    samples = np.asarray([[1, 2, 1, 2], [3, 3, 3, 3]])
    assert kd_lm._distinct(samples, 1) == pytest.approx(3 / 8)
    assert kd_lm._distinct(samples, 2) == pytest.approx(3 / 6)  # (1,2), (2,1), (3,3)


def test_on_policy_schedule_fraction():
    cfg = settings.KDLMConfig(mode="on_policy", on_policy_fraction=0.3)
    frac = np.mean([kd_lm._is_on_policy(cfg, s) for s in range(2000)])
    assert abs(frac - 0.3) < 0.04
    off = settings.KDLMConfig(mode="off_policy")
    assert not any(kd_lm._is_on_policy(off, s) for s in range(50))


def test_typed_config_reports_every_bad_field(tmp_path):
    import configs

    c = configs.get_config("kd_lm", "quick")
    c.divergence, c.mode, c.corpus = "reverse_lk", "online", "bible"
    c.top_k, c.prompt_len, c.batch_size = 256, 32, 0
    c.student.n_kv_heads = 3
    with pytest.raises(ConfigError) as e:
        kd_lm.read_config(c, str(tmp_path))
    msgs = e.value.problems
    assert [m.split("=")[0] for m in msgs] == [
        "config.batch_size",
        "config.divergence",
        "config.mode",
        "config.corpus",
        "config.top_k",
        "config.prompt_len",
        "config.student: every size must be >",
    ]
    assert "did you mean 'reverse_kl'" in msgs[1]
    assert "[1, 256) for teacher random" in msgs[4]
    c = configs.get_config("kd_lm", "quick")
    c.top_k_ = 3
    with pytest.raises(ConfigError, match=r"config.top_k_ is not a field \(did you mean 'top_k'"):
        kd_lm.read_config(c)
    assert kd_lm.read_config(configs.get_config("kd_lm", "cpu")).loop.num_steps == 80


def test_comparison_table_reads_finished_rows_only(tmp_path):
    """--table_only tabulates the finished rows (matching num_steps) and runs nothing."""
    import json

    from benchmarks import kd_lm_divergences as bench

    samples = ["To be ||| or not", "Once ||| more"]
    teacher = {"heldout_ce": 3.5, "teacher_loglik_per_token": -2.0, "samples": samples}
    for i, (div, steps) in enumerate([("forward_kl", 4), ("js", 4), ("reverse_kl", 3)]):
        row = {k: 0.5 + i for k, _ in bench.COLUMNS}
        row.update(
            divergence=div,
            mode="off_policy",
            num_steps=steps,
            samples=samples,
            teacher=teacher,
            student_params=10,
            teacher_cache_sec=60.0,
            teacher_cache_tokens_per_sec=80.0,
            total_sec=123.0,
        )
        (tmp_path / f"off_policy_{div}").mkdir()
        (tmp_path / f"off_policy_{div}" / "summary.json").write_text(json.dumps(row))
    bench.main(
        [
            "--config=configs/kd_lm.py:quick",
            f"--workdir={tmp_path}",
            "--divergences=forward_kl,js,reverse_kl,total_variation",
            "--modes=off_policy",
            "--table_only",
        ]
    )
    md = (tmp_path / "kd_lm_table.md").read_text().splitlines()
    assert md[2].startswith("| teacher | - | 3.500 | 0.000 | 0.000 | -2.000 |")
    body = [line for line in md if line.startswith("| off_policy")]
    # reverse_kl ran 3 of the config's 4 steps: not finished; total_variation never ran.
    assert [line.split(" | ")[1] for line in body] == ["forward_kl", "js"]
    assert body[1].endswith("| 2 | 123 |")  # rates and times in whole units
    assert os.path.getsize(tmp_path / "kd_lm_results.png") > 0
