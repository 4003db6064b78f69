"""f-DPG: align a base model to a constraint with several f-divergences, over seeds.

* pi_0 (``config.model``): "char", a small causal transformer (Flax NNX, Optax) trained on
  Shakespeare characters, a cached stage in ``<cache_dir>/fdpg_lm_<digest of config.lm>``,
  trained once and reused; or "smollm2", SmolLM2-135M-Instruct from its GGUF file
  (`fdiv.nets.llama.from_gguf`, sampled with `fdiv.nets.generate` and a KV cache).
* Target: ``p(x) = pi_0(x) b(x) / Z``, ``b(x) = 1`` when the sample contains ``config.word``;
  ``Z = P_pi0(b = 1)`` is estimated once from ``z_samples`` samples of pi_0. Training uses
  ``log b = -violation_log_penalty`` for violations so that reverse KL is finite; the metrics
  use the exact target.
* Alignment: for each run of ``config.runs()`` (every divergence on-policy, and those of
  ``proposal_divergences`` also with DPG's proposal, replaced by the policy when the policy's
  estimated divergence to the target, in the run's own divergence, is lower) and every seed of ``config.seeds``, a copy of pi_0 trained
  with ``fdiv.policy.fdpg_loss`` (docs/reference.md section 5), the running importance-sampling
  estimate of ``log Z`` (``RunningNormalizer``) and a moving baseline (``MovingBaseline``).
  Same seeds and budget for every run; the update compiles once for all of them.
* Evaluation every ``eval_every`` steps on ``eval_samples`` fresh policy samples and the fixed
  exact target samples (the pi_0 samples of the Z estimate that satisfy the constraint):
  constraint rate; ``KL(p || pi)`` from the target samples (importance sampling with pi_0 as
  proposal, weights ``b / Z``); ``TV(p, pi)`` and ``JS(p, pi)`` from both sample sets
  (`fdiv.montecarlo.mc_divergence_from_both_samples`, bounded terms); ``KL(pi || pi_0)``;
  word distinct-1/2. None of them depends on the policy's samples hitting the constraint.

Outputs in ``workdir``: ``<label>/seed_<s>/`` per run (``metrics.jsonl``, ``curves.png``,
Orbax checkpoints: an interrupted comparison resumes), ``comparison.png`` (seed-mean curves
+- std per run, pi_0 as a reference line), ``results.md`` (the mean +- std table, with the
step from which each curve is flat), ``samples_<label>.txt`` and ``summary.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from experiments import settings
from fdiv import data as fdata
from fdiv import divergences as fdivergences
from fdiv import train
from fdiv.montecarlo import mc_divergence_from_both_samples, mc_divergence_from_target_samples
from fdiv.policy import MovingBaseline, RunningNormalizer, fdpg_loss
from fdiv.train import plotting

START_CHAR = "\n"
EVAL_KEYS = (
    "constraint_rate",
    "kl_p_pi",
    "tv_p_pi",
    "js_p_pi",
    "kl_pi_pi0",
    "distinct_1",
    "distinct_2",
)


# ----------------------------------------------------------------------------------------------
# Typed config.

FDPGConfig = settings.FDPGConfig


def read_config(config: Any, workdir: str | None = None) -> FDPGConfig:
    """The typed, checked config: `settings.read` (unknown fields, then every generic and
    fdpg check and the workdir, all in one error).

    Raises:
      ConfigError: one message per bad field.
    """
    return settings.read(FDPGConfig, config, workdir)


def _cache_dir(cfg: FDPGConfig) -> str:
    if cfg.cache_dir:
        return cfg.cache_dir
    return os.environ.get("FDIV_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "fdiv"))


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------------------------
# The model.


class _Block(nnx.Module):
    """Pre-LayerNorm attention + MLP block with a full causal pass and a cached one-token step."""

    def __init__(self, d_model: int, num_heads: int, *, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.ln1 = nnx.LayerNorm(d_model, rngs=rngs)
        self.qkv = nnx.Linear(d_model, 3 * d_model, rngs=rngs)
        self.proj = nnx.Linear(d_model, d_model, rngs=rngs)
        self.ln2 = nnx.LayerNorm(d_model, rngs=rngs)
        self.fc1 = nnx.Linear(d_model, 4 * d_model, rngs=rngs)
        self.fc2 = nnx.Linear(4 * d_model, d_model, rngs=rngs)

    def _split(self, h):
        q, k, v = jnp.split(self.qkv(self.ln1(h)), 3, axis=-1)
        heads = lambda x: x.reshape(*x.shape[:-1], self.num_heads, -1)  # [B, T, H, Dh]
        return heads(q), heads(k), heads(v)

    def _finish(self, h, attended):
        h = h + self.proj(attended.reshape(*attended.shape[:-2], -1))
        return h + self.fc2(jax.nn.gelu(self.fc1(self.ln2(h))))

    def __call__(self, h):
        q, k, v = self._split(h)
        t = h.shape[-2]
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
        causal = jnp.tril(jnp.ones((t, t), bool))
        weights = jax.nn.softmax(jnp.where(causal, scores, -1e30), axis=-1)
        return self._finish(h, jnp.einsum("bhqk,bkhd->bqhd", weights, v))

    def step(self, h, cache, t):
        """One position: h [B, 1, D] at index t; cache (k, v) each [B, T_max, H, Dh]."""
        q, k, v = self._split(h)
        k_cache = jax.lax.dynamic_update_slice_in_dim(cache[0], k, t, axis=1)
        v_cache = jax.lax.dynamic_update_slice_in_dim(cache[1], v, t, axis=1)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k_cache) / np.sqrt(q.shape[-1])
        seen = jnp.arange(k_cache.shape[1]) <= t
        weights = jax.nn.softmax(jnp.where(seen, scores, -1e30), axis=-1)
        attended = jnp.einsum("bhqk,bkhd->bqhd", weights, v_cache)
        return self._finish(h, attended), (k_cache, v_cache)


class CharTransformer(nnx.Module):
    """A pre-LayerNorm causal transformer over characters: tokens [B, T] -> logits [B, T, V].

    `step` advances one position with a key/value cache (`init_cache`), so sampling costs one
    token's work per position instead of a full pass over the prefix.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        num_layers: int,
        num_heads: int,
        max_len: int,
        *,
        rngs: nnx.Rngs,
    ):
        self.num_heads, self.d_model = num_heads, d_model
        self.embed = nnx.Embed(vocab_size, d_model, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (max_len, d_model)))
        self.blocks = nnx.List([_Block(d_model, num_heads, rngs=rngs) for _ in range(num_layers)])
        self.ln = nnx.LayerNorm(d_model, rngs=rngs)
        self.head = nnx.Linear(d_model, vocab_size, rngs=rngs)

    def __call__(self, tokens):
        h = self.embed(tokens) + self.pos[...][: tokens.shape[-1]]
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln(h))

    def init_cache(self, batch: int, length: int):
        shape = (batch, length, self.num_heads, self.d_model // self.num_heads)
        return [(jnp.zeros(shape), jnp.zeros(shape)) for _ in self.blocks]

    def step(self, token, cache, t):
        """Logits [B, V] after `token` [B] at position t, and the updated cache."""
        h = self.embed(token[:, None]) + jax.lax.dynamic_slice_in_dim(self.pos[...], t, 1)[None]
        new_cache = []
        for block, c in zip(self.blocks, cache):
            h, c = block.step(h, c, t)
            new_cache.append(c)
        return self.head(self.ln(h))[:, 0], new_cache


def sequence_log_prob(model, seqs):
    """``log pi(x)`` [B] of the continuations ``seqs[:, 1:]`` given the start token."""
    logp = jax.nn.log_softmax(model(seqs[:, :-1]).astype(jnp.float32))
    return jnp.take_along_axis(logp, seqs[:, 1:, None], axis=-1)[..., 0].sum(-1)


def sample(model, key, n: int, length: int, start: int):
    """[n, 1 + length]: the start token, then ``length`` tokens sampled at temperature 1."""
    first = jnp.full((n,), start, jnp.int32)

    def body(carry, inputs):
        token, cache = carry
        t, k = inputs
        logits, cache = model.step(token, cache, t)
        token = jax.random.categorical(k, logits.astype(jnp.float32)).astype(jnp.int32)
        return (token, cache), token

    _, tokens = jax.lax.scan(
        body,
        (first, model.init_cache(n, length)),
        (jnp.arange(length), jax.random.split(key, length)),
    )
    return jnp.concatenate([first[:, None], tokens.T], axis=1)


def contains(tokens, word_ids):
    """bool [B]: whether each row of ``tokens`` [B, L] contains the id sequence ``word_ids``."""
    m, length = len(word_ids), tokens.shape[1]
    windows = jnp.stack([tokens[:, k : length - m + 1 + k] for k in range(m)], axis=-1)
    return jnp.any(jnp.all(windows == jnp.asarray(word_ids, jnp.int32), axis=-1), axis=-1)


# ----------------------------------------------------------------------------------------------
# Stage: pi_0, trained once per LM config.


def load_or_train_lm(cfg: FDPGConfig, print_fn=None):
    """(frozen `train.Net` of pi_0, corpus, stage directory, stage summary)."""
    lc = cfg.lm
    key_dict = {"lm": lc.model_key(), "corpus": "shakespeare"}
    ldir = os.path.join(_cache_dir(cfg), f"fdpg_lm_{_digest(key_dict)}")
    corpus = fdata.load_shakespeare(max_chars=lc.max_chars or None)
    train_tokens, val_tokens = corpus.split(0.05)
    model = CharTransformer(
        corpus.vocab_size,
        lc.d_model,
        lc.num_layers,
        lc.num_heads,
        lc.context,
        rngs=nnx.Rngs(lc.seed),
    )
    num_steps = lc.loop.num_steps
    schedule = optax.warmup_cosine_decay_schedule(
        0.0,
        lc.learning_rate,
        min(lc.warmup_steps, max(num_steps - 1, 1)),
        max(num_steps, 1),
        lc.learning_rate * 0.05,
    )
    net = train.Net.create(
        model, optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))
    )
    state = train.TrainState.create(lc.seed, model=net)
    batcher = fdata.TextBatcher(train_tokens, lc.context, lc.batch_size, lc.seed)

    def lm_loss(m, batch):
        logits = m(batch["inputs"]).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()

    @jax.jit
    def step(state, batch):
        loss, grads = jax.value_and_grad(lambda p: lm_loss(state["model"].merge(p), batch))(
            state["model"].params
        )
        return state.apply_gradients(model=grads), {"loss_nats_per_char": loss}

    val_batch = fdata.TextBatcher(val_tokens, lc.context, 256, lc.seed + 1).host_batch(0)
    val_loss = jax.jit(lambda state: lm_loss(state["model"].merge(), val_batch))

    pf = print_fn or (lambda s: print(f"[pi_0] {s}", flush=True))
    already = os.path.exists(os.path.join(ldir, "summary.json"))
    state, summary = train.fit(
        state,
        lambda s, i: step(s, batcher(i)),
        workdir=ldir,
        options=lc.loop,
        eval_fn=lambda s: {"val_nats_per_char": val_loss(s)},
        meta={"lm_config": key_dict},
        print_fn=pf,
        plot=not already,
    )
    return state["model"], corpus, ldir, summary


# ----------------------------------------------------------------------------------------------
# The two base models behind one interface.


class _CharBackend:
    """pi_0 = the cached character transformer; a sample is ``sample_len`` characters after a
    newline, ``b(x) = 1`` when they contain ``word``."""

    def __init__(self, cfg: FDPGConfig, print_fn):
        base, corpus, self.lm_dir, self.lm_summary = load_or_train_lm(
            cfg, print_fn=lambda s: print_fn(f"[pi_0] {s}")
        )
        self.base, self.corpus = base, corpus
        self.start = int(corpus.encode(START_CHAR)[0])
        self.word_ids = tuple(int(i) for i in corpus.encode(cfg.word))
        length, start = cfg.sample_len, self.start

        def draw(params, key, n):
            m = base.merge(params)
            seqs = sample(m, key, n, length, start)
            return seqs, sequence_log_prob(m, seqs)

        self._draw = jax.jit(draw, static_argnums=2)
        self.base_log_prob = jax.jit(lambda seqs: self.log_prob(base.params, seqs))
        self._satisfies = jax.jit(lambda seqs: contains(seqs[:, 1:], self.word_ids))

    def draw(self, params, key, n: int):
        """``(seqs, log pi(seqs))`` of ``n`` samples of the model with `params`."""
        return self._draw(params, key, n)

    def log_prob(self, params, seqs):
        """``log pi(x)`` ``[n]`` of the model with `params` (traceable, differentiable)."""
        return sequence_log_prob(self.base.merge(params), seqs)

    def satisfies(self, seqs) -> jax.Array:
        return self._satisfies(seqs)

    def decode(self, seqs) -> list[str]:
        return [self.corpus.decode(s[1:]) for s in np.asarray(seqs)]


class _LlamaBackend:
    """pi_0 = SmolLM2-135M-Instruct; a sample is the first ``sample_len`` tokens of its answer
    to ``prompt`` (chat template, temperature 1, ending at the end-of-turn token), ``b(x) = 1``
    when the decoded answer contains ``word`` as a whole word, in any case."""

    def __init__(self, cfg: FDPGConfig, print_fn):
        from fdiv.nets import llama, sampling

        t = time.perf_counter()
        model, tokenizer = llama.from_gguf()
        self.base = train.Net.create(model)
        self.tokenizer, self.lm_dir, self.lm_summary = tokenizer, llama.smollm2_gguf_path(), {}
        prompt = tokenizer.encode_chat([{"role": "user", "content": cfg.prompt}])
        self.prompt = np.asarray(prompt, np.int32)[None]
        self.eos = tokenizer.eos_id
        self._word = re.compile(rf"\b{re.escape(cfg.word)}\b", re.IGNORECASE)
        self._length, self._sampling = cfg.sample_len, sampling
        self.base_log_prob = jax.jit(lambda seqs: self.log_prob(self.base.params, seqs))
        print_fn(
            f"[pi_0] SmolLM2-135M-Instruct loaded in {time.perf_counter() - t:.1f} s; prompt "
            f"{self.prompt.shape[1]} tokens"
        )

    def draw(self, params, key, n: int):
        g = self._sampling.generate(
            self.base.merge(params),
            np.repeat(self.prompt, n, axis=0),
            max_new_tokens=self._length,
            key=key,
            eos_id=self.eos,
        )
        return g.tokens, jnp.sum(g.model_logprobs, axis=-1)

    def log_prob(self, params, seqs):
        """``log pi(y | prompt)`` ``[n]`` by one full forward pass (tokens after the first eos
        do not count)."""
        n = seqs.shape[0]
        prompt = jnp.broadcast_to(jnp.asarray(self.prompt), (n, self.prompt.shape[1]))
        logits = self.base.merge(params)(jnp.concatenate([prompt, seqs[:, :-1]], axis=1))
        logp = jax.nn.log_softmax(logits[:, prompt.shape[1] - 1 :].astype(jnp.float32))
        token_logp = jnp.take_along_axis(logp, seqs[..., None], axis=-1)[..., 0]
        ended_before = jnp.cumsum(seqs == self.eos, axis=1) - (seqs == self.eos)
        return jnp.sum(jnp.where(ended_before == 0, token_logp, 0.0), axis=-1)

    def decode(self, seqs) -> list[str]:
        out = []
        for row in np.asarray(seqs).tolist():
            row = row[: row.index(self.eos)] if self.eos in row else row
            out.append(self.tokenizer.decode(row, skip_special_tokens=True))
        return out

    def satisfies(self, seqs) -> jax.Array:
        return jnp.asarray([bool(self._word.search(t)) for t in self.decode(seqs)])


_BACKENDS = {"char": _CharBackend, "smollm2": _LlamaBackend}


# ----------------------------------------------------------------------------------------------
# Alignment.


@struct.dataclass
class AlignState:
    """Policy (trainable), proposal parameters and the estimator states."""

    step: Any
    rng: Any
    nets: dict
    proposal: Any
    proposal_score: Any
    normalizer: RunningNormalizer
    baseline: MovingBaseline

    step_key = train.TrainState.step_key
    apply_gradients = train.TrainState.apply_gradients

    def __getitem__(self, name):
        return self.nets[name]


def _baseline_state(cfg: FDPGConfig) -> MovingBaseline:
    if cfg.baseline == "windowed":
        return MovingBaseline.windowed(cfg.baseline_window)
    return MovingBaseline.ema(cfg.baseline_decay)


class _Problem:
    """Everything the alignment runs share: pi_0, the constraint, Z, exact target samples and
    the metrics."""

    def __init__(self, cfg: FDPGConfig, backend, print_fn):
        self.cfg, self.backend, self.print = cfg, backend, print_fn
        # Z = P_pi0(b = 1), the exact target's normaliser, from pi_0's own samples; those that
        # satisfy the constraint are exact samples of the target p (rejection sampling) and
        # stay fixed for every evaluation.
        key = jax.random.fold_in(jax.random.key(cfg.eval_seed), 7)
        hits, total, targets = 0, 0, []
        chunk = min(cfg.z_samples, cfg.eval_samples)  # one compiled sampler for both
        for i in range(max(cfg.z_samples // chunk, 1)):
            seqs, _ = backend.draw(backend.base.params, jax.random.fold_in(key, i), chunk)
            ok = np.asarray(backend.satisfies(seqs))
            hits += int(ok.sum())
            total += chunk
            targets.append(np.asarray(seqs)[ok])
        if hits < 2:
            raise train.ConfigError(
                f"config.z_samples={cfg.z_samples}: only {hits} of {total} pi_0 samples satisfy "
                f"the constraint (contain {cfg.word!r}), too few to estimate Z and the divergences "
                "to the target; raise config.z_samples or choose a more frequent config.word"
            )
        self.z = hits / total
        self.z_hits, self.z_total = hits, total
        self.log_z = float(np.log(self.z))
        self.target_seqs = jnp.asarray(np.concatenate(targets))
        self._log_prob = jax.jit(backend.log_prob)
        self.log_p_at_target = backend.base_log_prob(self.target_seqs) - self.log_z

    def kl_from_target(self, params):
        """``(KL(p || pi), its standard error, log pi at the target samples)`` for the policy
        with `params`: the mean of ``log p - log pi`` over the fixed exact target samples."""
        log_pi_at_target = self._log_prob(params, self.target_seqs)
        kl, se = mc_divergence_from_target_samples(
            self.log_p_at_target, log_pi_at_target, "forward_kl"
        )
        return kl, se, log_pi_at_target

    def proposal_score(self, params, key, divergence: str) -> float:
        """DPG's criterion for replacing the proposal, generalised to f-DPG: the estimated
        ``D_f(p || pi)`` of the run's own divergence for the policy with `params` (from the
        target samples and ``eval_samples`` fresh policy samples). A divergence that is
        infinite against the exact target whenever pi puts mass outside the constraint
        (``f(0) = inf``: reverse KL, Neyman) is compared in ``KL(p || .)`` instead."""
        d = fdivergences.get(divergence)
        if d.name == "forward_kl" or not math.isfinite(d.f_at_zero):
            return float(self.kl_from_target(params)[0])
        drawn = self._policy_samples(params, key, self.cfg.eval_samples)
        log_pi_at_target = self._log_prob(params, self.target_seqs)
        estimate, _ = mc_divergence_from_both_samples(
            self.log_p_at_target, log_pi_at_target, drawn["log_p"], drawn["log_pi"], d
        )
        return float(estimate)

    def _policy_samples(self, params, key, n: int) -> dict:
        """`n` samples of the policy with `params` and their log-densities: ``log_pi`` (the
        policy), ``log_pi0`` (the base), ``log_p`` (the exact target, -inf off the
        constraint) and ``ok`` (the constraint)."""
        seqs, log_pi = self.backend.draw(params, key, n)
        log_pi0 = self.backend.base_log_prob(seqs)
        ok = self.backend.satisfies(seqs)
        log_p = jnp.where(ok, log_pi0 - self.log_z, -jnp.inf)
        return {"seqs": seqs, "log_pi": log_pi, "log_pi0": log_pi0, "log_p": log_p, "ok": ok}

    def evaluate(self, params, key, n: int | None = None) -> tuple[dict, list[str]]:
        """Metrics of the policy with `params` on `n` fresh samples of it and the fixed target
        samples (docs/reference.md section 3): KL(p || pi) from the target's samples alone,
        TV and JS from both (the mixture estimator), so the estimates stay honest when few or
        none of the policy's samples satisfy the constraint."""
        drawn = self._policy_samples(params, key, n or self.cfg.eval_samples)
        seqs, log_pi, log_pi0, ok = (drawn[k] for k in ("seqs", "log_pi", "log_pi0", "ok"))
        kl, kl_se, log_pi_at_target = self.kl_from_target(params)
        both = (self.log_p_at_target, log_pi_at_target, drawn["log_p"], log_pi)
        tv, tv_se = mc_divergence_from_both_samples(*both, "total_variation")
        js, js_se = mc_divergence_from_both_samples(*both, "js")
        texts = self.backend.decode(seqs)
        metrics = {
            "constraint_rate": float(jnp.mean(ok)),
            "kl_p_pi": float(kl),
            "tv_p_pi": float(tv),
            "js_p_pi": float(js),
            "kl_pi_pi0": float(jnp.mean(log_pi - log_pi0)),
            "distinct_1": distinct_n(texts, 1),
            "distinct_2": distinct_n(texts, 2),
            "kl_p_pi_se": float(kl_se),
            "tv_p_pi_se": float(tv_se),
            "js_p_pi_se": float(js_se),
        }
        return metrics, texts


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): distinct word n-grams over all word n-grams of the texts."""
    grams, total = set(), 0
    for t in texts:
        words = re.findall(r"[a-z']+", t.lower())
        for i in range(len(words) - n + 1):
            grams.add(tuple(words[i : i + n]))
            total += 1
    return len(grams) / total if total else 0.0


def _make_update(cfg: FDPGConfig, backend):
    """The jitted f-DPG update of every run of ``cfg.runs()``: ``update(state, run_index, seqs,
    log_sampler, log_base, ok)``. The runs differ only in the loss (divergence and importance
    weights), selected by ``lax.switch`` on the traced run index, so the model's forward and
    backward pass compile once for the whole comparison."""

    def branch(divergence, use_proposal):
        def loss(log_model, log_target, log_sampler, baseline, log_normalizer):
            return fdpg_loss(
                log_model,
                log_target,
                divergence,
                log_proposal=log_sampler if use_proposal else None,
                baseline=baseline,
                log_normalizer=log_normalizer,
            )

        return loss

    branches = [branch(d, sampler == "proposal") for _, d, sampler in cfg.runs()]

    @jax.jit
    def update(state: AlignState, run_index, seqs, log_sampler, log_base, ok):
        log_target = log_base + jnp.where(ok, 0.0, -cfg.violation_log_penalty)
        normalizer = state.normalizer.update(log_target, log_sampler)
        baseline = jnp.asarray(0.0 if cfg.baseline == "none" else state.baseline.value)

        def loss_fn(params):
            log_model = backend.log_prob(params, seqs)
            args = (log_model, log_target, log_sampler, baseline, normalizer.log_normalizer)
            return jax.lax.switch(run_index, branches, *args)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["policy"].params)
        # The baseline estimates E_pi[R] = E_s[w R]: the importance-weighted mean, which is the
        # plain mean on-policy (w = 1) and stays finite under a proposal, where a sample the
        # policy has moved away from has u = p/pi beyond the float range (R = u for forward KL)
        # while its w R = p/s does not.
        new_state = state.apply_gradients(policy=grads).replace(
            normalizer=normalizer, baseline=state.baseline.update(aux["mean_weighted_reward"])
        )
        metrics = {
            "loss": loss,
            "batch_constraint_rate": jnp.mean(ok),
            "train_divergence": aux["divergence"],
            "mean_reward": aux["mean_reward"],
            "ess": aux["ess"],
            "log_z_train": normalizer.log_normalizer,
            "baseline": baseline.astype(jnp.float32),
        }
        return new_state, metrics

    return update


def _make_step(cfg: FDPGConfig, backend, update, run_index: int):
    """One f-DPG step of run ``cfg.runs()[run_index]``: sample (the jitted sampler), check the
    constraint, score under pi_0, then the jitted update."""
    use_proposal = cfg.runs()[run_index][2] == "proposal"
    index = jnp.asarray(run_index, jnp.int32)

    def step(state: AlignState):
        t = time.perf_counter()
        params = state.proposal if use_proposal else state["policy"].params
        seqs, log_sampler = backend.draw(params, state.step_key("sample"), cfg.batch_size)
        log_base = backend.base_log_prob(seqs)
        ok = backend.satisfies(seqs)
        state, metrics = update(state, index, seqs, log_sampler, log_base, ok)
        metrics = jax.device_get(metrics)
        # Sampling, scoring and the gradient step, compile included on the first call.
        return state, {**metrics, "step_sec": time.perf_counter() - t}

    return step


def _optimizer(cfg: FDPGConfig) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), optax.adam(cfg.learning_rate))


def _align(cfg, problem, step, tx, run, seed: int, workdir, print_fn):
    """One aligned run. `tx` is shared by all runs: the optimiser is part of the state's pytree
    structure, so one object lets every run reuse the compiled update."""
    _, divergence, sampler = run
    base = problem.backend.base
    policy = train.Net(
        graphdef=base.graphdef,
        params=base.params,
        rest=base.rest,
        tx=tx,
        opt_state=tx.init(base.params),
        ema_params=None,
        ema_decay=None,
    )
    state = AlignState(
        step=jnp.zeros((), jnp.int32),
        rng=jax.random.key(seed),
        nets={"policy": policy},
        proposal=base.params,
        proposal_score=jnp.asarray(
            problem.proposal_score(base.params, _proposal_key(seed, 0), divergence)
            if sampler == "proposal"
            else jnp.inf,
            jnp.float32,
        ),
        normalizer=RunningNormalizer.create(),
        baseline=_baseline_state(cfg),
    )
    eval_key = _eval_key(seed)

    def step_fn(state, i):
        state, metrics = step(state)
        if sampler == "proposal" and (i + 1) % cfg.proposal_every == 0:
            # DPG: replace the proposal when the policy is closer to the target, here in the
            # run's own divergence (`_Problem.proposal_score`: estimated with the fixed target
            # samples, so a policy that stops satisfying the constraint scores high, not at a
            # degenerate importance-sampling value).
            score = problem.proposal_score(
                state["policy"].params, _proposal_key(seed, i + 1), divergence
            )
            replaced = score < float(state.proposal_score)
            if replaced:
                state = state.replace(
                    proposal=state["policy"].params,
                    proposal_score=jnp.asarray(score, jnp.float32),
                )
            metrics = {**metrics, "proposal_replaced": float(replaced)}
        return state, metrics

    last_texts: list[str] = []

    def eval_fn(state):
        key = jax.random.fold_in(eval_key, int(state.step))
        m, texts = problem.evaluate(state["policy"].params, key)
        last_texts[:] = texts
        return m

    state, summary = train.fit(
        state,
        step_fn,
        workdir=workdir,
        options=cfg.loop,
        eval_fn=eval_fn,
        meta={"divergence": divergence, "sampler": sampler, "seed": seed},
        print_fn=print_fn,
    )
    if not last_texts:
        eval_fn(state)
    return state, summary, last_texts


def _proposal_key(seed: int, step: int) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 10**6), step)


def _eval_key(seed: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), 11)


# ----------------------------------------------------------------------------------------------
# Report.

TITLES = {
    "constraint_rate": "constraint satisfaction rate",
    "kl_p_pi": "KL(p || pi)",
    "tv_p_pi": "TV(p, pi)",
    "js_p_pi": "JS(p, pi)",
    "kl_pi_pi0": "KL(pi || pi_0)",
    "distinct_1": "distinct-1 (words)",
    "distinct_2": "distinct-2 (words)",
}


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value) over seeds."""
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def settle_step(steps, values, tol: float) -> int:
    """The first step from which every later value stays within `tol` of the last one."""
    steps, values = np.asarray(steps), np.asarray(values, np.float64)
    outside = np.flatnonzero(np.abs(values - values[-1]) > tol)
    return int(steps[0] if outside.size == 0 else steps[min(outside[-1] + 1, len(steps) - 1)])


def _curves(workdir: str, label: str, seeds, pi0: dict) -> dict[str, tuple[list, np.ndarray]]:
    """``{metric: (steps, values [seeds, steps])}``; step 0 is pi_0's evaluation (the policy
    starts as pi_0) with the same seed's evaluation key."""
    out = {}
    per_seed = [
        [r for r in train.read_metrics(_run_dir(workdir, label, s)) if "eval/constraint_rate" in r]
        for s in seeds
    ]
    steps = [0] + [r["step"] for r in per_seed[0]]
    for key in EVAL_KEYS:
        out[key] = (
            steps,
            np.asarray(
                [
                    [pi0[s][key]] + [r[f"eval/{key}"] for r in recs]
                    for s, recs in zip(seeds, per_seed)
                ]
            ),
        )
    return out


def _run_dir(workdir: str, label: str, seed: int) -> str:
    return os.path.join(workdir, label, f"seed_{seed}")


# Curves count as flat when the seed mean stays within these of its final value.
SETTLE_TOLERANCE = {"constraint_rate": 0.02, "kl_p_pi": 0.1, "kl_pi_pi0": 0.1}


def _table(stats: dict, settled: dict, seconds: dict, cfg: FDPGConfig, problem) -> str:
    n = len(cfg.seeds)
    head = (
        "| model | constraint rate | KL(p\\|\\|pi) | TV(p, pi) | JS(p, pi) | "
        "KL(pi\\|\\|pi_0) | distinct-1 | distinct-2 | flat from step (rate / KL(p\\|\\|pi) / "
        "KL(pi\\|\\|pi_0)) | train s per seed |"
    )
    lines = [
        (
            f"word {cfg.word!r}, {cfg.sample_len} {'characters after a newline' if cfg.model == 'char' else 'tokens'}; "
            f"Z = P_pi0(b=1) = {problem.z:.4f} ({problem.z_hits}/{problem.z_total} pi_0 samples); "
            f"{cfg.loop.num_steps} steps x {cfg.batch_size} samples, baseline {cfg.baseline}; "
            f"metrics on {cfg.eval_samples} fresh policy samples and the {problem.z_hits} target "
            f"samples; mean +- std over seeds "
            f"{', '.join(map(str, cfg.seeds))} (n = {n}); '_proposal': DPG's proposal sampler "
            f"(checked every {cfg.proposal_every} steps). Flat from: the first evaluation step "
            f"after which the seed mean stays within "
            + ", ".join(f"{v:g} ({TITLES[k]})" for k, v in SETTLE_TOLERANCE.items())
            + " of its final value."
        ),
        "",
        head,
        "|" + "---|" * 10,
    ]
    digits = {"js_p_pi": 4}
    for name, m in stats.items():
        cells = [
            f"{m[k][0]:.{digits.get(k, 3)}f} +- {m[k][1]:.{digits.get(k, 3)}f}" for k in EVAL_KEYS
        ]
        flat = (
            " / ".join(str(settled[name][k]) for k in SETTLE_TOLERANCE) if name in settled else ""
        )
        t = seconds.get(name)
        cells += [flat, "" if t is None else f"{t:.0f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot_comparison(curves: dict, pi0_stats: dict, path: str, title: str) -> str:
    fig = plotting._new_figure("the f-DPG comparison figure", figsize=(17, 7))
    if fig is None:
        return ""
    axes = fig.subplots(2, 4)
    for ax, key in zip(axes.flat, EVAL_KEYS):
        for i, (label, c) in enumerate(curves.items()):
            steps, values = c[key]
            mean, std = values.mean(0), values.std(0, ddof=1) if len(values) > 1 else 0 * values[0]
            style = "--" if label.endswith("_proposal") else "-"
            line = ax.plot(steps, mean, style, marker="o", ms=2.5, label=label, color=f"C{i}")
            ax.fill_between(steps, mean - std, mean + std, alpha=0.15, color=line[0].get_color())
        ax.axhline(pi0_stats[key][0], color="k", ls=":", lw=1.2, label="pi_0")
        ax.set_title(TITLES[key])
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes.flat[-2].legend(fontsize=8, loc="best")
    axes.flat[-1].axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    axes.flat[-1].legend(handles, labels, loc="center", fontsize=10, title="seed mean +- std")
    fig.suptitle(title)
    fig.tight_layout()
    return plotting._save(fig, path, dpi=100)


def train_and_evaluate(config: Any, workdir: str, print_fn=None) -> dict:
    """Loads pi_0, aligns one copy per (divergence, sampler, seed), writes the comparison.

    Outputs in `workdir`: ``<label>/seed_<s>/`` (one run: ``metrics.jsonl``, ``curves.png``,
    Orbax checkpoints, so an interrupted comparison resumes), ``comparison.png`` (seed-mean
    curves per run with pi_0 as a reference line), ``results.md`` (the mean +- std table),
    ``samples_<label>.txt`` (the first seed's final samples) and ``summary.json``.
    """
    cfg = read_config(config, workdir)
    pf = print_fn or (lambda s: print(s, flush=True))
    t0 = time.perf_counter()
    backend = _BACKENDS[cfg.model](cfg, pf)
    problem = _Problem(cfg, backend, pf)
    pf(
        f"target: word {cfg.word!r}, Z = P_pi0(b=1) = {problem.z:.4f} "
        f"({problem.z_hits}/{problem.z_total})"
    )
    pi0, pi0_texts = {}, []
    for s in cfg.seeds:
        pi0[s], texts = problem.evaluate(backend.base.params, jax.random.fold_in(_eval_key(s), 0))
        pi0_texts = pi0_texts or texts
    stats = {"pi_0": {k: mean_std([pi0[s][k] for s in cfg.seeds]) for k in EVAL_KEYS}}
    per_seed, seconds, samples, curves, settled = {}, {}, {"pi_0": pi0_texts}, {}, {}
    step_sec = {}
    update, tx = _make_update(cfg, backend), _optimizer(cfg)
    for run_index, run in enumerate(cfg.runs()):
        label = run[0]
        step = _make_step(cfg, backend, update, run_index)
        finals, times = {}, []
        for s in cfg.seeds:
            _, summary, texts = _align(
                cfg,
                problem,
                step,
                tx,
                run,
                s,
                _run_dir(workdir, label, s),
                lambda m, n=f"{label} seed {s}": pf(f"[{n}] {m}"),
            )
            # The training record's wall time: a finished run restored from its checkpoint keeps
            # the time it took to train, not the time to restore it.
            times.append(summary["wall_time_sec"])
            finals[s] = {k: summary["eval"]["eval/" + k] for k in EVAL_KEYS}
            if s == cfg.seeds[0]:
                samples[label] = texts
        step_sec[label] = [
            r["step_sec"]
            for r in train.read_metrics(_run_dir(workdir, label, cfg.seeds[-1]))
            if "step_sec" in r
        ]
        per_seed[label] = finals
        seconds[label] = float(np.mean(times))
        stats[label] = {k: mean_std([finals[s][k] for s in cfg.seeds]) for k in EVAL_KEYS}
        curves[label] = _curves(workdir, label, cfg.seeds, pi0)
        settled[label] = {
            k: settle_step(curves[label][k][0], curves[label][k][1].mean(0), tol)
            for k, tol in SETTLE_TOLERANCE.items()
        }
    for name, texts in samples.items():
        with open(os.path.join(workdir, f"samples_{name}.txt"), "w") as f:
            f.write("\n".join(t.replace("\n", "\\n") for t in texts) + "\n")
    table = _table(stats, settled, seconds, cfg, problem)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(table)
    plot = _plot_comparison(
        curves,
        stats["pi_0"],
        os.path.join(workdir, "comparison.png"),
        f"f-DPG: aligning pi_0 to pi_0 restricted to samples containing {cfg.word!r} "
        f"(seeds {', '.join(map(str, cfg.seeds))})",
    )
    pf(table)
    shown = {k: [t.replace("\n", "\\n") for t in v[: cfg.show_samples]] for k, v in samples.items()}
    for k, v in shown.items():
        pf(f"samples {k}: " + " | ".join(v))
    summary = {
        "results": {k: {m: v[0] for m, v in row.items()} for k, row in stats.items()},
        "results_std": {k: {m: v[1] for m, v in row.items()} for k, row in stats.items()},
        "results_per_seed": {
            k: {str(s): m for s, m in v.items()} for k, v in {"pi_0": pi0, **per_seed}.items()
        },
        "flat_from_step": settled,
        "train_seconds_per_seed": seconds,
        "step_sec": step_sec,
        "z": problem.z,
        "lm_dir": backend.lm_dir,
        "lm_val_nats_per_char": (backend.lm_summary.get("eval") or {}).get(
            "eval/val_nats_per_char"
        ),
        "samples": shown,
        "comparison_png": plot,
        "wall_time_sec": time.perf_counter() - t0,
        "config": settings.to_config_dict(cfg).to_dict(),
    }
    train.write_summary(workdir, summary)
    return summary
