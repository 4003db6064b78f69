"""f-DPG: align a character-level Shakespeare model to a constraint with several f-divergences.

* pi_0: a small causal transformer (Flax NNX, Optax) trained on Shakespeare characters; a
  cached stage in ``<cache_dir>/fdpg_lm_<digest of config.lm>``, trained once and reused.
* Target: ``p(x) = pi_0(x) b(x) / Z`` over samples ``x`` of ``sample_len`` characters after a
  newline, ``b(x) = 1`` when ``x`` contains ``config.word``; ``Z = P_pi0(b = 1)`` is estimated
  once from ``z_samples`` samples of pi_0. Training uses ``log b = -violation_log_penalty``
  for violations so that reverse KL is finite; the metrics use the exact target.
* Alignment: for each divergence of ``config.divergences``, a copy of pi_0 trained with
  ``fdiv.policy.fdpg_loss`` (docs/reference.md section 5): samples from the policy itself or
  from a proposal that is replaced by the policy when its estimated ``KL(p || .)`` is lower
  (DPG), the running importance-sampling estimate of ``log Z`` (``RunningNormalizer``) and a
  moving baseline (``MovingBaseline``). Same seeds and budget for every divergence.
* Evaluation every ``eval_every`` steps on ``eval_samples`` fresh policy samples: constraint
  rate, ``KL(p || pi)``, ``TV(p, pi)``, ``JS(p, pi)`` (importance-sampling estimates with the
  policy as proposal), ``KL(pi || pi_0)``, word distinct-1/2; samples in ``samples_<div>.txt``.

Outputs in ``workdir``: one run directory per divergence (``metrics.jsonl``, ``curves.png``,
Orbax checkpoints: an interrupted comparison resumes), ``comparison.png`` (curves per
divergence), ``results.md`` (the table) and ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from fdiv import data as fdata
from fdiv import divergences as fdivergences
from fdiv import train
from fdiv.montecarlo import mc_divergence_from_model_samples
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
# Typed configs.


@dataclasses.dataclass(frozen=True)
class LMConfig:
    max_chars: int
    context: int
    d_model: int
    num_layers: int
    num_heads: int
    batch_size: int
    num_steps: int
    learning_rate: float
    warmup_steps: int
    seed: int
    log_every: int


@dataclasses.dataclass(frozen=True)
class FDPGConfig:
    lm: LMConfig
    seed: int
    cache_dir: str
    word: str
    sample_len: int
    violation_log_penalty: float
    divergences: tuple[str, ...]
    sampler: str
    proposal_every: int
    num_steps: int
    batch_size: int
    learning_rate: float
    grad_clip: float
    baseline: str
    baseline_decay: float
    baseline_window: int
    log_every: int
    eval_every: int
    eval_samples: int
    z_samples: int
    show_samples: int
    checkpoint_every_steps: int


def _typed(config: Any) -> FDPGConfig:
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    d.pop("experiment", None)
    lm = LMConfig(**d.pop("lm"))
    d["divergences"] = tuple(d["divergences"])
    cfg = FDPGConfig(lm=lm, **d)
    if cfg.sampler not in ("policy", "proposal"):
        raise ValueError(f"config.sampler must be 'policy' or 'proposal', got {cfg.sampler!r}.")
    if cfg.baseline not in ("ema", "windowed", "none"):
        raise ValueError(
            f"config.baseline must be 'ema', 'windowed' or 'none', got {cfg.baseline!r}."
        )
    if not cfg.divergences:
        raise ValueError("config.divergences is empty; list e.g. ('forward_kl', 'js').")
    for name in cfg.divergences:
        fdivergences.get(name)  # raises with the valid names
    if not cfg.word:
        raise ValueError("config.word must be a non-empty string.")
    if cfg.sample_len + 1 > cfg.lm.context:
        raise ValueError(
            f"config.sample_len + 1 = {cfg.sample_len + 1} exceeds the model's "
            f"context config.lm.context = {cfg.lm.context}."
        )
    if len(cfg.word) > cfg.sample_len:
        raise ValueError(f"config.word {cfg.word!r} is longer than config.sample_len.")
    return cfg


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
    key_dict = {"lm": dataclasses.asdict(lc), "corpus": "shakespeare"}
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
    schedule = optax.warmup_cosine_decay_schedule(
        0.0,
        lc.learning_rate,
        min(lc.warmup_steps, max(lc.num_steps - 1, 1)),
        max(lc.num_steps, 1),
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

    options = train.LoopOptions(
        num_steps=lc.num_steps,
        log_every=lc.log_every,
        checkpoint_every_steps=max(lc.num_steps // 4, 1),
        checkpoint_every_secs=300.0,
        keep_checkpoints=1,
    )
    pf = print_fn or (lambda s: print(f"[pi_0] {s}", flush=True))
    already = os.path.exists(os.path.join(ldir, "summary.json"))
    state, summary = train.fit(
        state,
        lambda s, i: step(s, batcher(i)),
        workdir=ldir,
        options=options,
        eval_fn=lambda s: {"val_nats_per_char": val_loss(s)},
        meta={"lm_config": key_dict},
        print_fn=pf,
        plot=not already,
    )
    return state["model"], corpus, ldir, summary


# ----------------------------------------------------------------------------------------------
# Alignment.


@struct.dataclass
class AlignState:
    """Policy (trainable), pi_0 (frozen), proposal parameters and the estimator states."""

    step: Any
    rng: Any
    nets: dict
    proposal: Any
    proposal_score: Any
    normalizer: RunningNormalizer
    baseline: MovingBaseline

    step_key = train.TrainState.step_key

    def __getitem__(self, name):
        return self.nets[name]


def _baseline_state(cfg: FDPGConfig) -> MovingBaseline:
    if cfg.baseline == "windowed":
        return MovingBaseline.windowed(cfg.baseline_window)
    return MovingBaseline.ema(cfg.baseline_decay)


class _Problem:
    """Everything the alignment runs share: pi_0, the word, Z, jitted samplers and metrics."""

    def __init__(self, cfg: FDPGConfig, base: train.Net, corpus: fdata.CharCorpus, print_fn):
        self.cfg, self.base, self.corpus, self.print = cfg, base, corpus, print_fn
        self.start = int(corpus.encode(START_CHAR)[0])
        self.word_ids = tuple(int(i) for i in corpus.encode(cfg.word))
        length = cfg.sample_len

        def draw(params, key, n):
            m = base.merge(params)
            seqs = sample(m, key, n, length, self.start)
            return seqs, sequence_log_prob(m, seqs)

        self._draw = jax.jit(draw, static_argnums=2)
        self._base_log_prob = jax.jit(lambda seqs: sequence_log_prob(base.merge(), seqs))
        # Z = P_pi0(b = 1): the exact target's normaliser, from pi_0's own samples.
        key = jax.random.fold_in(jax.random.key(cfg.seed), 7)
        hits, total = 0, 0
        chunk = min(cfg.z_samples, cfg.eval_samples)  # one compiled sampler for both
        for i in range(max(cfg.z_samples // chunk, 1)):
            seqs, _ = self._draw(base.params, jax.random.fold_in(key, i), chunk)
            hits += int(jnp.sum(contains(seqs[:, 1:], self.word_ids)))
            total += chunk
        self.z = max(hits, 1) / total
        self.z_hits, self.z_total = hits, total
        self.log_z = float(np.log(self.z))

    def evaluate(self, params, key, n: int | None = None) -> tuple[dict, list[str]]:
        n = n or self.cfg.eval_samples
        seqs, log_pi = self._draw(params, key, n)
        log_pi0 = self._base_log_prob(seqs)
        ok = contains(seqs[:, 1:], self.word_ids)
        log_p = jnp.where(ok, log_pi0 - self.log_z, -jnp.inf)
        # E_pi[f(u)] with f shifted by c (u - 1), which changes nothing in expectation (E_pi u = 1,
        # docs/reference.md section 1) but bounds the per-sample terms of TV (max(0, 1 - u)) and
        # tames those of JS and KL, whose raw terms grow like u = p/pi ~ 1/Z on the samples that
        # satisfy the constraint: the raw estimates exceed the divergences' bounds at small n.
        log_u = log_p - log_pi
        u = jnp.exp(log_u)
        kl, _ = mc_divergence_from_model_samples(log_p, log_pi, "forward_kl")
        kl = kl - jnp.mean(u - 1.0)
        tv = jnp.mean(jnp.maximum(0.0, 1.0 - u))
        js_div = fdivergences.get("js")
        js = jnp.mean(js_div.f(log_u) - js_div.slope_at_infinity * (u - 1.0))
        texts = [self.corpus.decode(s[1:]) for s in np.asarray(seqs)]
        d1, d2 = distinct_n(texts, 1), distinct_n(texts, 2)
        metrics = {
            "constraint_rate": float(jnp.mean(ok)),
            "kl_p_pi": float(kl),
            "tv_p_pi": float(tv),
            "js_p_pi": float(js),
            "kl_pi_pi0": float(jnp.mean(log_pi - log_pi0)),
            "distinct_1": d1,
            "distinct_2": d2,
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


def _make_step(cfg: FDPGConfig, problem: _Problem, divergence: str):
    use_proposal = cfg.sampler == "proposal"
    base = problem.base
    b, length, start, word_ids = cfg.batch_size, cfg.sample_len, problem.start, problem.word_ids

    @jax.jit
    def step(state: AlignState):
        policy = state["policy"]
        key = state.step_key("sample")
        sampler = policy.merge(state.proposal if use_proposal else policy.params)
        seqs = sample(sampler, key, b, length, start)
        log_sampler = sequence_log_prob(sampler, seqs)
        log_base = sequence_log_prob(base.merge(), seqs)
        ok = contains(seqs[:, 1:], word_ids)
        log_target = log_base + jnp.where(ok, 0.0, -cfg.violation_log_penalty)
        normalizer = state.normalizer.update(log_target, log_sampler)
        baseline = 0.0 if cfg.baseline == "none" else state.baseline.value

        def loss_fn(params):
            log_model = sequence_log_prob(policy.merge(params), seqs)
            return fdpg_loss(
                log_model,
                log_target,
                divergence,
                log_proposal=log_sampler if use_proposal else None,
                baseline=baseline,
                log_normalizer=normalizer.log_normalizer,
            )

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(policy.params)
        new_state = state.apply_gradients(policy=grads)
        new_state = new_state.replace(
            normalizer=normalizer, baseline=state.baseline.update(aux["mean_reward"])
        )
        metrics = {
            "loss": loss,
            "batch_constraint_rate": jnp.mean(ok),
            "train_divergence": aux["divergence"],
            "mean_reward": aux["mean_reward"],
            "ess": aux["ess"],
            "log_z_train": normalizer.log_normalizer,
            "baseline": jnp.asarray(baseline, jnp.float32),
        }
        return new_state, metrics

    return step


AlignState.apply_gradients = train.TrainState.apply_gradients


def _align(
    cfg: FDPGConfig, problem: _Problem, divergence: str, workdir: str, print_fn, base_kl: float
):
    base = problem.base
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), optax.adam(cfg.learning_rate))
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
        rng=jax.random.key(cfg.seed),
        nets={"policy": policy},
        proposal=base.params,
        proposal_score=jnp.asarray(base_kl, jnp.float32),
        normalizer=RunningNormalizer.create(),
        baseline=_baseline_state(cfg),
    )
    step = _make_step(cfg, problem, divergence)
    eval_key = jax.random.fold_in(jax.random.key(cfg.seed), 11)

    def step_fn(state, i):
        state, metrics = step(state)
        if cfg.sampler == "proposal" and (i + 1) % cfg.proposal_every == 0:
            # DPG: replace the proposal when the policy is closer to the target in KL(p || .).
            m, _ = problem.evaluate(state["policy"].params, jax.random.fold_in(eval_key, 10**6 + i))
            replaced = m["kl_p_pi"] < float(state.proposal_score)
            if replaced:
                state = state.replace(
                    proposal=state["policy"].params,
                    proposal_score=jnp.asarray(m["kl_p_pi"], jnp.float32),
                )
            metrics = {**metrics, "proposal_replaced": float(replaced)}
        return state, metrics

    last_texts: list[str] = []

    def eval_fn(state):
        key = jax.random.fold_in(eval_key, int(state.step))
        m, texts = problem.evaluate(state["policy"].params, key)
        last_texts[:] = texts
        return m

    options = train.LoopOptions(
        num_steps=cfg.num_steps,
        log_every=cfg.log_every,
        eval_every=cfg.eval_every,
        checkpoint_every_steps=cfg.checkpoint_every_steps,
        checkpoint_every_secs=300.0,
        keep_checkpoints=1,
    )
    state, summary = train.fit(
        state,
        step_fn,
        workdir=workdir,
        options=options,
        eval_fn=eval_fn,
        meta={"divergence": divergence},
        print_fn=print_fn,
    )
    if not last_texts:
        eval_fn(state)
    return state, summary, last_texts


# ----------------------------------------------------------------------------------------------
# Report.


def _table(rows: dict[str, dict], seconds: dict[str, float], cfg: FDPGConfig, problem) -> str:
    head = (
        "| model | constraint rate | KL(p\\|\\|pi) | TV(p, pi) | JS(p, pi) | "
        "KL(pi\\|\\|pi_0) | distinct-1 | distinct-2 | train s |"
    )
    lines = [
        (
            f"word {cfg.word!r}, {cfg.sample_len} characters after a newline; Z = P_pi0(b=1) = "
            f"{problem.z:.4f} ({problem.z_hits}/{problem.z_total} pi_0 samples); "
            f"{cfg.num_steps} steps x {cfg.batch_size} samples, sampler {cfg.sampler}, baseline "
            f"{cfg.baseline}; metrics on {cfg.eval_samples} fresh policy samples."
        ),
        "",
        head,
        "|" + "---|" * 9,
    ]
    for name, m in rows.items():
        t = seconds.get(name)
        lines.append(
            f"| {name} | {m['constraint_rate']:.3f} | {m['kl_p_pi']:.3f} | "
            f"{m['tv_p_pi']:.3f} | {m['js_p_pi']:.4f} | {m['kl_pi_pi0']:.3f} | "
            f"{m['distinct_1']:.3f} | {m['distinct_2']:.3f} | "
            f"{'' if t is None else f'{t:.0f}'} |"
        )
    return "\n".join(lines) + "\n"


def _plot_comparison(workdir: str, names: list[str], pi0_metrics: dict, path: str) -> str:
    fig = plotting._new_figure("the f-DPG comparison figure", figsize=(16, 6.5))
    if fig is None:
        return ""
    titles = {
        "constraint_rate": "constraint satisfaction rate",
        "kl_p_pi": "KL(p || pi)",
        "tv_p_pi": "TV(p, pi)",
        "js_p_pi": "JS(p, pi)",
        "kl_pi_pi0": "KL(pi || pi_0)",
        "distinct_1": "distinct-1 (words)",
        "distinct_2": "distinct-2 (words)",
    }
    axes = fig.subplots(2, 4)
    for ax, key in zip(axes.flat, EVAL_KEYS):
        for name in names:
            recs = [
                r for r in train.read_metrics(os.path.join(workdir, name)) if f"eval/{key}" in r
            ]
            steps = [0] + [r["step"] for r in recs]
            vals = [pi0_metrics[key]] + [r[f"eval/{key}"] for r in recs]
            ax.plot(steps, vals, marker="o", ms=3, label=name)
        ax.set_title(titles[key])
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    axes.flat[-1].axis("off")
    fig.suptitle("f-DPG: alignment to pi_0 restricted to samples containing the word")
    fig.tight_layout()
    return plotting._save(fig, path, dpi=100)


def train_and_evaluate(config: Any, workdir: str, print_fn=None) -> dict:
    """Trains (or loads) pi_0, aligns one copy per divergence, writes the comparison."""
    cfg = _typed(config)
    pf = print_fn or (lambda s: print(s, flush=True))
    os.makedirs(workdir, exist_ok=True)
    t0 = time.perf_counter()
    base, corpus, ldir, lm_summary = load_or_train_lm(cfg, print_fn=lambda s: pf(f"[pi_0] {s}"))
    problem = _Problem(cfg, base, corpus, pf)
    pf(
        f"target: word {cfg.word!r}, Z = P_pi0(b=1) = {problem.z:.4f} "
        f"({problem.z_hits}/{problem.z_total})"
    )
    eval_key = jax.random.fold_in(jax.random.key(cfg.seed), 11)
    pi0_metrics, pi0_texts = problem.evaluate(base.params, jax.random.fold_in(eval_key, 0))
    rows, seconds, samples = {"pi_0": pi0_metrics}, {}, {"pi_0": pi0_texts}
    for name in cfg.divergences:
        t = time.perf_counter()
        _, summary, texts = _align(
            cfg,
            problem,
            name,
            os.path.join(workdir, name),
            lambda s, n=name: pf(f"[{n}] {s}"),
            pi0_metrics["kl_p_pi"],
        )
        seconds[name] = time.perf_counter() - t
        rows[name] = {k: summary["eval"]["eval/" + k] for k in EVAL_KEYS}
        samples[name] = texts
    for name, texts in samples.items():
        with open(os.path.join(workdir, f"samples_{name}.txt"), "w") as f:
            f.write("\n".join(t.replace("\n", "\\n") for t in texts) + "\n")
    table = _table(rows, seconds, cfg, problem)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(table)
    plot = _plot_comparison(
        workdir, list(cfg.divergences), pi0_metrics, os.path.join(workdir, "comparison.png")
    )
    pf(table)
    shown = {k: [t.replace("\n", "\\n") for t in v[: cfg.show_samples]] for k, v in samples.items()}
    for k, v in shown.items():
        pf(f"samples {k}: " + " | ".join(v))
    summary = {
        "results": rows,
        "train_seconds": seconds,
        "z": problem.z,
        "lm_dir": ldir,
        "lm_val_nats_per_char": (lm_summary.get("eval") or {}).get("eval/val_nats_per_char"),
        "samples": shown,
        "comparison_png": plot,
        "wall_time_sec": time.perf_counter() - t0,
        "config": config.to_dict() if hasattr(config, "to_dict") else dict(config),
    }
    train.write_summary(workdir, summary)
    return summary
