"""The fdpg experiment's quick variant end to end (two seeds, both samplers), its typed
config, its cached pi_0 stage and its helpers."""

import json
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import configs
import experiments
from experiments import fdpg
from fdiv.train.config import ConfigError


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
    # Two seeds and a proposal run: the mean +- std table and both samplers in one run.
    config = _config(cache, seeds=(0, 1), proposal_divergences=("js",))
    summary = fdpg.train_and_evaluate(config, workdir, print_fn=lambda s: None)
    return workdir, summary, config


def test_quick_variant_end_to_end(cache, quick_run):
    workdir, summary, config = quick_run
    rows = summary["results"]
    labels = [*config.divergences, "js_proposal"]
    assert list(rows) == ["pi_0", *labels]
    for name, m in rows.items():
        assert set(m) == set(fdpg.EVAL_KEYS), name
        assert all(math.isfinite(v) for v in m.values()), (name, m)
        assert 0.0 <= m["constraint_rate"] <= 1.0
        # The shifted estimators keep TV's per-sample terms in [0, 1].
        assert 0.0 <= m["tv_p_pi"] <= 1.0
        # The table's mean and std are those of the per-seed final evaluations.
        per_seed = summary["results_per_seed"][name]
        assert sorted(per_seed) == ["0", "1"]
        for k in fdpg.EVAL_KEYS:
            values = [per_seed[s][k] for s in ("0", "1")]
            assert m[k] == pytest.approx(np.mean(values))
            assert summary["results_std"][name][k] == pytest.approx(np.std(values, ddof=1))
    # pi_0 is its own reference: KL(pi_0 || pi_0) = 0 exactly on every sample, and on the exact
    # target samples log p - log pi_0 = -log Z, so KL(p || pi_0) = -log Z to float32.
    assert rows["pi_0"]["kl_pi_pi0"] == 0.0
    assert rows["pi_0"]["kl_p_pi"] == pytest.approx(-math.log(summary["z"]), rel=1e-5)
    for name, m in rows.items():
        # Bounds that hold for every pair of distributions: TV <= 1, JS <= log 2, and since p
        # lives on the constraint set A, TV >= 1 - pi(A) and KL(p || pi) >= -log pi(A), which
        # the estimates respect up to their sampling error.
        assert m["js_p_pi"] <= math.log(2.0) + 1e-6, name
        assert m["tv_p_pi"] >= 1.0 - m["constraint_rate"] - 0.1, (name, m)
        assert m["kl_p_pi"] >= -math.log(max(m["constraint_rate"], 1e-3)) - 0.5, (name, m)
    # The stage is cached under the cache dir, keyed by the LM config, with its summary.
    assert summary["lm_dir"].startswith(cache)
    assert os.path.exists(os.path.join(summary["lm_dir"], "summary.json"))
    for name in labels:
        for seed in (0, 1):
            records = _records(os.path.join(workdir, name, f"seed_{seed}"))
            assert any("eval/kl_p_pi" in r for r in records)
            assert all(r["step_sec"] > 0 for r in records if "loss" in r)
            if name.endswith("_proposal"):
                assert any("proposal_replaced" in r for r in records)
                # Proposal samples: the effective sample size is at most the batch size.
                assert all(r["ess"] <= config.batch_size + 1e-3 for r in records if "ess" in r)
            else:
                assert any(r.get("ess") == pytest.approx(config.batch_size) for r in records)
        assert os.path.exists(os.path.join(workdir, f"samples_{name}.txt"))
        assert set(summary["flat_from_step"][name]) == set(fdpg.SETTLE_TOLERANCE)
    # Seeds differ: the same divergence reaches different policies from different samples.
    assert summary["results_per_seed"]["js"]["0"] != summary["results_per_seed"]["js"]["1"]
    assert os.path.getsize(os.path.join(workdir, "comparison.png")) > 10_000
    with open(os.path.join(workdir, "results.md")) as f:
        table = f.read()
    assert all(f"| {name} |" in table for name in rows)
    assert f"{rows['js']['kl_p_pi']:.3f} +- {summary['results_std']['js']['kl_p_pi']:.3f}" in table
    # Running again in the same workdir restores the finished runs from their Orbax checkpoints
    # (policy, proposal, normaliser and baseline states) and reproduces their evaluations.
    again = fdpg.train_and_evaluate(
        _config(cache, seeds=(1,), divergences=("js",), proposal_divergences=()),
        workdir,
        print_fn=lambda s: None,
    )
    assert again["results_per_seed"]["js"]["1"] == summary["results_per_seed"]["js"]["1"]


def test_proposal_score_is_the_runs_own_divergence(cache, quick_run):
    cfg = fdpg.read_config(_config(cache))
    backend = fdpg._CharBackend(cfg, print_fn=lambda s: None)
    problem = fdpg._Problem(cfg, backend, print_fn=lambda s: None)
    params, key = backend.base.params, jax.random.key(0)
    # On the exact target samples log p - log pi_0 = -log Z: KL(p || pi_0) = -log Z.
    kl = problem.proposal_score(params, key, "forward_kl")
    assert kl == pytest.approx(-math.log(problem.z), rel=1e-5)
    # Reverse KL is infinite against the exact target: compared in KL(p || .) instead.
    assert problem.proposal_score(params, key, "reverse_kl") == kl
    # JS and TV: the mixture estimate from the target samples and fresh policy samples.
    seqs, log_pi = backend.draw(params, key, cfg.eval_samples)
    ok = backend.satisfies(seqs)
    log_p = jnp.where(ok, backend.base_log_prob(seqs) - problem.log_z, -jnp.inf)
    for name in ("js", "total_variation"):
        expected, _ = fdpg.mc_divergence_from_both_samples(
            problem.log_p_at_target,
            backend.log_prob(params, problem.target_seqs),
            log_p,
            log_pi,
            name,
        )
        got = problem.proposal_score(params, key, name)
        assert got == pytest.approx(float(expected), rel=1e-5)
        assert 0.0 < got <= (math.log(2.0) if name == "js" else 1.0) + 1e-6


def test_reuses_cached_lm_and_rejects_bad_settings(cache, quick_run, tmp_path):
    _, first, _ = quick_run
    lm_dir = first["lm_dir"]
    stamp = os.path.getmtime(os.path.join(lm_dir, "summary.json"))
    lines = []
    _, _, again, _ = fdpg.load_or_train_lm(fdpg.read_config(_config(cache)), lines.append)
    assert again == lm_dir and not any(s.startswith("step") for s in lines), lines
    assert os.path.getmtime(os.path.join(lm_dir, "summary.json")) == stamp
    bad = {
        "sampler": ("offline", "config.sampler='offline' must be one of 'policy', 'proposal'"),
        "divergences": (("kl2",), "config.divergences[0]='kl2' is an unknown divergence"),
        "sample_len": (40, "config.sample_len + 1 = 41 exceeds the model's context"),
        "seeds": ((0, 0), "config.seeds=(0, 0) repeats a seed"),
        "model": ("gpt", "config.model='gpt' must be one of 'char', 'smollm2'"),
    }
    for field, (value, message) in bad.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            fdpg.train_and_evaluate(
                _config(cache, **{field: value}), str(tmp_path / field), print_fn=lambda s: None
            )
    # A constraint pi_0 almost never satisfies stops with one line before any alignment.
    with pytest.raises(ConfigError, match=r"config.z_samples=256: only [01] of 256 pi_0 samples"):
        fdpg.train_and_evaluate(
            _config(cache, word="qzx"), str(tmp_path / "rare"), print_fn=lambda s: None
        )
    assert not os.path.exists(tmp_path / "rare" / "js")
    # Every fdpg-specific problem is reported at once, in one line.
    c = _config(cache, sampler="offline", baseline="mean", word="", baseline_decay=1.0)
    with pytest.raises(ConfigError) as e:
        fdpg.read_config(c)
    assert [m.split("=")[0].split(" ")[0] for m in e.value.problems] == [
        "config.sampler",
        "config.baseline",
        "config.word",
        "config.baseline_decay",
    ]
    assert "\n" not in str(e.value)
    # Proposal runs of divergences that already run with the proposal sampler repeat them.
    with pytest.raises(ConfigError, match="repeats runs of config.divergences"):
        fdpg.read_config(_config(cache, sampler="proposal", proposal_divergences=("js",)))


@pytest.mark.parametrize("variant", configs.variants("fdpg"))
def test_every_variant_passes_the_fdpg_checks(variant):
    cfg = fdpg.read_config(configs.get_config("fdpg", variant))
    assert cfg.runs()
    labels = [label for label, _, _ in cfg.runs()]
    assert len(labels) == len(set(labels))


def test_mean_std_and_settle_step():
    assert fdpg.mean_std([1.0, 2.0, 6.0]) == (3.0, pytest.approx(np.std([1, 2, 6], ddof=1)))
    assert fdpg.mean_std([4.0]) == (4.0, 0.0)
    steps = [0, 10, 20, 30, 40]
    assert fdpg.settle_step(steps, [0.0, 0.5, 0.9, 0.95, 1.0], tol=0.06) == 30
    assert fdpg.settle_step(steps, [0.0, 0.5, 0.9, 0.95, 1.0], tol=0.2) == 20
    # A curve that leaves the band again is not flat before it returns for good.
    assert fdpg.settle_step(steps, [1.0, 0.0, 1.0, 0.0, 1.0], tol=0.1) == 40
    assert fdpg.settle_step(steps, [1.0] * 5, tol=0.0) == 0


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
    graphdef, weights = nnx.split(model)

    @jax.jit  # one compiled program instead of op-by-op dispatch
    def draw(weights, key):
        m = nnx.merge(graphdef, weights)
        seqs = fdpg.sample(m, key, 20_000, 1, start=0)
        return seqs, fdpg.sequence_log_prob(m, seqs)

    seqs, log_prob = draw(weights, jax.random.key(0))
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
    graphdef, weights = nnx.split(model)
    # The position is traced: one compiled step serves every t, as in `sample`'s scan.
    step = jax.jit(lambda w, token, cache, t: nnx.merge(graphdef, w).step(token, cache, t))
    for t in range(10):
        logits, cache = step(weights, tokens[:, t], cache, jnp.asarray(t))
        np.testing.assert_allclose(logits, full[:, t], rtol=1e-4, atol=1e-5)


class _CharTokenizer:
    """A stand-in for the GGUF tokenizer: token i < 11 is the i-th of 'abcdefghij ', 11 ends."""

    chars, eos_id = "abcdefghij ", 11

    def encode_chat(self, messages, add_generation_prompt=True):
        return [0, 10, 1]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.chars[i] for i in ids if i != self.eos_id)


@pytest.fixture
def tiny_llama(monkeypatch):
    from flax import nnx

    from fdiv.nets import llama

    config = llama.LlamaConfig(
        vocab_size=12, dim=16, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=8, ffn_dim=32
    )
    # Random weights: nearly uniform next-token probabilities, so about 40% of the 6-token
    # answers end early and the masking after the end of turn is exercised.
    model = llama.Llama(config, rngs=nnx.Rngs(3))
    monkeypatch.setattr(llama, "from_gguf", lambda *a, **k: (model, _CharTokenizer()))
    monkeypatch.setattr(llama, "smollm2_gguf_path", lambda: "tiny.gguf")
    return model


def test_llama_backend_scores_what_it_samples_and_trains(tiny_llama, cache, tmp_path, monkeypatch):
    # One batch size everywhere: one compiled sampler.
    c = _config(cache, model="smollm2", word="a", sample_len=6, batch_size=16, num_steps=2)
    c.divergences, c.seeds, c.eval_samples, c.z_samples, c.log_every = ("js",), (0,), 16, 64, 1
    cfg = fdpg.read_config(c)
    backend = fdpg._LlamaBackend(cfg, print_fn=lambda s: None)
    seqs, log_pi = backend.draw(backend.base.params, jax.random.key(0), 16)
    ended = np.any(np.asarray(seqs) == _CharTokenizer.eos_id, axis=1)
    assert ended.any() and not ended.all()  # some rows end early
    # The full forward pass over prompt + answer gives the sampler's own log-probabilities
    # (tokens after the end of turn do not count), so on-policy importance weights are 1.
    np.testing.assert_allclose(
        backend.log_prob(backend.base.params, seqs), log_pi, rtol=1e-5, atol=1e-4
    )
    texts = backend.decode(seqs)
    expected = [re.search(r"\ba\b", t, re.I) is not None for t in texts]
    np.testing.assert_array_equal(backend.satisfies(seqs), expected)
    # Whole words are rare in random 6-token answers; for the run the constraint is "contains
    # the token 'a'" (~40% of answers), so that Z's samples hold target samples.
    monkeypatch.setattr(
        fdpg._LlamaBackend, "satisfies", lambda self, seqs: jnp.any(jnp.asarray(seqs) == 0, axis=1)
    )
    summary = fdpg.train_and_evaluate(c, str(tmp_path / "llm"), print_fn=lambda s: None)
    assert summary["lm_dir"] == "tiny.gguf"
    # Cached sampling and the full forward pass agree to float32 rounding.
    assert abs(summary["results"]["pi_0"]["kl_pi_pi0"]) < 1e-5
    records = _records(tmp_path / "llm" / "js" / "seed_0")
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    assert all(math.isfinite(v) for v in summary["results"]["js"].values())
