"""The fdpg experiment's quick variant end to end, its cached pi_0 stage and its helpers."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import experiments
from experiments import fdpg


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fdpg_cache"))


def _config(cache, **overrides):
    c = experiments.load_config("fdpg", "quick")
    c.cache_dir = cache
    for k, v in overrides.items():
        setattr(c, k, v)
    return c


def _records(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def quick_run(cache, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("fdpg_quick"))
    summary = fdpg.train_and_evaluate(_config(cache), workdir, print_fn=lambda s: None)
    return workdir, summary


def test_quick_variant_end_to_end(cache, quick_run):
    workdir, summary = quick_run
    config = _config(cache)
    rows = summary["results"]
    assert list(rows) == ["pi_0", *config.divergences]
    for name, m in rows.items():
        assert set(m) == set(fdpg.EVAL_KEYS), name
        assert all(math.isfinite(v) for v in m.values()), (name, m)
        assert 0.0 <= m["constraint_rate"] <= 1.0
        # The shifted estimators keep TV's per-sample terms in [0, 1].
        assert 0.0 <= m["tv_p_pi"] <= 1.0
    # pi_0 is its own reference: KL(pi_0 || pi_0) = 0 exactly on every sample.
    assert rows["pi_0"]["kl_pi_pi0"] == 0.0
    # The stage is cached under the cache dir, keyed by the LM config, with its summary.
    assert summary["lm_dir"].startswith(cache)
    assert os.path.exists(os.path.join(summary["lm_dir"], "summary.json"))
    for name in config.divergences:
        records = _records(os.path.join(workdir, name))
        assert any("eval/kl_p_pi" in r for r in records)
        assert any("ess" in r and r["ess"] == pytest.approx(config.batch_size) for r in records)
        assert os.path.exists(os.path.join(workdir, f"samples_{name}.txt"))
    assert os.path.getsize(os.path.join(workdir, "comparison.png")) > 10_000
    with open(os.path.join(workdir, "results.md")) as f:
        table = f.read()
    assert all(f"| {name} |" in table for name in rows)
    # Running again in the same workdir restores the finished run from its Orbax checkpoint
    # (policy, proposal, normaliser and baseline states) and reproduces its evaluation exactly.
    again = fdpg.train_and_evaluate(
        _config(cache, divergences=("js",)), workdir, print_fn=lambda s: None
    )
    assert again["results"]["js"] == rows["js"]


def test_proposal_mode_reuses_cached_lm_and_rejects_bad_settings(cache, quick_run, tmp_path):
    _, first = quick_run
    lm_dir = first["lm_dir"]
    stamp = os.path.getmtime(os.path.join(lm_dir, "summary.json"))
    summary = fdpg.train_and_evaluate(
        _config(cache, sampler="proposal", divergences=("js",), num_steps=2),
        str(tmp_path / "p"),
        print_fn=lambda s: None,
    )
    assert summary["lm_dir"] == lm_dir
    records = _records(tmp_path / "p" / "js")
    assert any("proposal_replaced" in r for r in records)
    # Proposal samples: the effective sample size is at most the batch size.
    assert all(r["ess"] <= 32 + 1e-3 for r in records if "ess" in r)
    assert os.path.getmtime(os.path.join(lm_dir, "summary.json")) >= stamp
    with pytest.raises(ValueError, match="config.sampler"):
        fdpg.train_and_evaluate(
            _config(cache, sampler="offline"), str(tmp_path / "x"), print_fn=lambda s: None
        )
    with pytest.raises(ValueError, match="unknown divergence"):
        fdpg.train_and_evaluate(
            _config(cache, divergences=("kl2",)), str(tmp_path / "y"), print_fn=lambda s: None
        )
    with pytest.raises(ValueError, match="sample_len"):
        fdpg.train_and_evaluate(
            _config(cache, sample_len=40), str(tmp_path / "z"), print_fn=lambda s: None
        )


def test_contains_and_distinct_n():
    tokens = jnp.array([[1, 2, 3, 4], [3, 1, 2, 0], [2, 1, 3, 3]])
    np.testing.assert_array_equal(fdpg.contains(tokens, (1, 2)), [True, True, False])
    np.testing.assert_array_equal(fdpg.contains(tokens, (3, 3)), [False, False, True])
    assert fdpg.distinct_n(["the cat the cat", "a dog"], 1) == pytest.approx(4 / 6)
    assert fdpg.distinct_n(["the cat the cat"], 2) == pytest.approx(2 / 3)


def test_sample_log_prob_matches_sampling_distribution():
    # sequence_log_prob is the log-probability of what sample draws: for a 1-token continuation
    # the empirical frequencies match exp(log prob).
    from flax import nnx

    model = fdpg.CharTransformer(5, 8, 1, 2, 4, rngs=nnx.Rngs(0))
    seqs = fdpg.sample(model, jax.random.key(0), 20_000, 1, start=0)
    log_prob = fdpg.sequence_log_prob(model, seqs)
    freq = np.bincount(np.asarray(seqs[:, 1]), minlength=5) / 20_000
    probs = np.zeros(5)
    probs[np.asarray(seqs[:, 1])] = np.exp(np.asarray(log_prob))
    np.testing.assert_allclose(freq, probs, atol=0.012)


def test_cached_step_matches_full_forward():
    from flax import nnx

    model = fdpg.CharTransformer(7, 16, 2, 4, 10, rngs=nnx.Rngs(1))
    tokens = jax.random.randint(jax.random.key(2), (3, 10), 0, 7)
    full = model(tokens)
    cache = model.init_cache(3, 10)
    for t in range(10):
        logits, cache = model.step(tokens[:, t], cache, t)
        np.testing.assert_allclose(logits, full[:, t], rtol=1e-4, atol=1e-5)
